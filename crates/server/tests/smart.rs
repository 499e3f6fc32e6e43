//! SMART through the real server: one source per fixture disk (`sda`,
//! `nvme0n1`), run through a stand-in `smartctl` script that prints a stored
//! smartctl 7.x JSON and exits with a chosen status, so each disk can be made
//! healthy, failing, asleep, broken or hung on its own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use common::TestServer;
use common::host::{Inbox, copy_tree, fixtures, get, host};
use sigmavault_server::config::Config;

/// The stand-in smartctl and its JSON fixtures, copied to a temp dir (git may
/// lose the script's mode), with what it does per disk set by [`Smartctl::set`].
struct Smartctl {
    dir: PathBuf,
}

impl Smartctl {
    fn install(root: &Path) -> Smartctl {
        let dir = root.join("smart");
        copy_tree(&fixtures().join("smart"), &dir);
        std::fs::set_permissions(dir.join("smartctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Smartctl { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("smartctl")
    }

    /// What the next call for `disk` does: `"<fixture> <exit status>"` or
    /// `"hang"`. Replaced atomically so a call never reads half of it.
    fn set(&self, disk: &str, case: &str) {
        let tmp = self.dir.join(format!("{disk}.case.tmp"));
        std::fs::write(&tmp, format!("{case}\n")).unwrap();
        std::fs::rename(tmp, self.dir.join(format!("{disk}.case"))).unwrap();
    }

    /// The arguments of the last call for `disk`.
    fn args(&self, disk: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{disk}.args")))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Kills the `sleep` a `hang` call left running (the script execs it, so
    /// the recorded pid is the sleep itself).
    fn release_hung(&self, disk: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{disk}.pid"))).unwrap();
        let status = std::process::Command::new("kill").arg(pid.trim()).status().unwrap();
        assert!(status.success(), "kill {pid}");
    }
}

async fn server(dir: &Path, smartctl: PathBuf, f: impl FnOnce(&mut Config)) -> TestServer {
    let (proc, sys) = host(dir);
    TestServer::spawn_with(move |c| {
        c.procfs_root = proc;
        c.sysfs_root = sys;
        c.poll_interval = Duration::from_millis(50);
        c.smart_interval = Duration::from_millis(50);
        c.smartctl = smartctl;
        f(c);
    })
    .await
}

/// A client subscribed to what the SMART tests watch.
async fn subscribed(srv: &TestServer) -> Inbox {
    let mut c = srv.connect().await;
    c.subscribe(&["storage.smart", "circuit_breaker.*", "rpc_error"]).await;
    Inbox::new(c)
}

/// SMART lookups on the kept messages.
trait SmartInbox {
    /// The SMART value of `disk` satisfying `pred`, as its `data`.
    async fn smart(&mut self, disk: &str, pred: impl Fn(&Value) -> bool) -> Value;
    /// A SMART value of `disk` published after every message read so far.
    async fn fresh_smart(&mut self, disk: &str) -> Value;
    /// Kept `rpc_error` and `circuit_breaker.*` messages about a SMART source.
    fn smart_failures(&self) -> Vec<&Value>;
}

impl SmartInbox for Inbox {
    async fn smart(&mut self, disk: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait("storage.smart", |d| d["disk"] == disk && pred(d)).await["data"].clone()
    }

    async fn fresh_smart(&mut self, disk: &str) -> Value {
        self.kept.retain(|m| m["type"] != "storage.smart");
        self.smart(disk, |d| d["stale"] == false).await
    }

    fn smart_failures(&self) -> Vec<&Value> {
        self.kept
            .iter()
            .filter(|m| {
                let kind = m["type"].as_str().unwrap_or("");
                (kind == "rpc_error" || kind.starts_with("circuit_breaker."))
                    && m["data"]["source"].as_str().is_some_and(|s| s.starts_with("smart:"))
            })
            .collect()
    }
}

async fn breakers(srv: &TestServer) -> std::collections::BTreeMap<String, Value> {
    let (status, body) = get(srv, "/api/v1/breakers").await;
    assert_eq!(status, 200, "{body}");
    body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_owned(), b.clone()))
        .collect()
}

#[tokio::test]
async fn every_disk_is_reported_by_its_own_source() {
    let dir = tempfile::tempdir().unwrap();
    let smartctl = Smartctl::install(dir.path());
    smartctl.set("sda", "ata-passed 0");
    smartctl.set("nvme0n1", "nvme 0");
    let srv = server(dir.path(), smartctl.path(), |_| {}).await;
    let mut c = subscribed(&srv).await;

    let sda = c.smart("sda", |d| d["status"] == "passed").await;
    assert_eq!(sda["device"], "/dev/sda");
    assert_eq!(sda["protocol"], "ATA");
    assert_eq!(sda["model"], "WDC WD40EFRX-68N32N0");
    assert_eq!(sda["serial"], "WD-WCC7K1234567");
    assert_eq!(sda["temperature_c"], 34);
    assert_eq!(sda["power_on_hours"], 23456);
    assert_eq!(sda["reallocated_sectors"], 8);
    assert_eq!(sda["pending_sectors"], 0);
    assert_eq!(sda["media_errors"], Value::Null);
    assert_eq!(sda["exit_status"], 0);
    assert_eq!(sda["exit_flags"], serde_json::json!([]));
    assert_eq!(sda["stale"], false);
    assert!(sda["last_update"].is_string(), "{sda}");
    assert_eq!(
        smartctl.args("sda"),
        "--json -a -n standby /dev/sda",
        "never wakes a sleeping disk"
    );

    let nvme = c.smart("nvme0n1", |d| d["status"] == "passed").await;
    assert_eq!(nvme["protocol"], "NVMe");
    assert_eq!(nvme["model"], "Samsung SSD 970 EVO Plus 1TB");
    assert_eq!(nvme["temperature_c"], 41);
    assert_eq!(nvme["power_on_hours"], 8760);
    assert_eq!(nvme["media_errors"], 0);
    assert_eq!(nvme["percentage_used"], 3);
    assert_eq!(nvme["critical_warning"], 0);
    assert_eq!(nvme["reallocated_sectors"], Value::Null);

    let b = breakers(&srv).await;
    for name in ["smart:nvme0n1", "smart:sda"] {
        assert_eq!(b[name]["state"], "closed", "{b:?}");
    }
    assert!(!b.contains_key("smart:loop0"), "loop devices are not disks");

    // A failing disk is data: status and flags, no breaker failure.
    smartctl.set("sda", "ata-failing 88");
    let failing = c.smart("sda", |d| d["status"] == "failed").await;
    assert_eq!(failing["stale"], false);
    assert_eq!(failing["reallocated_sectors"], 31752);
    assert_eq!(failing["pending_sectors"], 1288);
    assert_eq!(failing["exit_status"], 88);
    assert_eq!(
        failing["exit_flags"],
        serde_json::json!(["disk_failing", "prefail_attributes_failing", "error_log_has_errors"])
    );

    // Spun down: left alone, the last reading kept.
    smartctl.set("sda", "standby 2");
    let asleep = c.smart("sda", |d| d["status"] == "standby").await;
    assert_eq!(asleep["stale"], false);
    assert_eq!(asleep["exit_status"], 2);
    assert_eq!(asleep["reallocated_sectors"], 31752);
    assert_eq!(asleep["model"], "ST4000VN008-2DR166");

    // A disk smartctl cannot handle (a virtual one) is unsupported, not failing.
    smartctl.set("nvme0n1", "virtual 1");
    let virt = c.smart("nvme0n1", |d| d["status"] == "unsupported").await;
    assert_eq!(virt["stale"], false);
    assert_eq!(virt["exit_status"], 1);
    assert!(
        virt["reason"]
            .as_str()
            .unwrap()
            .contains("Unable to detect device type"),
        "{virt}"
    );

    // Several more samples of each, and still nothing failed.
    for _ in 0..3 {
        c.fresh_smart("sda").await;
        c.fresh_smart("nvme0n1").await;
    }
    assert!(c.smart_failures().is_empty(), "{:?}", c.smart_failures());
    let b = breakers(&srv).await;
    for name in ["smart:nvme0n1", "smart:sda"] {
        assert_eq!(
            (b[name]["state"].as_str(), b[name]["failures"].as_u64()),
            (Some("closed"), Some(0))
        );
    }
}

#[tokio::test]
async fn a_failing_smartctl_opens_only_its_disks_breaker_and_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let smartctl = Smartctl::install(dir.path());
    smartctl.set("sda", "ata-passed 0");
    smartctl.set("nvme0n1", "nvme 0");
    let srv = server(dir.path(), smartctl.path(), |c| {
        c.breaker_failures = 2;
        c.breaker_open_base = Duration::from_millis(400);
        c.breaker_open_max = Duration::from_secs(2);
    })
    .await;
    let mut c = subscribed(&srv).await;
    c.smart("sda", |d| d["status"] == "passed").await;

