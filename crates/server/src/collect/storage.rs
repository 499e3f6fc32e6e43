//! The `storage.update` source: disks from `<sysfs>/block`, mounted
//! filesystems from `<procfs>/self/mountinfo` plus `statvfs`, and the
//! added/removed, mounted/unmounted events found by comparing each sample with
//! the previous one.
//!
//! `raid` lists md arrays, ZFS pools and btrfs filesystems with their health
//! (see [`raid`]), and `tools` says which of those kinds could not be
//! examined; an array becoming degraded or recovering is an event too.
//!
//! `statvfs` goes through [`FsStats`] so fixture tests never ask the host about
//! mount points that only exist in a fixture. Network filesystems are asked with
//! a deadline per mount ([`super::netfs`]): a hung `hard` NFS mount shows as that
//! mount's `error`, and the rest of the sample goes on.

// A child of `storage`, not of `collect`, only because `collect/mod.rs` is
// not this change's to edit; it is a module of its own in every other way.
#[path = "raid.rs"]
pub mod raid;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use self::raid::{CommandRunner, Health, RaidEntry, SystemRunner};
use super::netfs::{DEADLINE as NETFS_DEADLINE, Deadlined, is_network};
use super::{Roots, Sample, Source, SourceError};

/// The time all external tools of one sample may take together. Well inside
/// the scheduler's default 5 s per-call timeout, so a hung `zpool` costs the
/// ZFS part of the sample, not the disks and filesystems with it.
pub const TOOL_BUDGET: Duration = Duration::from_secs(2);

/// The numbers of `statvfs(3)` that `df` uses. `fragment_size` is the unit of
/// the block counts (`f_frsize`, or `f_bsize` where a filesystem leaves it 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStat {
    /// Bytes per block of the counts below.
    pub fragment_size: u64,
    /// `f_blocks`.
    pub blocks: u64,
    /// `f_bfree`: free including the blocks reserved for root.
    pub blocks_free: u64,
    /// `f_bavail`: free for unprivileged users; what `df` calls available.
    pub blocks_available: u64,
    /// `f_files`; 0 on filesystems without an inode table (vfat, btrfs, cifs).
    pub files: u64,
    /// `f_ffree`.
    pub files_free: u64,
}

/// Where filesystem usage comes from. Injectable so tests with a fixture procfs
/// root supply numbers for mount points the host doesn't have.
pub trait FsStats: Send + Sync + 'static {
    /// `statvfs` of a mount point. May block (network filesystems).
    fn statvfs(&self, mount_point: &Path) -> io::Result<FsStat>;
}

impl<F> FsStats for F
where
    F: Fn(&Path) -> io::Result<FsStat> + Send + Sync + 'static,
{
    fn statvfs(&self, mount_point: &Path) -> io::Result<FsStat> {
        self(mount_point)
    }
}

/// The host's `statvfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemFsStats;

impl FsStats for SystemFsStats {
    fn statvfs(&self, mount_point: &Path) -> io::Result<FsStat> {
        let s = rustix::fs::statvfs(mount_point).map_err(io::Error::from)?;
        Ok(FsStat {
            // Same fallback as df (gnulib fsusage).
            fragment_size: if s.f_frsize != 0 { s.f_frsize } else { s.f_bsize },
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_available: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
        })
    }
}

/// One partition of a [`Disk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, e.g. `sda1`, `nvme0n1p1`.
    pub name: String,
    /// Partition number (`partition`); orders `sda2` before `sda10`.
    pub number: u64,
    /// `size` is in 512-byte sectors whatever the logical block size.
    pub size_bytes: u64,
    /// `start`, in 512-byte sectors.
    pub start_sector: u64,
}

/// One disk from `<sysfs>/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    /// `device/model`, trimmed.
    pub model: Option<String>,
    /// See [`read_serial`] for where it comes from.
    pub serial: Option<String>,
    /// `device/vendor`, trimmed (`ATA` for SATA disks behind libata).
    pub vendor: Option<String>,
    /// `size` × 512.
    pub size_bytes: u64,
    /// `queue/rotational`.
    pub rotational: Option<bool>,
    /// `removable`.
    pub removable: Option<bool>,
    /// `ro`.
    pub read_only: Option<bool>,
    /// Sorted by partition number.
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// The object published in `disks` and in `storage.disk.added`.
    pub fn to_json(&self) -> Value {
        let partitions: Vec<Value> = self
            .partitions
            .iter()
            .map(|p| json!({"name": p.name, "size_bytes": p.size_bytes, "start_sector": p.start_sector}))
            .collect();
        json!({
            "name": self.name,
            "model": self.model,
            "serial": self.serial,
            "vendor": self.vendor,
            "size_bytes": self.size_bytes,
            "rotational": self.rotational,
            "removable": self.removable,
            "read_only": self.read_only,
            "partitions": partitions,
        })
    }
}

/// One line of `mountinfo`, decoded (see `proc_pid_mountinfo(5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 1; what a mount over this one names as its parent.
    pub mount_id: u64,
    /// Field 2.
    pub parent_id: u64,
    /// Field 3, `major:minor` of the superblock (anonymous `0:N` for network
    /// and virtual filesystems).
    pub dev: (u32, u32),
    /// Field 4: the directory of the filesystem that is mounted (not `/` for
    /// bind mounts of a subdirectory and btrfs subvolumes). Raw bytes.
    pub root: Vec<u8>,
    /// Field 5, as bytes: paths need not be UTF-8 and `statvfs` needs the real
    /// name.
    pub mount_point: PathBuf,
    /// After the separator.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/sda1`, `server:/export`, `//server/share`.
    pub source: String,
    /// `ro` in the per-mount options or in the superblock options: ext4's
    /// `errors=remount-ro` leaves the mount `rw` but the superblock `ro`.
    pub read_only: bool,
}

/// One filesystem of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// Mount source.
    pub device: String,
    /// Lossy UTF-8 of the mount point.
    pub mount_point: String,
    /// E.g. `ext4`, `nfs4`, `fuse.mergerfs`.
    pub fs_type: String,
    /// Effective `ro` / `rw`.
    pub options: &'static str,
    /// Usage, or why it could not be read.
    pub usage: Result<Usage, String>,
}

impl Filesystem {
    /// The object published in `filesystems` and in
    /// `storage.filesystem.mounted`. Every key is always present so consumers
    /// see one shape; a failed `statvfs` gives nulls and `error`.
    pub fn to_json(&self) -> Value {
        let (u, error) = match &self.usage {
            Ok(u) => (Some(u), None),
            Err(e) => (None, Some(e)),
        };
        json!({
            "device": self.device,
            "mount_point": self.mount_point,
            "fs_type": self.fs_type,
            "options": self.options,
            "size_bytes": u.map(|u| u.size_bytes),
            "used_bytes": u.map(|u| u.used_bytes),
            "available_bytes": u.map(|u| u.available_bytes),
            "used_pct": u.and_then(|u| u.used_pct),
            "inodes_total": u.map(|u| u.inodes_total),
            "inodes_used": u.map(|u| u.inodes_used),
            "inodes_pct": u.and_then(|u| u.inodes_pct),
            "error": error,
        })
    }
}

