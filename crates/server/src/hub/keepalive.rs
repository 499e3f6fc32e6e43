//! Keep-alive for every connection from one shared timer.
//!
//! Per-connection timers cost a wake-up each per interval; with tens of
//! thousands of idle clients one sweeper walking the session table is far
//! cheaper. Each tick it asks for a ping where one is due, closes peers that
//! have been silent for ping interval + pong timeout (4000), and aborts
//! connections whose socket write has made no progress for the write timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use sigmavault_proto::CloseCode;

use super::Hub;
use super::outbox::StateFrame;
use super::session::Session;

/// How often the sweeper runs: a quarter of the shortest deadline it enforces,
/// so deadlines are met within 25 % (bounded to 10 ms..5 s; with the defaults a
/// sweep every 2.5 s).
fn tick(hub: &Hub) -> Duration {
    let c = hub.config();
    (c.ping_interval
        .min(c.pong_timeout)
        .min(c.write_timeout)
        .min(c.auth_expiry_warning)
        / 4)
    .clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// Runs until shutdown.
pub(super) async fn sweeper(hub: Hub, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(tick(&hub));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => sweep(&hub),
        }
    }
}

fn sweep(hub: &Hub) {
    let cfg = hub.config();
    let now = hub.now_ms();
    let ping_ms = cfg.ping_interval.as_millis() as u64;
    let dead_ms = ping_ms + cfg.pong_timeout.as_millis() as u64;
    let stall_ms = cfg.write_timeout.as_millis() as u64;
    let counters = hub.counters();
    let wall_ms = chrono::Utc::now().timestamp_millis();
    let warn_ms = cfg.auth_expiry_warning.as_millis() as i64;
    let leeway_ms = cfg.token_leeway.as_millis() as i64;
    for s in hub.inner.sessions.read().values() {
        check_expiry(s, wall_ms, warn_ms, leeway_ms);
        let silent = now.saturating_sub(s.last_seen_ms.load(Ordering::Relaxed));
        if silent > dead_ms {
            if s.with_outbox(|o| o.request_close(CloseCode::KeepaliveTimeout, format!("silent for {silent} ms"))) {
                counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client_id = %s.client_id, silent_ms = silent, "peer stopped answering pings; closing with 4000");
            }
        } else if now.saturating_sub(s.last_ping_ms.load(Ordering::Relaxed)) >= ping_ms {
            s.last_ping_ms.store(now, Ordering::Relaxed);
            s.with_outbox(|o| o.ping_due = true);
        }
        let started = s.write_started_ms.load(Ordering::Relaxed);
        if started != 0 && now.saturating_sub(started) > stall_ms && !s.abort.is_aborted() {
            counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client_id = %s.client_id,
                stalled_ms = now - started,
                last_seq = s.last_delivered_seq.load(Ordering::Relaxed),
                "socket write made no progress; dropping the connection"
            );
            s.abort.abort();
        }
    }
}

/// Whether the keep-alive ping goes out now, in the same write as this batch's
/// `heartbeat`, instead of as a write of its own when the sweeper finds it due.
///
/// Every connection on the default subscriptions gets a heartbeat each heartbeat
/// interval; pinging it separately as well would cost a second write and wake-up
/// per interval. A ping rides on a heartbeat once it is at least
/// `ping interval − heartbeat interval` old (with the defaults, 30 s − 30 s: every
/// heartbeat), so the next heartbeat always comes before the ping is due and the
/// sweeper never has to ping such a connection. Pings are never later than before,
/// only sometimes earlier.
pub(super) fn ping_with_heartbeat(hub: &Hub, session: &Session, state: &[StateFrame]) -> bool {
    if !state.iter().any(|s| &*s.kind == HEARTBEAT) {
        return false;
    }
    let cfg = hub.config();
    let early_ms = cfg.ping_interval.saturating_sub(cfg.heartbeat_interval).as_millis() as u64;
    let now = hub.now_ms();
    if now.saturating_sub(session.last_ping_ms.load(Ordering::Relaxed)) < early_ms {
        return false;
    }
    session.last_ping_ms.store(now, Ordering::Relaxed);
    true
}

/// Warns a socket whose token expires soon (`auth.expiring`, once per token)
/// and closes it with 4401 once the token has expired (plus the leeway).
fn check_expiry(s: &super::session::Session, wall_ms: i64, warn_ms: i64, leeway_ms: i64) {
    if wall_ms < s.expires_at_ms.load(Ordering::Relaxed).saturating_sub(warn_ms) {
        return;
    }
    let mut auth = s.auth.lock();
    let Some(a) = auth.as_mut() else { return };
    let Some(expires) = a.expires_at_ms else { return };
    if wall_ms >= expires + leeway_ms {
        drop(auth);
        if s.with_outbox(|o| {
            o.request_close(
                CloseCode::Unauthorized,
                "token expired: refresh, then reconnect and resume",
            )
        }) {
            tracing::info!(client_id = %s.client_id, "socket token expired; closing with 4401");
        }
    } else if !a.warned && wall_ms >= expires - warn_ms {
        a.warned = true;
        drop(auth);
        let data = serde_json::json!({
            "expires_at": chrono::DateTime::from_timestamp_millis(expires)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "expires_in_ms": (expires - wall_ms).max(0),
        });
        s.with_outbox(|o| o.push_control(super::control("auth.expiring", None, &data)));
    }
}

/// The type of the heartbeat message (the writer sends a due ping along with it).
pub(super) const HEARTBEAT: &str = "heartbeat";

/// Publishes the `heartbeat` state message every heartbeat interval.
pub(super) async fn heartbeat(hub: Hub, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(hub.config().heartbeat_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let data = serde_json::json!({
            "server_time": super::timestamp(),
            "clients": hub.client_count(),
            "seq": hub.head(),
        });
        if hub
            .publish_now(vec![super::NewEvent {
                kind: HEARTBEAT.into(),
                data,
            }])
            .is_err()
        {
            return;
        }
    }
}
