//! SMART health, one [`SmartSource`] per disk, from
//! `smartctl --json -a -n standby /dev/<disk>`, published on [`TOPIC`] with the
//! disk's name in `disk`.
//!
//! * One source per disk, so each disk has its own breaker: a disk whose
//!   controller makes smartctl fail or hang must not silence the others.
//! * Its own interval (`--smart-interval`, 30 min): every SMART read counts as
//!   activity and keeps a drive from reaching its spin-down timer.
//! * `-n standby` makes smartctl ask the power mode first and leave a drive that
//!   is spun down alone (exit status 2, "Device is in STANDBY mode"). That is
//!   published as `status: "standby"` with the previous values, not as a failure.
//! * `-a` is needed because without an action smartctl only opens the device; it
//!   also reads the error and self-test logs, which bits 6 and 7 report on.
//!   `--json` needs smartctl 7.0; an older one exits 1 with text, which is
//!   `tool_failed` with that text, so the cause is visible in `rpc_error`.
//! * smartctl's exit status is a bit mask. Bits 0–2 say the command failed and
//!   are a failure of the source (`tool_failed`), except where they only say
//!   that this device has no SMART to give: a virtual disk ("Unable to detect
//!   device type"), `smart_support.available == false`, SMART disabled, or no
//!   smartctl installed at all. Those are `status: "unsupported"` samples, so a
//!   VM or a box without smartmontools does not trip breakers and repeat
//!   `rpc_error` forever. Bits 3–7 are the disk's health: data, not failures.
//! * Timeouts: the scheduler's `--source-timeout` is what keeps a hung
//!   smartctl from holding up the published state; the sample is then abandoned
//!   on the blocking pool and the child keeps running. So that it does not run
//!   forever, [`SmartSource::sample`] itself waits at most [`TOOL_CAP`] and then
//!   kills the child (and kills it on any other early return too).

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Roots, Sample, Source, SourceError, storage};

/// The state topic, keyed by `disk`.
pub const TOPIC: &str = "storage.smart";

/// The longest a sample waits for smartctl before killing it. Generous: a
/// drive that has just been asked to spin up can take 20–30 s, and the
/// scheduler's timeout normally gives up on the sample long before.
pub const TOOL_CAP: Duration = Duration::from_secs(60);

/// How long the output pipes may stay open after smartctl has exited. Only a
/// grandchild holding them could do that; its output is not waited for.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// smartctl's JSON for `-a` is tens of KiB; anything past this is not smartctl.
const MAX_OUTPUT: u64 = 4 << 20;

/// Bits 0–2 of the exit status: the command line did not parse, the device
/// could not be opened (or is in a low-power mode), a command to it failed.
const FAILURE_BITS: i32 = 0b111;

/// Bit 1, which `-n standby` also uses for "the device is spun down".
const OPEN_FAILED_OR_ASLEEP: i32 = 1 << 1;

/// Bit 3: the SMART status check returned "DISK FAILING".
const DISK_FAILING: i32 = 1 << 3;

/// Names of the health bits 3–7 of smartctl's exit status (`man smartctl`,
/// RETURN VALUES), as published in `exit_flags`.
pub const EXIT_FLAGS: [(u32, &str); 5] = [
    (3, "disk_failing"),
    // Some prefail attributes are at or below their threshold now.
    (4, "prefail_attributes_failing"),
    // Some attributes have been at or below their threshold in the past.
    (5, "attributes_failed_in_past"),
    (6, "error_log_has_errors"),
    // ATA: failed self-tests newer than the last good extended one.
    (7, "self_test_log_has_errors"),
];

/// The names of the health bits set in an exit status, low bit first.
pub fn exit_flags(exit_status: i32) -> Vec<&'static str> {
    EXIT_FLAGS
        .iter()
        .filter(|(bit, _)| exit_status & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The overall verdict for one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The drive's own health assessment passed.
    Passed,
    /// The drive says it is failing (exit bit 3, or `smart_status.passed == false`).
    Failed,
    /// No SMART health to be had; `reason` says why.
    Unsupported,
    /// Spun down and left alone; the other values are from the last reading.
    Standby,
}

