//! Users, login sessions, refresh tokens and API keys: the SQL half of
//! `crate::auth`, which hashes, signs and decides; this module only stores.
//!
//! Secrets are never stored: passwords as argon2id PHC strings, refresh tokens
//! and API keys as SHA-256 hex digests (both have ≥ 256 bits of entropy, so a
//! fast hash is enough and lets a lookup be one indexed read).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::StoreError;

/// A role: what a user or key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read everything that is not admin-only.
    Viewer,
    /// May read and write everything.
    Admin,
}

impl Role {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

fn role_col(r: &Row<'_>, i: usize) -> rusqlite::Result<Role> {
    let s: String = r.get(i)?;
    Role::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("bad role {s:?}").into())
    })
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: i64,
    /// Login name (unique ignoring case).
    pub username: String,
    /// Its role.
    pub role: Role,
    /// Disabled users cannot log in; their sessions and keys are refused.
    pub disabled: bool,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// RFC 3339 UTC.
    pub password_changed_at: String,
    /// RFC 3339 UTC, or null before the first login.
    pub last_login_at: Option<String>,
}

const USER_COLUMNS: &str = "id, username, role, disabled, created_at, updated_at, password_changed_at, last_login_at";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        role: role_col(r, 2)?,
        disabled: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        password_changed_at: r.get(6)?,
        last_login_at: r.get(7)?,
    })
}

/// The uniqueness key of a username.
pub fn username_key(name: &str) -> String {
    name.to_lowercase()
}

/// RFC 3339 UTC with milliseconds.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every user, by id.
pub fn list_users(conn: &Connection) -> Result<Vec<User>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
    let rows = stmt.query_map([], user_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Number of users.
pub fn count_users(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64)
}

/// One user by id.
pub fn get_user(conn: &Connection, id: i64) -> Result<User, StoreError> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], user_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
}

/// One user and its password hash, by name (ignoring case).
pub fn find_login(conn: &Connection, username: &str) -> Result<Option<(User, String)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = ?1"
        ))?
        .query_row([username_key(username)], |r| Ok((user_row(r)?, r.get::<_, String>(8)?)))
        .optional()?)
}

/// The password hash of a user.
pub fn password_hash(conn: &Connection, id: i64) -> Result<String, StoreError> {
    conn.prepare_cached("SELECT password_hash FROM users WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
}

/// Creates a user; a taken name is a conflict.
pub fn insert_user(conn: &Connection, username: &str, hash: &str, role: Role) -> Result<User, StoreError> {
    let now = now_text();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO users (username, username_key, password_hash, role, created_at, updated_at,
                                password_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
        )?
        .execute(params![username, username_key(username), hash, role.as_str(), now]);
    match inserted {
        Ok(_) => get_user(conn, conn.last_insert_rowid()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Err(
            StoreError::Conflict(format!("a user named {username:?} already exists")),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Number of enabled admins other than `except`.
pub fn other_enabled_admins(conn: &Connection, except: i64) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?1",
        [except],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Sets role and disabled flag.
pub fn update_user(conn: &Connection, id: i64, role: Role, disabled: bool) -> Result<User, StoreError> {
    let n = conn
        .prepare_cached("UPDATE users SET role = ?2, disabled = ?3, updated_at = ?4 WHERE id = ?1")?
        .execute(params![id, role.as_str(), disabled, now_text()])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {id}")));
    }
    get_user(conn, id)
}

/// Replaces a password hash. `changed` is false for a rehash on login (same
/// password, new parameters), which must not look like a password change.
pub fn set_password_hash(conn: &Connection, id: i64, hash: &str, changed: bool) -> Result<(), StoreError> {
    let n = if changed {
        conn.prepare_cached(
            "UPDATE users SET password_hash = ?2, password_changed_at = ?3, updated_at = ?3 WHERE id = ?1",
        )?
        .execute(params![id, hash, now_text()])?
    } else {
        conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
            .execute(params![id, hash])?
    };
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {id}")));
    }
    Ok(())
}

/// Records a successful login.
pub fn touch_login(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE users SET last_login_at = ?2 WHERE id = ?1")?
        .execute(params![id, now_text()])?;
    Ok(())
}

/// A login session (one refresh-token family).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoginSession {
    /// Its id (carried in access tokens as `sid`).
    pub id: String,
    /// Whose.
    pub user_id: i64,
    /// When the refresh family ends (Unix ms).
    pub expires_ms: i64,
}

/// Opens a session.
pub fn insert_session(
    conn: &Connection,
    id: &str,
    user_id: i64,
    expires_ms: i64,
    ip: &str,
    user_agent: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sessions (id, user_id, created_at, expires_ms, ip, user_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, user_id, now_text(), expires_ms, ip, user_agent])?;
    Ok(())
}

/// Sessions neither revoked nor expired at `now_ms`.
pub fn active_sessions(conn: &Connection, now_ms: i64) -> Result<Vec<LoginSession>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, user_id, expires_ms FROM sessions WHERE revoked_at IS NULL AND expires_ms > ?1")?;
    let rows = stmt.query_map([now_ms], |r| {
        Ok(LoginSession {
            id: r.get(0)?,
            user_id: r.get(1)?,
            expires_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes one session; returns whether it was active.
pub fn revoke_session(conn: &Connection, id: &str, reason: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3 WHERE id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![id, now_text(), reason])?
        > 0)
}

/// Revokes every session of a user; returns their ids.
pub fn revoke_user_sessions(conn: &Connection, user_id: i64, reason: &str) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL")?
        .query_map([user_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    conn.prepare_cached(
        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3 WHERE user_id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![user_id, now_text(), reason])?;
    Ok(ids)
}

/// Stores a new refresh token of a session.
pub fn insert_refresh(conn: &Connection, hash: &str, session_id: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO refresh_tokens (hash, session_id, issued_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![hash, session_id, now_ms])?;
    Ok(())
}

/// What a presented refresh token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshLookup {
    /// Its session.
    pub session_id: String,
    /// The session's user.
    pub user_id: i64,
    /// Whether it was already used (a reuse: the family must be revoked).
    pub used: bool,
    /// Whether its session is revoked.
    pub session_revoked: bool,
    /// The session's end (Unix ms).
    pub expires_ms: i64,
}

/// Looks a refresh token up by its hash.
pub fn find_refresh(conn: &Connection, hash: &str) -> Result<Option<RefreshLookup>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT r.session_id, s.user_id, r.used_ms IS NOT NULL, s.revoked_at IS NOT NULL, s.expires_ms
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.hash = ?1",
        )?
        .query_row([hash], |r| {
            Ok(RefreshLookup {
                session_id: r.get(0)?,
                user_id: r.get(1)?,
                used: r.get(2)?,
                session_revoked: r.get(3)?,
                expires_ms: r.get(4)?,
            })
        })
        .optional()?)
}

