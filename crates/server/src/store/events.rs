//! The durable event log and the history's identity (`epoch`, last `seq`).
//!
//! Rows keep the exact text the hub sent (`type`, `timestamp`, `data`), so a
//! replay from the database re-encodes byte-identical frames.

use rusqlite::{Connection, OptionalExtension, params};

use super::{HistoryStart, StoreConfig, StoreError};

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its seq.
    pub seq: u64,
    /// Its type.
    pub kind: String,
    /// The envelope timestamp, as sent.
    pub timestamp: String,
    /// The `data` JSON text, as sent.
    pub data: String,
}

/// Reads a `meta` value.
pub(super) fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Writes a `meta` value.
pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The history's epoch.
pub(super) fn epoch(conn: &Connection) -> Result<String, StoreError> {
    meta(conn, "epoch")?.ok_or_else(|| StoreError::Corrupt("the history has no epoch".into()))
}

/// Starts a new history: a new epoch, an empty log, seq from 1. Used when a
/// database has no epoch yet (a new or freshly migrated one).
pub(super) fn new_epoch(conn: &mut Connection) -> Result<String, StoreError> {
    let epoch = uuid::Uuid::new_v4().to_string();
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM events", [])?;
    set_meta(&tx, "epoch", &epoch)?;
    set_meta(&tx, "last_seq", "0")?;
    tx.commit()?;
    Ok(epoch)
}

/// Where the history continues: epoch, last seq, and the newest events for the ring.
pub(super) fn history_start(conn: &Connection, cfg: &StoreConfig) -> Result<HistoryStart, StoreError> {
    let epoch = epoch(conn)?;
    let recorded: u64 = meta(conn, "last_seq")?.and_then(|s| s.parse().ok()).unwrap_or(0);
    let newest: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    let newest = newest.map(|n| n as u64);
    // A seq near u64::MAX could only come from a tampered file; refuse it.
    let last_seq = recorded.max(newest.unwrap_or(0));
    if last_seq > u64::MAX / 2 {
        return Err(StoreError::Corrupt(format!("last seq {last_seq} is out of range")));
    }
    let mut recent = Vec::new();
    if cfg.durable_history && cfg.ring > 0 {
        let from = last_seq.saturating_sub(cfg.ring as u64);
        recent = after(conn, from, last_seq, cfg.ring)?;
    }
    Ok(HistoryStart {
        epoch,
        last_seq,
        recent,
    })
}

/// The oldest seq in the log, if any.
pub(super) fn oldest_seq(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let oldest: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |r| r.get(0))?;
    Ok(oldest.map(|n| n as u64))
}

/// Records the last seq assigned (in the group's transaction).
pub(super) fn set_last_seq(conn: &Connection, seq: u64) -> Result<(), rusqlite::Error> {
    set_meta(conn, "last_seq", &seq.to_string())
}

/// A row to append.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Its seq.
    pub seq: u64,
    /// Its type.
    pub kind: std::sync::Arc<str>,
    /// Envelope timestamp.
    pub timestamp: String,
    /// `data` JSON text.
    pub data: String,
}

/// Appends rows (inside the caller's transaction).
pub(super) fn insert(conn: &Connection, rows: &[EventRow]) -> Result<(), StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut stmt =
        conn.prepare_cached("INSERT INTO events (seq, type, timestamp, data, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for r in rows {
        stmt.execute(params![r.seq as i64, &*r.kind, r.timestamp, r.data, now])?;
    }
    Ok(())
}

/// Events with `after < seq <= upto`, oldest first, at most `max`.
pub(super) fn after(conn: &Connection, after: u64, upto: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, type, timestamp, data FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after as i64, upto as i64, max as i64], |r| {
        Ok(StoredEvent {
            seq: r.get::<_, i64>(0)? as u64,
            kind: r.get(1)?,
            timestamp: r.get(2)?,
            data: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Deletes every event before `seq`.
pub(super) fn delete_before(conn: &Connection, seq: u64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM events WHERE seq < ?1")?
        .execute([seq as i64])?;
    Ok(())
}

/// The first seq at or after `cutoff_ms`, if any event is that new.
pub(super) fn first_seq_since(conn: &Connection, cutoff_ms: i64) -> Result<Option<u64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq FROM events WHERE created_ms >= ?1 ORDER BY seq LIMIT 1",
            [cutoff_ms],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|s| s as u64))
}