impl Status {
    /// The published text.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Unsupported => "unsupported",
            Status::Standby => "standby",
        }
    }
}

/// What one run of smartctl says about a disk. `None` where smartctl does not
/// say (or the field does not apply to the device's protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The verdict.
    pub status: Status,
    /// Why the status is `unsupported` or `standby`, in smartctl's words where it gave any.
    pub reason: Option<String>,
    /// `device.protocol`: `ATA`, `NVMe`, `SCSI`.
    pub protocol: Option<String>,
    /// `model_name` (`scsi_model_name` for SCSI).
    pub model: Option<String>,
    /// `serial_number`.
    pub serial: Option<String>,
    /// `temperature.current`.
    pub temperature_c: Option<i64>,
    /// `power_on_time.hours`.
    pub power_on_hours: Option<u64>,
    /// ATA attribute 5 (Reallocated_Sector_Ct), raw value.
    pub reallocated_sectors: Option<u64>,
    /// ATA attribute 197 (Current_Pending_Sector), raw value.
    pub pending_sectors: Option<u64>,
    /// NVMe health log.
    pub media_errors: Option<u64>,
    /// NVMe health log; may exceed 100.
    pub percentage_used: Option<u64>,
    /// NVMe health log: a bit mask, 0 when all is well.
    pub critical_warning: Option<u64>,
    /// smartctl's exit status; `None` when it did not run.
    pub exit_status: Option<i32>,
}

impl Report {
    /// A report with nothing known but the verdict.
    pub fn bare(status: Status, reason: Option<String>, exit_status: Option<i32>) -> Report {
        Report {
            status,
            reason,
            protocol: None,
            model: None,
            serial: None,
            temperature_c: None,
            power_on_hours: None,
            reallocated_sectors: None,
            pending_sectors: None,
            media_errors: None,
            percentage_used: None,
            critical_warning: None,
            exit_status,
        }
    }

    /// The published value. Every key is always present (null when unknown) so
    /// consumers see one shape whatever the protocol and status.
    pub fn to_json(&self, disk: &str, device: &Path) -> Value {
        json!({
            "disk": disk,
            "device": device.to_string_lossy(),
            "status": self.status.as_str(),
            "reason": self.reason,
            "protocol": self.protocol,
            "model": self.model,
            "serial": self.serial,
            "temperature_c": self.temperature_c,
            "power_on_hours": self.power_on_hours,
            "reallocated_sectors": self.reallocated_sectors,
            "pending_sectors": self.pending_sectors,
            "media_errors": self.media_errors,
            "percentage_used": self.percentage_used,
            "critical_warning": self.critical_warning,
            "exit_status": self.exit_status,
            "exit_flags": exit_flags(self.exit_status.unwrap_or(0)),
        })
    }
}

/// A smartctl failure: a breaker failure of the disk's source.
fn tool_failed(message: String) -> SourceError {
    SourceError {
        code: "tool_failed",
        message,
    }
}