/// Usage as `df` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `blocks` × block size.
    pub size_bytes: u64,
    /// (`blocks` − `blocks_free`) × block size: includes root's reserve as free,
    /// like df's Used column.
    pub used_bytes: u64,
    /// `blocks_available` × block size.
    pub available_bytes: u64,
    /// See [`df_pct`]; `None` where df prints `-`.
    pub used_pct: Option<u64>,
    /// `files`.
    pub inodes_total: u64,
    /// `files` − `files_free`.
    pub inodes_used: u64,
    /// `None` where the filesystem has no inode count (df prints `-`).
    pub inodes_pct: Option<u64>,
}

/// df's Use%: used / (used + available), in whole percent rounded up. The
/// denominator leaves out root's reserve, so a filesystem that ordinary users
/// can no longer write to shows 100 % even though `blocks_free` > 0, and
/// rounding up means "90 %" is only reached once 89.x % is exceeded — the
/// alert thresholds compare against exactly the number `df` prints. `None`
/// when used + available is 0 (df prints `-`).
pub fn df_pct(used: u64, available: u64) -> Option<u64> {
    let total = u128::from(used) + u128::from(available);
    if total == 0 {
        return None;
    }
    let u100 = u128::from(used) * 100;
    let pct = u100 / total + u128::from(u100 % total != 0);
    u64::try_from(pct).ok()
}

/// Turns `statvfs` numbers into [`Usage`] the way df does.
pub fn usage(s: &FsStat) -> Usage {
    let bytes = |blocks: u64| u64::try_from(u128::from(blocks) * u128::from(s.fragment_size)).unwrap_or(u64::MAX);
    let used_blocks = s.blocks.saturating_sub(s.blocks_free);
    let inodes_used = s.files.saturating_sub(s.files_free);
    Usage {
        size_bytes: bytes(s.blocks),
        used_bytes: bytes(used_blocks),
        available_bytes: bytes(s.blocks_available),
        used_pct: df_pct(used_blocks, s.blocks_available),
        inodes_total: s.files,
        inodes_used,
        inodes_pct: df_pct(inodes_used, s.files_free.min(s.files)),
    }
}

/// Undoes the kernel's escaping of mountinfo fields: space, tab, newline and
/// backslash become `\ooo` (`\040`, `\011`, `\012`, `\134`). A backslash not
/// followed by three octal digits is kept as it is, since the kernel never
/// writes one and guessing would corrupt the name.
pub fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(&[a, b, c]) = field.get(i + 1..i + 4)
            && (b'0'..=b'3').contains(&a)
            && (b'0'..=b'7').contains(&b)
            && (b'0'..=b'7').contains(&c)
        {
            out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Parses `mountinfo`. Bytes, not text: mount points need not be UTF-8, and
/// one such path must not make the whole file unreadable.
///
/// Fields are split on single spaces because an empty mount source (possible
/// with `mount -t tmpfs ''`) shows as two spaces; the optional fields end at
/// the first lone `-` after field 6. Any malformed line fails the whole parse:
/// the kernel never writes one, so it means the file is not mountinfo.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        entries.push(parse_mountinfo_line(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(entries)
}

fn parse_mountinfo_line(line: &[u8]) -> Result<MountEntry, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let sep = fields
        .iter()
        .skip(6)
        .position(|f| *f == b"-")
        .map(|p| p + 6)
        .ok_or("no ` - ` separator after the six fixed fields")?;
    let [fs_type, source, super_opts] = fields[sep + 1..] else {
        return Err(format!(
            "{} fields after the separator, expected 3",
            fields.len() - sep - 1
        ));
    };
    let number = |f: &[u8], what: &str| -> Result<u64, String> {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(f)))
    };
    let dev = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|s| s.split_once(':'))
        .and_then(|(ma, mi)| Some((ma.parse().ok()?, mi.parse().ok()?)))
        .ok_or_else(|| format!("bad major:minor {:?}", String::from_utf8_lossy(fields[2])))?;
    let mount_point = unescape_octal(fields[4]);
    if !mount_point.starts_with(b"/") {
        return Err(format!(
            "mount point {:?} is not absolute",
            String::from_utf8_lossy(&mount_point)
        ));
    }
    if fs_type.is_empty() {
        return Err("empty filesystem type".into());
    }
    let has_ro = |opts: &[u8]| opts.split(|&b| b == b',').any(|o| o == b"ro");
    Ok(MountEntry {
        mount_id: number(fields[0], "mount id")?,
        parent_id: number(fields[1], "parent id")?,
        dev,
        root: unescape_octal(fields[3]),
        mount_point: PathBuf::from(std::ffi::OsString::from_vec(mount_point)),
        fs_type: String::from_utf8_lossy(&unescape_octal(fs_type)).into_owned(),
        source: String::from_utf8_lossy(&unescape_octal(source)).into_owned(),
        read_only: has_ro(fields[5]) || has_ro(super_opts),
    })
}

/// Filesystem types that hold no user data, so are not listed:
/// - kernel interfaces: `proc`, `sysfs`, `devpts`, `securityfs`, `debugfs`,
///   `tracefs`, `pstore`, `bpf`, `configfs`, `efivarfs`, `selinuxfs`,
///   `binfmt_misc`, `fusectl`, `nsfs`, `mqueue`, `cgroup`, `cgroup2`, `cpuset`,
///   `hugetlbfs`, `rpc_pipefs`, `nfsd`, `xenfs`, `binder`, `rootfs`;
/// - RAM: `tmpfs`, `devtmpfs`, `ramfs` (memory is the system source's);
/// - `autofs`: a trigger, not a filesystem, and `statvfs` on it would mount
///   the real one; the real one is listed once mounted;
/// - `squashfs`: snaps and live images, read-only and always 100 % full, so
///   they would only trip the usage alerts;
/// - desktop and container FUSE helpers (`fuse.lxcfs`, `fuse.gvfsd-fuse`,
///   `fuse.portal`, `fuse.snapfuse`).
///
/// A deny list rather than an allow list so real filesystems the list does not
/// know (bcachefs, `fuse.mergerfs`, `fuse.sshfs`, virtiofs, 9p…) still show.
/// `overlay` is handled by [`is_listed`].
pub const PSEUDO_FS_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "efivarfs",
    "selinuxfs",
    "binfmt_misc",
    "fusectl",
    "nsfs",
    "mqueue",
    "cgroup",
    "cgroup2",
    "cpuset",
    "hugetlbfs",
    "rpc_pipefs",
    "nfsd",
    "xenfs",
    "binder",
    "rootfs",
    "tmpfs",
    "devtmpfs",
    "ramfs",
    "autofs",
    "squashfs",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "fuse.snapfuse",
];

