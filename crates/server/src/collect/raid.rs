//! The `raid` array of `storage.update`: md arrays from `<procfs>/mdstat`,
//! ZFS pools from `zpool`, btrfs filesystems from `<sysfs>/fs/btrfs`. Every
//! entry has the same core keys (`name`, `kind`, `level`, `state`,
//! `size_bytes`, `members`, `devices_total`, `devices_active`, `degraded`,
//! `sync`, `health`) so a consumer can show and alert on all of them alike;
//! `health` (`ok`, `degraded`, `rebuilding`, `failed`) is what the
//! `storage.raid.*` events follow.
//!
//! mdstat is the primary md source because one read gives every array; the
//! per-array sysfs files only confirm it (`degraded`) and add `array_state`,
//! and are not required. Parsing is pure functions over text; the reads and
//! the one external tool (`zpool`) are kept apart so tests feed fixtures and a
//! fake [`CommandRunner`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Roots, SourceError};

/// How healthy an array or pool is; the `storage.raid.*` events fire on moves
/// between `ok` and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every member present and in sync.
    Ok,
    /// Members missing; the data is still all there.
    Degraded,
    /// Degraded, and a rebuild onto a replacement is running.
    Rebuilding,
    /// The data is not (all) reachable: too many members gone, or not started.
    Failed,
}

impl Health {
    /// The published word.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Rebuilding => "rebuilding",
            Health::Failed => "failed",
        }
    }
}

/// A resync, rebuild, reshape or scrub in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncProgress {
    /// `resync`, `recovery`, `reshape` or `check` (a ZFS resilver is a
    /// `recovery`, a scrub a `check`).
    pub action: &'static str,
    /// Hundredths of a percent, so md's 12.6 % and ZFS's 12.34 % are both
    /// exact. `None` while it waits to start (mdstat's `resync=PENDING`,
    /// `resync=DELAYED`).
    pub progress: Option<u32>,
    /// The estimate as the tool words it (`178.2min`, `01:30:00`).
    pub finish: Option<String>,
    /// As the tool words it (`159612K/sec`, `600M/s`).
    pub speed: Option<String>,
}

impl SyncProgress {
    fn to_json(&self) -> Value {
        json!({
            "action": self.action,
            "progress_pct": self.progress.map(|p| f64::from(p) / 100.0),
            "finish": self.finish,
            "speed": self.speed,
        })
    }
}

/// One entry of `raid`: what the events need to compare, plus the published
/// object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidEntry {
    /// `md`, `zfs` or `btrfs`.
    pub kind: &'static str,
    /// Unique within `kind`.
    pub name: String,
    /// See [`Health`].
    pub health: Health,
    /// The object published in `raid` and in the events.
    pub value: Value,
}

// ---------------------------------------------------------------------------
// md

/// How an md array is running, from the word after `:` in mdstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdState {
    /// `active`.
    Active,
    /// `active (read-only)`.
    ReadOnly,
    /// `active (auto-read-only)`: assembled, switches to read-write on the
    /// first write. Normal for arrays nothing has written to since boot.
    AutoReadOnly,
    /// `inactive`: assembled but not started (members missing at boot, or an
    /// external-metadata container, which is never started).
    Inactive,
}

impl MdState {
    fn as_str(self) -> &'static str {
        match self {
            MdState::Active => "active",
            MdState::ReadOnly => "read-only",
            MdState::AutoReadOnly => "auto-read-only",
            MdState::Inactive => "inactive",
        }
    }
}

/// One member as mdstat lists it: `sdb1[1](F)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdMember {
    /// Kernel name, e.g. `sdb1`.
    pub device: String,
    /// The number in brackets: the member's descriptor slot. For the original
    /// members it is their position in `[UU_]`, but a replacement gets a new
    /// number (a 4-disk raid5 rebuilt onto `sde1[4]`), so it is not an index
    /// into that string.
    pub role_index: u32,
    /// `(F)`: faulty, still attached until `mdadm --remove`.
    pub failed: bool,
    /// `(S)`: not in a slot (a hot spare, or every member of an inactive array).
    pub spare: bool,
}

/// One array parsed from mdstat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdArray {
    /// e.g. `md0`, `md127`, `md_home`.
    pub name: String,
    /// See [`MdState`].
    pub state: MdState,
    /// The personality (`raid1`, `raid5`, `linear`…); `None` for an inactive
    /// array, which has none loaded.
    pub level: Option<String>,
    /// In mdstat order (most recently added first).
    pub members: Vec<MdMember>,
    /// The `N blocks` count, in KiB; `None` if the array has no members yet.
    pub size_kib: Option<u64>,
    /// `super external:imsm` (or `ddf`): a firmware-RAID container, which
    /// only holds metadata and stays `inactive` by design; its volumes are
    /// separate arrays.
    pub container: bool,
    /// `[n/m]`: `n`, the slots. Absent for levels without redundancy.
    pub raid_disks: Option<u32>,
    /// `[n/m]`: `m`, the slots holding an in-sync member.
    pub in_sync: Option<u32>,
    /// `[UU_]` as booleans, `true` for `U`.
    pub slots: Option<Vec<bool>>,
    /// raid10's `N near-copies`; 1 when not shown.
    pub near_copies: u32,
    /// raid10's `N far-copies` or `N offset-copies`; 1 when not shown.
    pub far_copies: u32,
    /// The progress line, if any.
    pub sync: Option<SyncProgress>,
}

/// `<procfs>/mdstat`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mdstat {
    /// In mdstat order (newest array first).
    pub arrays: Vec<MdArray>,
    /// Why each array block that could not be parsed was skipped.
    pub skipped: Vec<String>,
}

/// Parses `/proc/mdstat` as the kernel's md driver writes it (`md_seq_show`):
///
/// ```text
/// Personalities : [raid1] [raid6] [raid5] [raid4]
/// md1 : active raid5 sde1[4] sdd1[2] sdc1[1] sdb1[0]
///       5860144128 blocks super 1.2 level 5, 512k chunk, algorithm 2 [4/3] [UUU_]
///       [==>..................]  recovery = 12.6% (246490316/1953381376) finish=178.2min speed=159612K/sec
///       bitmap: 3/15 pages [12KB], 65536KB chunk
///
/// unused devices: <none>
/// ```
///
/// An array is its `name : …` line plus the indented lines after it. Only a
/// missing `Personalities` header is an error (the file is then not mdstat at
/// all); an array block that does not parse is skipped and listed in
/// [`Mdstat::skipped`], so one odd array (a future kernel's new word) does not
/// hide the others or the disks and filesystems of the same sample.
pub fn parse_mdstat(text: &str) -> Result<Mdstat, String> {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let header = lines.next().unwrap_or_default();
    let is_header = header
        .strip_prefix("Personalities")
        .is_some_and(|rest| rest.trim_start().starts_with(':'));
    if !is_header {
        return Err(format!("no `Personalities :` header, found {header:?}"));
    }
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut in_array = false;
    for line in lines {
        if line.is_empty() || line.starts_with(char::is_whitespace) {
            if in_array && let Some(block) = blocks.last_mut() {
                block.push(line);
            }
        } else if line.starts_with("unused devices:") {
            in_array = false;
        } else {
            blocks.push(vec![line]);
            in_array = true;
        }
    }
    let mut mdstat = Mdstat {
        arrays: Vec::new(),
        skipped: Vec::new(),
    };
    for block in blocks {
        match parse_md_array(&block) {
            Ok(a) => mdstat.arrays.push(a),
            Err(e) => mdstat.skipped.push(format!("{:?}: {e}", block[0])),
        }
    }
    Ok(mdstat)
}

