//! Notifications: persisted records that are also published on the hub.
//!
//! A `notification` event is stored first and published as the stored record
//! (with its `id`), in the same transaction as its place in the event log.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::{StoreError, WriteTx};

/// Notification levels, least severe first.
pub const LEVELS: &[&str] = &["info", "warning", "error", "critical"];

/// Longest title and message accepted.
pub const MAX_TITLE: usize = 200;
/// Longest message.
pub const MAX_MESSAGE: usize = 4000;
/// Longest source.
pub const MAX_SOURCE: usize = 100;

/// A stored notification.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notification {
    /// Its id.
    pub id: i64,
    /// info, warning, error or critical.
    pub level: String,
    /// One line.
    pub title: String,
    /// The text.
    pub message: String,
    /// What raised it (`api`, a collector, …).
    pub source: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When it was marked read, if it was.
    pub read_at: Option<String>,
}

/// A notification to create.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Level.
    pub level: String,
    /// Title.
    pub title: String,
    /// Message.
    pub message: String,
    /// Source.
    pub source: String,
}

fn now() -> (String, i64) {
    let t = chrono::Utc::now();
    (
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        t.timestamp_millis(),
    )
}

impl NewNotification {
    /// Reads and checks the `data` of a `notification` event. `source` defaults
    /// to `api`, `level` to `info`; `message` may be empty.
    pub fn from_data(data: &Value) -> Result<NewNotification, StoreError> {
        let Value::Object(o) = data else {
            return Err(StoreError::Invalid("data: a notification is an object".into()));
        };
        let text = |field: &str, required: bool, default: &str, max: usize| -> Result<String, StoreError> {
            match o.get(field) {
                None | Some(Value::Null) if !required => Ok(default.to_owned()),
                None | Some(Value::Null) => Err(StoreError::Invalid(format!("data.{field}: is required"))),
                Some(Value::String(s)) => {
                    let s = s.trim();
                    if required && s.is_empty() {
                        return Err(StoreError::Invalid(format!("data.{field}: must not be empty")));
                    }
                    if s.chars().count() > max {
                        return Err(StoreError::Invalid(format!(
                            "data.{field}: longer than {max} characters"
                        )));
                    }
                    Ok(s.to_owned())
                }
                Some(_) => Err(StoreError::Invalid(format!("data.{field}: must be a string"))),
            }
        };
        let level = text("level", false, "info", 16)?;
        if !LEVELS.contains(&level.as_str()) {
            return Err(StoreError::Invalid(format!(
                "data.level: {level:?} is not one of: {}",
                LEVELS.join(", ")
            )));
        }
        if let Some(extra) = o
            .keys()
            .find(|k| !["level", "title", "message", "source"].contains(&k.as_str()))
        {
            return Err(StoreError::Invalid(format!(
                "data.{extra}: unknown field (a notification has level, title, message, source)"
            )));
        }
        Ok(NewNotification {
            level,
            title: text("title", true, "", MAX_TITLE)?,
            message: text("message", false, "", MAX_MESSAGE)?,
            source: text("source", false, "api", MAX_SOURCE)?,
        })
    }
}

fn row(r: &Row<'_>) -> rusqlite::Result<Notification> {
    Ok(Notification {
        id: r.get(0)?,
        level: r.get(1)?,
        title: r.get(2)?,
        message: r.get(3)?,
        source: r.get(4)?,
        created_at: r.get(5)?,
        read_at: r.get(6)?,
    })
}

const COLUMNS: &str = "id, level, title, message, source, created_at, read_at";

/// Inserts a notification and returns it.
pub fn insert(conn: &Connection, n: &NewNotification) -> Result<Notification, StoreError> {
    let (created_at, ms) = now();
    conn.prepare_cached(
        "INSERT INTO notifications (level, title, message, source, created_at, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![n.level, n.title, n.message, n.source, created_at, ms])?;
    Ok(Notification {
        id: conn.last_insert_rowid(),
        level: n.level.clone(),
        title: n.title.clone(),
        message: n.message.clone(),
        source: n.source.clone(),
        created_at,
        read_at: None,
    })
}

/// Stores the `data` of a published `notification` and returns the record to publish.
pub(super) fn insert_from_event(conn: &Connection, data: &Value) -> Result<Value, StoreError> {
    let n = insert(conn, &NewNotification::from_data(data)?)?;
    serde_json::to_value(n).map_err(|e| StoreError::Sqlite(e.to_string()))
}

/// One notification.
pub fn get(conn: &Connection, id: i64) -> Result<Notification, StoreError> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM notifications WHERE id = ?1"), [id], row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("notification {id}")))
}

