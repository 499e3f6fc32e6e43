//! Pure parsers of the `/proc` files behind `system.status` (`stat`, `meminfo`,
//! `loadavg`, `uptime`, `sys/kernel/{hostname,random/boot_id}`). They take the
//! text and never touch the filesystem, so every odd input is a unit test; the
//! caller turns a [`ParseError`] into `parse_failed` with the path attached.
//!
//! Parsers are strict about the fields they use (a truncated or garbled value is
//! an error, never a silent 0) and lenient about everything else (unknown lines
//! and extra columns are ignored), because newer kernels add both.

/// Why a `/proc` text did not parse. It carries no path: the parsers never see
/// one, and [`super::SourceError::parse`] adds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err(what: impl Into<String>) -> ParseError {
    ParseError(what.into())
}

/// CPU time of one `cpu` line of `/proc/stat`, in USER_HZ ticks. Only the two
/// sums the busy percentage needs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal. `guest` and
    /// `guest_nice` are left out: the kernel already counts them in `user` and
    /// `nice`, so adding them would count guest time twice.
    pub total: u64,
    /// idle + iowait: a CPU waiting for I/O is free to run something else.
    pub idle: u64,
}

impl CpuTimes {
    /// Ticks spent doing work.
    pub fn busy(&self) -> u64 {
        self.total.saturating_sub(self.idle)
    }
}

/// One `cpuN` line of `/proc/stat`. The index is kept because offline CPUs have
/// no line, so position in the list is not the CPU number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreTimes {
    /// N of `cpuN`.
    pub index: u32,
    /// Its times.
    pub times: CpuTimes,
}

/// The CPU lines of `/proc/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuStat {
    /// The `cpu` line: the sum over all possible CPUs.
    pub all: CpuTimes,
    /// The `cpuN` lines in file order: one per online CPU.
    pub cores: Vec<CoreTimes>,
}

/// Parses the CPU lines of `/proc/stat`. The aggregate `cpu` line and at least
/// one `cpuN` line are required; other lines (`intr`, `ctxt`, …) are ignored.
pub fn parse_stat(text: &str) -> Result<CpuStat, ParseError> {
    let mut all = None;
    let mut cores = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let (label, fields) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let times = parse_cpu_fields(fields).map_err(|e| err(format!("cpu{label} line: {e}")))?;
        if label.is_empty() {
            if all.replace(times).is_some() {
                return Err(err("more than one aggregate cpu line"));
            }
        } else {
            let index = label
                .parse::<u32>()
                .map_err(|_| err(format!("bad cpu line label {:?}", format!("cpu{label}"))))?;
            cores.push(CoreTimes { index, times });
        }
    }
    let all = all.ok_or_else(|| err("no aggregate cpu line"))?;
    if cores.is_empty() {
        return Err(err("no per-CPU (cpuN) lines"));
    }
    Ok(CpuStat { all, cores })
}

/// The columns after `cpu`/`cpuN`. Kernels before 2.6.11 had only four (user
/// nice system idle); missing later columns count as 0, extra ones are ignored.
fn parse_cpu_fields(fields: &str) -> Result<CpuTimes, String> {
    let mut v = [0u64; 8];
    let mut n = 0;
    for field in fields.split_ascii_whitespace() {
        let value = field.parse::<u64>().map_err(|_| format!("bad value {field:?}"))?;
        if n < v.len() {
            v[n] = value;
        }
        n += 1;
    }
    if n < 4 {
        return Err(format!("{n} values, expected at least 4"));
    }
    // Saturating: garbage near u64::MAX must not panic in debug builds; the
    // busy percentage clamps whatever comes out.
    let total = v.iter().fold(0u64, |a, &x| a.saturating_add(x));
    let idle = v[3].saturating_add(v[4]);
    Ok(CpuTimes { total, idle })
}

/// The `/proc/meminfo` lines `system.status` needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what can be allocated without swapping, counting
    /// reclaimable cache, which is why "used" is measured against it.
    pub available: u64,
    /// `SwapTotal`, 0 when the line is absent.
    pub swap_total: u64,
    /// `SwapFree`, 0 when the line is absent.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`. `MemTotal` and `MemAvailable` are required (the