fn parse_md_array(lines: &[&str]) -> Result<MdArray, String> {
    let (name, rest) = lines[0].split_once(" : ").ok_or("no ` : ` after the array name")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad array name {name:?}"));
    }
    let mut words = rest.split_whitespace().peekable();
    let mut state = match words.next() {
        Some("active") => MdState::Active,
        Some("inactive") => MdState::Inactive,
        w => return Err(format!("state {w:?} is neither active nor inactive")),
    };
    let mut level = None;
    if state == MdState::Active {
        match words.peek() {
            Some(&"(read-only)") => state = MdState::ReadOnly,
            Some(&"(auto-read-only)") => state = MdState::AutoReadOnly,
            Some(w) if w.starts_with('(') => return Err(format!("unknown mode {w}")),
            _ => {}
        }
        if state != MdState::Active {
            words.next();
        }
        // An active array always has a personality, and its name never has
        // the `[` of a member.
        level = match words.next() {
            Some(w) if !w.contains('[') => Some(w.to_string()),
            w => return Err(format!("no level after `active`, found {w:?}")),
        };
    }
    // An array that has no members yet prints its superblock on this line.
    let members = words
        .take_while(|w| *w != "super")
        .map(parse_md_member)
        .collect::<Result<Vec<_>, _>>()?;

    let mut array = MdArray {
        name: name.to_string(),
        state,
        level,
        members,
        size_kib: None,
        container: false,
        raid_disks: None,
        in_sync: None,
        slots: None,
        near_copies: 1,
        far_copies: 1,
        sync: None,
    };
    let mut rest = lines[1..].iter().map(|l| l.trim()).filter(|l| !l.is_empty());
    if let Some(line) = rest.next() {
        parse_md_geometry(line, &mut array)?;
    }
    for line in rest {
        if !line.starts_with("bitmap:")
            && let Some(sync) = parse_md_sync(line)
        {
            array.sync = Some(sync);
        }
    }
    Ok(array)
}

/// `sdb1[1]`, then any of the flags `(W)` write-mostly, `(J)` journal, `(F)`
/// faulty, `(S)` spare, `(R)` replacement. Flags this parser does not know
/// are ignored rather than losing the array.
fn parse_md_member(word: &str) -> Result<MdMember, String> {
    let bad = || format!("bad member {word:?}");
    let (device, rest) = word.split_once('[').ok_or_else(bad)?;
    let (number, mut flags) = rest.split_once(']').ok_or_else(bad)?;
    if device.is_empty() {
        return Err(bad());
    }
    let mut member = MdMember {
        device: device.to_string(),
        role_index: number.parse().map_err(|_| bad())?,
        failed: false,
        spare: false,
    };
    while !flags.is_empty() {
        let (flag, after) = flags
            .strip_prefix('(')
            .and_then(|f| f.split_once(')'))
            .ok_or_else(bad)?;
        match flag {
            "F" => member.failed = true,
            "S" => member.spare = true,
            _ => {}
        }
        flags = after;
    }
    Ok(member)
}

/// The line after the members: `N blocks`, the superblock, then what the
/// personality prints (`[n/m] [UU_]` for the redundant levels, raid10's
/// copies).
fn parse_md_geometry(line: &str, array: &mut MdArray) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [count, "blocks", ..] = words[..] else {
        return Err(format!("second line does not start with `N blocks`: {line:?}"));
    };
    array.size_kib = Some(count.parse().map_err(|_| format!("bad block count {count:?}"))?);
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied();
        let copies = || w.parse::<u32>().ok().filter(|&n| n > 0);
        match (next, copies()) {
            (Some("near-copies"), Some(n)) => array.near_copies = n,
            (Some("far-copies" | "offset-copies"), Some(n)) => array.far_copies = n,
            _ => {}
        }
        if *w == "super"
            && let Some(meta) = next.and_then(|m| m.strip_prefix("external:"))
        {
            // `external:/md127/0` is a volume inside container md127;
            // `external:imsm` is the container itself.
            array.container = !meta.starts_with('/');
        }
        let Some(inner) = w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) else {
            continue;
        };
        if let Some((n, m)) = inner.split_once('/')
            && let (Ok(n), Ok(m)) = (n.parse(), m.parse())
        {
            array.raid_disks = Some(n);
            array.in_sync = Some(m);
        } else if !inner.is_empty() && inner.chars().all(|c| c == 'U' || c == '_') {
            array.slots = Some(inner.chars().map(|c| c == 'U').collect());
        }
    }
    Ok(())
}

/// The progress line: `[==>…]  recovery = 12.6% (…) finish=178.2min
/// speed=159612K/sec`, or a waiting one, `resync=PENDING` / `resync=DELAYED`
/// (the kernel says `resync` there whatever is queued). Below 100 the kernel
/// pads the percentage (`=%3u`), so it may be a word of its own or glued to
/// the `=`.
fn parse_md_sync(line: &str) -> Option<SyncProgress> {
    let action = |w: &str| ["resync", "recovery", "reshape", "check"].into_iter().find(|a| *a == w);
    let words: Vec<&str> = line.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if let Some((a, waiting)) = w.split_once('=')
            && let Some(a) = action(a)
            && !waiting.is_empty()
            && waiting.chars().all(|c| c.is_ascii_uppercase())
        {
            return Some(SyncProgress {
                action: a,
                progress: None,
                finish: None,
                speed: None,
            });
        }
        let Some(a) = action(w) else { continue };
        let pct = match words.get(i + 1).and_then(|e| e.strip_prefix('='))? {
            "" => words.get(i + 2)?,
            glued => glued,
        };
        let value = |key: &str| words.iter().find_map(|w| w.strip_prefix(key)).map(str::to_string);
        return Some(SyncProgress {
            action: a,
            progress: Some(parse_hundredths(pct.strip_suffix('%')?)?),
            finish: value("finish="),
            speed: value("speed="),
        });
    }
    None
}

/// `12.6` → 1260, `12.34` → 1234, `100` → 10000.
fn parse_hundredths(text: &str) -> Option<u32> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 2 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    int.parse::<u32>().ok()?.checked_mul(100)?.checked_add(frac)
}

/// What `<sysfs>/block/mdX/md/` adds to mdstat. Every field is optional: the
/// directory is absent in fixtures and containers, and a value that does not
/// parse is simply not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdSysfs {
    /// `array_state`: `clean`, `active`, `readonly`, `read-auto`, `inactive`,
    /// `broken` (raid0/linear with a member gone)…
    pub array_state: Option<String>,
    /// `degraded`: the number of missing members.
    pub degraded: Option<u32>,
    /// `level`, for an inactive array (mdstat shows none).
    pub level: Option<String>,
}

/// Reads [`MdSysfs`] for one array. Unreadable is the same as absent: it only
/// confirms mdstat.
pub fn read_md_sysfs(block: &Path, name: &str) -> MdSysfs {
    let dir = block.join(name).join("md");
    let attr = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    MdSysfs {
        array_state: attr("array_state"),
        degraded: attr("degraded").and_then(|d| d.parse().ok()),
        level: attr("level"),
    }
}

/// Whether raid10 still has a copy of every chunk: the kernel's `enough()`.
/// Chunk copies sit on `copies` consecutive slots, and the groups start every
/// `near` slots (wrapping), so the array is lost once any such window is all
/// missing — two adjacent failures in a 4-disk near-2 array are fatal only
/// when they are a mirror pair.
fn raid10_enough(slots: &[bool], copies: u32, near: u32) -> bool {
    let disks = slots.len();
    if disks == 0 {
        return true;
    }
    let copies = usize::try_from(copies.max(1)).unwrap_or(usize::MAX).min(disks);
    let near = usize::try_from(near.max(1)).unwrap_or(1);
    let mut first = 0;
    loop {
        if !(0..copies).any(|k| slots[(first + k) % disks]) {
            return false;
        }
        first = (first + near) % disks;
        if first == 0 {
            return true;
        }
    }
}

