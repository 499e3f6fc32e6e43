//! The audit log: who changed what, kept for `--audit-max-age`.

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::Value;

use super::StoreError;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Its id.
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// Who (a user, `api`, `system`).
    pub actor: String,
    /// What, e.g. `share.create`.
    pub action: String,
    /// On what, e.g. `share/3`.
    pub target: String,
    /// Details (JSON).
    pub detail: Value,
}

/// Records an action (inside the caller's transaction).
pub fn record(conn: &Connection, actor: &str, action: &str, target: &str, detail: &Value) -> Result<(), StoreError> {
    let t = chrono::Utc::now();
    conn.prepare_cached(
        "INSERT INTO audit (at, at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        t.timestamp_millis(),
        actor,
        action,
        target,
        detail.to_string()
    ])?;
    Ok(())
}

/// The newest records, newest first.
pub fn recent(conn: &Connection, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        let detail: String = r.get(5)?;
        Ok(AuditRecord {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