    // Exit status 1: the command line did not parse.
    smartctl.set("sda", "bad-argument 1");
    let stale = c.smart("sda", |d| d["stale"] == true).await;
    assert_eq!(stale["error"]["code"], "tool_failed", "{stale}");
    let message = stale["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("INVALID ARGUMENT TO -n"),
        "smartctl's own words: {message}"
    );
    assert_eq!(stale["status"], "passed", "the last good value");
    assert_eq!(stale["temperature_c"], 34);
    let rpc = c.wait("rpc_error", |d| d["source"] == "smart:sda").await;
    assert_eq!(rpc["data"]["code"], "tool_failed", "{rpc}");

    let open = c.wait("circuit_breaker.open", |_| true).await;
    assert_eq!(open["data"]["source"], "smart:sda", "{open}");
    assert_eq!(open["data"]["reason"], "tool_failed");

    // The other disk goes on.
    let nvme = c.fresh_smart("nvme0n1").await;
    assert_eq!(nvme["status"], "passed");
    let b = breakers(&srv).await;
    assert_eq!(b["smart:sda"]["state"], "open", "{b:?}");
    for (name, breaker) in &b {
        if name != "smart:sda" {
            assert_eq!(breaker["state"], "closed", "{name}: {breaker}");
        }
    }
    let (_, health) = get(&srv, "/api/v1/health").await;
    assert_eq!(
        health["components"]["collectors"]["degraded"],
        serde_json::json!(["smart:sda"]),
        "{health}"
    );

