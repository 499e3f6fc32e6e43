//! Host data: every data kind has its own [`Source`]; the scheduler
//! (`scheduler.rs`) runs each one behind its own circuit breaker
//! (`crate::breaker`), publishes its samples on the hub, keeps the last good
//! value for the REST mirrors, and marks it `stale` while the source fails.
//!
//! Sources read `/proc`, `/sys` and `statvfs` below configurable roots
//! ([`Roots`]), so tests point them at fixture trees. Parsing is kept in pure
//! functions over text, separate from the file reads.

pub mod netfs;
pub mod network;
pub mod procfs;
pub mod scheduler;
pub mod smart;
pub mod storage;
pub mod system;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the host's pseudo filesystems are (`/proc`, `/sys` on a real host).
#[derive(Debug, Clone)]
pub struct Roots {
    /// `--procfs-root`.
    pub procfs: PathBuf,
    /// `--sysfs-root`.
    pub sysfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

impl Roots {
    /// A path below the procfs root, e.g. `proc("stat")`.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.procfs.join(rel)
    }

    /// A path below the sysfs root, e.g. `sys("block")`.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel)
    }
}

/// Why a sample could not be taken. `code` is stable (it is published in
/// `rpc_error` and in the stale value); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SourceError {
    /// Stable code, e.g. `read_failed`, `parse_failed`, `timeout`, `tool_failed`.
    pub code: &'static str,
    /// Details.
    pub message: String,
}

impl SourceError {
    /// A file under a root could not be read.
    pub fn read(path: &Path, e: &std::io::Error) -> SourceError {
        SourceError {
            code: "read_failed",
            message: format!("{}: {e}", path.display()),
        }
    }

    /// A file's contents were not what the parser expects.
    pub fn parse(path: &Path, what: impl std::fmt::Display) -> SourceError {
        SourceError {
            code: "parse_failed",
            message: format!("{}: {what}", path.display()),
        }
    }
}

/// One sample: the state value to publish, plus event-class messages the source
/// derived from comparing it with the previous sample (e.g. `storage.disk.added`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The new value of the source's state topic (`data` of the message).
    pub state: Value,
    /// Event-class messages to publish after it, as (type, data).
    pub events: Vec<(String, Value)>,
}

/// A data source. `sample` blocks (file reads, a tool); the scheduler calls it
/// on the blocking pool with a timeout, never on the async threads, and never
/// twice at once.
pub trait Source: Send + 'static {
    /// The breaker and `rpc_error` key, e.g. `system`, `network`, `storage`.
    fn name(&self) -> &str;
    /// The state topic samples are published on, e.g. `system.status`.
    fn topic(&self) -> &'static str;
    /// Its own sampling interval, when it must not follow `--poll-interval` (SMART
    /// must not wake spun-down drives every few seconds).
    fn interval(&self) -> Option<std::time::Duration> {
        None
    }
    /// Takes one sample. Sources that report rates keep the previous counters in
    /// `self`; the first sample of such a source reports rates of 0.
    fn sample(&mut self) -> Result<Sample, SourceError>;
}

/// Every source the server runs, reading below the configured roots.
pub fn sources(config: &crate::config::Config) -> Vec<Box<dyn Source>> {
    let roots = Roots {
        procfs: config.procfs_root.clone(),
        sysfs: config.sysfs_root.clone(),
    };
    let mut all: Vec<Box<dyn Source>> = vec![
        Box::new(system::SystemSource::new(roots.clone())),
        Box::new(network::NetworkSource::new(roots.clone())),
        Box::new(storage::StorageSource::new(roots.clone())),
    ];
    all.extend(smart::sources(&roots, &config.smartctl, config.smart_interval));
    all
}

/// Reads a whole file below a root as text.
pub fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|e| SourceError::read(path, &e))
}
