//! The `system.status` source: host identity, uptime, CPU, memory, swap, load
//! and process count, all from files under the procfs root (see
//! [`super::procfs`] for the parsers).
//!
//! CPU usage is a rate, so the source keeps the previous `/proc/stat` counters;
//! everything else is a plain reading. A sample is all-or-nothing: any file that
//! is missing or garbled fails it with `read_failed` / `parse_failed` (the
//! scheduler then serves the last good value as stale), and a failed sample
//! leaves the CPU baseline untouched so the next good one still measures from
//! the last good one.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::procfs::{self, CpuStat, CpuTimes, ParseError};
use super::{Roots, Sample, Source, SourceError};

/// Samples `system.status`. See the module docs.
pub struct SystemSource {
    roots: Roots,
    /// CPU counters of the last successful sample; `None` before the first, which
    /// therefore reports usage since boot.
    prev: Option<CpuStat>,
}

impl SystemSource {
    /// A source reading below `roots.procfs` (`sysfs` is not used).
    pub fn new(roots: Roots) -> SystemSource {
        SystemSource { roots, prev: None }
    }
}

impl Source for SystemSource {
    fn name(&self) -> &str {
        "system"
    }

    fn topic(&self) -> &'static str {
        "system.status"
    }

    /// The state value, e.g. (the fixture `tests/fixtures/procfs/basic`):
    ///
    /// ```json
    /// {"hostname": "nas-fixture", "boot_id": "3f2b6c1e-8d4a-4e7b-9c0f-1a2b3c4d5e6f",
    ///  "uptime": 12345.67, "cpu_usage": 31.5, "cpu_per_core": [45.0, 18.0], "cpu_count": 2,
    ///  "memory_total": 16384000000, "memory_used": 6144000000, "memory_available": 10240000000,
    ///  "memory_pct": 37.5, "swap_total": 2147483648, "swap_used": 268435456, "swap_pct": 12.5,
    ///  "load_average": [0.52, 0.58, 0.59], "process_count": 3}
    /// ```
    ///
    /// Byte counts are integers; percentages are 0–100 rounded to 0.1; `uptime`
    /// is seconds with the kernel's two decimals. `cpu_count` is the number of
    /// online CPUs (one `cpuN` line each) and `cpu_per_core` follows their order.
    fn sample(&mut self) -> Result<Sample, SourceError> {
        // Every file is read and parsed before `self.prev` changes, so a failure
        // anywhere leaves the baseline as it was.
        let stat = load(self.roots.proc("stat"), procfs::parse_stat)?;
        let mem = load(self.roots.proc("meminfo"), procfs::parse_meminfo)?;
        let loadavg = load(self.roots.proc("loadavg"), procfs::parse_loadavg)?;
        let uptime = load(self.roots.proc("uptime"), procfs::parse_uptime)?;
        let hostname = load(self.roots.proc("sys/kernel/hostname"), procfs::parse_hostname)?;
        let boot_id = load(self.roots.proc("sys/kernel/random/boot_id"), procfs::parse_boot_id)?;
        let process_count = count_processes(&self.roots.procfs)?;

        let prev = self.prev.as_ref();
        let cpu_usage = usage(prev.map(|p| p.all), stat.all);
        let cpu_per_core: Vec<f64> = stat
            .cores
            .iter()
            .enumerate()
            .map(|(i, core)| {
                // Matched by CPU number, not position: a CPU going offline or
                // coming back shifts positions, and a CPU with no previous
                // counters starts from since-boot like a first sample.
                let before = prev.and_then(|p| {
                    p.cores
                        .get(i)
                        .filter(|c| c.index == core.index)
                        .or_else(|| p.cores.iter().find(|c| c.index == core.index))
                });
                usage(before.map(|c| c.times), core.times)
            })
            .collect();
        let cpu_count = stat.cores.len();
        self.prev = Some(stat);

        let memory_used = mem.total.saturating_sub(mem.available);
        let swap_used = mem.swap_total.saturating_sub(mem.swap_free);
        let state = json!({
            "hostname": hostname,
            "boot_id": boot_id,
            "uptime": uptime,
            "cpu_usage": cpu_usage,
            "cpu_per_core": cpu_per_core,
            "cpu_count": cpu_count,
            "memory_total": mem.total,
            "memory_used": memory_used,
            "memory_available": mem.available,
            "memory_pct": pct(memory_used, mem.total),
            "swap_total": mem.swap_total,
            "swap_used": swap_used,
            "swap_pct": pct(swap_used, mem.swap_total),
            "load_average": loadavg.load,
            "process_count": process_count,
        });
        Ok(Sample {
            state,
            events: Vec::new(),
        })
    }
}

