//! Host data through the real server: sources read a fixture tree (a copy, so a
//! test can break it), publish over a real socket and feed the REST mirrors; a
//! source that fails goes stale, trips its breaker and recovers on the timer.

mod common;

use std::time::Duration;

use common::host::{Inbox, get, get_when_ready, server};
use common::{TestServer, WAIT};

#[tokio::test]
async fn host_data_is_published_and_mirrored_from_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |_| {}).await;
    let mut c = srv.connect().await;
    c.subscribe(&["system.network"]).await;

    let status = c.next_of("system.status").await;
    assert_eq!(status["data"]["hostname"], "nas-fixture", "{status}");
    assert_eq!(status["data"]["stale"], false);
    assert!(status.get("seq").is_none(), "a state topic carries no seq");
    let network = c.next_of("system.network").await;
    let names: Vec<&str> = network["data"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"lo") && names.contains(&"eth0"), "{names:?}");
    let storage = c.next_of("storage.update").await;
    let disks: Vec<&str> = storage["data"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, vec!["nvme0n1", "sda"], "{storage}");

    let rest = get_when_ready(&srv, "/api/v1/system/status").await;
    assert_eq!(rest["hostname"], "nas-fixture");
    assert_eq!(rest["memory_total"], 16_384_000_000u64);
    let rest = get_when_ready(&srv, "/api/v1/storage/disks").await;
    assert_eq!(rest["stale"], false);
    assert_eq!(rest["disks"].as_array().unwrap().len(), 2);
    let (status, disk) = get(&srv, "/api/v1/storage/disks/sda").await;
    assert_eq!(status, 200, "{disk}");
    assert_eq!(disk["disk"]["name"], "sda");
    let (status, body) = get(&srv, "/api/v1/storage/disks/sdz").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let fs = get_when_ready(&srv, "/api/v1/storage/filesystems").await;
    assert!(fs["filesystems"].as_array().is_some_and(|f| !f.is_empty()), "{fs}");
    let net = get_when_ready(&srv, "/api/v1/system/network").await;
    assert!(net["interfaces"].is_array());
    let (_, breakers) = get(&srv, "/api/v1/breakers").await;
    let names: Vec<&str> = breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    // One breaker per source, SMART one per disk.
    assert_eq!(
        names,
        vec!["network", "smart:nvme0n1", "smart:sda", "storage", "system"]
    );
}

