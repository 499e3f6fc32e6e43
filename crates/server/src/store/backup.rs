//! `sigmavault db backup | restore | check`, the pre-migration backup, and the
//! data-directory lock that keeps two servers (or a restore and a server) apart.
//!
//! Backups use SQLite's online backup API, so a copy taken while the server is
//! writing is consistent. Copies are written to a temporary file and renamed,
//! so a failed backup never leaves a half-written file under the asked name.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use super::{DB_FILE, StoreError, events, schema};

/// The lock file held by a running server.
pub const LOCK_FILE: &str = "sigmavault.lock";

/// Pages copied per backup step; between steps the writer may commit.
const PAGES_PER_STEP: std::ffi::c_int = 1024;

fn backup_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backup(e.to_string())
}

/// Holds the data directory for one process. Released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data directory's lock, or says who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut options = File::options();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(|e| StoreError::Open {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Open {
            path,
            message: e.to_string(),
        }),
    }
}

/// Where the automatic pre-migration backup of schema `version` goes.
pub(super) fn automatic_backup_path(data_dir: &Path, version: u32) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    data_dir
        .join("backups")
        .join(format!("sigmavault-v{version}-{stamp}.db"))
}

/// Copies the database behind `src` to `dest` (replacing it atomically).
pub(super) fn backup_to(src: &Connection, dest: &Path) -> Result<(), StoreError> {
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| backup_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let name = dest
        .file_name()
        .ok_or_else(|| backup_err(format!("{} is not a file name", dest.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".partial");
    let tmp = dest.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut out = Connection::open(&tmp).map_err(backup_err)?;
        schema::secure_files(&tmp);
        {
            let b = Backup::new(src, &mut out).map_err(backup_err)?;
            b.run_to_completion(PAGES_PER_STEP, std::time::Duration::ZERO, None)
                .map_err(backup_err)?;
        }
        // A self-contained file: no WAL beside it.
        out.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(backup_err)?;
        drop(out);
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(backup_err)?;
        std::fs::rename(&tmp, dest).map_err(|e| backup_err(format!("cannot write {}: {e}", dest.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `db backup` and `db check` report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbSummary {
    /// Schema version.
    pub schema_version: u32,
    /// The history's epoch.
    pub epoch: String,
    /// The last seq.
    pub last_seq: u64,
    /// Events in the log.
    pub events: u64,
    /// Notifications.
    pub notifications: u64,
    /// Shares.
    pub shares: u64,
}

fn summary(conn: &Connection) -> Result<DbSummary, StoreError> {
    let count = |table: &str| -> Result<u64, StoreError> {
        Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok(DbSummary {
        schema_version: schema::version(conn)?,
        epoch: events::epoch(conn)?,
        last_seq: events::meta(conn, "last_seq")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        events: count("events")?,
        notifications: count("notifications")?,
        shares: count("shares")?,
    })
}

fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            message: "no such database file".into(),
        });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Runs SQLite's full integrity check; `Ok` lists nothing, `Err` lists the problems.
fn integrity(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// `sigmavault db backup FILE`: an online, consistent copy (the server may be running).
pub fn backup(data_dir: &Path, dest: &Path) -> Result<DbSummary, StoreError> {
    let src = open_read_only(&data_dir.join(DB_FILE))?;
    backup_to(&src, dest)?;
    let copy = open_read_only(dest)?;
    summary(&copy)
}

/// `sigmavault db check`: integrity check and a summary.
pub fn check(data_dir: &Path) -> Result<DbSummary, StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(StoreError::Open {
            path,
            message: "there is no database here (is --data-dir right?)".into(),
        });
    }
    if !path.is_file() {
        return Err(StoreError::Open {
            path,
            message: "exists but is not a regular file".into(),
        });
    }
    let conn = open_read_only(&path).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let problems = integrity(&conn).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if !problems.is_empty() {
        return Err(StoreError::Corrupt(problems.join("; ")));
    }
    summary(&conn).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `sigmavault db restore FILE`: replaces the database with a checked copy of
/// `FILE` while no server runs. The current database is kept in `backups/`, and
/// the restored history gets a new epoch so every client resets.
pub fn restore(data_dir: &Path, src_path: &Path) -> Result<DbSummary, StoreError> {
    let _lock = lock_data_dir(data_dir)?;
    let src = open_read_only(src_path)?;
    let problems = integrity(&src).map_err(|e| backup_err(format!("{}: {e}", src_path.display())))?;
    if !problems.is_empty() {
        return Err(backup_err(format!(
            "{} fails the integrity check: {}",
            src_path.display(),
            problems.join("; ")
        )));
    }
    let found = schema::version(&src)?;
    if found == 0 || events::meta(&src, "epoch").is_err() {
        return Err(backup_err(format!(
            "{} is not a SigmaVault database",
            src_path.display()
        )));
    }
    if found > schema::latest_version() {
        return Err(StoreError::SchemaTooNew {
            path: src_path.to_path_buf(),
            found,
            known: schema::latest_version(),
        });
    }
    let db = data_dir.join(DB_FILE);
    if db.exists() {
        let current = Connection::open(&db).map_err(backup_err)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let keep = data_dir
            .join("backups")
            .join(format!("sigmavault-before-restore-{stamp}.db"));
        backup_to(&current, &keep)?;
        tracing::info!(kept = %keep.display(), "the replaced database was kept");
    }
    // Build the new database beside the old one, then swap it in.
    let staging = data_dir.join(".sigmavault.db.restoring");
    let _ = std::fs::remove_file(&staging);
    backup_to(&src, &staging)?;
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::rename(&staging, &db).map_err(|e| backup_err(format!("cannot replace {}: {e}", db.display())))?;
    let mut conn = schema::open_rw(&db, 0)?;
    schema::migrate(&mut conn, schema::latest_version() as usize).map_err(backup_err)?;
    let epoch = uuid::Uuid::new_v4().to_string();
    events::set_meta(&conn, "epoch", &epoch)?;
    let s = summary(&conn)?;
    Ok(s)
}