    // Fixed: the breaker's timer probes, the value is fresh again.
    smartctl.set("sda", "ata-passed 0");
    let closed = c.wait("circuit_breaker.closed", |d| d["source"] == "smart:sda").await;
    assert_eq!(closed["data"]["from"], "half_open", "{closed}");
    let fresh = c.smart("sda", |d| d["stale"] == false).await;
    assert!(fresh.get("error").is_none(), "{fresh}");
    let resolved = c
        .wait("rpc_error", |d| d["source"] == "smart:sda" && d["resolved"] == true)
        .await;
    assert_eq!(resolved["data"]["source"], "smart:sda");
    let others: Vec<_> = c
        .kept
        .iter()
        .filter(|m| m["type"].as_str().is_some_and(|t| t.starts_with("circuit_breaker.")))
        .filter(|m| m["data"]["source"] != "smart:sda")
        .collect();
    assert!(others.is_empty(), "only sda's breaker moved: {others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_smartctl_times_out_and_does_not_wedge() {
    let dir = tempfile::tempdir().unwrap();
    let smartctl = Smartctl::install(dir.path());
    smartctl.set("sda", "ata-passed 0");
    smartctl.set("nvme0n1", "nvme 0");
    let srv = server(dir.path(), smartctl.path(), |c| {
        c.breaker_failures = 2;
        // Generous: a loaded machine must not turn a normal run into a timeout.
        c.source_timeout = Duration::from_secs(1);
        c.smart_timeout = Duration::from_secs(1);
        c.breaker_open_base = Duration::from_millis(300);
        c.breaker_open_max = Duration::from_secs(1);
    })
    .await;
    let mut c = subscribed(&srv).await;
    c.smart("sda", |d| d["status"] == "passed").await;

    smartctl.set("sda", "hang");
    let open = c.wait("circuit_breaker.open", |d| d["source"] == "smart:sda").await;
    assert_eq!(open["data"]["reason"], "timeout", "{open}");
    let stale = c.smart("sda", |d| d["stale"] == true).await;
    assert_eq!(stale["error"]["code"], "timeout", "{stale}");
    assert_eq!(stale["temperature_c"], 34, "the last good value");
    // The other disk and the other sources go on meanwhile.
    assert_eq!(c.fresh_smart("nvme0n1").await["status"], "passed");
    for (name, breaker) in breakers(&srv).await {
        if name != "smart:sda" {
            assert_eq!(breaker["state"], "closed", "{name}: {breaker}");
        }
    }

    // The hung smartctl ends (its late result is discarded) and the disk answers again.
    smartctl.set("sda", "ata-passed 0");
    smartctl.release_hung("sda");
    let closed = c.wait("circuit_breaker.closed", |d| d["source"] == "smart:sda").await;
    assert_eq!(closed["data"]["to"], "closed");
    let fresh = c.fresh_smart("sda").await;
    assert_eq!(fresh["status"], "passed", "{fresh}");
}

#[tokio::test]
async fn without_smartctl_every_disk_is_unsupported_and_nothing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), dir.path().join("no-such-smartctl"), |c| {
        c.breaker_failures = 1;
    })
    .await;
    let mut c = subscribed(&srv).await;
    for disk in ["sda", "nvme0n1"] {
        let v = c.smart(disk, |_| true).await;
        assert_eq!(v["status"], "unsupported", "{v}");
        assert_eq!(v["stale"], false);
        assert_eq!(v["exit_status"], Value::Null);
        assert!(v["reason"].as_str().unwrap().contains("does not exist"), "{v}");
    }
    // Several more samples of each: still no failure, even with a breaker that
    // would open on the first one.
    for _ in 0..3 {
        assert_eq!(c.fresh_smart("sda").await["status"], "unsupported");
        assert_eq!(c.fresh_smart("nvme0n1").await["status"], "unsupported");
    }
    assert!(c.smart_failures().is_empty(), "{:?}", c.smart_failures());
    let b = breakers(&srv).await;
    for name in ["smart:nvme0n1", "smart:sda"] {
        assert_eq!(
            (b[name]["state"].as_str(), b[name]["failures"].as_u64()),
            (Some("closed"), Some(0))
        );
    }
    let (_, health) = get(&srv, "/api/v1/health").await;
    let degraded = &health["components"]["collectors"]["degraded"];
    assert!(
        !degraded
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("smart:")),
        "{health}"
    );
}