/// At most `max` characters of some output, trimmed, for an error message.
fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn string_at(doc: &Value, pointer: &str) -> Option<String> {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `smartctl.messages[].string`, in order.
fn messages(doc: &Value) -> Vec<String> {
    doc.pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|m| m.get("string").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// smartctl's words for a device it left alone because of `-n`: "Device is in
/// STANDBY mode, exit(2)", also `SLEEP`, `IDLE` and `STANDBY (OS)` (the OS says
/// the device is powered down).
fn is_power_mode_message(message: &str) -> bool {
    message.starts_with("Device is in ") && message.contains(" mode")
}

/// Why this device has no SMART to give, if smartctl's output says so. These
/// come with bits 0–2 set but are not failures: they never get better by
/// retrying, and reporting them as failures would keep a virtual disk's breaker
/// open and its `rpc_error` repeating forever.
fn unsupported_reason(doc: &Value, messages: &[String]) -> Option<String> {
    let said = |what: &str| messages.iter().find(|m| m.contains(what)).cloned();
    if let Some(m) = said("Unable to detect device type").or_else(|| said("Unknown USB bridge")) {
        return Some(m);
    }
    match doc.pointer("/smart_support/available").and_then(Value::as_bool) {
        Some(false) => return Some("the device lacks SMART capability".into()),
        Some(true) if doc.pointer("/smart_support/enabled").and_then(Value::as_bool) == Some(false) => {
            return Some("SMART is disabled on the device (`smartctl -s on` enables it)".into());
        }
        _ => {}
    }
    None
}

/// The raw value of an ATA attribute. Only the low 48 bits are a counter for
/// some vendors' other attributes, but 5 and 197 are plain counts.
fn ata_raw(doc: &Value, id: u64) -> Option<u64> {
    doc.pointer("/ata_smart_attributes/table")?
        .as_array()?
        .iter()
        .find(|a| a.get("id").and_then(Value::as_u64) == Some(id))?
        .pointer("/raw/value")?
        .as_u64()
}

/// Turns one run of smartctl (its exit status and output) into a report.
///
/// `Err` is a failure of the source: `tool_failed` when bits 0–2 say the
/// command failed for a reason other than the device having no SMART (also
/// when such a failure printed no JSON, e.g. a smartctl too old for `--json`),
/// `parse_failed` when a run that claims success printed something that is not
/// smartctl's JSON. A [`Status::Standby`] report carries only the verdict: the
/// caller fills in the previous values.
pub fn interpret(exit_status: i32, stdout: &[u8], stderr: &[u8]) -> Result<Report, SourceError> {
    let failed = exit_status & FAILURE_BITS != 0;
    let Some(doc) = serde_json::from_slice::<Value>(stdout).ok().filter(Value::is_object) else {
        let said = [excerpt(stdout, 300), excerpt(stderr, 300)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        let said = if said.is_empty() { "no output".to_owned() } else { said };
        if failed {
            return Err(tool_failed(format!(
                "smartctl exited with status {exit_status}: {said}"
            )));
        }
        return Err(SourceError {
            code: "parse_failed",
            message: format!("smartctl's output is not JSON: {said}"),
        });
    };
    let messages = messages(&doc);
    let mut report = Report::bare(Status::Passed, None, Some(exit_status));
    report.protocol = string_at(&doc, "/device/protocol");
    report.model = string_at(&doc, "/model_name").or_else(|| string_at(&doc, "/scsi_model_name"));
    report.serial = string_at(&doc, "/serial_number");

    if exit_status & OPEN_FAILED_OR_ASLEEP != 0
        && let Some(m) = messages.iter().find(|m| is_power_mode_message(m))
    {
        report.status = Status::Standby;
        report.reason = Some(m.clone());
        return Ok(report);
    }
    if let Some(reason) = unsupported_reason(&doc, &messages) {
        report.status = Status::Unsupported;
        report.reason = Some(reason);
        return Ok(report);
    }
    if failed {
        let mut said = messages;
        said.extend(Some(excerpt(stderr, 300)).filter(|s| !s.is_empty()));
        let said = if said.is_empty() {
            "no message".to_owned()
        } else {
            said.join("; ")
        };
        return Err(tool_failed(format!(
            "smartctl exited with status {exit_status}: {said}"
        )));
    }

    let nvme = doc.get("nvme_smart_health_information_log");
    let nvme_u64 = |field: &str| nvme.and_then(|n| n.get(field)).and_then(Value::as_u64);
    report.temperature_c = doc
        .pointer("/temperature/current")
        .and_then(Value::as_i64)
        .or_else(|| nvme.and_then(|n| n.get("temperature")).and_then(Value::as_i64));
    report.power_on_hours = doc
        .pointer("/power_on_time/hours")
        .and_then(Value::as_u64)
        .or_else(|| nvme_u64("power_on_hours"));
    report.reallocated_sectors = ata_raw(&doc, 5);
    report.pending_sectors = ata_raw(&doc, 197);
    report.media_errors = nvme_u64("media_errors");
    report.percentage_used = nvme_u64("percentage_used");
    report.critical_warning = nvme_u64("critical_warning");

    let passed = doc.pointer("/smart_status/passed").and_then(Value::as_bool);
    if exit_status & DISK_FAILING != 0 || passed == Some(false) {
        report.status = Status::Failed;
    } else if passed.is_none() {
        // E.g. a USB bridge that passes identify through but not the health check.
        report.status = Status::Unsupported;
        report.reason = Some("smartctl reported no SMART health status".into());
    }
    Ok(report)
}

/// What a finished program left.
#[derive(Debug)]
struct Finished {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Why a program did not finish.
#[derive(Debug)]
enum RunError {
    /// The program does not exist.
    NotFound,
    /// It could not be started, waited for or read from.
    Io(io::Error),
    /// Still running at the cap; it has been killed.
    Capped,
}

/// Kills and reaps the child if it is still running when dropped, so no early
/// return (the cap, a failed wait, a panic) leaves a smartctl behind.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads a pipe to its end on its own thread: the child must never block on a
/// full pipe while we wait for it to exit.
fn drain(pipe: impl Read + Send + 'static) -> io::Result<mpsc::Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("smartctl-output".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut buf);
            let _ = tx.send(buf);
        })?;
    Ok(rx)
}

/// Starts a program with its output piped. `ETXTBSY` is retried a few times:
/// it means someone has the file open for writing, which is brief (a copy in
/// progress; in tests, a process forked by another thread while a script was
/// being written inherits the descriptor until it execs) and not a reason to
/// count a breaker failure.
fn spawn(program: &Path, args: &[&OsStr]) -> Result<Child, RunError> {
    let mut attempts = 0;
    loop {
        let spawned = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RunError::NotFound),
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(RunError::Io(e)),
        }
    }
}