/// Reads one file and parses it, naming the file in either error.
fn load<T>(path: PathBuf, parse: fn(&str) -> Result<T, ParseError>) -> Result<T, SourceError> {
    let text = super::read(&path)?;
    parse(&text).map_err(|e| SourceError::parse(&path, e))
}

/// Busy percentage of `cur` over the interval since `prev`, or since boot when
/// there is no usable `prev`.
///
/// A counter that went backwards (a wrap, a different host's file after a
/// fixture or container swap, a CPU whose counters were reset by hotplug) makes
/// the interval meaningless, so it is treated like a first sample: since boot.
/// The result is clamped to 0–100 whatever the counters say.
fn usage(prev: Option<CpuTimes>, cur: CpuTimes) -> f64 {
    match prev {
        Some(p) if cur.total >= p.total && cur.idle >= p.idle => {
            let total = cur.total - p.total;
            let idle = cur.idle - p.idle;
            // total == 0 (two samples within one tick) gives 0 rather than a
            // division by zero; it cannot happen at the scheduler's intervals.
            pct(total.saturating_sub(idle), total)
        }
        _ => pct(cur.busy(), cur.total),
    }
}

/// `part / whole` in percent, 0 when `whole` is 0, clamped to 0–100 and rounded
/// to 0.1 so the published value does not suggest more precision than a
/// one-second tick count has.
fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let p = (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0);
    (p * 10.0).round() / 10.0
}

