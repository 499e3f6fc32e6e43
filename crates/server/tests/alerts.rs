//! Alerts through the real server: a threshold crossed on a fixture host raises
//! one persisted notification, a restart does not repeat it, clearing resolves it.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::host::{get, get_when_ready, server};
use common::{TestServer, WAIT};
use sigmavault_server::config::Config;

async fn notifications(srv: &TestServer) -> Vec<Value> {
    let (_, page) = get(srv, "/api/v1/notifications?limit=500").await;
    page["notifications"].as_array().cloned().unwrap_or_default()
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The fixture's memory use is 37.5 %; a 30 % threshold makes it critical.
fn low_memory_threshold(c: &mut Config) {
    c.alert_memory = 30.0;
}

#[tokio::test]
async fn a_crossed_threshold_notifies_once_survives_a_restart_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data2 = data.clone();
    let srv = server(dir.path(), move |c| {
        low_memory_threshold(c);
        c.data_dir = data2;
    })
    .await;
    let raised = eventually("the memory alert", async || {
        let (_, body) = get(&srv, "/api/v1/alerts").await;
        body["alerts"].as_array().and_then(|a| a.first().cloned())
    })
    .await;
    assert_eq!(raised["key"], "memory", "{raised}");
    assert_eq!(raised["level"], "critical");
    // Read back rather than caught on a socket: the first sample may cross the
    // threshold before a socket could connect (the harness logs in first).
    let n = eventually("the alert notification", async || {
        notifications(&srv).await.into_iter().next()
    })
    .await;
    assert_eq!(n["level"], "critical", "{n}");
    assert_eq!(n["source"], "alerts");
    // Many samples later (50 ms interval), still exactly one notification.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let all = notifications(&srv).await;
    assert_eq!(all.len(), 1, "{all:?}");
    srv.stop().await;

    // A restart on the same data dir: the alert is still active, nobody is told again.
    let data2 = data.clone();
    let proc = dir.path().join("proc");
    let sys = dir.path().join("sys");
    let srv = TestServer::spawn_with(move |c| {
        c.procfs_root = proc;
        c.sysfs_root = sys;
        c.poll_interval = Duration::from_millis(50);
        c.data_dir = data2;
        low_memory_threshold(c);
    })
    .await;
    let (_, body) = get(&srv, "/api/v1/alerts").await;
    assert_eq!(body["alerts"][0]["key"], "memory", "{body}");
    assert_eq!(body["alerts"][0]["since"], raised["since"], "the same alert");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(notifications(&srv).await.len(), 1, "not notified again after a restart");

    // Memory is freed: available goes up to 90 % of the total.
    let meminfo = dir.path().join("proc/meminfo");
    let text = std::fs::read_to_string(&meminfo).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("MemAvailable:") {
                "MemAvailable:   14745600 kB".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&meminfo, text + "\n").unwrap();
    let resolved = eventually("the resolving notification", async || {
        notifications(&srv).await.into_iter().find(|n| n["level"] == "info")
    })
    .await;
    assert!(
        resolved["title"].as_str().unwrap().starts_with("resolved:"),
        "{resolved}"
    );
    let (_, body) = get(&srv, "/api/v1/alerts").await;
    assert_eq!(body["alerts"], serde_json::json!([]));
}

#[tokio::test]
async fn a_breaker_open_too_long_raises_an_alert_and_its_recovery_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), |c| {
        c.breaker_failures = 1;
        c.breaker_open_base = Duration::from_millis(300);
        c.breaker_open_max = Duration::from_millis(300);
        c.alert_breaker_open = Duration::from_millis(100);
    })
    .await;
    get_when_ready(&srv, "/api/v1/system/status").await;
    let stat = dir.path().join("proc/stat");
    let away = dir.path().join("stat.away");
    std::fs::rename(&stat, &away).unwrap();
    let alert = eventually("the breaker alert", async || {
        let (_, body) = get(&srv, "/api/v1/alerts").await;
        body["alerts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["key"] == "breaker:system").cloned())
    })
    .await;
    assert_eq!(alert["level"], "warning", "{alert}");
    std::fs::rename(&away, &stat).unwrap();
    eventually("the breaker alert to clear", async || {
        let (_, body) = get(&srv, "/api/v1/alerts").await;
        let active = body["alerts"].as_array().cloned().unwrap_or_default();
        (!active.iter().any(|x| x["key"] == "breaker:system")).then_some(())
    })
    .await;
    // The notifications are written right after the alert changes, by their own task.
    let titles: Vec<String> = eventually("the raise and resolve notifications", async || {
        let titles: Vec<String> = notifications(&srv)
            .await
            .iter()
            .map(|n| n["title"].as_str().unwrap_or("").to_owned())
            .collect();
        (titles.len() >= 2).then_some(titles)
    })
    .await;
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(titles[0].starts_with("resolved:"), "{titles:?}");
}
