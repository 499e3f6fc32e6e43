//! Retention: the event log by age (count is kept exact by the writer after
//! every append), notifications by age and count, the audit log by age.

use rusqlite::Connection;

use super::{StoreConfig, StoreError, events};

/// What one retention pass deleted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Notifications deleted.
    pub notifications: u64,
    /// Audit records deleted.
    pub audit: u64,
    /// The oldest retained seq, when events were deleted.
    pub oldest_seq: Option<u64>,
}

fn cutoff_ms(now: chrono::DateTime<chrono::Utc>, age: std::time::Duration) -> i64 {
    now.timestamp_millis()
        .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes what is past its retention (inside the caller's transaction).
pub fn prune(conn: &Connection, cfg: &StoreConfig, now: chrono::DateTime<chrono::Utc>) -> Result<Pruned, StoreError> {
    let mut out = Pruned::default();
    if cfg.durable_history {
        let cutoff = cutoff_ms(now, cfg.history_max_age);
        let oldest = events::oldest_seq(conn)?;
        if let Some(oldest) = oldest {
            let keep_from = match events::first_seq_since(conn, cutoff)? {
                Some(seq) => seq,
                // Everything is too old: the log empties; seq still continues.
                None => {
                    let last: u64 = events::meta(conn, "last_seq")?
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    last + 1
                }
            };
            if keep_from > oldest {
                let before: i64 =
                    conn.query_row("SELECT count(*) FROM events WHERE seq < ?1", [keep_from as i64], |r| {
                        r.get(0)
                    })?;
                events::delete_before(conn, keep_from)?;
                out.events = before as u64;
                out.oldest_seq = Some(keep_from);
            }
        }
    }
    let cutoff = cutoff_ms(now, cfg.notifications_max_age);
    out.notifications += conn.execute("DELETE FROM notifications WHERE created_ms < ?1", [cutoff])? as u64;
    out.notifications += conn.execute(
        "DELETE FROM notifications WHERE id <= (SELECT id FROM notifications ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [cfg.notifications_max_count as i64],
    )? as u64;
    let cutoff = cutoff_ms(now, cfg.audit_max_age);
    out.audit = conn.execute("DELETE FROM audit WHERE at_ms < ?1", [cutoff])? as u64;
    Ok(out)
}

/// Runs retention every `interval` until shutdown.
pub async fn task(store: super::Store, interval: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.run_retention().await {
            Ok(p) if p.events + p.notifications + p.audit > 0 => tracing::info!(
                events = p.events,
                notifications = p.notifications,
                audit = p.audit,
                "retention pruned old records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
