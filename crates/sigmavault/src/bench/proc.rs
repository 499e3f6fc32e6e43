//! CPU time and resident memory of a process, from procfs.
//!
//! The parsers are pure functions over file contents so they are tested on fixture text;
//! [`ProcFs`] only reads files under a root that tests (or containers) can move.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

/// `AT_CLKTCK` in the ELF auxiliary vector: the unit of utime/stime.
const AT_CLKTCK: u64 = 17;
/// What every Linux we target uses, if the auxv cannot be read.
const DEFAULT_CLK_TCK: u64 = 100;

/// Which process to sample.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pid {
    /// The bench itself.
    Myself,
    /// Another process (the server).
    Other(u32),
}

/// Reads `<root>/<pid>/{stat,status}`.
#[derive(Debug, Clone)]
pub(crate) struct ProcFs {
    root: PathBuf,
    clk_tck: u64,
}

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// user + system CPU time, microseconds.
    pub(crate) cpu_us: u64,
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
}

impl ProcFs {
    /// procfs at `/proc`, or at `$SIGMAVAULT_PROCFS_ROOT` (as in vector's `PROCFS_ROOT`).
    pub(crate) fn from_env() -> ProcFs {
        let root = std::env::var_os("SIGMAVAULT_PROCFS_ROOT").map_or_else(|| PathBuf::from("/proc"), PathBuf::from);
        let clk_tck = std::fs::read(root.join("self/auxv"))
            .ok()
            .and_then(|auxv| parse_clk_tck(&auxv))
            .unwrap_or(DEFAULT_CLK_TCK);
        ProcFs { root, clk_tck }
    }

    /// Samples CPU time and RSS.
    pub(crate) fn sample(&self, pid: Pid) -> Result<Sample> {
        let dir = match pid {
            Pid::Myself => self.root.join("self"),
            Pid::Other(pid) => self.root.join(pid.to_string()),
        };
        let stat =
            std::fs::read_to_string(dir.join("stat")).with_context(|| format!("reading {}/stat", dir.display()))?;
        let status =
            std::fs::read_to_string(dir.join("status")).with_context(|| format!("reading {}/status", dir.display()))?;
        let ticks = parse_stat_cpu_ticks(&stat)?;
        Ok(Sample {
            cpu_us: ticks.saturating_mul(1_000_000) / self.clk_tck.max(1),
            rss_kib: parse_vm_rss_kib(&status).ok_or_else(|| anyhow!("no VmRSS in {}/status", dir.display()))?,
        })
    }
}

impl ProcFs {
    /// The soft limit on open files of this process; `None` when unlimited or unknown.
    pub(crate) fn open_files_limit(&self) -> Option<u64> {
        parse_open_files_limit(&std::fs::read_to_string(self.root.join("self/limits")).ok()?)
    }
}

/// The soft `Max open files` from `/proc/PID/limits`.
pub(crate) fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) from `/proc/PID/stat`, in clock ticks. Fields are
/// counted after the last `)`, because the command name may contain spaces and parens.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("malformed stat: no ')'"))?;
    // After ")" the fields start at #3 (state); utime is #14, stime #15.
    let mut fields = after.split_ascii_whitespace().skip(11);
    let mut next = |name: &str| -> Result<u64> {
        fields
            .next()
            .ok_or_else(|| anyhow!("malformed stat: no {name}"))?
            .parse::<u64>()
            .with_context(|| format!("malformed stat: {name}"))
    };
    let utime = next("utime")?;
    let stime = next("stime")?;
    Ok(utime + stime)
}

/// `VmRSS:   12345 kB` from `/proc/PID/status`, in KiB.
pub(crate) fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The clock-tick rate from a 64-bit little-endian auxv: (key, value) u64 pairs ending in 0.
pub(crate) fn parse_clk_tck(auxv: &[u8]) -> Option<u64> {
    let word = |chunk: &[u8]| -> Option<u64> { Some(u64::from_ne_bytes(chunk.try_into().ok()?)) };
    auxv.chunks_exact(16)
        .map(|pair| Some((word(&pair[..8])?, word(&pair[8..])?)))
        .take_while(|kv| kv.is_some_and(|(k, _)| k != 0))
        .flatten()
        .find(|&(k, _)| k == AT_CLKTCK)
        .map(|(_, v)| v)
        .filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (sigma vault (srv)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                        350 125 0 0 20 0 9 0 123456 1000000000 5000 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17922 0 0 0 17 1 0 0 0 0 0";

    const STATUS: &str = "Name:\tsigmavault\nUmask:\t0022\nState:\tS (sleeping)\n\
                          VmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t   40000 kB\nThreads:\t9\n";

    #[test]
    fn stat_cpu_ticks_skip_tricky_names() {
        assert_eq!(parse_stat_cpu_ticks(STAT).expect("fixture parses"), 475);
        assert!(parse_stat_cpu_ticks("12 (x) S 1 2").is_err());
        assert!(parse_stat_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn vm_rss() {
        assert_eq!(parse_vm_rss_kib(STATUS), Some(51234));
        assert_eq!(parse_vm_rss_kib("Name:\tkthread\n"), None);
    }

    #[test]
    fn open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        assert_eq!(
            parse_open_files_limit("Max open files  unlimited  unlimited  files"),
            None
        );
        assert_eq!(parse_open_files_limit(""), None);
    }

    #[test]
    fn clk_tck_from_auxv() {
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (17, 250), (0, 0), (17, 999)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_clk_tck(&auxv), Some(250));
        assert_eq!(parse_clk_tck(&auxv[..16]), None);
        assert_eq!(parse_clk_tck(&[1, 2, 3]), None);
    }

    #[test]
    fn samples_this_process() {
        let procfs = ProcFs::from_env();
        let sample = procfs.sample(Pid::Myself).expect("own /proc entry");
        assert!(sample.rss_kib > 0);
    }

    #[test]
    fn reads_a_fixture_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_dir = dir.path().join("4242");
        std::fs::create_dir(&proc_dir).expect("mkdir");
        std::fs::write(proc_dir.join("stat"), STAT).expect("write");
        std::fs::write(proc_dir.join("status"), STATUS).expect("write");
        let procfs = ProcFs {
            root: dir.path().to_owned(),
            clk_tck: 100,
        };
        let sample = procfs.sample(Pid::Other(4242)).expect("fixture");
        assert_eq!(
            sample,
            Sample {
                cpu_us: 4_750_000,
                rss_kib: 51234
            }
        );
    }
}