/// Runs a program to completion, waiting at most `cap`. Polls `try_wait`
/// rather than blocking in `wait` so that the cap needs no watchdog thread.
fn run(program: &Path, args: &[&OsStr], cap: Duration) -> Result<Finished, RunError> {
    let mut child = Reaper(spawn(program, args)?);
    let stdout = child.0.stdout.take().map(drain).transpose().map_err(RunError::Io)?;
    let stderr = child.0.stderr.take().map(drain).transpose().map_err(RunError::Io)?;
    let deadline = Instant::now() + cap;
    let mut pause = Duration::from_millis(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().map_err(RunError::Io)? {
            break status;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RunError::Capped);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| -> Result<Vec<u8>, RunError> {
        match rx {
            None => Ok(Vec::new()),
            Some(rx) => rx.recv_timeout(PIPE_GRACE).map_err(|_| {
                RunError::Io(io::Error::other(
                    "its output stayed open after it exited (a process it started holds it)",
                ))
            }),
        }
    };
    Ok(Finished {
        status,
        stdout: collect(stdout)?,
        stderr: collect(stderr)?,
    })
}

/// SMART of one disk.
#[derive(Debug)]
pub struct SmartSource {
    disk: String,
    /// `smart:<disk>`: the breaker and `rpc_error` key.
    name: String,
    device: PathBuf,
    smartctl: PathBuf,
    interval: Duration,
    cap: Duration,
    /// The last report, whose values a standby report keeps.
    last: Option<Report>,
}

impl SmartSource {
    /// A source for `/dev/<disk>`, run with `smartctl` (a path, or a name looked
    /// up on `PATH`) every `interval`.
    pub fn new(disk: &str, smartctl: &Path, interval: Duration) -> SmartSource {
        SmartSource {
            disk: disk.to_owned(),
            name: format!("smart:{disk}"),
            device: Path::new("/dev").join(disk),
            smartctl: smartctl.to_path_buf(),
            interval,
            cap: TOOL_CAP,
            last: None,
        }
    }

    fn report(&self) -> Result<Report, SourceError> {
        let args = [
            OsStr::new("--json"),
            OsStr::new("-a"),
            OsStr::new("-n"),
            OsStr::new("standby"),
            self.device.as_os_str(),
        ];
        let program = self.smartctl.display();
        match run(&self.smartctl, &args, self.cap) {
            Err(RunError::NotFound) => {
                let reason = if self.smartctl.components().count() > 1 {
                    format!("{program} does not exist")
                } else {
                    format!("{program} is not installed (not found on PATH)")
                };
                Ok(Report::bare(Status::Unsupported, Some(reason), None))
            }
            Err(RunError::Io(e)) => Err(tool_failed(format!("running {program}: {e}"))),
            Err(RunError::Capped) => Err(SourceError {
                code: crate::breaker::REASON_TIMEOUT,
                message: format!("{program} had not finished after {:?}; it was killed", self.cap),
            }),
            Ok(done) => match done.status.code() {
                Some(code) => interpret(code, &done.stdout, &done.stderr),
                None => Err(tool_failed(format!(
                    "{program} was killed by signal {}",
                    done.status.signal().unwrap_or(0)
                ))),
            },
        }
    }
}

impl Source for SmartSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn topic(&self) -> &'static str {
        TOPIC
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn sample(&mut self) -> Result<Sample, SourceError> {
        let mut report = self.report()?;
        if report.status == Status::Standby
            && let Some(last) = &self.last
        {
            report = Report {
                status: Status::Standby,
                reason: report.reason,
                exit_status: report.exit_status,
                ..last.clone()
            };
        }
        let state = report.to_json(&self.disk, &self.device);
        self.last = Some(report);
        Ok(Sample {
            state,
            events: Vec::new(),
        })
    }
}

