//! Opening the database: pragmas, file modes, versioned migrations.
//!
//! The schema version lives in SQLite's `user_version` (rusqlite_migration).
//! A database newer than this binary is refused before anything touches it; an
//! older one is copied to `backups/` before it is migrated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};

use super::{StoreConfig, StoreError, backup, events};

/// Every schema change, oldest first. Never edit a released entry; append.
const MIGRATIONS: &[&str] = &[
    // 1: the history's identity and the durable event log.
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY,
        type       TEXT NOT NULL,
        timestamp  TEXT NOT NULL,
        data       TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    ) STRICT;",
    // 2: notifications, shares and the audit log.
    "CREATE TABLE notifications (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        level      TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error', 'critical')),
        title      TEXT NOT NULL,
        message    TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        read_at    TEXT
    ) STRICT;
    CREATE INDEX notifications_by_time ON notifications (created_ms);
    CREATE INDEX notifications_unread ON notifications (id) WHERE read_at IS NULL;
    CREATE TABLE shares (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL,
        name_key      TEXT NOT NULL UNIQUE,
        path          TEXT NOT NULL,
        protocol      TEXT NOT NULL CHECK (protocol IN ('smb', 'nfs')),
        read_only     INTEGER NOT NULL,
        allowed_hosts TEXT NOT NULL,
        allowed_users TEXT NOT NULL,
        comment       TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    ) STRICT;
    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     TEXT NOT NULL,
        at_ms  INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_time ON audit (at_ms);",
    // 3: active alerts (raised notifications not yet resolved).
    "CREATE TABLE alerts (
        key     TEXT PRIMARY KEY,
        level   TEXT NOT NULL CHECK (level IN ('warning', 'critical')),
        title   TEXT NOT NULL,
        message TEXT NOT NULL,
        since   TEXT NOT NULL
    ) STRICT;",
    // 4: accounts, login sessions with rotating refresh tokens, API keys; where
    // an audited action came from.
    "CREATE TABLE users (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        username            TEXT NOT NULL,
        username_key        TEXT NOT NULL UNIQUE,
        password_hash       TEXT NOT NULL,
        role                TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        disabled            INTEGER NOT NULL DEFAULT 0,
        created_at          TEXT NOT NULL,
        updated_at          TEXT NOT NULL,
        password_changed_at TEXT NOT NULL,
        last_login_at       TEXT
    ) STRICT;
    CREATE TABLE sessions (
        id             TEXT PRIMARY KEY,
        user_id        INTEGER NOT NULL REFERENCES users (id),
        created_at     TEXT NOT NULL,
        expires_ms     INTEGER NOT NULL,
        refreshed_at   TEXT,
        revoked_at     TEXT,
        revoked_reason TEXT,
        ip             TEXT NOT NULL,
        user_agent     TEXT NOT NULL
    ) STRICT;
    CREATE INDEX sessions_by_user ON sessions (user_id);
    CREATE TABLE refresh_tokens (
        hash       TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id),
        issued_ms  INTEGER NOT NULL,
        used_ms    INTEGER
    ) STRICT;
    CREATE INDEX refresh_by_session ON refresh_tokens (session_id);
    CREATE TABLE api_keys (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id      INTEGER NOT NULL REFERENCES users (id),
        name         TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        prefix       TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at   TEXT
    ) STRICT;
    ALTER TABLE audit ADD COLUMN ip TEXT NOT NULL DEFAULT '';",
];

/// The newest schema version this binary knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.len() as u32
}

fn migrations(upto: usize) -> Migrations<'static> {
    Migrations::new(MIGRATIONS[..upto].iter().map(|sql| M::up(sql)).collect())
}

/// How long the writer waits for a lock held by another process (a backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn open_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Creates the file 0600 if it does not exist, so SQLite (which gives the
/// `-wal` and `-shm` files the database's mode) never makes it world-readable.
fn create_private(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        if !path.is_file() {
            return Err(open_err(path, "exists but is not a regular file"));
        }
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(open_err(path, e)),
    }
}

