//! Share definitions (SMB/NFS exports): the SQL half. Validation lives in `crate::shares`.
//!
//! Every write records its audit entry and publishes its `storage.share.*` event
//! inside the writer's transaction, so the table, the audit log and the event
//! log can never disagree: either all three change or none does.
//!
//! Names are unique case-insensitively (SMB clients compare share names that
//! way): `name_key` holds the lower-cased name under a UNIQUE index, and a
//! violation comes back as [`StoreError::Conflict`]. The REST layer checks the
//! name before writing so that the common case is reported as a field error
//! with the others; the constraint is what settles a race between two writers.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::audit::{self, Actor};
use super::{StoreError, WriteTx};

/// A stored share.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Share {
    /// Its id.
    pub id: i64,
    /// The name clients see (unique ignoring case).
    pub name: String,
    /// The exported directory, canonical (symlinks resolved when it was validated).
    pub path: String,
    /// `smb` or `nfs`.
    pub protocol: String,
    /// Whether clients may only read.
    pub read_only: bool,
    /// Hosts, networks or netgroups allowed; empty means no host restriction.
    pub allowed_hosts: Vec<String>,
    /// Users and `@groups` allowed; empty means no user restriction.
    pub allowed_users: Vec<String>,
    /// Free text.
    pub comment: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC; equals `created_at` until the first change.
    pub updated_at: String,
}

/// A share's settings, already validated: everything but what the server assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShare {
    /// Name.
    pub name: String,
    /// Canonical path.
    pub path: String,
    /// `smb` or `nfs`.
    pub protocol: String,
    /// Read-only.
    pub read_only: bool,
    /// Allowed hosts.
    pub allowed_hosts: Vec<String>,
    /// Allowed users.
    pub allowed_users: Vec<String>,
    /// Comment.
    pub comment: String,
}

impl Share {
    /// The settings part of the record (what a client may change).
    pub fn settings(&self) -> NewShare {
        NewShare {
            name: self.name.clone(),
            path: self.path.clone(),
            protocol: self.protocol.clone(),
            read_only: self.read_only,
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_users: self.allowed_users.clone(),
            comment: self.comment.clone(),
        }
    }

    fn to_json(&self) -> Result<Value, StoreError> {
        serde_json::to_value(self).map_err(|e| StoreError::Sqlite(format!("encoding share {}: {e}", self.id)))
    }
}

/// The uniqueness key of a name.
pub fn name_key(name: &str) -> String {
    name.to_lowercase()
}

const COLUMNS: &str =
    "id, name, path, protocol, read_only, allowed_hosts, allowed_users, comment, created_at, updated_at";

/// A JSON list column; a damaged value fails the read instead of passing as empty.
fn json_list(r: &Row<'_>, i: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

fn row(r: &Row<'_>) -> rusqlite::Result<Share> {
    Ok(Share {
        id: r.get(0)?,
        name: r.get(1)?,
        path: r.get(2)?,
        protocol: r.get(3)?,
        read_only: r.get(4)?,
        allowed_hosts: json_list(r, 5)?,
        allowed_users: json_list(r, 6)?,
        comment: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn encode_list(list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::Sqlite(format!("encoding a share list: {e}")))
}

/// Turns the `name_key` UNIQUE violation into a conflict naming the share.
fn name_conflict(name: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
            StoreError::Conflict(format!(
                "a share named {name:?} already exists (names are compared ignoring case)"
            ))
        }
        _ => StoreError::from(e),
    }
}

/// Every share, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<Share>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM shares ORDER BY id"))?;
    let shares = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
    Ok(shares)
}

/// One share.
pub fn get(conn: &Connection, id: i64) -> Result<Share, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM shares WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("share {id}")))
}