/// Whether a mount is storage worth listing. `overlay` is listed only at `/`:
/// there it is the system's root (a container, a live image) and what `df /`
/// reports; anywhere else it is a container's layer whose numbers are those of
/// the filesystem below, and a host with many containers would drown the list.
pub fn is_listed(fs_type: &str, mount_point: &Path) -> bool {
    if fs_type == "overlay" {
        return mount_point == Path::new("/");
    }
    !PSEUDO_FS_TYPES.contains(&fs_type)
}

/// The mounts to report, in mountinfo (mount) order, as df would list them:
/// 1. mounts hidden by another mount on the same mount point are dropped —
///    `statvfs` would report the one on top (checked against all mounts, so a
///    tmpfs over a disk hides the disk too);
/// 2. pseudo filesystems are dropped ([`is_listed`]);
/// 3. bind mounts of the same device and root keep only the first, since they
///    are one filesystem with one usage; a bind of a subdirectory (another
///    root, like a btrfs subvolume) stays.
pub fn select_mounts(entries: Vec<MountEntry>) -> Vec<MountEntry> {
    // A mount that is its own parent (`rootfs` in some namespaces) covers nothing.
    let covering: HashSet<(u64, PathBuf)> = entries
        .iter()
        .filter(|e| e.parent_id != e.mount_id)
        .map(|e| (e.parent_id, e.mount_point.clone()))
        .collect();
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .filter(|e| !covering.contains(&(e.mount_id, e.mount_point.clone())))
        .filter(|e| is_listed(&e.fs_type, &e.mount_point))
        .filter(|e| seen.insert((e.dev, e.root.clone())))
        .collect()
}

/// Trimmed text of a sysfs attribute; `None` if empty. SCSI pads `vendor` and
/// `model` with spaces, NVMe pads `model` and `serial`.
pub fn clean_attr(text: &str) -> Option<String> {
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The serial number in a SCSI VPD page 0x80 (Unit Serial Number): a 4-byte
/// header (peripheral, page code 0x80, big-endian length) then ASCII, often
/// space-padded on the left for ATA disks. `None` if the page is not 0x80 or
/// holds no serial.
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, rest @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let serial = rest.get(..len).unwrap_or(rest);
    clean_attr(&String::from_utf8_lossy(serial))
}

/// A number attribute (`size`, `start`, `partition`).
pub fn parse_u64(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("not a number: {:?}", text.trim()))
}

/// A 0/1 attribute (`ro`, `removable`, `queue/rotational`).
pub fn parse_flag(text: &str) -> Result<bool, String> {
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        t => Err(format!("not 0 or 1: {t:?}")),
    }
}

/// Reads an attribute that may be missing: `None` when the file doesn't exist
/// (older kernels, other buses, or the device went away mid-scan).
fn read_attr(path: &Path) -> Result<Option<String>, SourceError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::read(path, &e)),
    }
}