#[tokio::test]
async fn a_failing_source_goes_stale_opens_its_breaker_once_and_recovers_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |c| {
        c.breaker_failures = 2;
        c.breaker_open_base = Duration::from_millis(400);
        c.breaker_open_max = Duration::from_secs(2);
    })
    .await;
    let mut c = srv.connect().await;
    c.subscribe(&["circuit_breaker.*", "rpc_error"]).await;
    let mut c = Inbox::new(c);
    let good = c.wait("system.status", |_| true).await;
    assert_eq!(good["data"]["stale"], false);

    // The source breaks: /proc/stat disappears.
    let stat = dir.path().join("proc/stat");
    let hidden = dir.path().join("stat.away");
    std::fs::rename(&stat, &hidden).unwrap();

    let stale = c.wait("system.status", |d| d["stale"] == true).await;
    assert_eq!(stale["data"]["error"]["code"], "read_failed", "{stale}");
    assert_eq!(stale["data"]["hostname"], "nas-fixture", "the last good value");
    assert!(stale["data"]["last_update"].is_string());
    let rpc = c.wait("rpc_error", |d| d["source"] == "system").await;
    assert_eq!(rpc["data"]["code"], "read_failed", "{rpc}");

    let open = c.wait("circuit_breaker.open", |_| true).await;
    let d = &open["data"];
    assert_eq!(d["source"], "system", "{open}");
    assert_eq!((d["from"].as_str(), d["to"].as_str()), (Some("closed"), Some("open")));
    assert_eq!(d["reason"], "read_failed");
    assert_eq!(d["consecutive_failures"], 2);
    assert_eq!(d["attempt"], 1);
    assert!(d["next_probe"].is_string(), "{open}");
    assert!(open["seq"].is_u64(), "breaker events are sequenced events");

    let (_, breakers) = get(&srv, "/api/v1/breakers").await;
    let system = breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "system")
        .cloned()
        .unwrap();
    assert_eq!(system["state"], "open", "{system}");
    let (status, health) = get(&srv, "/api/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["components"]["collectors"]["degraded"],
        serde_json::json!(["system"])
    );
    let (_, mirror) = get(&srv, "/api/v1/system/status").await;
    assert_eq!(mirror["stale"], true, "the mirror serves the last good value, marked");

    // Fixed before the probe: no traffic is needed, the breaker's timer probes.
    std::fs::rename(&hidden, &stat).unwrap();
    let half = c.wait("circuit_breaker.half_open", |_| true).await;
    assert_eq!(half["data"]["reason"], "timer", "{half}");
    let closed = c.wait("circuit_breaker.closed", |_| true).await;
    assert_eq!(closed["data"]["from"], "half_open", "{closed}");
    assert!(
        closed["seq"].as_u64() > half["seq"].as_u64() && half["seq"].as_u64() > open["seq"].as_u64(),
        "transitions in order"
    );
    let fresh = c.wait("system.status", |d| d["stale"] == false).await;
    assert!(fresh["data"].get("error").is_none(), "{fresh}");
    let resolved = c.wait("rpc_error", |d| d["source"] == "system").await;
    assert_eq!(resolved["data"]["resolved"], true, "{resolved}");

    // Only transitions were published: exactly one open for this outage.
    let head = srv.hub_stats().await["seq"].as_u64().unwrap();
    let epoch = c.c.welcome["data"]["epoch"].as_str().unwrap().to_owned();
    let mut d = srv
        .connect_path(&format!("/ws?types=circuit_breaker.*&epoch={epoch}&since=0"))
        .await;
    let (replayed, _) = d.read_replay().await;
    assert_eq!(replayed.len(), 3, "open, half_open, closed; head {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_source_times_out_trips_its_breaker_and_does_not_wedge() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |c| {
        c.breaker_failures = 2;
        // Generous: a loaded machine must not turn a normal read into a timeout.
        c.source_timeout = Duration::from_secs(1);
        c.breaker_open_base = Duration::from_millis(300);
        c.breaker_open_max = Duration::from_secs(1);
    })
    .await;
    let mut c = srv.connect().await;
    c.subscribe(&["circuit_breaker.*"]).await;
    let mut c = Inbox::new(c);
    c.wait("system.status", |_| true).await;

    // A FIFO with no writer: reading /proc/stat blocks until someone writes.
    let stat = dir.path().join("proc/stat");
    let saved = std::fs::read(&stat).unwrap();
    std::fs::remove_file(&stat).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&stat).status().unwrap();
    assert!(status.success());

    let open = c.wait("circuit_breaker.open", |d| d["source"] == "system").await;
    assert_eq!(open["data"]["reason"], "timeout", "{open}");
    // Other sources go on meanwhile.
    let (_, breakers) = get(&srv, "/api/v1/breakers").await;
    for b in breakers["breakers"].as_array().unwrap() {
        if b["name"] != "system" {
            assert_eq!(b["state"], "closed", "{b}");
        }
    }

    // Unblock the stuck read (its late result is discarded) and restore the file.
    let stat2 = stat.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&stat2) {
            let _ = f.write_all(b"garbage\n");
        }
    });
    writer.join().unwrap();
    std::fs::remove_file(&stat).unwrap();
    std::fs::write(&stat, saved).unwrap();
    let closed = c.wait("circuit_breaker.closed", |d| d["source"] == "system").await;
    assert_eq!(closed["data"]["to"], "closed");
}

/// How many samples a source has taken (from its breaker; this does not count as a
/// REST read of the source).
async fn successes(srv: &TestServer, source: &str) -> u64 {
    let (_, body) = get(srv, "/api/v1/breakers").await;
    body["breakers"]
        .as_array()
        .and_then(|b| b.iter().find(|x| x["name"] == source))
        .and_then(|x| x["successes"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_unwatched_source_slows_down_and_a_new_subscriber_gets_fresh_data_within_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |c| {
        c.poll_interval = Duration::from_millis(100);
        c.idle_slowdown = 1000;
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while successes(&srv, "network").await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "network never sampled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nobody subscribes to system.network or reads it: it waits 1000 intervals.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(successes(&srv, "network").await, 1, "an unwatched source kept sampling");
    // The alert rules read system.status: it keeps its full rate, watched or not.
    assert!(successes(&srv, "system").await >= 4);

    let mut c = srv.connect().await;
    let asked = chrono::Utc::now();
    c.subscribe(&["system.network"]).await;
    let mut c = Inbox::new(c);
    // The stored value comes at once; a fresh one within about an interval.
    let fresh = c
        .wait("system.network", |d| {
            d["last_update"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > asked)
        })
        .await;
    assert_eq!(fresh["data"]["stale"], false);
}

#[tokio::test]
async fn a_source_can_have_its_own_interval() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |c| {
        c.poll_interval = Duration::from_millis(50);
        c.source_intervals.insert("system".into(), Duration::from_secs(3600));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(successes(&srv, "system").await, 1, "system samples once an hour");
    assert!(successes(&srv, "storage").await >= 4, "storage follows --poll-interval");
}