/// Filters of the notification list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only unread (true) or only read (false).
    pub unread: Option<bool>,
    /// Only these levels.
    pub levels: Vec<String>,
    /// Only created at or after this instant (RFC 3339).
    pub since_ms: Option<i64>,
    /// Only ids below this (paging backwards from the newest).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// A page of notifications, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The notifications.
    pub notifications: Vec<Notification>,
    /// How many match the filters in total.
    pub total: u64,
    /// How many are unread overall.
    pub unread: u64,
    /// Pass as `before` for the next page (absent on the last page).
    pub next_before: Option<i64>,
}

/// Lists notifications, newest first.
pub fn list(conn: &Connection, f: &Filter) -> Result<Page, StoreError> {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    match f.unread {
        Some(true) => clauses.push("read_at IS NULL".into()),
        Some(false) => clauses.push("read_at IS NOT NULL".into()),
        None => {}
    }
    if !f.levels.is_empty() {
        let marks: Vec<&str> = f.levels.iter().map(|_| "?").collect();
        clauses.push(format!("level IN ({})", marks.join(",")));
        args.extend(f.levels.iter().map(|l| rusqlite::types::Value::Text(l.clone())));
    }
    if let Some(ms) = f.since_ms {
        clauses.push("created_ms >= ?".into());
        args.push(rusqlite::types::Value::Integer(ms));
    }
    let filter_where = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM notifications {filter_where}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let unread: i64 = conn.query_row("SELECT count(*) FROM notifications WHERE read_at IS NULL", [], |r| {
        r.get(0)
    })?;
    let mut page_clauses = clauses.clone();
    let mut page_args = args.clone();
    if let Some(b) = f.before_id {
        page_clauses.push("id < ?".into());
        page_args.push(rusqlite::types::Value::Integer(b));
    }
    let page_where = if page_clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", page_clauses.join(" AND "))
    };
    page_args.push(rusqlite::types::Value::Integer(f.limit as i64 + 1));
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM notifications {page_where} ORDER BY id DESC LIMIT ?"
    ))?;
    let mut items: Vec<Notification> = stmt
        .query_map(rusqlite::params_from_iter(page_args.iter()), row)?
        .collect::<Result<_, _>>()?;
    let next_before = if items.len() > f.limit {
        items.truncate(f.limit);
        items.last().map(|n| n.id)
    } else {
        None
    };
    Ok(Page {
        notifications: items,
        total: total as u64,
        unread: unread as u64,
        next_before,
    })
}

/// Marks one notification read and publishes `notification.read` (once; marking
/// an already read notification changes nothing and publishes nothing).
pub fn mark_read(tx: &mut WriteTx<'_>, id: i64) -> Result<Notification, StoreError> {
    let mut n = get(tx.conn(), id)?;
    if n.read_at.is_some() {
        return Ok(n);
    }
    let (read_at, _) = now();
    tx.conn().execute(
        "UPDATE notifications SET read_at = ?1 WHERE id = ?2",
        params![read_at, id],
    )?;
    n.read_at = Some(read_at.clone());
    tx.publish("notification.read", json!({"ids": [id], "read_at": read_at}))?;
    Ok(n)
}

/// Marks every unread notification read; publishes one `notification.read`
/// listing them. Returns how many changed.
pub fn mark_all_read(tx: &mut WriteTx<'_>) -> Result<Vec<i64>, StoreError> {
    let ids: Vec<i64> = {
        let mut stmt = tx
            .conn()
            .prepare("SELECT id FROM notifications WHERE read_at IS NULL ORDER BY id")?;
        stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    if ids.is_empty() {
        return Ok(ids);
    }
    let (read_at, _) = now();
    tx.conn().execute(
        "UPDATE notifications SET read_at = ?1 WHERE read_at IS NULL",
        [&read_at],
    )?;
    tx.publish(
        "notification.read",
        json!({"ids": ids, "read_at": read_at, "all": true}),
    )?;
    Ok(ids)
}

/// Deletes one notification; publishes `notification.deleted`.
pub fn delete(tx: &mut WriteTx<'_>, id: i64) -> Result<Notification, StoreError> {
    let n = get(tx.conn(), id)?;
    tx.conn().execute("DELETE FROM notifications WHERE id = ?1", [id])?;
    tx.publish("notification.deleted", json!({"id": id}))?;
    Ok(n)
}