/// Whether another share (not `except`) already uses `name`, ignoring case.
pub fn name_taken(conn: &Connection, name: &str, except: Option<i64>) -> Result<bool, StoreError> {
    let taken = conn
        .prepare_cached("SELECT 1 FROM shares WHERE name_key = ?1 AND id IS NOT ?2")?
        .query_row(params![name_key(name), except], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(taken)
}

/// Creates a share; publishes `storage.share.added`.
pub fn insert(tx: &mut WriteTx<'_>, actor: &Actor, new: &NewShare) -> Result<Share, StoreError> {
    let at = now();
    tx.conn()
        .prepare_cached(
            "INSERT INTO shares (name, name_key, path, protocol, read_only, allowed_hosts, allowed_users, comment, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        )?
        .execute(params![
            new.name,
            name_key(&new.name),
            new.path,
            new.protocol,
            new.read_only,
            encode_list(&new.allowed_hosts)?,
            encode_list(&new.allowed_users)?,
            new.comment,
            at,
        ])
        .map_err(name_conflict(&new.name))?;
    let share = Share {
        id: tx.conn().last_insert_rowid(),
        name: new.name.clone(),
        path: new.path.clone(),
        protocol: new.protocol.clone(),
        read_only: new.read_only,
        allowed_hosts: new.allowed_hosts.clone(),
        allowed_users: new.allowed_users.clone(),
        comment: new.comment.clone(),
        created_at: at.clone(),
        updated_at: at,
    };
    let data = share.to_json()?;
    audit::record(tx, actor, "share.create", &format!("share/{}", share.id), data.clone())?;
    tx.publish("storage.share.added", data)?;
    Ok(share)
}

/// Replaces a share's settings; publishes `storage.share.changed`.
///
/// `expected` is the record the new settings were derived from (a partial
/// update merges over it): if the share changed since, the update is refused
/// with [`StoreError::Conflict`] rather than silently undoing the other change.
/// Settings equal to the stored ones change nothing: no write, no event, no
/// audit entry, `updated_at` kept.
pub fn update(
    tx: &mut WriteTx<'_>,
    actor: &Actor,
    id: i64,
    new: &NewShare,
    expected: Option<&Share>,
) -> Result<Share, StoreError> {
    let before = get(tx.conn(), id)?;
    if expected.is_some_and(|e| *e != before) {
        return Err(StoreError::Conflict(format!(
            "share {id} was changed by another request while this one was being checked; read it again and retry"
        )));
    }
    if before.settings() == *new {
        return Ok(before);
    }
    let at = now();
    tx.conn()
        .prepare_cached(
            "UPDATE shares SET name = ?1, name_key = ?2, path = ?3, protocol = ?4, read_only = ?5, \
             allowed_hosts = ?6, allowed_users = ?7, comment = ?8, updated_at = ?9 WHERE id = ?10",
        )?
        .execute(params![
            new.name,
            name_key(&new.name),
            new.path,
            new.protocol,
            new.read_only,
            encode_list(&new.allowed_hosts)?,
            encode_list(&new.allowed_users)?,
            new.comment,
            at,
            id,
        ])
        .map_err(name_conflict(&new.name))?;
    let after = Share {
        id,
        name: new.name.clone(),
        path: new.path.clone(),
        protocol: new.protocol.clone(),
        read_only: new.read_only,
        allowed_hosts: new.allowed_hosts.clone(),
        allowed_users: new.allowed_users.clone(),
        comment: new.comment.clone(),
        created_at: before.created_at.clone(),
        updated_at: at,
    };
    let data = after.to_json()?;
    audit::record(
        tx,
        actor,
        "share.update",
        &format!("share/{id}"),
        json!({"before": before.to_json()?, "after": data.clone()}),
    )?;
    tx.publish("storage.share.changed", data)?;
    Ok(after)
}

/// Deletes a share; publishes `storage.share.removed` with the record as it was.
pub fn delete(tx: &mut WriteTx<'_>, actor: &Actor, id: i64) -> Result<Share, StoreError> {
    let share = get(tx.conn(), id)?;
    tx.conn()
        .prepare_cached("DELETE FROM shares WHERE id = ?1")?
        .execute([id])?;
    let data = share.to_json()?;
    audit::record(tx, actor, "share.delete", &format!("share/{id}"), data.clone())?;
    tx.publish("storage.share.removed", data)?;
    Ok(share)
}
