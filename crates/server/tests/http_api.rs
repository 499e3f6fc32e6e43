//! The REST surface: system endpoints, the JSON error contract (stable codes for
//! every failure, including 404/405/426), request ids, and publish validation.
mod common;

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use common::TestServer;
use common::hub::events;

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// Asserts the JSON error contract and returns the message.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without message: {body}"));
    assert!(!message.is_empty());
    message.to_owned()
}

#[tokio::test]
async fn health_ready_and_info() {
    let srv = TestServer::spawn().await;
    let health = srv.get_json("/api/v1/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    let hub = &health["components"]["hub"];
    assert_eq!(hub["status"], "ok", "{health}");
    assert_eq!(hub["clients"], 0);
    assert_eq!(hub["seq"], 0);
    assert!(hub["max_connections"].as_u64() > Some(0));

    assert_eq!(srv.get_json("/api/v1/ready").await, json!({"ready": true}));

    let info = srv.get_json("/api/v1/info").await;
    assert_eq!(info["name"], "sigmavault");
    assert_eq!(info["version"], sigmavault_server::VERSION);
    assert_eq!(info["protocol_version"], sigmavault_proto::PROTOCOL_VERSION);
    assert_eq!(info["environment"], "test");
    assert!(info["uptime_seconds"].is_u64(), "{info}");
    let started = info["started_at"].as_str().expect("started_at");
    chrono::DateTime::parse_from_rfc3339(started).expect("RFC 3339 started_at");
    let c = srv.connect().await;
    assert_eq!(info["epoch"], c.welcome["data"]["epoch"]);
    let stats = srv.hub_stats().await;
    assert_eq!(stats["epoch"], info["epoch"]);
    assert_eq!(stats["clients"], 1);
}

#[tokio::test]
async fn errors_are_json_with_stable_codes() {
    let srv = TestServer::spawn().await;
    let (status, _, body) = send(srv.http.get(srv.url("/api/v1/nope"))).await;
    assert_error(status, &body, 404, "not_found");
    let (status, _, body) = send(srv.http.get(srv.url("/"))).await;
    assert_error(status, &body, 404, "not_found");

    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/api/v1/health", "GET"),
        (reqwest::Method::GET, "/api/v1/events", "POST"),
        (reqwest::Method::POST, "/ws", "GET"),
    ] {
        let (status, headers, body) = send(srv.http.request(method.clone(), srv.url(path))).await;
        assert_error(status, &body, 405, "method_not_allowed");
        let allow = headers
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
            .to_str()
            .expect("ascii");
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow {allow:?}"
        );
    }

    let (status, headers, body) = send(srv.http.get(srv.url("/ws"))).await;
    assert_error(status, &body, 426, "upgrade_required");
    assert_eq!(headers["upgrade"], "websocket");

    // Upgrade requests the handshake cannot accept.
    let upgrade = |version: &str| {
        srv.http
            .get(srv.url("/ws"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version)
    };
    let (status, headers, body) = send(upgrade("8").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_error(status, &body, 426, "unsupported_websocket_version");
    assert_eq!(headers["sec-websocket-version"], "13");
    let (status, _, body) = send(upgrade("13")).await;
    assert_error(status, &body, 400, "bad_websocket_key");
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let srv = TestServer::spawn().await;
    for path in ["/api/v1/health", "/api/v1/nope"] {
        let resp = srv
            .http
            .get(srv.url(path))
            .header("x-request-id", "req-123")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.headers()["x-request-id"], "req-123", "{path}");

        let resp = srv.http.get(srv.url(path)).send().await.expect("request");
        let id = resp.headers()["x-request-id"].to_str().expect("ascii");
        uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{path}: generated id {id:?}: {e}"));
    }
}