/// Reads and parses an attribute that may be missing.
fn read_parsed<T>(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, SourceError> {
    read_attr(path)?
        .map(|s| parse(&s).map_err(|e| SourceError::parse(path, e)))
        .transpose()
}

/// An identifying attribute: unreadable is the same as absent. Some devices
/// fail these reads (EIO on a VPD page they don't implement), and an unknown
/// model must not cost the whole sample.
fn read_ident(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().as_deref().and_then(clean_attr)
}

/// The serial, from wherever this kind of device keeps it: `device/serial`
/// (NVMe, MMC), `device/vpd_pg80` (SCSI, SATA via libata, USB bridges that
/// answer VPD; binary), or the disk's own `serial` (virtio-blk).
fn read_serial(dir: &Path) -> Option<String> {
    read_ident(&dir.join("device/serial"))
        .or_else(|| {
            std::fs::read(dir.join("device/vpd_pg80"))
                .ok()
                .as_deref()
                .and_then(parse_vpd_pg80)
        })
        .or_else(|| read_ident(&dir.join("serial")))
}

/// Disks under `<sysfs>/block`, sorted by name.
///
/// Only entries with a `device` link are disks: the kernel gives that link to
/// block devices on a bus (SATA/SAS, NVMe, virtio, USB, MMC) and not to those it
/// makes itself — `loop*`, `ram*`, `zram*`, `dm-*` (LVM, LUKS: views of disks
/// already listed), `md*` (listed under `raid`), `nbd*`, `rbd*`, `drbd*`,
/// `bcache*`. That catches every virtual kind without a name list to keep up.
/// Disks marked `hidden` are skipped too: those are the per-path devices of a
/// multipath NVMe namespace (`nvme0c0n1`), which is listed once as `nvme0n1`.
pub fn read_disks(block: &Path) -> Result<Vec<Disk>, SourceError> {
    let mut disks = Vec::new();
    for entry in std::fs::read_dir(block).map_err(|e| SourceError::read(block, &e))? {
        let entry = entry.map_err(|e| SourceError::read(block, &e))?;
        let dir = entry.path();
        if !dir.join("device").exists() || read_parsed(&dir.join("hidden"), parse_flag)? == Some(true) {
            continue;
        }
        // A disk unplugged between the listing and here has no size: skip it,
        // the next sample reports it removed.
        let Some(sectors) = read_parsed(&dir.join("size"), parse_u64)? else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let partitions = read_partitions(&dir, &name)?;
        disks.push(Disk {
            name,
            model: read_ident(&dir.join("device/model")),
            serial: read_serial(&dir),
            vendor: read_ident(&dir.join("device/vendor")),
            size_bytes: sectors.saturating_mul(512),
            rotational: read_parsed(&dir.join("queue/rotational"), parse_flag)?,
            removable: read_parsed(&dir.join("removable"), parse_flag)?,
            read_only: read_parsed(&dir.join("ro"), parse_flag)?,
            partitions,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// Subdirectories of a disk with a `partition` file. Only names that start
/// with the disk's are tried (the kernel names partitions `sda1`, `nvme0n1p1`),
/// which spares an open of `queue/partition`, `holders/partition`… per disk:
/// sysfs opens are not cheap, and this runs every few seconds.
fn read_partitions(disk: &Path, name: &str) -> Result<Vec<Partition>, SourceError> {
    let mut parts = Vec::new();
    let entries = match std::fs::read_dir(disk) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(SourceError::read(disk, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SourceError::read(disk, &e))?;
        let file_name = entry.file_name();
        let partition_like = file_name.to_str().is_some_and(|n| n.starts_with(name) && n != name);
        if !partition_like || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let Some(number) = read_parsed(&dir.join("partition"), parse_u64)? else {
            continue;
        };
        let (Some(size), Some(start)) = (
            read_parsed(&dir.join("size"), parse_u64)?,
            read_parsed(&dir.join("start"), parse_u64)?,
        ) else {
            continue;
        };
        parts.push(Partition {
            name: file_name.to_string_lossy().into_owned(),
            number,
            size_bytes: size.saturating_mul(512),
            start_sector: start,
        });
    }
    parts.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));
    Ok(parts)
}

/// Filesystems from a mountinfo file, with usage from `stats`; network filesystems
/// through `netfs` (with a deadline) when given.
pub fn read_filesystems(
    mountinfo: &Path,
    stats: &dyn FsStats,
    netfs: Option<&Deadlined>,
) -> Result<Vec<Filesystem>, SourceError> {
    let text = std::fs::read(mountinfo).map_err(|e| SourceError::read(mountinfo, &e))?;
    let entries = parse_mountinfo(&text).map_err(|e| SourceError::parse(mountinfo, e))?;
    Ok(select_mounts(entries)
        .into_iter()
        .map(|e| Filesystem {
            usage: match netfs {
                Some(guarded) if is_network(&e.fs_type) => guarded.statvfs(&e.mount_point),
                _ => stats.statvfs(&e.mount_point),
            }
            .map(|s| usage(&s))
            .map_err(|err| format!("statvfs: {err}")),
            device: e.source,
            mount_point: e.mount_point.to_string_lossy().into_owned(),
            fs_type: e.fs_type,
            options: if e.read_only { "ro" } else { "rw" },
        })
        .collect())
}

/// What one sample saw; kept to compare the next one with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageState {
    /// Sorted by name.
    pub disks: Vec<Disk>,
    /// In mount order.
    pub filesystems: Vec<Filesystem>,
    /// md arrays in mdstat order, then ZFS pools, then btrfs filesystems.
    pub raid: Vec<RaidEntry>,
    /// See [`raid::RaidReport::tools`].
    pub tools: BTreeMap<&'static str, &'static str>,
}

impl StorageState {
    /// The `storage.update` state value.
    pub fn to_json(&self) -> Value {
        json!({
            "disks": self.disks.iter().map(Disk::to_json).collect::<Vec<_>>(),
            "filesystems": self.filesystems.iter().map(Filesystem::to_json).collect::<Vec<_>>(),
            "raid": self.raid.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            "tools": self.tools,
        })
    }
}

/// The events between two samples, removals before additions so a swapped disk
/// reads as "out, then in".
///
/// A disk is the same disk if name and serial match: a hot-swap within one
/// sampling interval reuses the name, and must still show as removed + added.
/// A filesystem is the same if mount point and device match, for the same
/// reason (an unmount and another mount at the same place).
///
/// Arrays (keyed by kind and name) raise `storage.raid.degraded` when they
/// leave `ok` or appear not `ok`, and again when they become `failed` from
/// another bad health, since that is worse news; `storage.raid.recovered` when
/// they are back to `ok`. Moves between `degraded` and `rebuilding` and arrays
/// that vanish raise nothing: the first are progress, not news, and a stopped
/// array is an administrator's act.
pub fn diff_events(prev: &StorageState, next: &StorageState) -> Vec<(String, Value)> {
    let disk_key = |d: &Disk| (d.name.clone(), d.serial.clone());
    let fs_key = |f: &Filesystem| (f.mount_point.clone(), f.device.clone());
    let prev_disks: HashSet<_> = prev.disks.iter().map(disk_key).collect();
    let next_disks: HashSet<_> = next.disks.iter().map(disk_key).collect();
    let prev_fs: HashSet<_> = prev.filesystems.iter().map(fs_key).collect();
    let next_fs: HashSet<_> = next.filesystems.iter().map(fs_key).collect();

    let mut events = Vec::new();
    for d in prev.disks.iter().filter(|d| !next_disks.contains(&disk_key(d))) {
        events.push(("storage.disk.removed".to_string(), json!({"name": d.name})));
    }
    for d in next.disks.iter().filter(|d| !prev_disks.contains(&disk_key(d))) {
        events.push(("storage.disk.added".to_string(), d.to_json()));
    }
    for f in prev.filesystems.iter().filter(|f| !next_fs.contains(&fs_key(f))) {
        events.push((
            "storage.filesystem.unmounted".to_string(),
            json!({"mount_point": f.mount_point, "device": f.device}),
        ));
    }
    for f in next.filesystems.iter().filter(|f| !prev_fs.contains(&fs_key(f))) {
        events.push(("storage.filesystem.mounted".to_string(), f.to_json()));
    }
    let prev_raid: HashMap<(&str, &str), Health> = prev
        .raid
        .iter()
        .map(|r| ((r.kind, r.name.as_str()), r.health))
        .collect();
    for r in &next.raid {
        let before = prev_raid.get(&(r.kind, r.name.as_str())).copied();
        let event = match (before, r.health) {
            (Some(Health::Ok), Health::Ok) | (None, Health::Ok) => None,
            (Some(_), Health::Ok) => Some("storage.raid.recovered"),
            (None | Some(Health::Ok), _) => Some("storage.raid.degraded"),
            (Some(b), Health::Failed) if b != Health::Failed => Some("storage.raid.degraded"),
            (Some(_), _) => None,
        };
        if let Some(event) = event {
            events.push((event.to_string(), r.value.clone()));
        }
    }
    events
}

/// The `storage` source.
pub struct StorageSource {
    roots: Roots,
    stats: Arc<dyn FsStats>,
    /// The same `stats`, with a deadline, for network filesystems.
    netfs: Deadlined,
    runner: Box<dyn CommandRunner>,
    /// The last good sample; `None` until the baseline is taken.
    previous: Option<StorageState>,
}

impl StorageSource {
    /// Reads the host's `statvfs`.
    pub fn new(roots: Roots) -> StorageSource {
        StorageSource::with_fs_stats(roots, SystemFsStats)
    }

    /// Takes usage from `stats` instead of the host, e.g. a closure
    /// `|p: &Path| -> io::Result<FsStat>` in tests with a fixture procfs root.
    pub fn with_fs_stats(roots: Roots, stats: impl FsStats) -> StorageSource {
        let stats: Arc<dyn FsStats> = Arc::new(stats);
        StorageSource {
            roots,
            netfs: Deadlined::new(stats.clone(), NETFS_DEADLINE),
            stats,
            runner: Box::new(SystemRunner::default()),
            previous: None,
        }
    }

    /// Runs `zpool` through `runner` instead of the host's, e.g. a closure
    /// `|program: &str, args: &[&str], timeout: Duration| -> Result<String, ToolError>`
    /// in tests.
    pub fn with_runner(mut self, runner: impl CommandRunner) -> StorageSource {
        self.runner = Box::new(runner);
        self
    }
}

impl Source for StorageSource {
    fn name(&self) -> &str {
        "storage"
    }

    fn topic(&self) -> &'static str {
        "storage.update"
    }

    fn sample(&mut self) -> Result<Sample, SourceError> {
        let disks = read_disks(&self.roots.sys("block"))?;
        let filesystems = read_filesystems(
            &self.roots.proc("self/mountinfo"),
            self.stats.as_ref(),
            Some(&self.netfs),
        )?;
        let btrfs: Vec<(&str, &str)> = filesystems
            .iter()
            .filter(|f| f.fs_type == "btrfs")
            .map(|f| (f.device.as_str(), f.mount_point.as_str()))
            .collect();
        let raid = raid::read_raid(&self.roots, &btrfs, self.runner.as_ref(), TOOL_BUDGET)?;
        let state = StorageState {
            disks,
            filesystems,
            raid: raid.entries,
            tools: raid.tools,
        };
        // The first sample is the baseline: everything in it was already there.
        let events = self
            .previous
            .as_ref()
            .map(|p| diff_events(p, &state))
            .unwrap_or_default();
        let sample = Sample {
            state: state.to_json(),
            events,
        };
        self.previous = Some(state);
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/storage/basic")
    }

    fn roots_at(dir: &Path) -> Roots {
        Roots {
            procfs: dir.join("proc"),
            sysfs: dir.join("sys"),
        }
    }

    fn stat(fragment_size: u64, blocks: u64, free: u64, available: u64, files: u64, files_free: u64) -> FsStat {
        FsStat {
            fragment_size,
            blocks,
            blocks_free: free,
            blocks_available: available,
            files,
            files_free,
        }
    }

    /// Made-up numbers for the fixture's mount points; a path it doesn't know
    /// shows up as an `error` in the sample, so a stray call fails the tests.
    fn fake_stats(p: &Path) -> io::Result<FsStat> {
        match p.to_str() {
            Some("/") => Ok(stat(4096, 1_000_000, 200_000, 150_000, 500_000, 400_000)),
            Some("/boot/efi") => Ok(stat(4096, 130_812, 129_000, 129_000, 0, 0)),
            Some("/srv/Media Library" | "/export/photos") => {
                Ok(stat(4096, 244_190_000, 24_419_000, 24_419_000, 1_000_000, 999_000))
            }
            Some("/mnt/backup") => Err(io::Error::from_raw_os_error(116)), // ESTALE
            Some("/mnt/scans") => Ok(stat(1_048_576, 1000, 1, 1, 0, 0)),
            Some("/mnt/usb") => Ok(stat(32_768, 1_000_000, 999_000, 999_000, 0, 0)),
            _ => Err(io::Error::other(format!("unexpected statvfs of {}", p.display()))),
        }
    }

    fn source_at(dir: &Path) -> StorageSource {
        StorageSource::with_fs_stats(roots_at(dir), fake_stats)
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), &dest).unwrap();
            }
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn media_usage(device: &str, mount_point: &str) -> Value {
        json!({
            "device": device, "mount_point": mount_point, "fs_type": "xfs", "options": "rw",
            "size_bytes": 1_000_202_240_000u64, "used_bytes": 900_182_016_000u64,
            "available_bytes": 100_020_224_000u64, "used_pct": 90,
            "inodes_total": 1_000_000, "inodes_used": 1000, "inodes_pct": 1, "error": null,
        })
    }

    /// A hard NFS mount whose server is gone blocks `statvfs` in the kernel: the
    /// sample still comes back, after one deadline, with that mount's `error` and
    /// everything else intact; the next one does not wait for it at all.
    #[test]
    fn a_hung_network_mount_does_not_hold_the_sample() {
        let hang = |p: &Path| -> io::Result<FsStat> {
            if p == Path::new("/mnt/backup") {
                std::thread::sleep(Duration::from_secs(3600));
            }
            fake_stats(p)
        };
        let mut src = StorageSource::with_fs_stats(roots_at(&fixture()), hang);
        for round in 0..2 {
            let started = std::time::Instant::now();
            let sample = src.sample().unwrap();
            let took = started.elapsed();
            assert!(took < NETFS_DEADLINE * 3, "round {round}: {took:?}");
            if round == 1 {
                assert!(took < NETFS_DEADLINE, "the second sample waited again: {took:?}");
            }
            let fs = sample.state["filesystems"].as_array().unwrap();
            let backup = fs.iter().find(|f| f["mount_point"] == "/mnt/backup").unwrap();
            let error = backup["error"].as_str().unwrap();
            assert!(error.starts_with("statvfs: no answer"), "{error}");
            assert!(backup["size_bytes"].is_null(), "{backup}");
            let root = fs.iter().find(|f| f["mount_point"] == "/").unwrap();
            assert_eq!(root["used_pct"], 85, "{root}");
            let scans = fs.iter().find(|f| f["mount_point"] == "/mnt/scans").unwrap();
            assert!(
                scans["error"].is_null(),
                "the other network mount still answers: {scans}"
            );
            assert_eq!(sample.state["disks"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn fixture_sample_is_exact() {
        let mut src = source_at(&fixture());
        assert_eq!(src.name(), "storage");
        assert_eq!(src.topic(), "storage.update");
        let sample = src.sample().unwrap();
        let expected = json!({
            "disks": [
                {
                    "name": "nvme0n1", "model": "Samsung SSD 970 EVO Plus 1TB", "serial": "S4EWNX0R123456A",
                    "vendor": null, "size_bytes": 1_000_204_886_016u64, "rotational": false,
                    "removable": false, "read_only": false, "partitions": [],
                },
                {
                    "name": "sda", "model": "WDC WD40EFRX-68N", "serial": "WD-WCC7K1234567", "vendor": "ATA",
                    "size_bytes": 4_000_787_030_016u64, "rotational": true, "removable": false, "read_only": false,
                    "partitions": [
                        {"name": "sda1", "size_bytes": 536_870_912, "start_sector": 2048},
                        {"name": "sda2", "size_bytes": 4_000_248_233_984u64, "start_sector": 1_050_624},
                    ],
                },
            ],
            "filesystems": [
                {
                    "device": "/dev/sda2", "mount_point": "/", "fs_type": "ext4", "options": "rw",
                    "size_bytes": 4_096_000_000u64, "used_bytes": 3_276_800_000u64, "available_bytes": 614_400_000,
                    "used_pct": 85, "inodes_total": 500_000, "inodes_used": 100_000, "inodes_pct": 20, "error": null,
                },
                {
                    "device": "/dev/sda1", "mount_point": "/boot/efi", "fs_type": "vfat", "options": "rw",
                    "size_bytes": 535_805_952, "used_bytes": 7_421_952, "available_bytes": 528_384_000,
                    "used_pct": 2, "inodes_total": 0, "inodes_used": 0, "inodes_pct": null, "error": null,
                },
                media_usage("/dev/nvme0n1", "/srv/Media Library"),
                media_usage("/dev/nvme0n1", "/export/photos"),
                {
                    "device": "nas2.lan:/export/backup", "mount_point": "/mnt/backup", "fs_type": "nfs4",
                    "options": "rw", "size_bytes": null, "used_bytes": null, "available_bytes": null,
                    "used_pct": null, "inodes_total": null, "inodes_used": null, "inodes_pct": null,
                    "error": "statvfs: Stale file handle (os error 116)",
                },
                {
                    "device": "//nas2.lan/Scanned Docs", "mount_point": "/mnt/scans", "fs_type": "cifs",
                    "options": "ro", "size_bytes": 1_048_576_000u64, "used_bytes": 1_047_527_424u64,
                    "available_bytes": 1_048_576, "used_pct": 100, "inodes_total": 0, "inodes_used": 0,
                    "inodes_pct": null, "error": null,
                },
            ],
            "raid": [],
            "tools": {},
        });
        assert_eq!(sample.state, expected);
        assert!(sample.events.is_empty(), "the first sample is the baseline");
    }

    #[test]
    fn disks_and_filesystems_coming_and_going_are_events() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        let mut src = source_at(tmp.path());
        src.sample().unwrap();

        let block = tmp.path().join("sys/block");
        std::fs::remove_dir_all(block.join("nvme0n1")).unwrap();
        for (file, text) in [
            ("sdb/dev", "8:16\n"),
            ("sdb/size", "30031872\n"),
            ("sdb/ro", "0\n"),
            ("sdb/removable", "1\n"),
            ("sdb/queue/rotational", "0\n"),
            ("sdb/device/model", "Ultra Fit       \n"),
            ("sdb/device/vendor", "SanDisk \n"),
            ("sdb/sdb1/partition", "1\n"),
            ("sdb/sdb1/start", "32\n"),
            ("sdb/sdb1/size", "30031840\n"),
        ] {
            write(&block.join(file), text);
        }
        let mountinfo = tmp.path().join("proc/self/mountinfo");
        let text = std::fs::read_to_string(&mountinfo).unwrap();
        let mut text: String = text
            .lines()
            .filter(|l| !l.contains("/mnt/backup"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str("41 28 8:17 / /mnt/usb rw,nosuid,nodev,relatime shared:401 - exfat /dev/sdb1 rw,fmask=0022\n");
        std::fs::write(&mountinfo, text).unwrap();

        let sample = src.sample().unwrap();
        let sdb = json!({
            "name": "sdb", "model": "Ultra Fit", "serial": null, "vendor": "SanDisk", "size_bytes": 15_376_318_464u64,
            "rotational": false, "removable": true, "read_only": false,
            "partitions": [{"name": "sdb1", "size_bytes": 15_376_302_080u64, "start_sector": 32}],
        });
        let usb = json!({
            "device": "/dev/sdb1", "mount_point": "/mnt/usb", "fs_type": "exfat", "options": "rw",
            "size_bytes": 32_768_000_000u64, "used_bytes": 32_768_000, "available_bytes": 32_735_232_000u64,
            "used_pct": 1, "inodes_total": 0, "inodes_used": 0, "inodes_pct": null, "error": null,
        });
        let events: Vec<(&str, &Value)> = sample.events.iter().map(|(t, d)| (t.as_str(), d)).collect();
        assert_eq!(
            events,
            vec![
                ("storage.disk.removed", &json!({"name": "nvme0n1"})),
                ("storage.disk.added", &sdb),
                (
                    "storage.filesystem.unmounted",
                    &json!({"mount_point": "/mnt/backup", "device": "nas2.lan:/export/backup"})
                ),
                ("storage.filesystem.mounted", &usb),
            ]
        );
        assert_eq!(sample.state["disks"][1], sdb);

        // Nothing changed: no events, though usage numbers may differ.
        assert!(src.sample().unwrap().events.is_empty());
    }

    fn mdstat(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/storage/mdstat")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    /// The basic fixture with md arrays: `/proc/mdstat` from the mdstat
    /// fixtures, and md0's sysfs directory (which is not a disk).
    fn fixture_with_mdstat(name: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        write(&tmp.path().join("proc/mdstat"), &mdstat(name));
        write(&tmp.path().join("sys/block/md0/md/array_state"), "clean\n");
        write(&tmp.path().join("sys/block/md0/size"), "1953260928\n");
        tmp
    }

    #[test]
    fn md_arrays_are_in_the_sample() {
        let tmp = fixture_with_mdstat("raid1-degraded");
        let sample = source_at(tmp.path()).sample().unwrap();
        assert_eq!(
            sample.state["raid"],
            json!([
                {
                    "name": "md1", "kind": "md", "level": "raid1", "state": "active", "size_bytes": 15_990_784_000u64,
                    "members": [{"device": "sda2", "role_index": 0, "failed": false, "spare": false}],
                    "devices_total": 2, "devices_active": 1, "degraded": true, "sync": null, "health": "degraded",
                    "array_state": null,
                },
                {
                    "name": "md0", "kind": "md", "level": "raid1", "state": "active", "size_bytes": 1_000_069_595_136u64,
                    "members": [
                        {"device": "sda1", "role_index": 0, "failed": false, "spare": false},
                        {"device": "sdb1", "role_index": 1, "failed": true, "spare": false},
                    ],
                    "devices_total": 2, "devices_active": 1, "degraded": true, "sync": null, "health": "degraded",
                    "array_state": "clean",
                },
            ])
        );
        assert_eq!(sample.state["tools"], json!({}));
        let disks: Vec<_> = sample.state["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| &d["name"])
            .collect();
        assert_eq!(disks, ["nvme0n1", "sda"], "an md device is not a disk");
        assert!(
            sample.events.is_empty(),
            "arrays degraded before the first sample are the baseline"
        );
    }

    #[test]
    fn a_garbled_md_array_does_not_cost_the_sample() {
        let tmp = fixture_with_mdstat("raid1-clean");
        let text = mdstat("raid1-clean").replace("unused devices", "md9 : confused\nunused devices");
        write(&tmp.path().join("proc/mdstat"), &text);
        let sample = source_at(tmp.path()).sample().unwrap();
        assert_eq!(sample.state["raid"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn arrays_degrading_and_recovering_are_events() {
        let tmp = fixture_with_mdstat("raid1-clean");
        let mut src = source_at(tmp.path());
        let mut swap = |text: &str| {
            write(&tmp.path().join("proc/mdstat"), text);
            let sample = src.sample().unwrap();
            let events: Vec<(String, String, String)> = sample
                .events
                .iter()
                .map(|(t, d)| {
                    (
                        t.clone(),
                        d["name"].as_str().unwrap().into(),
                        d["health"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (events, sample)
        };
        let ev =
            |t: &str, name: &str, health: &str| (format!("storage.raid.{t}"), name.to_string(), health.to_string());

        assert_eq!(swap(&mdstat("raid1-clean")).0, [], "baseline");
        // md0 loses a mirror; md1 is assembled already degraded.
        let (events, sample) = swap(&mdstat("raid1-degraded"));
        assert_eq!(
            events,
            [ev("degraded", "md1", "degraded"), ev("degraded", "md0", "degraded")]
        );
        assert_eq!(
            sample.events[1].1, sample.state["raid"][1],
            "the data is the array object"
        );
        assert_eq!(swap(&mdstat("raid1-degraded")).0, [], "still degraded: no news");

        // The replacement is rebuilding: not news either.
        let rebuilding = mdstat("raid1-degraded").replace(
            "md0 : active raid1 sdb1[1](F) sda1[0]\n      976630464 blocks super 1.2 [2/1] [U_]\n",
            "md0 : active raid1 sdc1[2] sdb1[1](F) sda1[0]\n      976630464 blocks super 1.2 [2/1] [U_]\n      \
             [>....................]  recovery =  3.1% (30277000/976630464) finish=90.2min speed=174826K/sec\n",
        );
        let (events, sample) = swap(&rebuilding);
        assert_eq!(events, []);
        assert_eq!(sample.state["raid"][1]["health"], "rebuilding");

        // md1 loses its last mirror: worse news, reported.
        let lost = rebuilding.replace("[2/1] [U_]\n      \n", "[2/0] [__]\n      \n");
        assert_eq!(swap(&lost).0, [ev("degraded", "md1", "failed")]);

        // md0 finished rebuilding, md1 was stopped: one recovery, no news of md1.
        let (events, _) = swap(&mdstat("raid1-clean"));
        assert_eq!(events, [ev("recovered", "md0", "ok")]);

        // An array that stops being assembled and returns degraded is news.
        assert_eq!(swap(&mdstat("empty")).0, []);
        assert_eq!(swap(&mdstat("raid5-recovery")).0, [ev("degraded", "md1", "rebuilding")]);
    }

    #[test]
    fn zfs_pools_through_the_runner() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        std::fs::create_dir_all(tmp.path().join("sys/module/zfs")).unwrap();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        let runner = move |program: &str, args: &[&str], timeout: Duration| {
            assert!(program == "zpool" && timeout <= TOOL_BUDGET, "{program} {timeout:?}");
            let health = if flag.load(std::sync::atomic::Ordering::Relaxed) {
                "ONLINE"
            } else {
                "DEGRADED"
            };
            match args[0] {
                "list" => Ok(format!("tank\t{health}\t3985729650688\t1234567890\t3984495082798\n")),
                _ => Ok(
                    "  pool: tank\n state: DEGRADED\n  scan: resilver in progress since Mon Nov 23 10:00:00 2026\n\
                         \t120G resilvered, 5.00% done, 02:00:00 to go\nconfig:\n"
                        .to_string(),
                ),
            }
        };
        let mut src = source_at(tmp.path()).with_runner(runner);
        let sample = src.sample().unwrap();
        assert_eq!(sample.state["tools"], json!({"zfs": "ok"}));
        assert_eq!(
            sample.state["raid"],
            json!([{
                "name": "tank", "kind": "zfs", "level": null, "state": "online", "size_bytes": 3_985_729_650_688u64,
                "members": [], "devices_total": null, "devices_active": null, "degraded": false, "sync": null,
                "health": "ok", "allocated_bytes": 1_234_567_890, "free_bytes": 3_984_495_082_798u64,
            }])
        );
        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let sample = src.sample().unwrap();
        let types: Vec<_> = sample.events.iter().map(|(t, d)| (t.as_str(), &d["health"])).collect();
        assert_eq!(types, [("storage.raid.degraded", &json!("rebuilding"))]);
        assert_eq!(sample.state["raid"][0]["sync"]["progress_pct"], json!(5.0));

        let missing = |_: &str, _: &[&str], _: Duration| Err(raid::ToolError::NotFound);
        let sample = source_at(tmp.path()).with_runner(missing).sample().unwrap();
        assert_eq!(
            (&sample.state["raid"], &sample.state["tools"]),
            (&json!([]), &json!({"zfs": "unsupported"}))
        );
    }

    #[test]
    fn hidden_multipath_paths_are_not_disks() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        let path = tmp.path().join("sys/block/nvme0c0n1");
        for (file, text) in [
            ("size", "1953525168\n"),
            ("hidden", "1\n"),
            ("device/model", "Samsung\n"),
        ] {
            write(&path.join(file), text);
        }
        let disks = read_disks(&tmp.path().join("sys/block")).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda"]);
    }

    #[test]
    fn a_disk_swapped_in_the_same_bay_is_removed_then_added() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        let mut src = source_at(tmp.path());
        src.sample().unwrap();
        std::fs::write(
            tmp.path().join("sys/block/sda/device/vpd_pg80"),
            b"\x00\x80\x00\x08ZR1234AB",
        )
        .unwrap();
        let events = src.sample().unwrap().events;
        let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, ["storage.disk.removed", "storage.disk.added"]);
        assert_eq!(events[0].1, json!({"name": "sda"}));
        assert_eq!(events[1].1["serial"], "ZR1234AB");
    }

    #[test]
    fn a_failed_sample_keeps_the_last_good_baseline() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        let mut src = source_at(tmp.path());
        src.sample().unwrap();
        let mountinfo = tmp.path().join("proc/self/mountinfo");
        let good = std::fs::read(&mountinfo).unwrap();
        std::fs::write(&mountinfo, "this is not mountinfo\n").unwrap();
        assert_eq!(src.sample().unwrap_err().code, "parse_failed");
        std::fs::write(&mountinfo, good).unwrap();
        assert!(src.sample().unwrap().events.is_empty());
    }

    #[test]
    fn missing_roots_are_read_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let err = source_at(tmp.path()).sample().unwrap_err();
        assert_eq!(err.code, "read_failed");
        std::fs::create_dir_all(tmp.path().join("sys/block")).unwrap();
        let err = source_at(tmp.path()).sample().unwrap_err();
        assert_eq!(err.code, "read_failed");
        assert!(err.message.contains("mountinfo"), "{err}");
    }

    #[test]
    fn garbage_in_a_disk_attribute_is_parse_failed() {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fixture(), tmp.path());
        std::fs::write(tmp.path().join("sys/block/sda/queue/rotational"), "maybe\n").unwrap();
        let err = source_at(tmp.path()).sample().unwrap_err();
        assert_eq!(err.code, "parse_failed");
        assert!(err.message.contains("rotational"), "{err}");
    }

    #[test]
    fn mountinfo_fields_optional_fields_and_escapes() {
        let text =
            b"36 35 98:0 /mnt1 /mnt/a\\040b\\011c\\012d\\134e rw,noatime master:1 shared:2 - ext3 /dev/root rw\n\
                     37 36 0:40 / /srv ro,relatime - nfs srv:/x\\040y rw,vers=3\n\
                     38 36 0:41 / /tmp\\04 rw - tmpfs  rw\n";
        let e = parse_mountinfo(text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            MountEntry {
                mount_id: 36,
                parent_id: 35,
                dev: (98, 0),
                root: b"/mnt1".to_vec(),
                mount_point: PathBuf::from("/mnt/a b\tc\nd\\e"),
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
                read_only: false,
            }
        );
        // No optional fields; per-mount ro wins over a rw superblock.
        assert_eq!((e[1].source.as_str(), e[1].read_only), ("srv:/x y", true));
        // Empty mount source (two spaces) and a truncated escape kept as is.
        assert_eq!(e[2].source, "");
        assert_eq!(e[2].mount_point, PathBuf::from("/tmp\\04"));
    }

    #[test]
    fn mountinfo_read_only_superblock_counts() {
        let e = parse_mountinfo(b"28 1 8:2 / / rw,relatime - ext4 /dev/sda2 ro,errors=remount-ro\n").unwrap();
        assert!(e[0].read_only);
        let e = parse_mountinfo(b"28 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw,errors=remount-ro\n").unwrap();
        assert!(!e[0].read_only, "`errors=remount-ro` is not `ro`");
    }

    #[test]
    fn mountinfo_paths_need_not_be_utf8() {
        let e = parse_mountinfo(b"40 1 8:3 / /mnt/caf\xe9 rw - ext4 /dev/sda3 rw\n").unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(e[0].mount_point.as_os_str().as_bytes(), b"/mnt/caf\xe9");
    }

    #[test]
    fn mountinfo_garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"garbage"[..],
            b" ",
            b"- - - - - - - - -",
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw",
            b"36 35 98:0 /mnt1 /mnt2 rw -",
            b"36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root",
            b"36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw extra",
            b"x 35 98:0 / /mnt rw - ext3 /dev/root rw",
            b"36 35 98-0 / /mnt rw - ext3 /dev/root rw",
            b"36 35 98:0 / relative rw - ext3 /dev/root rw",
            b"36 35 98:0 / /mnt rw -  /dev/root rw",
            b"\\\\\\ \\0 \\777 \\",
            b"36 35 98:0 / /mnt rw - ext3 /dev/root rw\n\xff\xfe\x00",
        ] {
            let err = parse_mountinfo(bad).unwrap_err();
            assert!(err.starts_with("line "), "{err}");
        }
        assert_eq!(parse_mountinfo(b"").unwrap(), []);
        assert_eq!(parse_mountinfo(b"\n\n").unwrap(), []);
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape_octal(b"a\\040b"), b"a b");
        assert_eq!(unescape_octal(b"\\400\\9\\"), b"\\400\\9\\");
        assert_eq!(unescape_octal(b"\\377"), b"\xff");
    }

    fn entry(id: u64, parent: u64, dev: (u32, u32), root: &str, mp: &str, fs: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: parent,
            dev,
            root: root.as_bytes().to_vec(),
            mount_point: PathBuf::from(mp),
            fs_type: fs.into(),
            source: "src".into(),
            read_only: false,
        }
    }

    #[test]
    fn selection_drops_pseudo_shadowed_and_bind_duplicates() {
        let kept = select_mounts(vec![
            entry(1, 1, (0, 1), "/", "/", "rootfs"),
            entry(20, 1, (0, 30), "/", "/", "overlay"),
            entry(21, 20, (8, 1), "/", "/data", "ext4"),
            entry(22, 21, (0, 31), "/", "/data", "tmpfs"),
            entry(23, 20, (8, 1), "/", "/again", "ext4"),
            entry(24, 20, (8, 1), "/sub", "/sub", "ext4"),
            entry(25, 20, (0, 32), "/", "/var/lib/docker/overlay2/x/merged", "overlay"),
            entry(26, 20, (0, 33), "/", "/mnt/pool", "fuse.mergerfs"),
            entry(27, 20, (0, 34), "/", "/net", "autofs"),
        ]);
        let mps: Vec<_> = kept.iter().map(|e| e.mount_point.to_str().unwrap()).collect();
        // /data is hidden by the tmpfs over it, so the bind at /again is the
        // ext4's first visible mount.
        assert_eq!(mps, ["/", "/again", "/sub", "/mnt/pool"]);
    }

    #[test]
    fn df_percentages() {
        assert_eq!(df_pct(0, 0), None);
        assert_eq!(df_pct(0, 100), Some(0));
        assert_eq!(df_pct(1, 999), Some(1), "any use rounds up to 1 %");
        assert_eq!(df_pct(899, 101), Some(90));
        assert_eq!(df_pct(900, 100), Some(90), "exactly 90 % stays 90");
        assert_eq!(df_pct(9001, 999), Some(91));
        assert_eq!(df_pct(100, 0), Some(100));
        assert_eq!(df_pct(u64::MAX, u64::MAX), Some(50));
        // Root's reserve is not in the denominator: 95 used, 0 available to
        // users, 5 reserved free -> 100 %.
        let u = usage(&stat(4096, 100, 5, 0, 10, 10));
        assert_eq!((u.used_pct, u.used_bytes, u.available_bytes), (Some(100), 95 * 4096, 0));
        assert_eq!((u.inodes_used, u.inodes_pct), (0, Some(0)));
        // Nonsense counts saturate instead of panicking.
        let u = usage(&stat(u64::MAX, u64::MAX, u64::MAX, 0, 1, 5));
        assert_eq!(
            (u.size_bytes, u.used_bytes, u.used_pct, u.inodes_used),
            (u64::MAX, 0, None, 0)
        );
    }

    #[test]
    fn vpd_serial_and_attributes() {
        assert_eq!(
            parse_vpd_pg80(b"\x00\x80\x00\x0c    ABC123  ").as_deref(),
            Some("ABC123")
        );
        assert_eq!(parse_vpd_pg80(b"\x00\x80\x00\x03ABCDEF").as_deref(), Some("ABC"));
        assert_eq!(parse_vpd_pg80(b"\x00\x80\x00\x40AB").as_deref(), Some("AB"));
        assert_eq!(parse_vpd_pg80(b"\x00\x83\x00\x02AB"), None);
        assert_eq!(parse_vpd_pg80(b"\x00\x80\x00\x04    "), None);
        assert_eq!(parse_vpd_pg80(b"\x00\x80"), None);
        assert_eq!(clean_attr("ATA     \n").as_deref(), Some("ATA"));
        assert_eq!(clean_attr(" \n"), None);
        assert_eq!(parse_flag("1\n"), Ok(true));
        assert!(parse_flag("2").is_err());
        assert_eq!(parse_u64("7814037168\n"), Ok(7_814_037_168));
        assert!(parse_u64("").is_err());
    }

    #[test]
    fn this_machine_has_a_root_filesystem() {
        let mut src = StorageSource::new(Roots::default());
        let sample = src.sample().unwrap();
        let root = sample.state["filesystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["mount_point"] == "/")
            .unwrap_or_else(|| panic!("no / in {}", sample.state));
        assert!(root["size_bytes"].as_u64().unwrap() > 0, "{root}");
        // Whatever RAID the host has, the shape is there.
        assert!(sample.state["raid"].is_array() && sample.state["tools"].is_object());

        let n = 50;
        let start = std::time::Instant::now();
        for _ in 0..n {
            src.sample().unwrap();
        }
        eprintln!("one real storage sample: {} µs", start.elapsed().as_micros() / n);
    }
}
