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