/// Makes the database and its WAL files private (0600).
pub(super) fn secure_files(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::set_permissions(PathBuf::from(p), std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Opens a read-write connection with the pragmas every writer uses.
pub(super) fn open_rw(path: &Path, max_size: u64) -> Result<Connection, StoreError> {
    create_private(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_err(path, e))?;
    // The first statement reads the header: a file that is not a database fails here,
    // and a database from a newer SigmaVault is refused before anything changes it.
    let found = version(&conn).map_err(|e| describe_open_failure(path, e))?;
    let known = latest_version();
    if found > known {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    // Read what start-up needs before changing anything: a damaged database is
    // refused as it was found (switching to WAL would rewrite its header).
    probe(&conn, found).map_err(|e| describe_open_failure(path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| describe_open_failure(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(path, format!("cannot switch to WAL mode (got {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| describe_open_failure(path, e))?;
    if max_size > 0 {
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let page = page.max(512) as u64;
        conn.query_row(
            &format!("PRAGMA max_page_count = {}", (max_size / page).max(1)),
            [],
            |_| Ok(()),
        )?;
    }
    secure_files(path);
    Ok(conn)
}

/// Reads the schema and, in a SigmaVault database, the pages start-up reads
/// anyway (the history's identity and both ends of the event log).
fn probe(conn: &Connection, version: u32) -> Result<(), rusqlite::Error> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    if version >= 1 {
        conn.query_row("SELECT count(*) FROM meta", [], |_| Ok(()))?;
        conn.query_row("SELECT min(seq), max(seq) FROM events", [], |_| Ok(()))?;
    }
    Ok(())
}

fn describe_open_failure(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let msg = match e.sqlite_error_code() {
        Some(C::NotADatabase) => "the file is not a SQLite database (corrupt or overwritten); \
                                  restore a backup with `sigmavault db restore FILE`"
            .to_owned(),
        Some(C::DatabaseCorrupt) => "the database is corrupt; run `sigmavault db check`, \
                                     then restore a backup with `sigmavault db restore FILE`"
            .to_owned(),
        Some(C::ReadOnly | C::CannotOpen | C::PermissionDenied) => {
            format!("{e}; is the data directory writable by this user?")
        }
        _ => e.to_string(),
    };
    open_err(path, msg)
}

/// The schema version stored in the file.
pub(super) fn version(conn: &Connection) -> Result<u32, rusqlite::Error> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Opens the database, refuses one from the future, backs up one from the past,
/// migrates it, and makes sure the history has an epoch.
pub(super) fn open_and_migrate(path: &Path, cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let mut conn = open_rw(path, cfg.max_size)?;
    let found = version(&conn).map_err(|e| describe_open_failure(path, e))?;
    let known = latest_version();
    if found > 0 && found < known {
        let dest = backup::automatic_backup_path(&cfg.data_dir, found);
        tracing::info!(from = found, to = known, backup = %dest.display(), "backing up the database before migrating");
        backup::backup_to(&conn, &dest)?;
    }
    migrate(&mut conn, known as usize).map_err(|e| open_err(path, e))?;
    if events::meta(&conn, "epoch")?.is_none() {
        events::new_epoch(&mut conn)?;
    }
    Ok(conn)
}

/// Applies migrations up to `upto` (tests use a lower one to build old databases).
pub fn migrate(conn: &mut Connection, upto: usize) -> Result<(), String> {
    migrations(upto.min(MIGRATIONS.len()))
        .to_latest(conn)
        .map_err(|e| format!("migration failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations(MIGRATIONS.len()).validate().unwrap();
    }

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig::from(&crate::config::Config {
            data_dir: dir.to_path_buf(),
            ..crate::config::Config::default()
        })
    }

    #[test]
    fn an_older_database_is_backed_up_then_migrated_keeping_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::DB_FILE);
        {
            let mut c = Connection::open(&path).unwrap();
            migrate(&mut c, 1).unwrap();
            events::set_meta(&c, "epoch", "old-epoch").unwrap();
            events::set_meta(&c, "last_seq", "1").unwrap();
            c.execute(
                "INSERT INTO events (seq, type, timestamp, data, created_ms) VALUES (1, 'custom.x', 't', '{}', 0)",
                [],
            )
            .unwrap();
        }
        let conn = open_and_migrate(&path, &config(dir.path())).unwrap();
        assert_eq!(version(&conn).unwrap(), latest_version());
        assert_eq!(events::epoch(&conn).unwrap(), "old-epoch", "migrating keeps the epoch");
        let backups: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(backups.len(), 1, "{backups:?}");
        assert!(backups[0].to_string_lossy().contains("sigmavault-v1-"), "{backups:?}");
        let old = Connection::open(&backups[0]).unwrap();
        assert_eq!(version(&old).unwrap(), 1, "the backup is the database before migrating");
        let n: i64 = old.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_newer_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA user_version = 99;").unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let wal = dir.path().join(format!("{}-wal", super::super::DB_FILE));
        match open_and_migrate(&path, &config(dir.path())) {
            Err(StoreError::SchemaTooNew { found: 99, known, .. }) => assert_eq!(known, latest_version()),
            other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "not a byte changed");
        assert!(!wal.exists(), "not even switched to WAL");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::DB_FILE);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = open_and_migrate(&path, &config(dir.path())).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not a SQLite database"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}
