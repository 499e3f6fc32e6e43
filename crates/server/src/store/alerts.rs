//! Active alerts, so a restart neither forgets nor repeats them.

use rusqlite::{Connection, params};

use super::StoreError;

/// One active alert row.
#[derive(Debug, Clone)]
pub struct AlertRow {
    /// What it is about.
    pub key: String,
    /// `warning` or `critical`.
    pub level: String,
    /// One line.
    pub title: String,
    /// Details.
    pub message: String,
    /// When it was raised.
    pub since: String,
}

/// Every active alert.
pub fn active(conn: &Connection) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare("SELECT key, level, title, message, since FROM alerts ORDER BY key")?;
    let rows = stmt.query_map([], |r| {
        Ok(AlertRow {
            key: r.get(0)?,
            level: r.get(1)?,
            title: r.get(2)?,
            message: r.get(3)?,
            since: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records an alert as active (or its new level).
pub fn upsert(
    conn: &Connection,
    key: &str,
    level: &str,
    title: &str,
    message: &str,
    since: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO alerts (key, level, title, message, since) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET level = excluded.level, title = excluded.title, message = excluded.message",
        params![key, level, title, message, since],
    )?;
    Ok(())
}

/// Clears an alert.
pub fn delete(conn: &Connection, key: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM alerts WHERE key = ?1", [key])?;
    Ok(())
}