/// One source per disk under `<sysfs>/block` (the disks `storage.update`
/// lists), found once at start-up: a disk plugged in later gets SMART
/// monitoring at the next restart. The disk set is fixed because each source
/// owns a breaker and a scheduler task for the life of the server.
pub fn sources(roots: &Roots, smartctl: &Path, interval: Duration) -> Vec<Box<dyn Source>> {
    match storage::read_disks(&roots.sys("block")) {
        Ok(disks) => disks
            .iter()
            .map(|d| Box::new(SmartSource::new(&d.name, smartctl, interval)) as Box<dyn Source>)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "no SMART monitoring: the disks could not be listed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join(format!("{name}.json"))).unwrap()
    }

    fn parse(name: &str, exit_status: i32) -> Result<Report, SourceError> {
        interpret(exit_status, &fixture(name), b"")
    }

    #[test]
    fn ata_passed_with_reallocated_sectors() {
        let r = parse("ata-passed", 0).unwrap();
        assert_eq!(
            r,
            Report {
                status: Status::Passed,
                reason: None,
                protocol: Some("ATA".into()),
                model: Some("WDC WD40EFRX-68N32N0".into()),
                serial: Some("WD-WCC7K1234567".into()),
                temperature_c: Some(34),
                power_on_hours: Some(23456),
                reallocated_sectors: Some(8),
                pending_sectors: Some(0),
                media_errors: None,
                percentage_used: None,
                critical_warning: None,
                exit_status: Some(0),
            }
        );
        assert_eq!(
            r.to_json("sda", Path::new("/dev/sda")),
            json!({
                "disk": "sda", "device": "/dev/sda", "status": "passed", "reason": null, "protocol": "ATA",
                "model": "WDC WD40EFRX-68N32N0", "serial": "WD-WCC7K1234567", "temperature_c": 34,
                "power_on_hours": 23456, "reallocated_sectors": 8, "pending_sectors": 0, "media_errors": null,
                "percentage_used": null, "critical_warning": null, "exit_status": 0, "exit_flags": [],
            })
        );
    }

    #[test]
    fn ata_failing_is_data_not_a_failure() {
        // 88 = bits 3, 4 and 6.
        let r = parse("ata-failing", 88).unwrap();
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.reallocated_sectors, Some(31752));
        assert_eq!(r.pending_sectors, Some(1288));
        assert_eq!(r.temperature_c, Some(39));
        assert_eq!(r.power_on_hours, Some(42177));
        assert_eq!(r.model.as_deref(), Some("ST4000VN008-2DR166"));
        let v = r.to_json("sdb", Path::new("/dev/sdb"));
        assert_eq!(v["exit_status"], 88);
        assert_eq!(
            v["exit_flags"],
            json!(["disk_failing", "prefail_attributes_failing", "error_log_has_errors"])
        );
        // Bit 3 alone decides, even if the JSON were to say otherwise.
        let mut doc: Value = serde_json::from_slice(&fixture("ata-passed")).unwrap();
        doc["smart_status"]["passed"] = json!(true);
        let r = interpret(8, doc.to_string().as_bytes(), b"").unwrap();
        assert_eq!(r.status, Status::Failed);
    }

    #[test]
    fn every_health_bit_has_a_name() {
        assert_eq!(exit_flags(0), Vec::<&str>::new());
        assert_eq!(exit_flags(0b111), Vec::<&str>::new(), "bits 0-2 are not health");
        assert_eq!(
            exit_flags(0xff),
            vec![
                "disk_failing",
                "prefail_attributes_failing",
                "attributes_failed_in_past",
                "error_log_has_errors",
                "self_test_log_has_errors",
            ]
        );
        let r = parse("ata-passed", 0xc0).unwrap();
        assert_eq!(r.status, Status::Passed, "log entries do not fail a disk");
    }

    #[test]
    fn nvme() {
        let r = parse("nvme", 0).unwrap();
        assert_eq!(r.status, Status::Passed);
        assert_eq!(r.protocol.as_deref(), Some("NVMe"));
        assert_eq!(r.model.as_deref(), Some("Samsung SSD 970 EVO Plus 1TB"));
        assert_eq!(r.serial.as_deref(), Some("S4EWNX0R123456A"));
        assert_eq!(
            (
                r.temperature_c,
                r.power_on_hours,
                r.media_errors,
                r.percentage_used,
                r.critical_warning
            ),
            (Some(41), Some(8760), Some(0), Some(3), Some(0))
        );
        assert_eq!((r.reallocated_sectors, r.pending_sectors), (None, None));
    }

    #[test]
    fn nvme_values_come_from_the_health_log_when_the_summary_is_missing() {
        let mut doc: Value = serde_json::from_slice(&fixture("nvme")).unwrap();
        let o = doc.as_object_mut().unwrap();
        o.remove("temperature");
        o.remove("power_on_time");
        doc["nvme_smart_health_information_log"]["critical_warning"] = json!(4);
        let r = interpret(0, doc.to_string().as_bytes(), b"").unwrap();
        assert_eq!((r.temperature_c, r.power_on_hours), (Some(41), Some(8760)));
        assert_eq!(r.critical_warning, Some(4));
    }

    #[test]
    fn a_virtual_disk_is_unsupported_not_a_failure() {
        let r = parse("virtual", 1).unwrap();
        assert_eq!(r.status, Status::Unsupported);
        assert_eq!(r.reason.as_deref(), Some("/dev/vda: Unable to detect device type"));
        assert_eq!(r.exit_status, Some(1));
        assert_eq!(r.model, None);
    }

    #[test]
    fn a_disk_without_smart_is_unsupported_even_with_failure_bits() {
        let r = parse("no-smart", 4).unwrap();
        assert_eq!(r.status, Status::Unsupported);
        assert_eq!(r.model.as_deref(), Some("QEMU HARDDISK"));
        assert!(r.reason.as_deref().unwrap_or("").contains("lacks SMART"));
        let v = r.to_json("sda", Path::new("/dev/sda"));
        assert_eq!(
            (v["exit_status"].clone(), v["exit_flags"].clone()),
            (json!(4), json!([]))
        );
    }

    #[test]
    fn smart_disabled_is_unsupported() {
        let mut doc: Value = serde_json::from_slice(&fixture("ata-passed")).unwrap();
        doc["smart_support"]["enabled"] = json!(false);
        let o = doc.as_object_mut().unwrap();
        o.remove("smart_status");
        let r = interpret(4, doc.to_string().as_bytes(), b"").unwrap();
        assert_eq!(r.status, Status::Unsupported);
        assert!(r.reason.unwrap().contains("disabled"));
    }

    #[test]
    fn no_health_status_is_unsupported() {
        let mut doc: Value = serde_json::from_slice(&fixture("ata-passed")).unwrap();
        doc.as_object_mut().unwrap().remove("smart_status");
        let r = interpret(0, doc.to_string().as_bytes(), b"").unwrap();
        assert_eq!(r.status, Status::Unsupported);
        assert_eq!(r.temperature_c, Some(34), "what was read is still reported");
    }

    #[test]
    fn standby() {
        let r = parse("standby", 2).unwrap();
        assert_eq!(r.status, Status::Standby);
        assert_eq!(r.reason.as_deref(), Some("Device is in STANDBY mode, exit(2)"));
        for m in [
            "Device is in SLEEP mode, exit(2)",
            "Device is in STANDBY (OS) mode, exit(2)",
        ] {
            let doc = json!({"smartctl": {"messages": [{"string": m}], "exit_status": 2}});
            assert_eq!(
                interpret(2, doc.to_string().as_bytes(), b"").unwrap().status,
                Status::Standby
            );
        }
    }

    #[test]
    fn failure_bits_are_tool_failed_with_smartctls_words() {
        let e = parse("open-failed", 2).unwrap_err();
        assert_eq!(e.code, "tool_failed");
        assert!(e.message.contains("Permission denied"), "{e}");
        let e = parse("bad-argument", 1).unwrap_err();
        assert_eq!(e.code, "tool_failed");
        assert!(e.message.contains("INVALID ARGUMENT TO -n"), "{e}");
        // Bit 2 with data is still a failure of the command.
        let e = interpret(4, &fixture("ata-passed"), b"checksum error").unwrap_err();
        assert_eq!(e.code, "tool_failed");
        assert!(e.message.contains("checksum error"), "{e}");
    }

    #[test]
    fn output_that_is_not_json() {
        let e = interpret(0, b"smartctl 6.6 2016-05-31 r4324\nSMART overall-health: PASSED\n", b"").unwrap_err();
        assert_eq!(e.code, "parse_failed");
        assert!(e.message.contains("PASSED"), "{e}");
        assert_eq!(interpret(0, b"", b"").unwrap_err().code, "parse_failed");
        assert_eq!(interpret(0, b"[1, 2]", b"").unwrap_err().code, "parse_failed");
        // A smartctl too old for --json fails before printing any JSON.
        let e = interpret(1, b"=======> UNRECOGNIZED OPTION: json\n", b"").unwrap_err();
        assert_eq!(e.code, "tool_failed");
        assert!(e.message.contains("UNRECOGNIZED OPTION"), "{e}");
    }

    #[test]
    fn long_output_is_cut_in_messages() {
        let junk = "é".repeat(10_000);
        let e = interpret(0, junk.as_bytes(), b"").unwrap_err();
        assert!(e.message.chars().count() < 400, "{}", e.message.len());
    }

    /// A source whose "smartctl" is a shell script run from a temp dir.
    fn scripted(dir: &Path, body: &str) -> SmartSource {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("smartctl");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        SmartSource::new("sda", &script, Duration::from_secs(1800))
    }

    #[test]
    fn the_source_runs_smartctl_and_keeps_values_through_standby() {
        let dir = tempfile::tempdir().unwrap();
        let json = fixtures().join("ata-passed.json");
        let mut src = scripted(
            dir.path(),
            &format!(
                "echo \"$@\" > \"$(dirname \"$0\")/args\"\nif [ -e \"$(dirname \"$0\")/asleep\" ]; then cat '{}'; exit 2; fi\ncat '{}'",
                fixtures().join("standby.json").display(),
                json.display()
            ),
        );
        assert_eq!(src.name(), "smart:sda");
        assert_eq!(src.topic(), "storage.smart");
        assert_eq!(src.interval(), Some(Duration::from_secs(1800)));

        let awake = src.sample().unwrap();
        assert_eq!(awake.state["status"], "passed");
        assert!(awake.events.is_empty());
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(args.trim(), "--json -a -n standby /dev/sda");

        std::fs::write(dir.path().join("asleep"), "").unwrap();
        let asleep = src.sample().unwrap().state;
        assert_eq!(asleep["status"], "standby");
        assert_eq!(asleep["reason"], "Device is in STANDBY mode, exit(2)");
        assert_eq!(asleep["exit_status"], 2);
        for kept in [
            "temperature_c",
            "power_on_hours",
            "reallocated_sectors",
            "model",
            "serial",
        ] {
            assert_eq!(asleep[kept], awake.state[kept], "{kept}");
        }
        // Still asleep: still the values from when it was awake.
        assert_eq!(src.sample().unwrap().state["temperature_c"], 34);
    }

    #[test]
    fn standby_before_any_reading_has_no_values() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("cat '{}'; exit 2", fixtures().join("standby.json").display());
        let v = scripted(dir.path(), &body).sample().unwrap().state;
        assert_eq!(v["status"], "standby");
        assert_eq!(v["temperature_c"], Value::Null);
        assert_eq!(v["protocol"], "ATA");
    }

    #[test]
    fn a_missing_smartctl_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = SmartSource::new("sda", &dir.path().join("nope"), Duration::from_secs(1));
        let v = src.sample().unwrap().state;
        assert_eq!(v["status"], "unsupported");
        assert!(v["reason"].as_str().unwrap().contains("does not exist"), "{v}");
        assert_eq!(v["exit_status"], Value::Null);
        let mut src = SmartSource::new("sda", Path::new("smartctl-not-installed-here"), Duration::from_secs(1));
        let v = src.sample().unwrap().state;
        assert!(v["reason"].as_str().unwrap().contains("PATH"), "{v}");
    }

    #[test]
    fn a_smartctl_that_cannot_run_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("smartctl");
        std::fs::write(&script, "#!/bin/sh\n").unwrap(); // not executable
        let mut src = SmartSource::new("sda", &script, Duration::from_secs(1));
        assert_eq!(src.sample().unwrap_err().code, "tool_failed");
    }

    #[test]
    fn a_killed_smartctl_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let e = scripted(dir.path(), "kill -9 $$").sample().unwrap_err();
        assert_eq!(e.code, "tool_failed");
        assert!(e.message.contains("signal 9"), "{e}");
    }

    #[test]
    fn a_hung_smartctl_is_killed_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut src = scripted(
            dir.path(),
            &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()),
        );
        src.cap = Duration::from_millis(300);
        let started = Instant::now();
        let e = src.sample().unwrap_err();
        assert_eq!(e.code, "timeout");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "returned at the cap, not after sleep"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(!proc.exists(), "the child was killed and reaped");
    }

    #[test]
    fn large_output_does_not_block_the_child() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB of padding before the JSON: far more than a pipe holds.
        let body = format!(
            "head -c 1048576 /dev/zero | tr '\\0' ' '; cat '{}'",
            fixtures().join("nvme.json").display()
        );
        let v = scripted(dir.path(), &body).sample().unwrap().state;
        assert_eq!(v["status"], "passed");
    }

    #[test]
    fn sources_are_one_per_disk_of_the_storage_fixture() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/storage/basic");
        let roots = Roots {
            procfs: base.join("proc"),
            sysfs: base.join("sys"),
        };
        let srcs = sources(&roots, Path::new("smartctl"), Duration::from_secs(60));
        let names: Vec<&str> = srcs.iter().map(|s| s.name()).collect();
        assert_eq!(names, vec!["smart:nvme0n1", "smart:sda"], "loop0 has no device link");
        assert!(srcs.iter().all(|s| s.interval() == Some(Duration::from_secs(60))));
        let missing = Roots {
            procfs: base.join("nope"),
            sysfs: base.join("nope"),
        };
        assert!(sources(&missing, Path::new("smartctl"), Duration::from_secs(60)).is_empty());
    }
}