/// Processes, counted as the numeric directories of the procfs root: what
/// `ps -e` shows (thread-group leaders in this PID namespace).
///
/// Not the total of `/proc/loadavg`'s `3/101` field: that counts every thread,
/// kernel threads included, which on a NAS (per-disk kernel threads, thread-pool
/// daemons like smbd) is several times the process count users expect. The
/// directory pass costs one `getdents` walk (see the `sample_cost` test).
fn count_processes(procfs: &Path) -> Result<u64, SourceError> {
    let entries = std::fs::read_dir(procfs).map_err(|e| SourceError::read(procfs, &e))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|e| SourceError::read(procfs, &e))?;
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
            continue;
        }
        // From d_type on procfs, so no stat. An error means the process exited
        // since the directory was listed: it is rightly not counted.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procfs/basic")
    }

    fn roots(procfs: &Path) -> Roots {
        Roots {
            procfs: procfs.to_path_buf(),
            sysfs: PathBuf::from("/nonexistent-sysfs"),
        }
    }

    /// A writable copy of the fixture tree, for tests that change files.
    fn fixture_copy() -> tempfile::TempDir {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let dest = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &dest);
                } else {
                    std::fs::copy(entry.path(), dest).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        copy(&fixture(), dir.path());
        dir
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        std::fs::write(dir.join(rel), text).unwrap();
    }

    /// The fixture's `stat` with each CPU's counters replaced.
    fn stat(all: &str, cores: &[&str]) -> String {
        let mut s = format!("cpu  {all}\n");
        for (i, c) in cores.iter().enumerate() {
            s.push_str(&format!("cpu{i} {c}\n"));
        }
        s.push_str("intr 8054193 0 0 0\nctxt 12305225\nbtime 1795790599\nprocesses 238046\n");
        s
    }

    #[test]
    fn name_and_topic() {
        let s = SystemSource::new(roots(&fixture()));
        assert_eq!(s.name(), "system");
        assert_eq!(s.topic(), "system.status");
    }

    #[test]
    fn fixture_sample_is_exact() {
        let mut s = SystemSource::new(roots(&fixture()));
        let sample = s.sample().unwrap();
        assert!(sample.events.is_empty());
        let expected = json!({
            "hostname": "nas-fixture",
            "boot_id": "3f2b6c1e-8d4a-4e7b-9c0f-1a2b3c4d5e6f",
            "uptime": 12345.67,
            // Since boot: busy 6300 of 20000 ticks (guest time not counted twice).
            "cpu_usage": 31.5,
            "cpu_per_core": [45.0, 18.0],
            "cpu_count": 2,
            "memory_total": 16_000_000u64 * 1024,
            "memory_used": 6_000_000u64 * 1024,
            "memory_available": 10_000_000u64 * 1024,
            "memory_pct": 37.5,
            "swap_total": 2_097_152u64 * 1024,
            "swap_used": 262_144u64 * 1024,
            "swap_pct": 12.5,
            "load_average": [0.52, 0.58, 0.59],
            // Dirs 1, 42, 1234; not the file `777` nor `self-not-a-pid/`.
            "process_count": 3,
        });
        assert_eq!(sample.state, expected);
        // Field order is part of what clients see (serde_json preserve_order).
        let keys: Vec<&String> = sample.state.as_object().unwrap().keys().collect();
        let want: Vec<&String> = expected.as_object().unwrap().keys().collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn second_sample_reports_the_interval() {
        let dir = fixture_copy();
        let mut s = SystemSource::new(roots(dir.path()));
        s.sample().unwrap();
        // cpu0: +100 user, +100 idle → 50 %; cpu1: +30 system, +10 iowait,
        // +160 idle → 15 %; all: 130 busy of 400 → 32.5 %.
        write(
            dir.path(),
            "stat",
            &stat(
                "4100 100 1530 13260 710 50 450 200 200 0",
                &[
                    "3100 0 1000 5100 500 0 400 100 200 0",
                    "1000 100 530 8160 210 50 50 100 0 0",
                ],
            ),
        );
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_usage"], 32.5);
        assert_eq!(state["cpu_per_core"], json!([50.0, 15.0]));
        // Nothing moved: 0, not NaN or since-boot.
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_usage"], 0.0);
        assert_eq!(state["cpu_per_core"], json!([0.0, 0.0]));
    }

    #[test]
    fn counters_going_backwards_start_a_fresh_baseline() {
        let dir = fixture_copy();
        let mut s = SystemSource::new(roots(dir.path()));
        s.sample().unwrap();
        // Everything smaller (another host's file, a reboot): since boot of the new one.
        write(
            dir.path(),
            "stat",
            &stat("30 0 10 50 10 0 0 0 0 0", &["30 0 10 50 10 0 0 0 0 0"]),
        );
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_usage"], 40.0);
        assert_eq!(state["cpu_per_core"], json!([40.0]));
        assert_eq!(state["cpu_count"], 1);
        // Only idle went backwards (a kernel reclassifying iowait): still no
        // negative or >100 value.
        write(
            dir.path(),
            "stat",
            &stat("60 0 10 40 0 0 0 0 0 0", &["60 0 10 40 0 0 0 0 0 0"]),
        );
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_usage"], 63.6);
        // And the new values are the baseline for the next interval.
        write(
            dir.path(),
            "stat",
            &stat("70 0 10 50 0 0 0 0 0 0", &["70 0 10 50 0 0 0 0 0 0"]),
        );
        assert_eq!(s.sample().unwrap().state["cpu_usage"], 50.0);
        // Saturated garbage counters stay within 0–100.
        let max = u64::MAX;
        write(
            dir.path(),
            "stat",
            &stat(&format!("{max} 0 0 1"), &[&format!("1 {max} {max} 0")]),
        );
        let state = s.sample().unwrap().state;
        for v in [&state["cpu_usage"], &state["cpu_per_core"][0]] {
            let v = v.as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn cpus_are_matched_by_number_when_one_goes_offline() {
        let dir = fixture_copy();
        let mut s = SystemSource::new(roots(dir.path()));
        write(
            dir.path(),
            "stat",
            &stat("0 0 0 300", &["0 0 0 100", "0 0 0 100", "0 0 0 100"]),
        );
        s.sample().unwrap();
        // cpu1 offline: cpu2 is now second in the file and must be compared
        // with cpu2's old counters (+100 busy of 200 → 50 %), not cpu1's.
        write(
            dir.path(),
            "stat",
            "cpu  100 0 0 500\ncpu0 0 0 0 200\ncpu2 100 0 0 200\n",
        );
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_per_core"], json!([0.0, 50.0]));
        assert_eq!(state["cpu_count"], 2);
        // cpu1 back with no previous counters in the last sample: since boot.
        write(
            dir.path(),
            "stat",
            "cpu  100 0 0 600\ncpu0 0 0 0 300\ncpu1 30 0 0 70\ncpu2 100 0 0 300\n",
        );
        let state = s.sample().unwrap().state;
        assert_eq!(state["cpu_per_core"], json!([0.0, 30.0, 0.0]));
    }

    #[test]
    fn a_failed_sample_keeps_the_baseline() {
        let dir = fixture_copy();
        let mut s = SystemSource::new(roots(dir.path()));
        s.sample().unwrap();
        let good_meminfo = std::fs::read_to_string(dir.path().join("meminfo")).unwrap();
        write(dir.path(), "meminfo", "MemTotal: 1 kB\n");
        write(
            dir.path(),
            "stat",
            &stat(
                "4000 100 1500 13200 700 50 450 200 200 0",
                &["3000 0 1000 5000 500 0 400 100 200 0"],
            ),
        );
        assert_eq!(s.sample().unwrap_err().code, "parse_failed");
        write(dir.path(), "meminfo", &good_meminfo);
        write(
            dir.path(),
            "stat",
            &stat(
                "4200 100 1500 13200 700 50 450 200 200 0",
                &["3000 0 1000 5000 500 0 400 100 200 0"],
            ),
        );
        // 200 busy of 400 since the last good sample (measured from the failed
        // one it would be 200 of 200).
        assert_eq!(s.sample().unwrap().state["cpu_usage"], 50.0);
    }

    #[test]
    fn no_swap_lines_report_zero() {
        let dir = fixture_copy();
        write(
            dir.path(),
            "meminfo",
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n",
        );
        let state = SystemSource::new(roots(dir.path())).sample().unwrap().state;
        assert_eq!(state["memory_pct"], 75.0);
        assert_eq!(state["swap_total"], 0);
        assert_eq!(state["swap_used"], 0);
        assert_eq!(state["swap_pct"], 0.0);
    }

    #[test]
    fn vanished_root_is_read_failed() {
        let dir = fixture_copy();
        let mut s = SystemSource::new(roots(dir.path()));
        s.sample().unwrap();
        let path = dir.path().to_path_buf();
        drop(dir);
        let e = s.sample().unwrap_err();
        assert_eq!(e.code, "read_failed");
        assert!(e.message.contains(&path.join("stat").display().to_string()), "{e}");
    }

    #[test]
    fn each_missing_file_is_read_failed() {
        for rel in [
            "stat",
            "meminfo",
            "loadavg",
            "uptime",
            "sys/kernel/hostname",
            "sys/kernel/random/boot_id",
        ] {
            let dir = fixture_copy();
            std::fs::remove_file(dir.path().join(rel)).unwrap();
            let e = SystemSource::new(roots(dir.path())).sample().unwrap_err();
            assert_eq!(e.code, "read_failed", "{rel}: {e}");
            assert!(e.message.contains(rel), "{rel}: {e}");
        }
    }

    #[test]
    fn garbage_is_parse_failed() {
        for (rel, text) in [
            ("stat", "cpu  1 2 x 4\ncpu0 1 2 3 4\n"),
            ("stat", ""),
            ("meminfo", "MemTotal:       16000000 kB\nMemFree:         2500000 kB\n"),
            ("meminfo", "\u{0}\u{1}\u{2}"),
            ("loadavg", "0.52 0.58\n"),
            ("uptime", "soon\n"),
            ("sys/kernel/hostname", "\n"),
            ("sys/kernel/random/boot_id", "not-a-uuid\n"),
        ] {
            let dir = fixture_copy();
            write(dir.path(), rel, text);
            let e = SystemSource::new(roots(dir.path())).sample().unwrap_err();
            assert_eq!(e.code, "parse_failed", "{rel} {text:?}: {e}");
            assert!(e.message.contains(rel), "{rel}: {e}");
        }
        // Not UTF-8: the read itself fails.
        let dir = fixture_copy();
        std::fs::write(dir.path().join("stat"), b"cpu \xff\xfe\n").unwrap();
        let e = SystemSource::new(roots(dir.path())).sample().unwrap_err();
        assert_eq!(e.code, "read_failed", "{e}");
    }

    #[test]
    fn pct_rounds_and_clamps() {
        assert_eq!(pct(0, 0), 0.0);
        assert_eq!(pct(1, 3), 33.3);
        assert_eq!(pct(2, 3), 66.7);
        assert_eq!(pct(5, 3), 100.0);
        assert_eq!(pct(u64::MAX, u64::MAX), 100.0);
    }

    #[test]
    fn real_host_sample_is_plausible() {
        let mut s = SystemSource::new(Roots::default());
        for _ in 0..2 {
            let state = s.sample().unwrap().state;
            let num = |k: &str| state[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", state[k]));
            assert!(num("memory_total") > 0.0);
            assert!(num("memory_used") <= num("memory_total"));
            assert!(num("cpu_count") >= 1.0);
            assert_eq!(state["cpu_per_core"].as_array().unwrap().len() as f64, num("cpu_count"));
            for k in ["cpu_usage", "memory_pct", "swap_pct"] {
                assert!((0.0..=100.0).contains(&num(k)), "{k}: {}", state[k]);
            }
            assert!(num("uptime") > 0.0);
            assert!(num("process_count") >= 1.0);
            assert_eq!(state["load_average"].as_array().unwrap().len(), 3);
            assert!(!state["hostname"].as_str().unwrap().is_empty());
            assert_eq!(state["boot_id"].as_str().unwrap().len(), 36);
            assert!(matches!(state, Value::Object(_)));
        }
    }

    /// `cargo test -p sigmavault-server --release --lib collect::system::tests::sample_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn sample_cost() {
        let mut s = SystemSource::new(Roots::default());
        s.sample().unwrap();
        let n = 1000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            s.sample().unwrap();
        }
        let per = start.elapsed() / n;
        let start = std::time::Instant::now();
        for _ in 0..n {
            count_processes(Path::new("/proc")).unwrap();
        }
        let procs = start.elapsed() / n;
        println!("system.status sample: {per:?} each, of which the process count {procs:?}");
    }
}