/// Marks a refresh token used and the session refreshed.
pub fn use_refresh(conn: &Connection, hash: &str, session_id: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE refresh_tokens SET used_ms = ?2 WHERE hash = ?1")?
        .execute(params![hash, now_ms])?;
    conn.prepare_cached("UPDATE sessions SET refreshed_at = ?2 WHERE id = ?1")?
        .execute(params![session_id, now_text()])?;
    Ok(())
}

/// Deletes refresh tokens and sessions that ended before `before_ms` (retention).
pub fn prune_sessions(conn: &Connection, before_ms: i64) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE expires_ms < ?1)",
    )?
    .execute([before_ms])?;
    Ok(conn
        .prepare_cached("DELETE FROM sessions WHERE expires_ms < ?1")?
        .execute([before_ms])? as u64)
}

/// An API key as the API shows it (never the secret or its hash).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id.
    pub id: i64,
    /// Whose (the creator).
    pub user_id: i64,
    /// The creator's name.
    pub username: String,
    /// A label.
    pub name: String,
    /// Its role (never above its user's).
    pub role: Role,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC, or null.
    pub last_used_at: Option<String>,
    /// RFC 3339 UTC, or null while valid.
    pub revoked_at: Option<String>,
}

const KEY_COLUMNS: &str =
    "k.id, k.user_id, u.username, k.name, k.role, k.prefix, k.created_at, k.last_used_at, k.revoked_at";

fn key_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        name: r.get(3)?,
        role: role_col(r, 4)?,
        prefix: r.get(5)?,
        created_at: r.get(6)?,
        last_used_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

/// Stores a key.
pub fn insert_key(
    conn: &Connection,
    user_id: i64,
    name: &str,
    role: Role,
    prefix: &str,
    hash: &str,
) -> Result<ApiKey, StoreError> {
    conn.prepare_cached(
        "INSERT INTO api_keys (user_id, name, role, prefix, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![user_id, name, role.as_str(), prefix, hash, now_text()])?;
    get_key(conn, conn.last_insert_rowid())
}

/// One key.
pub fn get_key(conn: &Connection, id: i64) -> Result<ApiKey, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?1"
    ))?
    .query_row([id], key_row)
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("API key {id}")))
}

/// Keys, oldest first: of one user, or all.
pub fn list_keys(conn: &Connection, user_id: Option<i64>) -> Result<Vec<ApiKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE ?1 IS NULL OR k.user_id = ?1 ORDER BY k.id"
    ))?;
    let rows = stmt.query_map([user_id], key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every key with its hash (revoked ones included, so they are answered as
/// revoked rather than unknown), for the in-memory index.
pub fn key_hashes(conn: &Connection) -> Result<Vec<(String, ApiKey)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS}, k.hash FROM api_keys k JOIN users u ON u.id = k.user_id"
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(9)?, key_row(r)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes a key; returns it.
pub fn revoke_key(conn: &Connection, id: i64) -> Result<ApiKey, StoreError> {
    conn.prepare_cached("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
        .execute(params![id, now_text()])?;
    get_key(conn, id)
}

/// Records a key's use (at most once a minute per key; the caller throttles).
pub fn touch_key(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")?
        .execute(params![id, now_text()])?;
    Ok(())
}
