//! The store: the only module that speaks SQL.
//!
//! One SQLite file (`sigmavault.db`) in WAL mode. All writes go through one
//! writer thread ([`writer`]) that batches whatever is queued into one
//! transaction (group commit) with `synchronous=FULL`, so an acknowledged write
//! is on disk and a burst of writes costs one fsync. One writer also means
//! concurrent REST writers and the hub never see `database is locked`. Reads run
//! on a small pool of read-only connections on the blocking thread pool; WAL lets
//! them proceed while the writer commits.
//!
//! The writer is also the sequencer of durable events: a job may publish
//! events; the writer gives event-class ones the next `seq`, appends them to the
//! `events` table inside the same transaction, and hands them to the hub only
//! after the commit. A failed job or commit consumes no seq.

pub mod accounts;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod events;
pub mod notifications;
mod pool;
pub mod retention;
pub mod schema;
pub mod shares;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::{Config, HistoryStore};
use crate::hub::{Hub, NewEvent};

pub use events::StoredEvent;
pub use writer::WriteTx;

/// The database file inside the data directory.
pub const DB_FILE: &str = "sigmavault.db";

/// Request writes queued for the writer before callers wait for room.
const WRITE_QUEUE: usize = 4096;
/// Read connections: kept open, and the most used at once.
const READERS: usize = 8;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or is not a SQLite database.
    #[error("cannot open the database {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite or the OS said.
        message: String,
    },
    /// Another process (a running server, a `sigmavault user` or `db` command)
    /// holds the data directory's lock.
    #[error("another sigmavault process (a running server?) is using the data directory {path}")]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The database was written by a newer SigmaVault.
    #[error(
        "the database {path} has schema version {found}, newer than this binary knows ({known}); \
         run a newer sigmavault or restore a backup"
    )]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest this binary knows.
        known: u32,
    },
    /// The disk (or `--db-max-size`) is full.
    #[error("the database is full: {0}")]
    Full(String),
    /// The data directory or database is read-only.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// The file is damaged.
    #[error("the database is corrupt: {0}")]
    Corrupt(String),
    /// Any other SQLite or I/O failure.
    #[error("database error: {0}")]
    Sqlite(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
    /// A record the request named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique value is already taken.
    #[error("{0}")]
    Conflict(String),
    /// The request's data is not acceptable (a field is named in the message).
    #[error("{0}")]
    Invalid(String),
    /// A backup or restore file problem.
    #[error("{0}")]
    Backup(String),
}

impl StoreError {
    /// Whether the failure is the database's (503), not the request's.
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_)
        )
    }

    /// A stable code for error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Full(_) => "storage_full",
            StoreError::ReadOnly(_) => "storage_read_only",
            StoreError::Corrupt(_) => "storage_corrupt",
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Invalid(_) => "invalid",
            _ => "storage_unavailable",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DiskFull) => StoreError::Full(e.to_string()),
            Some(C::ReadOnly) => StoreError::ReadOnly(e.to_string()),
            Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Sqlite(e.to_string()),
        }
    }
}

/// Settings the store takes from [`Config`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether events are appended to the database.
    pub durable_history: bool,
    /// Events kept in memory (the newest are loaded at start-up).
    pub ring: usize,
    /// Event retention by age.
    pub history_max_age: Duration,
    /// Event retention by count.
    pub history_max_events: u64,
    /// Notification retention.
    pub notifications_max_age: Duration,
    /// Notification retention by count.
    pub notifications_max_count: u64,
    /// Audit retention.
    pub audit_max_age: Duration,
    /// Database size cap (0 = none).
    pub max_size: u64,
}

impl From<&Config> for StoreConfig {
    fn from(c: &Config) -> Self {
        StoreConfig {
            data_dir: c.data_dir.clone(),
            durable_history: c.history_store == HistoryStore::Sqlite,
            ring: c.history,
            history_max_age: c.history_max_age,
            history_max_events: c.history_max_events,
            notifications_max_age: c.notifications_max_age,
            notifications_max_count: c.notifications_max_count,
            audit_max_age: c.audit_max_age,
            max_size: c.db_max_size,
        }
    }
}

