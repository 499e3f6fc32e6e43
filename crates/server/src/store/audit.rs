//! The audit log: who did what, when and from where, kept for `--audit-max-age`.
//!
//! Every record is written inside the transaction of the change it describes
//! and published as an `audit.<action>` event (admin-only topic) in the same
//! transaction, so the log, the change and the event stream never disagree.

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::{StoreError, WriteTx};

/// Who acted, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// A user name (`NAME (key ID)` for API keys), `cli`, `system`, or the
    /// attempted name of a failed login.
    pub name: String,
    /// Client address (after `--trusted-proxies`), empty for local actors.
    pub ip: String,
}

impl Actor {
    /// A local actor (the CLI, the server itself).
    pub fn local(name: &str) -> Actor {
        Actor {
            name: name.to_owned(),
            ip: String::new(),
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Its id.
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// Who (see [`Actor`]).
    pub actor: String,
    /// From where.
    pub ip: String,
    /// What, e.g. `share.create`, `auth.login`, `auth.login_failed`.
    pub action: String,
    /// On what, e.g. `share/3`.
    pub target: String,
    /// Details (JSON; never secrets).
    pub detail: Value,
}

/// Records an action and publishes `audit.<action>` (inside the caller's transaction).
pub fn record(
    tx: &mut WriteTx<'_>,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), StoreError> {
    let t = chrono::Utc::now();
    let at = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tx.conn()
        .prepare_cached(
            "INSERT INTO audit (at, at_ms, actor, ip, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            at,
            t.timestamp_millis(),
            actor.name,
            actor.ip,
            action,
            target,
            detail.to_string()
        ])?;
    let id = tx.conn().last_insert_rowid();
    // Live only: the audit table is this stream's durable record (GET
    // /api/v1/audit?after=ID catches up), and a flood of failed logins must not
    // push real events out of the resumable history.
    tx.publish_live(
        format!("audit.{action}"),
        json!({"id": id, "at": at, "actor": actor.name, "ip": actor.ip, "action": action,
               "target": target, "detail": detail}),
    );
    Ok(())
}

/// Which records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only ids below this (paging backwards).
    pub before: Option<i64>,
    /// Only ids above this (catching up after a live `audit.*` event was missed).
    pub after: Option<i64>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only actions starting with this (`auth.` or `share.create`).
    pub action: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// Records matching `q`, newest first.
pub fn list(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, ip, action, target, detail FROM audit
         WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR actor = ?2)
           AND (?3 IS NULL OR substr(action, 1, length(?3)) = ?3) AND (?5 IS NULL OR id > ?5)
         ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![q.before, q.actor, q.action, q.limit as i64, q.after], |r| {
        let detail: String = r.get(6)?;
        Ok(AuditRecord {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            ip: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest records, newest first.
pub fn recent(conn: &Connection, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    list(
        conn,
        &AuditQuery {
            limit,
            ..Default::default()
        },
    )
}
