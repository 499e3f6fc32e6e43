//! `statvfs` of network filesystems, with a deadline per mount.
//!
//! On a `hard` NFS mount whose server is gone, `statvfs` blocks in the kernel until
//! the server comes back, possibly forever, and nothing here can interrupt it. If
//! the storage sample made that call itself, one dead backup target would hold the
//! whole `storage.update` source (disks, RAID and every other filesystem) stale.
//! So network mounts are asked on a thread of their own: the sample waits at most
//! the deadline, reports that mount as unanswered, and while the stuck call is
//! still blocked later samples skip the mount at once instead of stacking up more
//! stuck threads. When the kernel finally returns, the mount is asked normally again.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::storage::{FsStat, FsStats};

/// How long one sample waits for a network mount's `statvfs`.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// Whether `statvfs` on this filesystem type goes over the network (or through a
/// userspace daemon) and can therefore hang.
pub fn is_network(fs_type: &str) -> bool {
    matches!(
        fs_type,
        "nfs"
            | "nfs4"
            | "cifs"
            | "smb3"
            | "smbfs"
            | "ceph"
            | "glusterfs"
            | "9p"
            | "afs"
            | "lustre"
            | "davfs"
            | "fuse"
            | "fuseblk"
    ) || fs_type.starts_with("fuse.")
}

/// Asks `statvfs` on a helper thread and gives up waiting after a deadline.
pub struct Deadlined {
    stats: Arc<dyn FsStats>,
    deadline: Duration,
    /// Mounts whose call has not returned yet, and since when.
    blocked: Arc<Mutex<HashMap<PathBuf, Instant>>>,
}

impl Deadlined {
    pub fn new(stats: Arc<dyn FsStats>, deadline: Duration) -> Deadlined {
        Deadlined {
            stats,
            deadline,
            blocked: Arc::default(),
        }
    }

    /// `statvfs` of `mount`, or `TimedOut` if it does not answer within the
    /// deadline or an earlier call on it is still blocked.
    pub fn statvfs(&self, mount: &Path) -> io::Result<FsStat> {
        if let Some(since) = self.blocked.lock().get(mount) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer for {} s (an unresponsive network filesystem?)",
                    since.elapsed().as_secs()
                ),
            ));
        }
        let path = mount.to_path_buf();
        self.blocked.lock().insert(path.clone(), Instant::now());
        let (tx, rx) = mpsc::sync_channel(1);
        let (stats, blocked) = (self.stats.clone(), self.blocked.clone());
        let spawned = std::thread::Builder::new().name("statvfs".into()).spawn(move || {
            let result = stats.statvfs(&path);
            blocked.lock().remove(&path);
            let _ = tx.send(result);
        });
        if let Err(e) = spawned {
            self.blocked.lock().remove(mount);
            return Err(e);
        }
        match rx.recv_timeout(self.deadline) {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {} ms (an unresponsive network filesystem?)",
                    self.deadline.as_millis()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use super::*;

    /// A filesystem whose `/mnt/dead` blocks until released, as a hard NFS mount
    /// with its server gone does; `/mnt/ok` answers at once.
    #[derive(Default)]
    struct Gate {
        released: std::sync::Mutex<bool>,
        cond: Condvar,
        calls: std::sync::atomic::AtomicUsize,
    }

    fn stat() -> FsStat {
        FsStat {
            fragment_size: 4096,
            blocks: 100,
            blocks_free: 50,
            blocks_available: 40,
            files: 10,
            files_free: 5,
        }
    }

    fn fake(gate: Arc<Gate>) -> Arc<dyn FsStats> {
        Arc::new(move |p: &Path| -> io::Result<FsStat> {
            if p == Path::new("/mnt/dead") {
                gate.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut released = gate.released.lock().expect("gate");
                while !*released {
                    released = gate.cond.wait(released).expect("gate");
                }
            }
            Ok(stat())
        })
    }

    #[test]
    fn a_hung_mount_costs_one_deadline_then_nothing_until_it_returns() {
        let gate = Arc::new(Gate::default());
        let guarded = Deadlined::new(fake(gate.clone()), Duration::from_millis(100));

        let started = Instant::now();
        let err = guarded.statvfs(Path::new("/mnt/dead")).expect_err("hung");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no answer within 100 ms"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100));

        // The call is still stuck: the next sample does not wait and starts no thread.
        let started = Instant::now();
        let err = guarded.statvfs(Path::new("/mnt/dead")).expect_err("still hung");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(gate.calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Other mounts are unaffected.
        assert_eq!(guarded.statvfs(Path::new("/mnt/ok")).expect("ok").blocks, 100);

        // The server comes back: once the stuck call returns, the mount answers again.
        *gate.released.lock().expect("gate") = true;
        gate.cond.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match guarded.statvfs(Path::new("/mnt/dead")) {
                Ok(s) => {
                    assert_eq!(s.blocks, 100);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the mount never answered again: {e}"),
            }
        }
    }

    #[test]
    fn errors_of_the_call_itself_are_passed_on() {
        let failing: Arc<dyn FsStats> =
            Arc::new(|_: &Path| -> io::Result<FsStat> { Err(io::Error::from_raw_os_error(116)) });
        let guarded = Deadlined::new(failing, Duration::from_secs(5));
        let err = guarded.statvfs(Path::new("/mnt/backup")).expect_err("ESTALE");
        assert_eq!(err.raw_os_error(), Some(116));
        // A failed call is not left marked as blocked.
        assert_eq!(
            guarded
                .statvfs(Path::new("/mnt/backup"))
                .expect_err("ESTALE")
                .raw_os_error(),
            Some(116)
        );
    }

    #[test]
    fn network_types() {
        for t in ["nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "fuse.rclone", "ceph", "9p"] {
            assert!(is_network(t), "{t}");
        }
        for t in ["ext4", "xfs", "btrfs", "zfs", "vfat", "tmpfs", "overlay"] {
            assert!(!is_network(t), "{t}");
        }
    }
}
