//! End-to-end smoke test: health, publish, receive.
mod common;

use common::TestServer;
use serde_json::Value;

#[tokio::test]
async fn publish_reaches_a_subscriber() {
    let srv = TestServer::spawn().await;
    let health: Value = srv
        .http
        .get(srv.url("/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let mut c = srv.connect().await;
    assert_eq!(c.welcome["data"]["seq"], 0);
    c.subscribe(&["custom.*"]).await;
    let seqs = srv.publish_custom("custom.smoke", 3).await;
    assert_eq!(seqs, vec![1, 2, 3]);
    for want in 1..=3u64 {
        let ev = c.next_of("custom.smoke").await;
        assert_eq!(ev["seq"], want);
    }
    srv.stop().await;
}

#[tokio::test]
async fn published_data_keeps_its_key_order() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    srv.publish(&[serde_json::json!({"type": "custom.order", "data": {"zeta": 1, "alpha": 2, "mid": 3}})])
        .await;
    let ev = c.next_of("custom.order").await;
    let keys: Vec<&String> = ev["data"].as_object().expect("object").keys().collect();
    assert_eq!(keys, ["zeta", "alpha", "mid"]);
    srv.stop().await;
}

#[tokio::test]
async fn one_mixed_type_batch_larger_than_the_queue_does_not_close_a_reader() {
    let srv = TestServer::spawn_with(|c| c.ws_queue = 4).await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    let events: Vec<Value> = (0..100)
        .map(|i| serde_json::json!({"type": if i % 2 == 0 { "custom.a" } else { "custom.b" }, "data": {"i": i}}))
        .collect();
    let seqs = srv.publish(&events).await;
    for want in seqs {
        // Skip the state values (heartbeat, host data) that share the connection.
        let ev = loop {
            let m = c.next_json().await;
            if m.get("seq").is_some() {
                break m;
            }
        };
        assert_eq!(ev["seq"], want, "{ev}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn every_rate_limited_message_is_answered_with_its_id() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_rate_limit = 1;
        c.ws_rate_burst = 3;
    })
    .await;
    let mut c = srv.connect().await;
    for i in 0..5 {
        c.send_json(serde_json::json!({"type": "ping", "id": i})).await;
    }
    let mut answers = Vec::new();
    while answers.len() < 5 {
        let m = c.next_json().await;
        if m["type"] == "pong" || m["type"] == "error" {
            answers.push((m["type"].as_str().unwrap_or("").to_owned(), m["id"].clone()));
        }
    }
    assert_eq!(
        answers[..3].iter().filter(|(t, _)| t == "pong").count(),
        3,
        "{answers:?}"
    );
    assert_eq!(answers[3], ("error".to_owned(), serde_json::json!(3)));
    assert_eq!(answers[4], ("error".to_owned(), serde_json::json!(4)));
    srv.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("nested").join("data");
    let d2 = dir.clone();
    let srv = TestServer::spawn_with(move |c| c.data_dir = d2).await;
    let mode = std::fs::metadata(&dir).expect("data dir exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    srv.stop().await;
}

/// A client that reads slowly but steadily is not a stalled one: the write-stall
/// clock restarts whenever bytes move, however long the whole batch takes.
#[tokio::test]
async fn a_slow_but_reading_client_is_not_dropped_as_stalled() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_send_buffer = 4096;
        c.ws_write_timeout = std::time::Duration::from_secs(1);
        c.http_max_body = 4 << 20;
        c.ws_queue = 10_000;
    })
    .await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    let pad = "p".repeat(2000);
    let events: Vec<Value> = (0..600)
        .map(|i| serde_json::json!({"type": "custom.slow", "data": {"i": i, "pad": pad}}))
        .collect();
    let seqs = srv.publish(&events).await;
    let started = std::time::Instant::now();
    for want in seqs {
        let ev = c.next_of("custom.slow").await;
        assert_eq!(ev["seq"], want);
        tokio::time::sleep(std::time::Duration::from_millis(4)).await;
    }
    assert!(
        started.elapsed() > std::time::Duration::from_secs(2),
        "the read took longer than the timeout"
    );
    let hub: Value = srv
        .http
        .get(srv.url("/api/v1/hub"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hub["write_stalls"], 0, "{hub}");
    srv.stop().await;
}

#[tokio::test]
async fn null_data_is_refused_not_treated_as_empty() {
    let srv = TestServer::spawn().await;
    let resp = srv
        .http
        .post(srv.url("/api/v1/events"))
        .json(&serde_json::json!({"type": "custom.x", "data": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_event");
    srv.stop().await;
}