/// latter exists since Linux 3.14) and `MemTotal` must not be 0; the swap lines
/// are optional. Values are kB in the file and bytes in the result.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut total = None;
    let mut available = None;
    let mut swap_total = None;
    let mut swap_free = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "SwapTotal" => &mut swap_total,
            "SwapFree" => &mut swap_free,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(parse_kb(value).map_err(|e| err(format!("{key}: {e}")))?);
        }
    }
    let total = total.ok_or_else(|| err("no MemTotal line"))?;
    let available = available.ok_or_else(|| err("no MemAvailable line"))?;
    if total == 0 {
        return Err(err("MemTotal is 0"));
    }
    Ok(MemInfo {
        total,
        available,
        swap_total: swap_total.unwrap_or(0),
        swap_free: swap_free.unwrap_or(0),
    })
}

/// `"   24683656 kB"` → bytes.
fn parse_kb(value: &str) -> Result<u64, String> {
    let mut parts = value.split_ascii_whitespace();
    let (Some(number), Some("kB"), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected \"<n> kB\", got {:?}", value.trim()));
    };
    let kb = number.parse::<u64>().map_err(|_| format!("bad value {number:?}"))?;
    kb.checked_mul(1024).ok_or_else(|| format!("{kb} kB overflows"))
}

/// `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Runnable scheduling entities (threads) now: the `3` of `3/101`.
    pub runnable: u64,
    /// Existing scheduling entities (threads, kernel threads included): the
    /// `101` of `3/101`. Not a process count.
    pub entities: u64,
}

/// Parses `/proc/loadavg` (`1.29 1.13 1.22 3/101 10826`). The last-PID column is
/// not used and may be missing; the first four are required.
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ParseError> {
    let mut fields = text.split_ascii_whitespace();
    let mut load = [0.0; 3];
    for (slot, name) in load.iter_mut().zip(["1", "5", "15"]) {
        let field = fields.next().ok_or_else(|| err(format!("no {name}-minute load")))?;
        *slot = parse_non_negative(field).map_err(|e| err(format!("{name}-minute load: {e}")))?;
    }
    let field = fields.next().ok_or_else(|| err("no runnable/total field"))?;
    let (runnable, entities) = field
        .split_once('/')
        .and_then(|(r, t)| Some((r.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
        .ok_or_else(|| err(format!("bad runnable/total field {field:?}")))?;
    Ok(LoadAvg {
        load,
        runnable,
        entities,
    })
}

/// Parses `/proc/uptime` (`10924.43 9263.70`): seconds since boot, the first
/// column. The second (idle time summed over CPUs) is not used.
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    let field = text.split_ascii_whitespace().next().ok_or_else(|| err("empty"))?;
    parse_non_negative(field).map_err(|e| err(format!("uptime: {e}")))
}

/// A finite, non-negative decimal. `f64::from_str` alone would accept `inf`,
/// `NaN` and `-1`, none of which the kernel writes and none of which JSON can
/// carry sensibly.
fn parse_non_negative(field: &str) -> Result<f64, String> {
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("bad value {field:?}")),
    }
}

/// Parses `sys/kernel/hostname`: one line. An empty name is an error: the
/// kernel reports `(none)` when none is set, so empty means a broken file.
pub fn parse_hostname(text: &str) -> Result<String, ParseError> {
    let name = text.trim_end_matches('\n');
    if name.is_empty() || name.contains('\n') {
        return Err(err(format!("expected one non-empty line, got {text:?}")));
    }
    Ok(name.to_owned())
}