impl MdArray {
    /// Missing members: the most pessimistic of `[n/m]`, the `_` count and
    /// sysfs `degraded`, so a parse that missed one of them still errs on the
    /// side of reporting.
    pub fn missing(&self, sys: &MdSysfs) -> u32 {
        let from_counts = match (self.raid_disks, self.in_sync) {
            (Some(n), Some(m)) => n.saturating_sub(m),
            _ => 0,
        };
        let underscores = self.slots.as_ref().map_or(0, |s| s.iter().filter(|u| !**u).count());
        from_counts
            .max(u32::try_from(underscores).unwrap_or(u32::MAX))
            .max(sys.degraded.unwrap_or(0))
    }

    /// Health by level: raid0 and linear survive no loss, raid4/5 one, raid6
    /// two, raid1 as long as one mirror is in sync, raid10 per
    /// [`raid10_enough`]. An inactive array serves no data, so it is
    /// `failed` — except a firmware-RAID container, which is never started.
    pub fn health(&self, sys: &MdSysfs) -> Health {
        if self.container {
            return Health::Ok;
        }
        if self.state == MdState::Inactive || sys.array_state.as_deref() == Some("broken") {
            return Health::Failed;
        }
        let missing = self.missing(sys);
        let any_failed = self.members.iter().any(|m| m.failed);
        let enough = match self.level.as_deref() {
            Some("raid0" | "linear") => missing == 0 && !any_failed,
            Some("raid1" | "multipath") => match (&self.slots, self.in_sync) {
                (Some(slots), _) => slots.iter().any(|u| *u),
                (None, Some(m)) => m > 0,
                (None, None) => true,
            },
            Some("raid4" | "raid5") => missing <= 1,
            Some("raid6") => missing <= 2,
            Some("raid10") => self
                .slots
                .as_ref()
                .is_none_or(|s| raid10_enough(s, self.near_copies.saturating_mul(self.far_copies), self.near_copies)),
            _ => true,
        };
        if !enough {
            Health::Failed
        } else if missing == 0 {
            Health::Ok
        } else if self.sync.as_ref().is_some_and(|s| s.action == "recovery") {
            Health::Rebuilding
        } else {
            Health::Degraded
        }
    }

    /// The entry published in `raid`.
    pub fn entry(&self, sys: &MdSysfs) -> RaidEntry {
        let health = self.health(sys);
        let level = if self.container {
            Some("container")
        } else {
            self.level.as_deref().or(sys.level.as_deref())
        };
        let mut members: Vec<&MdMember> = self.members.iter().collect();
        members.sort_by(|a, b| (a.role_index, &a.device).cmp(&(b.role_index, &b.device)));
        let members: Vec<Value> = members
            .iter()
            .map(|m| json!({"device": m.device, "role_index": m.role_index, "failed": m.failed, "spare": m.spare}))
            .collect();
        // Levels without `[n/m]` (raid0, linear) use every non-spare member;
        // an inactive array has no slots to count.
        let (total, active) = match (self.raid_disks, self.in_sync) {
            (Some(n), Some(m)) => (Some(n), Some(m)),
            _ if self.state == MdState::Inactive => (None, None),
            _ => {
                let count = |f: &dyn Fn(&MdMember) -> bool| {
                    u32::try_from(self.members.iter().filter(|m| !m.spare && f(m)).count()).ok()
                };
                (count(&|_| true), count(&|m| !m.failed))
            }
        };
        RaidEntry {
            kind: "md",
            name: self.name.clone(),
            health,
            value: json!({
                "name": self.name,
                "kind": "md",
                "level": level,
                "state": self.state.as_str(),
                "size_bytes": self.size_kib.map(|k| k.saturating_mul(1024)),
                "members": members,
                "devices_total": total,
                "devices_active": active,
                "degraded": self.missing(sys) > 0 || health == Health::Failed,
                "sync": self.sync.as_ref().map(SyncProgress::to_json),
                "health": health.as_str(),
                "array_state": sys.array_state,
            }),
        }
    }
}

/// The md arrays, in mdstat order. No `mdstat` (the md module is not loaded)
/// is no arrays, not an error.
pub fn read_md(roots: &Roots) -> Result<Vec<RaidEntry>, SourceError> {
    let path = roots.proc("mdstat");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SourceError::read(&path, &e)),
    };
    let mdstat = parse_mdstat(&text).map_err(|e| SourceError::parse(&path, e))?;
    for skipped in &mdstat.skipped {
        // Debug, not warn: it would repeat every sample.
        tracing::debug!(path = %path.display(), "skipped an md array: {skipped}");
    }
    let block = roots.sys("block");
    Ok(mdstat
        .arrays
        .iter()
        .map(|a| a.entry(&read_md_sysfs(&block, &a.name)))
        .collect())
}

// ---------------------------------------------------------------------------
// External tools

/// Why a tool gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// Not installed: the spawn failed with `NotFound`.
    NotFound,
    /// Did not exit within its time, or an earlier run that timed out has
    /// still not exited.
    Timeout,
    /// Could not be started, or exited with an error.
    Failed(String),
}

impl ToolError {
    /// The word published in `tools`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ToolError::NotFound => "unsupported",
            ToolError::Timeout => "timeout",
            ToolError::Failed(_) => "failed",
        }
    }
}

/// Runs the storage tools. Injectable so tests fake `zpool` and its failures
/// instead of depending on the host.
pub trait CommandRunner: Send + 'static {
    /// Standard output of `program args`, if it exits 0 within `timeout`.
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String, ToolError>;
}

impl<F> CommandRunner for F
where
    F: Fn(&str, &[&str], Duration) -> Result<String, ToolError> + Send + 'static,
{
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String, ToolError> {
        self(program, args, timeout)
    }
}

/// Output beyond this is not read; the tool then blocks on its pipe and times
/// out rather than growing the server's memory.
const MAX_TOOL_OUTPUT: u64 = 1 << 20;

/// Runs programs found on `PATH`, with `LC_ALL=C` so their wording and
/// numbers are the ones the parsers know.
///
/// A run that outlives its timeout is killed and reaped by a thread of its
/// own, without waiting: `zpool` on a suspended pool sleeps uninterruptibly in
/// the kernel, and the kill only lands when it leaves. Until that run has
/// exited every run fails with [`ToolError::Timeout`] at once, so a stuck pool
/// costs one stuck process, not one more per sample.
#[derive(Debug, Default)]
pub struct SystemRunner {
    stuck: Arc<AtomicBool>,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = pipe {
            // A read error leaves what was read; the exit status says the rest.
            let _ = pipe.take(MAX_TOOL_OUTPUT).read_to_end(&mut buf);
        }
        buf
    })
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String, ToolError> {
        if self.stuck.load(Ordering::Acquire) {
            return Err(ToolError::Timeout);
        }
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ToolError::NotFound,
                _ => ToolError::Failed(format!("{program}: {e}")),
            })?;
        // Both pipes are drained while waiting, or a chatty tool would block
        // on a full pipe and look hung.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                waited => {
                    let _ = child.kill();
                    self.stuck.store(true, Ordering::Release);
                    let stuck = Arc::clone(&self.stuck);
                    std::thread::spawn(move || {
                        let _ = child.wait();
                        stuck.store(false, Ordering::Release);
                    });
                    return Err(match waited {
                        Err(e) => ToolError::Failed(format!("{program}: {e}")),
                        _ => ToolError::Timeout,
                    });
                }
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            return Err(ToolError::Failed(format!("{program}: {status}: {first}")));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

// ---------------------------------------------------------------------------
// ZFS

/// Tab-separated (`-H`) exact byte counts (`-p`).
pub const ZPOOL_LIST_ARGS: &[&str] = &["list", "-H", "-p", "-o", "name,health,size,alloc,free"];

/// Only the pools that are not healthy, which are the only ones whose scan
/// line matters here.
pub const ZPOOL_STATUS_ARGS: &[&str] = &["status", "-x"];

/// One line of `zpool list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zpool {
    /// Pool name.
    pub name: String,
    /// `ONLINE`, `DEGRADED`, `FAULTED`, `OFFLINE`, `REMOVED`, `UNAVAIL`,
    /// `SUSPENDED`.
    pub health: String,
    /// `None` where zpool prints `-` (an unavailable pool).
    pub size_bytes: Option<u64>,
    /// Allocated.
    pub allocated_bytes: Option<u64>,
    /// Free.
    pub free_bytes: Option<u64>,
}

