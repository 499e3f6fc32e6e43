//! Read-only connections for queries, reused across calls.

use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// How long a reader waits on a lock before giving up (WAL readers rarely wait).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, keep: usize) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            keep,
        }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| StoreError::Open {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    /// Runs `f` on an idle connection (or a new one). Blocking.
    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.idle.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open()?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < self.keep {
            idle.push(conn);
        }
        out
    }

    /// Closes the idle connections (at shutdown, so the last one to close can
    /// remove the WAL files).
    pub(super) fn clear(&self) {
        self.idle.lock().clear();
    }
}