/// Parses `sys/kernel/random/boot_id`: a UUID, returned in the kernel's
/// lowercase hyphenated form. Clients compare it across samples to detect a
/// reboot, so anything else is rejected rather than passed on.
pub fn parse_boot_id(text: &str) -> Result<String, ParseError> {
    let id = text.trim();
    uuid::Uuid::try_parse(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| err(format!("not a UUID: {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's `/proc/stat` (2 CPUs, kernel 6.18), `intr` shortened.
    const STAT: &str = "\
cpu  921559 49496 233660 926370 13387 0 24295 7275 0 0
cpu0 437483 27034 111415 493141 3234 0 11906 3646 0 0
cpu1 484075 22462 122244 433229 10152 0 12388 3629 0 0
intr 8054193 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 9 0 0 0 0 2184 1233 0 190 1 521987 0
ctxt 12305225
btime 1795790599
processes 238046
procs_running 3
procs_blocked 0
softirq 45176607 0 868565 5 41481909 521855 0 293 868322 48798 1386860
";

    #[test]
    fn stat_real_sample() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s.all,
            CpuTimes {
                total: 921559 + 49496 + 233660 + 926370 + 13387 + 24295 + 7275,
                idle: 926370 + 13387,
            }
        );
        assert_eq!(s.cores.len(), 2);
        assert_eq!(s.cores[0].index, 0);
        assert_eq!(s.cores[1].index, 1);
        assert_eq!(s.cores[1].times.idle, 433229 + 10152);
        assert_eq!(s.all.busy(), s.all.total - s.all.idle);
    }

    #[test]
    fn stat_guest_time_is_not_counted_twice() {
        let s = parse_stat("cpu  100 10 50 800 40 0 0 0 30 5\ncpu0 100 10 50 800 40 0 0 0 30 5\n").unwrap();
        assert_eq!(s.all, CpuTimes { total: 1000, idle: 840 });
    }

    #[test]
    fn stat_old_and_future_column_counts() {
        // 2.6.0-era: four columns; later columns count as 0.
        let s = parse_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(s.all, CpuTimes { total: 10, idle: 4 });
        // A column a future kernel might add is ignored.
        let s = parse_stat("cpu 1 1 1 1 1 1 1 1 1 1 99\ncpu0 1 1 1 1 1 1 1 1 1 1 99\n").unwrap();
        assert_eq!(s.all, CpuTimes { total: 8, idle: 2 });
    }

    #[test]
    fn stat_offline_cpus_keep_their_numbers() {
        let s = parse_stat("cpu 4 0 0 4\ncpu0 1 0 0 1\ncpu3 3 0 0 3\n").unwrap();
        let idx: Vec<u32> = s.cores.iter().map(|c| c.index).collect();
        assert_eq!(idx, [0, 3]);
    }

    #[test]
    fn stat_huge_values_saturate_instead_of_panicking() {
        let max = u64::MAX;
        let s = parse_stat(&format!("cpu {max} {max} 0 {max} {max}\ncpu0 1 0 0 1\n")).unwrap();
        assert_eq!(s.all.total, u64::MAX);
        assert_eq!(s.all.idle, u64::MAX);
        assert_eq!(s.all.busy(), 0);
    }

    #[test]
    fn stat_rejects_garbage_and_truncation() {
        for (text, why) in [
            ("", "no aggregate"),
            ("hello world\n", "no aggregate"),
            ("cpu0 1 2 3 4\n", "no aggregate"),
            ("cpu 1 2 3 4\n", "no per-CPU"),
            ("cpu 1 2 3 4\ncpu 1 2 3 4\ncpu0 1 2 3 4\n", "more than one"),
            ("cpu  921559 49496 233660\ncpu0 1 2 3 4\n", "at least 4"),
            ("cpu\ncpu0 1 2 3 4\n", "0 values"),
            ("cpu 1 2 x 4\ncpu0 1 2 3 4\n", "bad value \"x\""),
            ("cpu 1 2 -3 4\ncpu0 1 2 3 4\n", "bad value"),
            ("cpu 1 2 3 4\ncpuX 1 2 3 4\n", "bad cpu line label \"cpuX\""),
            ("cpu 1 2 3 4\ncpu0 1 2 3 99999999999999999999999\n", "bad value"),
            ("\u{0}\u{1}garbage", "no aggregate"),
        ] {
            let e = parse_stat(text).unwrap_err();
            assert!(e.0.contains(why), "{text:?}: {e}");
        }
        // Truncated mid-file, after the CPU lines: still fine.
        assert!(parse_stat(&STAT[..STAT.find("intr").unwrap() + 10]).is_ok());
    }

    /// This machine's `/proc/meminfo` (no swap configured), abridged.
    const MEMINFO: &str = "\
MemTotal:       24683656 kB
MemFree:        18933836 kB
MemAvailable:   23870728 kB
Buffers:           33708 kB
Cached:          4839236 kB
SwapCached:            0 kB
Active:          1461848 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Zswap:                 0 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:    25165824 kB
";

    #[test]
    fn meminfo_real_sample() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(
            m,
            MemInfo {
                total: 24683656 * 1024,
                available: 23870728 * 1024,
                swap_total: 0,
                swap_free: 0,
            }
        );
    }

    #[test]
    fn meminfo_swap_lines_are_optional() {
        let m = parse_meminfo("MemTotal: 1000 kB\nMemAvailable: 500 kB\n").unwrap();
        assert_eq!((m.swap_total, m.swap_free), (0, 0));
        let m = parse_meminfo("MemTotal: 1000 kB\nMemAvailable: 500 kB\nSwapTotal: 64 kB\nSwapFree: 16 kB\n").unwrap();
        assert_eq!((m.swap_total, m.swap_free), (64 * 1024, 16 * 1024));
    }

    #[test]
    fn meminfo_ignores_unknown_and_odd_lines_it_does_not_use() {
        let text = "garbage\nHugePages_Total: x\nMemTotal: 1000 kB\nNew_Thing: 5 MB\nMemAvailable: 500 kB\n";
        assert_eq!(parse_meminfo(text).unwrap().total, 1000 * 1024);
    }

    #[test]
    fn meminfo_rejects_garbage_and_truncation() {
        for (text, why) in [
            ("", "no MemTotal"),
            (
                "MemTotal:       24683656 kB\nMemFree:        18933836 kB\n",
                "no MemAvailable",
            ),
            ("MemAvailable: 5 kB\n", "no MemTotal"),
            ("MemTotal: 0 kB\nMemAvailable: 0 kB\n", "MemTotal is 0"),
            (
                "MemTotal: lots kB\nMemAvailable: 5 kB\n",
                "MemTotal: bad value \"lots\"",
            ),
            ("MemTotal: 1000\nMemAvailable: 5 kB\n", "MemTotal: expected"),
            ("MemTotal: 1000 MB\nMemAvailable: 5 kB\n", "MemTotal: expected"),
            ("MemTotal: 1000 kB\nMemAvailable: -5 kB\n", "MemAvailable: bad value"),
            (
                "MemTotal: 1000 kB\nMemAvailable: 5 kB\nSwapTotal: 2 kB kB\n",
                "SwapTotal: expected",
            ),
            ("MemTotal: 18446744073709551615 kB\nMemAvailable: 5 kB\n", "overflows"),
            ("MemTotal:       24683", "MemTotal: expected"),
        ] {
            let e = parse_meminfo(text).unwrap_err();
            assert!(e.0.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn loadavg_real_sample() {
        let l = parse_loadavg("1.29 1.13 1.22 3/101 10826\n").unwrap();
        assert_eq!(
            l,
            LoadAvg {
                load: [1.29, 1.13, 1.22],
                runnable: 3,
                entities: 101,
            }
        );
        // The last-PID column is not needed.
        assert_eq!(parse_loadavg("0.00 0.01 0.05 1/80").unwrap().entities, 80);
    }

    #[test]
    fn loadavg_rejects_garbage_and_truncation() {
        for (text, why) in [
            ("", "no 1-minute"),
            ("1.29 1.13", "no 15-minute"),
            ("1.29 1.13 1.22", "no runnable/total"),
            ("1.29 1.13 1.22 3-101 1", "bad runnable/total"),
            ("1.29 1.13 1.22 3/ 1", "bad runnable/total"),
            ("1.29 x 1.22 3/101 1", "5-minute load: bad value \"x\""),
            ("nan 1 1 3/101 1", "1-minute load: bad value"),
            ("inf 1 1 3/101 1", "1-minute load: bad value"),
            ("-1 1 1 3/101 1", "1-minute load: bad value"),
        ] {
            let e = parse_loadavg(text).unwrap_err();
            assert!(e.0.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn uptime_real_sample() {
        assert_eq!(parse_uptime("10924.43 9263.70\n").unwrap(), 10924.43);
        assert_eq!(parse_uptime("7 3").unwrap(), 7.0);
    }

    #[test]
    fn uptime_rejects_garbage() {
        for text in ["", "\n", "abc 1", "-5.0 1", "NaN 1", "1e999 1"] {
            assert!(parse_uptime(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn hostname_and_boot_id() {
        assert_eq!(parse_hostname("vm\n").unwrap(), "vm");
        assert_eq!(parse_hostname("(none)\n").unwrap(), "(none)");
        assert!(parse_hostname("\n").is_err());
        assert!(parse_hostname("a\nb\n").is_err());
        assert_eq!(
            parse_boot_id("aa07d1b7-606c-45d9-8b41-36baffe762c9\n").unwrap(),
            "aa07d1b7-606c-45d9-8b41-36baffe762c9"
        );
        assert!(parse_boot_id("").is_err());
        assert!(parse_boot_id("aa07d1b7-606c-45d9-8b41\n").is_err());
    }
}