/// Parses `zpool list -Hp -o name,health,size,alloc,free`. A line that is not
/// five tab-separated fields is skipped, like an unparsable md array.
pub fn parse_zpool_list(text: &str) -> Vec<Zpool> {
    text.lines()
        .filter_map(|line| {
            let [name, health, size, alloc, free] = line.split('\t').collect::<Vec<_>>()[..] else {
                return None;
            };
            if name.is_empty() || health.is_empty() {
                return None;
            }
            let bytes = |f: &str| f.trim().parse().ok();
            Some(Zpool {
                name: name.to_string(),
                health: health.trim().to_string(),
                size_bytes: bytes(size),
                allocated_bytes: bytes(alloc),
                free_bytes: bytes(free),
            })
        })
        .collect()
}

/// The scan in progress per pool, from `zpool status` output:
///
/// ```text
///   pool: tank
///  state: DEGRADED
///   scan: resilver in progress since Mon Nov 23 10:00:00 2026
///         1.23T / 3.60T scanned at 1.50G/s, 456G / 3.60T issued at 600M/s
///         120G resilvered, 12.34% done, 01:30:00 to go
/// config:
/// ```
///
/// A field is a `key:` line with its indented continuation lines. Older
/// releases word the numbers differently (`scanned out of 3.60T at 150M/s,
/// 5h30m to go`), hence the search for `% done`, `to go` and `at` rather than
/// fixed positions.
pub fn parse_zpool_status(text: &str) -> HashMap<String, SyncProgress> {
    let mut scans = HashMap::new();
    let mut pool: Option<String> = None;
    let mut field = String::new();
    let mut value = String::new();
    let mut finish_field = |pool: &Option<String>, field: &str, value: &str| {
        if field == "scan"
            && let Some(pool) = pool
            && let Some(sync) = parse_zpool_scan(value)
        {
            scans.insert(pool.clone(), sync);
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        let key = trimmed
            .split_once(':')
            .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase()));
        let is_key_line = line.starts_with(' ') || !line.starts_with(char::is_whitespace);
        match key {
            Some((k, v)) if is_key_line => {
                finish_field(&pool, &field, &value);
                field = k.to_string();
                value = v.trim().to_string();
                if k == "pool" {
                    pool = Some(value.clone());
                }
            }
            _ => {
                value.push(' ');
                value.push_str(trimmed);
            }
        }
    }
    finish_field(&pool, &field, &value);
    scans
}

fn parse_zpool_scan(scan: &str) -> Option<SyncProgress> {
    let action = if scan.starts_with("resilver in progress") {
        "recovery"
    } else if scan.starts_with("scrub in progress") {
        "check"
    } else {
        return None;
    };
    let words: Vec<&str> = scan.split_whitespace().collect();
    let progress = words
        .windows(2)
        .find(|w| w[1].starts_with("done"))
        .and_then(|w| parse_hundredths(w[0].strip_suffix('%')?));
    let finish = scan.find(" to go").map(|end| {
        let before = &scan[..end];
        before[before.rfind(", ").map_or(0, |i| i + 2)..].trim().to_string()
    });
    let speed_after = |marker: &str| {
        words
            .windows(3)
            .find(|w| w[0] == marker && w[1] == "at")
            .map(|w| w[2].trim_end_matches(',').to_string())
    };
    let speed = speed_after("issued").or_else(|| {
        words
            .windows(2)
            .find(|w| w[0] == "at")
            .map(|w| w[1].trim_end_matches(',').to_string())
    });
    Some(SyncProgress {
        action,
        progress,
        finish,
        speed,
    })
}

impl Zpool {
    /// `ONLINE` is ok, `DEGRADED` degraded (rebuilding while resilvering);
    /// the rest mean the pool's data is not reachable.
    pub fn health(&self, sync: Option<&SyncProgress>) -> Health {
        match self.health.as_str() {
            "ONLINE" => Health::Ok,
            "DEGRADED" if sync.is_some_and(|s| s.action == "recovery") => Health::Rebuilding,
            "DEGRADED" => Health::Degraded,
            _ => Health::Failed,
        }
    }

    /// The entry published in `raid`. Members are not listed: that needs the
    /// whole vdev tree of `zpool status`, which is only run for unhealthy
    /// pools.
    pub fn entry(&self, sync: Option<&SyncProgress>) -> RaidEntry {
        let health = self.health(sync);
        RaidEntry {
            kind: "zfs",
            name: self.name.clone(),
            health,
            value: json!({
                "name": self.name,
                "kind": "zfs",
                "level": null,
                "state": self.health.to_ascii_lowercase(),
                "size_bytes": self.size_bytes,
                "members": [],
                "devices_total": null,
                "devices_active": null,
                "degraded": health != Health::Ok,
                "sync": sync.map(SyncProgress::to_json),
                "health": health.as_str(),
                "allocated_bytes": self.allocated_bytes,
                "free_bytes": self.free_bytes,
            }),
        }
    }
}

/// ZFS pools, and the `tools` word for `zfs` (`None` when ZFS is not loaded,
/// so hosts without it never spawn anything). `zpool status` is run only when
/// a pool is not `ONLINE`, so a healthy host spends one `zpool list` per
/// sample, and both runs share `budget`.
pub fn read_zfs(roots: &Roots, runner: &dyn CommandRunner, budget: Duration) -> (Vec<RaidEntry>, Option<&'static str>) {
    if !roots.sys("module/zfs").exists() {
        return (Vec::new(), None);
    }
    let start = Instant::now();
    let pools = match runner.run("zpool", ZPOOL_LIST_ARGS, budget) {
        Ok(out) => parse_zpool_list(&out),
        Err(e) => {
            if let ToolError::Failed(why) = &e {
                tracing::debug!("zpool list: {why}");
            }
            return (Vec::new(), Some(e.as_str()));
        }
    };
    let mut scans = HashMap::new();
    let left = budget.saturating_sub(start.elapsed());
    if pools.iter().any(|p| p.health != "ONLINE") && !left.is_zero() {
        // Without it the pools are still reported, only without progress.
        match runner.run("zpool", ZPOOL_STATUS_ARGS, left) {
            Ok(out) => scans = parse_zpool_status(&out),
            Err(e) => tracing::debug!("zpool status: {e:?}"),
        }
    }
    let entries = pools.iter().map(|p| p.entry(scans.get(&p.name))).collect();
    (entries, Some("ok"))
}

// ---------------------------------------------------------------------------
// btrfs

/// The counters of `devinfo/<devid>/error_stats`, in the kernel's order.
const BTRFS_ERROR_STATS: [&str; 5] = [
    "write_errs",
    "read_errs",
    "flush_errs",
    "corruption_errs",
    "generation_errs",
];

/// Parses `error_stats` (`write_errs 0` per line) into the five counters, in
/// a fixed order; `None` if any is missing, so a partial read is not shown as
/// zeros.
pub fn parse_btrfs_error_stats(text: &str) -> Option<Value> {
    let values: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect();
    let mut out = serde_json::Map::new();
    for key in BTRFS_ERROR_STATS {
        out.insert(key.to_string(), json!(values.get(key)?));
    }
    Some(Value::Object(out))
}