#[tokio::test]
async fn publish_one_event_or_a_batch() {
    let srv = TestServer::spawn().await;
    let (status, body) = srv
        .post_events(&json!({"type": "custom.one", "data": {"k": "v"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["seq"], 1, "{body}");
    assert_eq!(body["seqs"], json!([1]), "{body}");
    let epoch = srv.get_json("/api/v1/info").await["epoch"].clone();
    assert_eq!(body["epoch"], epoch);

    // `data` may be omitted; a media type with parameters is still JSON.
    let resp = srv
        .http
        .post(srv.url("/api/v1/events"))
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(r#"{"type": "custom.no-data"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 202);

    let (status, body) = srv.post_events(&json!({"events": events("custom.many", 3, "b")})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["seqs"], json!([3, 4, 5]), "{body}");
}

#[tokio::test]
async fn publish_validation_errors() {
    let srv = TestServer::spawn_with(|c| {
        c.max_batch = 5;
        c.http_max_body = 2048;
    })
    .await;
    let post = || srv.http.post(srv.url("/api/v1/events"));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "system.status", "data": {}}), "server's own"),
        (json!({"type": "heartbeat"}), "heartbeat"),
        (json!({"type": "Custom.X"}), "type"),
        (json!({"type": "custom..x"}), "type"),
        (json!({"type": "custom.x", "data": [1]}), "data"),
        (json!({"type": "custom.x", "extra": 1}), "event"),
        (json!({"data": {}}), "event"),
        (json!({"events": []}), "empty"),
    ];
    for (body, hint) in cases {
        let (status, _, reply) = send(post().json(&body)).await;
        let message = assert_error(status, &reply, 422, "invalid_event");
        assert!(message.contains(hint), "{body}: {message:?} should mention {hint:?}");
    }

    let (status, _, reply) = send(post().header(CONTENT_TYPE, "application/json").body("{not json")).await;
    assert_error(status, &reply, 400, "bad_json");
    let (status, _, reply) = send(post().json(&json!([{"type": "custom.x"}]))).await;
    assert_error(status, &reply, 400, "bad_json");

    // A batch body is exactly {"events": [...]}.
    let (status, _, reply) = send(post().json(&json!({"events": {"type": "custom.x"}}))).await;
    let message = assert_error(status, &reply, 422, "invalid_event");
    assert!(message.contains("array"), "{message:?}");
    let (status, _, reply) = send(post().json(&json!({"events": [{"type": "custom.x"}], "type": "custom.y"}))).await;
    let message = assert_error(status, &reply, 422, "invalid_event");
    assert!(message.contains("\"type\""), "names the extra field: {message:?}");

    let (status, _, reply) = send(post().json(&json!({"events": events("custom.x", 6, "b")}))).await;
    assert_error(status, &reply, 413, "too_many_events");

    let big = json!({"type": "custom.x", "data": {"pad": "x".repeat(4096)}});
    let (status, _, reply) = send(post().json(&big)).await;
    assert_error(status, &reply, 413, "payload_too_large");

    let (status, _, reply) = send(
        post()
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"type": "custom.x"}"#),
    )
    .await;
    assert_error(status, &reply, 415, "unsupported_media_type");
    let (status, _, reply) = send(post().body(r#"{"type": "custom.x"}"#)).await;
    assert_error(status, &reply, 415, "unsupported_media_type");

    // None of that published anything.
    let stats = srv.hub_stats().await;
    assert_eq!(stats["seq"], 0, "{stats}");
}

#[tokio::test]
async fn a_batch_with_one_bad_event_publishes_nothing() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.ok", 2, "first")).await;
    let before = srv.hub_stats().await;

    let batch = json!({"events": [
        {"type": "custom.ok", "data": {"n": 1}},
        {"type": "custom.ok", "data": {"n": 2}},
        {"type": "system.status", "data": {}},
    ]});
    let (status, body) = srv.post_events(&batch).await;
    let message = assert_error(status, &body, 422, "invalid_event");
    assert!(message.contains("events[2]"), "names the bad event: {message:?}");

    let after = srv.hub_stats().await;
    assert_eq!(after["seq"], before["seq"]);
    assert_eq!(after["seq"], 2);
    // Subscribers saw only the good batch.
    let seen: Vec<u64> = c.sync().await.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seen, vec![1, 2]);
    // And the next good publish takes the next seq.
    assert_eq!(srv.publish(&events("custom.ok", 1, "next")).await, vec![3]);
}