/// What the hub needs to continue the history where the last run stopped.
#[derive(Debug, Clone)]
pub struct HistoryStart {
    /// The history's identity.
    pub epoch: String,
    /// The last seq ever assigned (0 when none).
    pub last_seq: u64,
    /// The newest events, oldest first, to fill the in-memory ring.
    pub recent: Vec<StoredEvent>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    cfg: StoreConfig,
    path: PathBuf,
    /// Unbounded so that the server's own events are never refused for lack of room;
    /// request writes take a permit from `queue_room` first, which bounds them.
    jobs: mpsc::UnboundedSender<writer::Msg>,
    queue_room: Arc<Semaphore>,
    /// Concurrent reads (each holds a connection and a blocking thread).
    read_room: Semaphore,
    readers: pool::ReadPool,
    /// Oldest seq still in the durable log (`last + 1` when the log is empty).
    oldest_seq: AtomicU64,
    counters: writer::Counters,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database, then starts the
    /// writer thread. Blocking: call from `spawn_blocking` or before the runtime.
    pub fn open(cfg: StoreConfig) -> Result<(Store, HistoryStart), StoreError> {
        let path = cfg.data_dir.join(DB_FILE);
        // Whatever fails while opening names the file and says what to do.
        let located = |e: StoreError| match e {
            StoreError::Corrupt(message) => StoreError::Open {
                path: path.clone(),
                message: format!(
                    "the database is corrupt ({message}); run `sigmavault db check`, \
                     then restore a backup with `sigmavault db restore FILE`"
                ),
            },
            StoreError::Sqlite(message) | StoreError::Full(message) | StoreError::ReadOnly(message) => {
                StoreError::Open {
                    path: path.clone(),
                    message,
                }
            }
            other => other,
        };
        let conn = schema::open_and_migrate(&path, &cfg).map_err(located)?;
        let (start, oldest) = if cfg.durable_history {
            let start = events::history_start(&conn, &cfg).map_err(located)?;
            let oldest = events::oldest_seq(&conn)
                .map_err(located)?
                .unwrap_or(start.last_seq.saturating_add(1));
            (start, oldest)
        } else {
            // The memory ring forgets everything at exit: a history of its own with an
            // epoch that is never stored, so it can never be mistaken for the durable
            // one, which stays untouched for the next durable start.
            let start = HistoryStart {
                epoch: uuid::Uuid::new_v4().to_string(),
                last_seq: 0,
                recent: Vec::new(),
            };
            (start, 1)
        };
        let readers = pool::ReadPool::new(path.clone(), READERS);
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(StoreInner {
            cfg,
            path,
            jobs: tx,
            queue_room: Arc::new(Semaphore::new(WRITE_QUEUE)),
            read_room: Semaphore::new(READERS),
            readers,
            oldest_seq: AtomicU64::new(oldest),
            counters: writer::Counters::default(),
            thread: parking_lot::Mutex::new(None),
        });
        let store = Store { inner };
        let thread = writer::spawn(store.clone(), conn, rx, start.last_seq + 1)
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        *store.inner.thread.lock() = Some(thread);
        Ok((store, start))
    }

    /// Connects the hub that committed events are delivered to (once, at start-up).
    pub fn attach(&self, hub: Hub) {
        let _ = self.inner.jobs.send(writer::Msg::Attach(hub));
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether events are persisted.
    pub fn durable(&self) -> bool {
        self.inner.cfg.durable_history
    }

    /// Oldest seq still in the durable log.
    pub fn oldest_seq(&self) -> u64 {
        self.inner.oldest_seq.load(Ordering::Acquire)
    }

    /// Retention only moves the oldest seq forwards, whichever pass (age in the
    /// retention task, count in the writer) finishes last.
    pub(crate) fn set_oldest_seq(&self, seq: u64) {
        self.inner.oldest_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Whether the writer thread is running (it only stops at `close`, or if it died).
    pub fn writer_alive(&self) -> bool {
        self.inner.thread.lock().as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Writer statistics.
    pub fn stats(&self) -> writer::StoreStats {
        self.inner.counters.snapshot()
    }

    /// Runs `f` in the writer's next transaction and waits until it is committed
    /// and its events are delivered. Returns `f`'s value and the seqs of the
    /// messages it published (`None` for state-class ones).
    pub async fn write<T, F>(&self, f: F) -> Result<(T, Vec<Option<u64>>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        // Held until the job is done: at most WRITE_QUEUE request writes are queued.
        let permit = self
            .inner
            .queue_room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let job = writer::Job::typed(f, reply, Some(permit));
        self.inner
            .jobs
            .send(writer::Msg::Work(job))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends events (and persists notifications among them), then delivers them.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Option<u64>>, StoreError> {
        let (_, seqs) = self
            .write(move |tx| {
                for e in events {
                    tx.publish(e.kind, e.data)?;
                }
                Ok(())
            })
            .await?;
        Ok(seqs)
    }

    /// Queues server-internal events without waiting (never refused for lack of
    /// room: they are few). If they cannot be persisted they are still delivered
    /// live, without a seq and marked `"durable": false`; `Err` gives them back
    /// when the store is closed.
    pub fn append_internal(&self, events: Vec<NewEvent>) -> Result<(), Vec<NewEvent>> {
        match self.inner.jobs.send(writer::Msg::Work(writer::Job::internal(events))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(writer::Msg::Work(job))) => Err(job.into_events()),
            Err(_) => Err(Vec::new()),
        }
    }

    /// Runs a read on a pooled read-only connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.inner.read_room.acquire().await.map_err(|_| StoreError::Closed)?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.inner.readers.with(f))
            .await
            .map_err(|e| StoreError::Sqlite(format!("read task failed: {e}")))?
    }

    /// Durable events with `after < seq <= upto`, at most `max`, oldest first.
    pub async fn events_after(&self, after: u64, upto: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| events::after(c, after, upto, max)).await
    }

    /// Runs retention now (the retention task calls this on its interval).
    pub async fn run_retention(&self) -> Result<retention::Pruned, StoreError> {
        let cfg = self.inner.cfg.clone();
        let store = self.clone();
        let (pruned, _) = self
            .write(move |tx| {
                let pruned = retention::prune(tx.conn(), &cfg, chrono::Utc::now())?;
                Ok(pruned)
            })
            .await?;
        if let Some(oldest) = pruned.oldest_seq {
            store.set_oldest_seq(oldest);
        }
        Ok(pruned)
    }

    /// Finishes queued writes and stops the writer. Later writes fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.jobs.send(writer::Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = self.inner.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.inner.readers.clear();
    }
}