/// How many missing devices a block group profile survives.
fn btrfs_tolerance(profile: &str) -> u32 {
    match profile {
        "raid1" | "raid10" | "raid5" => 1,
        "raid1c3" | "raid6" => 2,
        "raid1c4" => 3,
        // single, dup, raid0
        _ => 0,
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The block group profiles in use (`allocation/{data,metadata,system}/<profile>/`).
fn btrfs_profiles(fs: &Path, kind: &str) -> Vec<String> {
    let dir = fs.join("allocation").join(kind);
    dir_names(&dir).into_iter().filter(|n| dir.join(n).is_dir()).collect()
}

/// Mounted btrfs filesystems from `<sysfs>/fs/btrfs/<fsid>/`, no tool needed:
/// `btrfs device stats` reads the same counters but needs `CAP_SYS_ADMIN`,
/// while `devinfo/<devid>/{missing,error_stats}` (kernel 5.6 and 5.14) are
/// world-readable. A filesystem is matched to its mount through
/// `devices/<name>` (`sdb`, or `dm-0` for a `/dev/mapper/` source).
///
/// `mounts` is (device, mount point) of the listed btrfs filesystems; with
/// none nothing is read. The `tools` word is `unsupported` when a mount could
/// not be matched to a filesystem with `devinfo` (kernel older than 5.6, or a
/// source named in a way `devices/` does not show).
///
/// Health follows the `missing` flags against the least redundant profile in
/// use; the error counters are published per member but do not change it,
/// because they only ever grow (until `btrfs device stats -z`) and would keep
/// a long-repaired filesystem "degraded" for good.
pub fn read_btrfs(roots: &Roots, mounts: &[(&str, &str)]) -> (Vec<RaidEntry>, Option<&'static str>) {
    if mounts.is_empty() {
        return (Vec::new(), None);
    }
    let base = roots.sys("fs/btrfs");
    let block = roots.sys("block");
    let mut entries = Vec::new();
    // Mounts whose filesystem was found with `devinfo`; any other one is
    // something this kernel's sysfs cannot tell about.
    let mut matched: HashSet<&(&str, &str)> = HashSet::new();
    for fsid in dir_names(&base) {
        let fs = base.join(&fsid);
        let devices = dir_names(&fs.join("devices"));
        let sources: Vec<String> = devices
            .iter()
            .flat_map(|d| {
                let dm = read_trimmed(&block.join(d).join("dm/name")).map(|n| format!("/dev/mapper/{n}"));
                std::iter::once(format!("/dev/{d}")).chain(dm)
            })
            .collect();
        let Some((_, mount_point)) = mounts.iter().find(|(dev, _)| sources.iter().any(|s| s == dev)) else {
            continue;
        };
        let devinfo = fs.join("devinfo");
        if !devinfo.is_dir() {
            continue;
        }
        matched.extend(mounts.iter().filter(|(dev, _)| sources.iter().any(|s| s == dev)));
        let mut devids: Vec<(u64, String)> = dir_names(&devinfo)
            .into_iter()
            .filter_map(|n| Some((n.parse().ok()?, n)))
            .collect();
        devids.sort();
        let members: Vec<(bool, Value)> = devids
            .iter()
            .map(|(devid, name)| {
                let dir = devinfo.join(name);
                let missing = read_trimmed(&dir.join("missing")).as_deref() == Some("1");
                // sysfs maps devids to names only when there is one of each.
                let device = (devids.len() == 1 && devices.len() == 1).then(|| devices[0].clone());
                let errors = read_trimmed(&dir.join("error_stats")).and_then(|t| parse_btrfs_error_stats(&t));
                let value = json!({
                    "device": device, "role_index": devid, "failed": missing, "spare": false, "errors": errors,
                });
                (missing, value)
            })
            .collect();
        let missing = u32::try_from(members.iter().filter(|(m, _)| *m).count()).unwrap_or(u32::MAX);
        let data = btrfs_profiles(&fs, "data");
        let tolerance = ["data", "metadata", "system"]
            .iter()
            .flat_map(|k| btrfs_profiles(&fs, k))
            .map(|p| btrfs_tolerance(&p))
            .min()
            .unwrap_or(0);
        let health = if missing == 0 {
            Health::Ok
        } else if missing > tolerance {
            Health::Failed
        } else {
            Health::Degraded
        };
        let label = read_trimmed(&fs.join("label")).filter(|l| !l.is_empty());
        let total = u32::try_from(members.len()).unwrap_or(u32::MAX);
        entries.push(RaidEntry {
            kind: "btrfs",
            name: fsid.clone(),
            health,
            value: json!({
                "name": fsid,
                "kind": "btrfs",
                "level": (!data.is_empty()).then(|| data.join(",")),
                "state": "mounted",
                "size_bytes": null,
                "members": members.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "devices_total": total,
                "devices_active": total - missing,
                "degraded": missing > 0,
                "sync": null,
                "health": health.as_str(),
                "label": label,
                "mount_point": mount_point,
            }),
        });
    }
    let tool = if mounts.iter().all(|m| matched.contains(m)) {
        "ok"
    } else {
        "unsupported"
    };
    (entries, Some(tool))
}

// ---------------------------------------------------------------------------

/// Everything for `raid` and `tools`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaidReport {
    /// md arrays, then ZFS pools, then btrfs filesystems.
    pub entries: Vec<RaidEntry>,
    /// Per kind that needed something beyond mdstat: `ok`, or why it was not
    /// examined (`unsupported`, `timeout`, `failed`). Kinds the host does not
    /// use are absent.
    pub tools: BTreeMap<&'static str, &'static str>,
}

/// Reads every kind. `btrfs_mounts` is (device, mount point) of the mounted
/// btrfs filesystems. Only mdstat can fail the sample: the other kinds report
/// their trouble in `tools` instead.
pub fn read_raid(
    roots: &Roots,
    btrfs_mounts: &[(&str, &str)],
    runner: &dyn CommandRunner,
    tool_budget: Duration,
) -> Result<RaidReport, SourceError> {
    let mut report = RaidReport {
        entries: read_md(roots)?,
        tools: BTreeMap::new(),
    };
    for (kind, (entries, tool)) in [
        ("zfs", read_zfs(roots, runner, tool_budget)),
        ("btrfs", read_btrfs(roots, btrfs_mounts)),
    ] {
        report.entries.extend(entries);
        if let Some(tool) = tool {
            report.tools.insert(kind, tool);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn mdstat_fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/storage/mdstat")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn parse(name: &str) -> Vec<MdArray> {
        let mdstat = parse_mdstat(&mdstat_fixture(name)).unwrap();
        assert_eq!(mdstat.skipped, Vec::<String>::new(), "{name}");
        mdstat.arrays
    }

    fn member(device: &str, role_index: u32, failed: bool, spare: bool) -> MdMember {
        MdMember {
            device: device.into(),
            role_index,
            failed,
            spare,
        }
    }

    fn entry(a: &MdArray) -> Value {
        a.entry(&MdSysfs::default()).value
    }

    #[test]
    fn raid1_clean() {
        let arrays = parse("raid1-clean");
        assert_eq!(
            arrays,
            [MdArray {
                name: "md0".into(),
                state: MdState::Active,
                level: Some("raid1".into()),
                members: vec![member("sdb1", 1, false, false), member("sda1", 0, false, false)],
                size_kib: Some(976_630_464),
                container: false,
                raid_disks: Some(2),
                in_sync: Some(2),
                slots: Some(vec![true, true]),
                near_copies: 1,
                far_copies: 1,
                sync: None,
            }]
        );
        assert_eq!(
            entry(&arrays[0]),
            json!({
                "name": "md0", "kind": "md", "level": "raid1", "state": "active", "size_bytes": 1_000_069_595_136u64,
                "members": [
                    {"device": "sda1", "role_index": 0, "failed": false, "spare": false},
                    {"device": "sdb1", "role_index": 1, "failed": false, "spare": false},
                ],
                "devices_total": 2, "devices_active": 2, "degraded": false, "sync": null, "health": "ok",
                "array_state": null,
            })
        );
    }

    #[test]
    fn raid1_degraded_with_a_failed_and_a_removed_member() {
        let arrays = parse("raid1-degraded");
        let names: Vec<_> = arrays.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["md1", "md0"]);
        // md1's second mirror was removed: nothing is listed for it.
        let md1 = entry(&arrays[0]);
        assert_eq!(
            md1["members"],
            json!([{"device": "sda2", "role_index": 0, "failed": false, "spare": false}])
        );
        assert_eq!(
            (
                &md1["devices_total"],
                &md1["devices_active"],
                &md1["degraded"],
                &md1["health"]
            ),
            (&json!(2), &json!(1), &json!(true), &json!("degraded"))
        );
        let md0 = entry(&arrays[1]);
        assert_eq!(
            md0["members"][1],
            json!({"device": "sdb1", "role_index": 1, "failed": true, "spare": false})
        );
        assert_eq!((&md0["degraded"], &md0["health"]), (&json!(true), &json!("degraded")));
        assert_eq!(arrays[1].slots, Some(vec![true, false]));
    }

    #[test]
    fn raid5_recovering() {
        let arrays = parse("raid5-recovery");
        let a = &arrays[0];
        assert_eq!(
            (a.raid_disks, a.in_sync, a.level.as_deref()),
            (Some(4), Some(3), Some("raid5"))
        );
        assert_eq!(
            a.sync,
            Some(SyncProgress {
                action: "recovery",
                progress: Some(1260),
                finish: Some("178.2min".into()),
                speed: Some("159612K/sec".into()),
            })
        );
        let v = entry(a);
        assert_eq!(
            v["sync"],
            json!({"action": "recovery", "progress_pct": 12.6, "finish": "178.2min", "speed": "159612K/sec"})
        );
        assert_eq!((&v["health"], &v["degraded"]), (&json!("rebuilding"), &json!(true)));
        assert_eq!(v["size_bytes"], json!(5_860_144_128u64 * 1024));
        // The member being rebuilt is in a slot, not a spare.
        assert_eq!(
            v["members"][3],
            json!({"device": "sde1", "role_index": 4, "failed": false, "spare": false})
        );
    }

    #[test]
    fn raid10_resync_with_a_spare() {
        let arrays = parse("raid10-resync");
        let a = &arrays[0];
        assert_eq!((a.near_copies, a.far_copies), (2, 1));
        let v = entry(a);
        assert_eq!(
            v["sync"],
            json!({"action": "resync", "progress_pct": 23.4, "finish": "246.7min", "speed": "202145K/sec"})
        );
        // A resync of a complete array is not a loss of redundancy.
        assert_eq!((&v["health"], &v["degraded"]), (&json!("ok"), &json!(false)));
        assert_eq!(
            v["members"][4],
            json!({"device": "sde", "role_index": 4, "failed": false, "spare": true})
        );
        assert_eq!((&v["devices_total"], &v["devices_active"]), (&json!(4), &json!(4)));
    }

    #[test]
    fn raid0_has_no_slot_counts() {
        let arrays = parse("raid0");
        let v = entry(&arrays[0]);
        assert_eq!(
            v,
            json!({
                "name": "md3", "kind": "md", "level": "raid0", "state": "active", "size_bytes": 2_000_135_651_328u64,
                "members": [
                    {"device": "sdb1", "role_index": 0, "failed": false, "spare": false},
                    {"device": "sdc1", "role_index": 1, "failed": false, "spare": false},
                ],
                "devices_total": 2, "devices_active": 2, "degraded": false, "sync": null, "health": "ok",
                "array_state": null,
            })
        );
        // A raid0 survives no loss.
        let mut broken = arrays[0].clone();
        broken.members[0].failed = true;
        let v = entry(&broken);
        assert_eq!(
            (&v["health"], &v["degraded"], &v["devices_active"]),
            (&json!("failed"), &json!(true), &json!(1))
        );
        let sys = MdSysfs {
            array_state: Some("broken".into()),
            ..MdSysfs::default()
        };
        assert_eq!(arrays[0].health(&sys), Health::Failed);
    }

    #[test]
    fn inactive_array() {
        let arrays = parse("inactive");
        let a = &arrays[0];
        assert_eq!(
            (a.state, a.level.as_deref(), a.size_kib),
            (MdState::Inactive, None, Some(3_906_764_976))
        );
        let v = entry(a);
        assert_eq!(
            v,
            json!({
                "name": "md127", "kind": "md", "level": null, "state": "inactive", "size_bytes": 4_000_527_335_424u64,
                "members": [
                    {"device": "sdb1", "role_index": 1, "failed": false, "spare": true},
                    {"device": "sdc1", "role_index": 2, "failed": false, "spare": true},
                ],
                "devices_total": null, "devices_active": null, "degraded": true, "sync": null, "health": "failed",
                "array_state": null,
            })
        );
        // sysfs knows the level mdstat does not show.
        let sys = MdSysfs {
            array_state: Some("inactive".into()),
            degraded: None,
            level: Some("raid1".into()),
        };
        let v = a.entry(&sys).value;
        assert_eq!((&v["level"], &v["array_state"]), (&json!("raid1"), &json!("inactive")));
    }

    #[test]
    fn empty_mdstat() {
        assert_eq!(parse("empty"), []);
    }

    #[test]
    fn mixed_arrays() {
        let arrays = parse("mixed");
        let summary: Vec<(&str, &str, Option<&str>, &str, Value)> = arrays
            .iter()
            .map(|a| {
                let e = a.entry(&MdSysfs::default());
                let v = e.value;
                (
                    a.name.as_str(),
                    a.state.as_str(),
                    a.level.as_deref(),
                    e.health.as_str(),
                    v["sync"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("md126", "active", Some("raid1"), "ok", Value::Null),
                ("md127", "inactive", None, "ok", Value::Null),
                (
                    "md4",
                    "auto-read-only",
                    Some("raid1"),
                    "ok",
                    json!({"action": "resync", "progress_pct": null, "finish": null, "speed": null})
                ),
                (
                    "md5",
                    "active",
                    Some("raid1"),
                    "ok",
                    json!({"action": "check", "progress_pct": 58.9, "finish": "25.1min", "speed": "133021K/sec"})
                ),
                ("md6", "active", Some("raid6"), "failed", Value::Null),
                (
                    "md7",
                    "active",
                    Some("raid5"),
                    "ok",
                    json!({"action": "reshape", "progress_pct": 7.3, "finish": "1033.6min", "speed": "29196K/sec"})
                ),
                ("md8", "active", Some("linear"), "ok", Value::Null),
            ]
        );
        // The IMSM container is named as such, not reported as a failed array.
        assert!(arrays[1].container && !arrays[0].container);
        assert_eq!(entry(&arrays[1])["level"], "container");
        // 0.90 superblock: no `super` word.
        assert_eq!((arrays[3].size_kib, arrays[3].raid_disks), (Some(488_254_464), Some(2)));
        let md6 = entry(&arrays[4]);
        assert_eq!((&md6["devices_total"], &md6["devices_active"]), (&json!(5), &json!(2)));
    }

    #[test]
    fn the_header_is_required_and_bad_blocks_are_skipped() {
        assert!(parse_mdstat("").unwrap_err().contains("Personalities"));
        assert!(parse_mdstat("md0 : active raid1 sda1[0]\n").is_err());
        assert!(parse_mdstat("Personalities\n").is_err());
        let text = "\nPersonalities : [raid1]\n\
                    md0 : active raid1 sda1[0] sdb1[1]\n      100 blocks [2/2] [UU]\n      \n\
                    md1 : exploded raid1 sdc1[0]\n      100 blocks [2/2] [UU]\n\
                    md2 : active raid1 sdd1[x]\n\
                    md3 : active\n\
                    garbage without a colon\n\
                    md4 : active raid1 sde1[0]\n      many blocks\n\
                    md5 : active (sideways) raid1 sdf1[0]\n\
                    md6 : active raid1 sdg1[0](Q)(S)\n      100 blocks [1/1] [U]\n\
                    unused devices: <none>\n";
        let mdstat = parse_mdstat(text).unwrap();
        let names: Vec<_> = mdstat.arrays.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["md0", "md6"]);
        assert_eq!(mdstat.skipped.len(), 6, "{:?}", mdstat.skipped);
        assert!(
            mdstat.arrays[1].members[0].spare,
            "unknown flags are ignored, known ones kept"
        );
    }

    #[test]
    fn an_array_without_members_is_kept() {
        let mdstat =
            parse_mdstat("Personalities : \nmd9 : inactive super 1.2\n       \nunused devices: <none>\n").unwrap();
        assert_eq!(mdstat.arrays[0].members, []);
        assert_eq!(mdstat.arrays[0].size_kib, None);
    }

    #[test]
    fn progress_formats() {
        let sync = |l: &str| parse_md_sync(l).map(|s| (s.action, s.progress));
        assert_eq!(
            sync("[>....................]  resync =  0.1% (1/2) finish=1.0min speed=1K/sec"),
            Some(("resync", Some(10)))
        );
        assert_eq!(
            sync("[====================>]  recovery =100.0% (2/2) finish=0.0min speed=1K/sec"),
            Some(("recovery", Some(10000)))
        );
        assert_eq!(sync("\tresync=DELAYED"), Some(("resync", None)));
        assert_eq!(sync("resync=PENDING"), Some(("resync", None)));
        assert_eq!(sync("bitmap: 0/8 pages [0KB], 65536KB chunk"), None);
        assert_eq!(sync("resync = lots"), None);
        assert_eq!(sync("resync"), None);
        assert_eq!(parse_hundredths("12.34"), Some(1234));
        assert_eq!(parse_hundredths("7"), Some(700));
        assert_eq!(parse_hundredths("1.234"), None);
        assert_eq!(parse_hundredths("x.1"), None);
        assert_eq!(parse_hundredths("99999999999"), None);
    }

    #[test]
    fn level_tolerances() {
        let array = |level: &str, slots: &str, near: u32, far: u32| MdArray {
            name: "md0".into(),
            state: MdState::Active,
            level: Some(level.into()),
            members: Vec::new(),
            size_kib: Some(1),
            container: false,
            raid_disks: u32::try_from(slots.len()).ok(),
            in_sync: u32::try_from(slots.matches('U').count()).ok(),
            slots: Some(slots.chars().map(|c| c == 'U').collect()),
            near_copies: near,
            far_copies: far,
            sync: None,
        };
        let h = |level, slots, near, far| array(level, slots, near, far).health(&MdSysfs::default());
        assert_eq!(h("raid1", "U__", 1, 1), Health::Degraded);
        assert_eq!(h("raid1", "___", 1, 1), Health::Failed);
        assert_eq!(h("raid5", "UU_U", 1, 1), Health::Degraded);
        assert_eq!(h("raid5", "U__U", 1, 1), Health::Failed);
        assert_eq!(h("raid6", "U__UU", 1, 1), Health::Degraded);
        assert_eq!(h("raid6", "U___U", 1, 1), Health::Failed);
        // near-2 on 4 disks: pairs (0,1) and (2,3).
        assert_eq!(h("raid10", "_U_U", 2, 1), Health::Degraded);
        assert_eq!(h("raid10", "U__U", 2, 1), Health::Degraded);
        assert_eq!(h("raid10", "__UU", 2, 1), Health::Failed);
        // near-2 on 3 disks: every adjacent pair holds some chunk's copies.
        assert_eq!(h("raid10", "U__", 2, 1), Health::Failed);
        assert_eq!(h("raid10", "_UU", 2, 1), Health::Degraded);
        // far-2 on 4 disks: every pair of neighbours holds both copies of some chunks.
        assert_eq!(h("raid10", "U_U_", 1, 2), Health::Degraded);
        assert_eq!(h("raid10", "_UU_", 1, 2), Health::Failed);
        assert_eq!(
            h("faulty", "_", 1, 1),
            Health::Degraded,
            "unknown levels are never called failed"
        );
        // sysfs `degraded` counts even when mdstat shows no loss.
        let sys = MdSysfs {
            degraded: Some(1),
            ..MdSysfs::default()
        };
        assert_eq!(array("raid1", "UU", 1, 1).health(&sys), Health::Degraded);
        assert!(raid10_enough(&[], 2, 2));
        assert!(raid10_enough(&[true], 0, 0));
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn roots(dir: &Path) -> Roots {
        Roots {
            procfs: dir.join("proc"),
            sysfs: dir.join("sys"),
        }
    }

    #[test]
    fn reading_md_from_files() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        assert_eq!(read_md(&r).unwrap(), [], "no mdstat, no md module: no arrays");
        write(&r.proc("mdstat"), &mdstat_fixture("raid1-clean"));
        write(&r.sys("block/md0/md/array_state"), "clean\n");
        write(&r.sys("block/md0/md/degraded"), "1\n");
        let entries = read_md(&r).unwrap();
        assert_eq!((entries[0].kind, entries[0].name.as_str()), ("md", "md0"));
        assert_eq!(entries[0].health, Health::Degraded, "sysfs saw a loss mdstat did not");
        assert_eq!(entries[0].value["array_state"], "clean");
        write(&r.proc("mdstat"), "nonsense\n");
        assert_eq!(read_md(&r).unwrap_err().code, "parse_failed");
        std::fs::remove_file(r.proc("mdstat")).unwrap();
        std::fs::create_dir(r.proc("mdstat")).unwrap();
        assert_eq!(read_md(&r).unwrap_err().code, "read_failed");
    }

    #[test]
    fn zpool_list_and_status() {
        let list = "tank\tONLINE\t3985729650688\t1234567890\t3984495082798\n\
                    backup\tDEGRADED\t1000\t400\t600\n\
                    gone\tUNAVAIL\t-\t-\t-\n\
                    not a pool line\n";
        let pools = parse_zpool_list(list);
        assert_eq!(pools.len(), 3);
        assert_eq!(pools[2].size_bytes, None);
        let status = "  pool: backup\n state: DEGRADED\nstatus: One or more devices is currently being resilvered.  The pool will\n\
                      \tcontinue to function, possibly in a degraded state.\n\
                      action: Wait for the resilver to complete.\n\
                      \x20 scan: resilver in progress since Mon Nov 23 10:00:00 2026\n\
                      \t1.23T / 3.60T scanned at 1.50G/s, 456G / 3.60T issued at 600M/s\n\
                      \t120G resilvered, 12.34% done, 01:30:00 to go\n\
                      config:\n\n\tNAME        STATE     READ WRITE CKSUM\n\tbackup      DEGRADED     0     0     0\n\n\
                      errors: No known data errors\n\n\
                      \x20 pool: gone\n state: UNAVAIL\n  scan: scrub repaired 0B in 00:10:00 with 0 errors on Sun Nov  8 00:34:01 2026\n\
                      config:\n";
        let scans = parse_zpool_status(status);
        assert_eq!(scans.len(), 1);
        assert_eq!(
            scans["backup"],
            SyncProgress {
                action: "recovery",
                progress: Some(1234),
                finish: Some("01:30:00".into()),
                speed: Some("600M/s".into()),
            }
        );
        // Older wording.
        let old = parse_zpool_scan(
            "scrub in progress since Sun Jul 25 2021 1.23T scanned out of 3.60T at 150M/s, 5h30m to go 0B repaired, 34.12% done",
        )
        .unwrap();
        assert_eq!(
            (old.action, old.progress, old.finish.as_deref(), old.speed.as_deref()),
            ("check", Some(3412), Some("5h30m"), Some("150M/s"))
        );
        assert_eq!(parse_zpool_status("all pools are healthy\n"), HashMap::new());

        let e: Vec<_> = pools.iter().map(|p| p.entry(scans.get(&p.name))).collect();
        assert_eq!(
            e[1].value,
            json!({
                "name": "backup", "kind": "zfs", "level": null, "state": "degraded", "size_bytes": 1000,
                "members": [], "devices_total": null, "devices_active": null, "degraded": true,
                "sync": {"action": "recovery", "progress_pct": 12.34, "finish": "01:30:00", "speed": "600M/s"},
                "health": "rebuilding", "allocated_bytes": 400, "free_bytes": 600,
            })
        );
        let health: Vec<_> = e.iter().map(|e| e.health).collect();
        assert_eq!(health, [Health::Ok, Health::Rebuilding, Health::Failed]);
    }

    /// A fake `zpool`: answers from `list` and `status`, recording each call.
    fn fake_zpool(
        list: Result<&'static str, ToolError>,
        status: Result<&'static str, ToolError>,
    ) -> (impl CommandRunner, Arc<parking_lot::Mutex<Vec<String>>>) {
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let runner = move |program: &str, args: &[&str], _timeout: Duration| {
            seen.lock().push(format!("{program} {}", args.join(" ")));
            match args.first() {
                Some(&"list") => list.clone().map(str::to_string),
                _ => status.clone().map(str::to_string),
            }
        };
        (runner, calls)
    }

    #[test]
    fn zfs_runs_only_where_loaded_and_reports_missing_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        let (runner, calls) = fake_zpool(Ok("tank\tONLINE\t10\t1\t9\n"), Ok(""));
        assert_eq!(read_zfs(&r, &runner, Duration::from_secs(1)), (vec![], None));
        assert!(calls.lock().is_empty(), "no zfs module, no zpool");

        std::fs::create_dir_all(r.sys("module/zfs")).unwrap();
        let (entries, tool) = read_zfs(&r, &runner, Duration::from_secs(1));
        assert_eq!((entries.len(), tool), (1, Some("ok")));
        assert_eq!(
            *calls.lock(),
            ["zpool list -H -p -o name,health,size,alloc,free"],
            "healthy: no status"
        );

        let (runner, calls) = fake_zpool(Ok("tank\tDEGRADED\t10\t1\t9\n"), Err(ToolError::Timeout));
        let (entries, tool) = read_zfs(&r, &runner, Duration::from_secs(1));
        assert_eq!((entries[0].health, tool), (Health::Degraded, Some("ok")));
        assert_eq!(calls.lock().len(), 2);

        for (err, word) in [
            (ToolError::NotFound, "unsupported"),
            (ToolError::Timeout, "timeout"),
            (ToolError::Failed("x".into()), "failed"),
        ] {
            let (runner, _) = fake_zpool(Err(err), Ok(""));
            assert_eq!(read_zfs(&r, &runner, Duration::from_secs(1)), (vec![], Some(word)));
        }
    }

    #[test]
    fn system_runner() {
        let runner = SystemRunner::default();
        let t = Duration::from_secs(5);
        assert_eq!(
            runner.run("sh", &["-c", "echo $LC_ALL; echo oops >&2"], t),
            Ok("C\n".into())
        );
        assert_eq!(
            runner.run("/nonexistent/sigmavault-zpool", &[], t),
            Err(ToolError::NotFound)
        );
        let Err(ToolError::Failed(why)) = runner.run("sh", &["-c", "echo no pools >&2; exit 3"], t) else {
            panic!("a failing tool is failed");
        };
        assert!(why.contains("no pools") && why.contains('3'), "{why}");

        let start = Instant::now();
        assert_eq!(
            runner.run("sleep", &["2"], Duration::from_millis(50)),
            Err(ToolError::Timeout)
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the timeout does not wait for the tool"
        );
        // Killed and reaped in the background; until then nothing else runs.
        let mut cleared = false;
        for _ in 0..200 {
            if runner.run("true", &[], t).is_ok() {
                cleared = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(cleared, "the stuck flag clears once the killed run is reaped");
    }

    fn btrfs_fs(
        sys: &Path,
        fsid: &str,
        devices: &[&str],
        devinfo: &[(&str, &str)],
        profiles: &[(&str, &str)],
    ) -> PathBuf {
        let fs = sys.join("fs/btrfs").join(fsid);
        std::fs::create_dir_all(fs.join("devices")).unwrap();
        for d in devices {
            std::fs::create_dir_all(fs.join("devices").join(d)).unwrap();
        }
        for (devid, missing) in devinfo {
            write(&fs.join("devinfo").join(devid).join("missing"), missing);
            write(
                &fs.join("devinfo").join(devid).join("error_stats"),
                "write_errs 0\nread_errs 3\nflush_errs 0\ncorruption_errs 1\ngeneration_errs 0\n",
            );
        }
        for (kind, profile) in profiles {
            std::fs::create_dir_all(fs.join("allocation").join(kind).join(profile)).unwrap();
            write(&fs.join("allocation").join(kind).join("total_bytes"), "1\n");
        }
        write(&fs.join("label"), "\n");
        fs
    }

    #[test]
    fn btrfs_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        let sys = r.sys("");
        assert_eq!(read_btrfs(&r, &[]), (vec![], None), "nothing mounted, nothing read");

        let raid1 = [("data", "raid1"), ("metadata", "raid1"), ("system", "raid1")];
        let fs = btrfs_fs(
            &sys,
            "0c6b9a3e-aaaa",
            &["sdb", "sdc"],
            &[("1", "0\n"), ("2", "1\n")],
            &raid1,
        );
        write(&fs.join("label"), "pool\n");
        btrfs_fs(
            &sys,
            "11111111-bbbb",
            &["dm-0"],
            &[("1", "0\n")],
            &[("data", "single"), ("metadata", "dup")],
        );
        write(&r.sys("block/dm-0/dm/name"), "luks-home\n");
        btrfs_fs(&sys, "22222222-cccc", &["sdx"], &[("1", "0\n")], &[]);
        std::fs::create_dir_all(sys.join("fs/btrfs/features")).unwrap();

        let mounts = [("/dev/sdc", "/srv/pool"), ("/dev/mapper/luks-home", "/home")];
        let (entries, tool) = read_btrfs(&r, &mounts);
        assert_eq!(tool, Some("ok"));
        assert_eq!(entries.len(), 2, "the unmounted filesystem is not listed");
        assert_eq!(
            entries[0].value,
            json!({
                "name": "0c6b9a3e-aaaa", "kind": "btrfs", "level": "raid1", "state": "mounted", "size_bytes": null,
                "members": [
                    {"device": null, "role_index": 1, "failed": false, "spare": false, "errors": {
                        "write_errs": 0, "read_errs": 3, "flush_errs": 0, "corruption_errs": 1, "generation_errs": 0}},
                    {"device": null, "role_index": 2, "failed": true, "spare": false, "errors": {
                        "write_errs": 0, "read_errs": 3, "flush_errs": 0, "corruption_errs": 1, "generation_errs": 0}},
                ],
                "devices_total": 2, "devices_active": 1, "degraded": true, "sync": null, "health": "degraded",
                "label": "pool", "mount_point": "/srv/pool",
            })
        );
        let home = &entries[1].value;
        assert_eq!(
            (
                &home["members"][0]["device"],
                &home["level"],
                &home["health"],
                &home["label"]
            ),
            (&json!("dm-0"), &json!("single"), &json!("ok"), &Value::Null)
        );

        // A missing device of a filesystem with unredundant metadata loses data.
        write(&r.sys("fs/btrfs/11111111-bbbb/devinfo/1/missing"), "1\n");
        let (entries, _) = read_btrfs(&r, &mounts);
        assert_eq!(entries[1].health, Health::Failed);

        // A kernel without devinfo cannot tell.
        std::fs::remove_dir_all(r.sys("fs/btrfs/11111111-bbbb/devinfo")).unwrap();
        let (entries, tool) = read_btrfs(&r, &mounts);
        assert_eq!((entries.len(), tool), (1, Some("unsupported")));
    }

    #[test]
    fn btrfs_error_stats() {
        assert_eq!(parse_btrfs_error_stats("write_errs 1\n"), None, "partial is not zeros");
        let all = "generation_errs 5\nwrite_errs 1\nread_errs 2\nflush_errs 3\ncorruption_errs 4\nnew_counter 9\n";
        assert_eq!(
            serde_json::to_string(&parse_btrfs_error_stats(all).unwrap()).unwrap(),
            r#"{"write_errs":1,"read_errs":2,"flush_errs":3,"corruption_errs":4,"generation_errs":5}"#
        );
    }
}
