//! Test harness: a real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use sigmavault_server::RunningServer;
use sigmavault_server::config::Config;

/// Generous functional deadline for "should arrive" waits.
pub const WAIT: Duration = Duration::from_secs(10);

/// The first admin's password in every test server.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: std::net::SocketAddr,
    /// Sends the admin API key with every request.
    pub http: reqwest::Client,
    /// An admin API key (created through the REST API at start).
    pub token: String,
    _dir: tempfile::TempDir,
}

/// Test defaults: the first admin's password set, and the per-client limits
/// off (tests that exercise a limit set it).
pub fn test_security(config: &mut Config) {
    let s = &mut config.security;
    s.admin_password = Some(sigmavault_proto::Secret(ADMIN_PASSWORD.into()));
    s.http_rate_limit = None;
    s.login_rate_limit = None;
    s.login_user_rate_limit = None;
    s.ws_max_per_ip = 0;
    s.ws_max_per_user = 0;
}

/// Logs in as `username` and returns the token pair (the whole response body).
pub async fn login(addr: std::net::SocketAddr, username: &str, password: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login request");
    assert_eq!(resp.status(), 200, "login as {username}");
    resp.json().await.expect("login body")
}

/// Logs in as the first admin and creates an admin API key.
pub async fn admin_key(addr: std::net::SocketAddr) -> String {
    let pair = login(addr, "admin", ADMIN_PASSWORD).await;
    let access = pair["access_token"].as_str().expect("access token").to_owned();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/auth/keys"))
        .bearer_auth(&access)
        .json(&json!({"name": "tests", "role": "admin"}))
        .send()
        .await
        .expect("key request");
    assert_eq!(resp.status(), 201, "create the test key");
    let body: Value = resp.json().await.expect("key body");
    body["key"].as_str().expect("key").to_owned()
}

/// A reqwest client that sends `token` as a bearer token.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A WebSocket upgrade request for `url` carrying `token`.
pub fn ws_request(url: &str, token: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("ws url");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    req
}

impl TestServer {
    pub async fn spawn() -> TestServer {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server with test defaults (port 0, temp data dir), adjusted by `f`.
    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            port: 0,
            data_dir: dir.path().to_path_buf(),
            environment: "test".into(),
            ..Config::default()
        };
        test_security(&mut config);
        f(&mut config);
        let server = sigmavault_server::start(config).await.expect("server starts");
        let addr = server.addr;
        let token = admin_key(addr).await;
        TestServer {
            server: Some(server),
            addr,
            http: client_with(&token),
            token,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connects to /ws and consumes the welcome frame.
    pub async fn connect(&self) -> WsClient {
        self.connect_path("/ws").await
    }

    pub async fn connect_path(&self, path: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(ws_request(&self.ws_url(path), &self.token))
            .await
            .expect("ws connect");
        let mut client = WsClient {
            ws,
            welcome: Value::Null,
        };
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame must be welcome: {welcome}");
        client.welcome = welcome;
        client
    }

    /// Publishes events through REST; returns the seqs.
    pub async fn publish(&self, events: &[Value]) -> Vec<u64> {
        let resp = self
            .http
            .post(self.url("/api/v1/events"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .expect("publish request");
        assert_eq!(resp.status(), 202, "publish status");
        let body: Value = resp.json().await.expect("publish body");
        body["seqs"]
            .as_array()
            .expect("seqs")
            .iter()
            .map(|s| s.as_u64().expect("seq"))
            .collect()
    }

    pub async fn publish_custom(&self, kind: &str, n: usize) -> Vec<u64> {
        let events: Vec<Value> = (0..n).map(|i| json!({"type": kind, "data": {"i": i}})).collect();
        self.publish(&events).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean shutdown");
        }
    }
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl WsClient {
    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_owned().into())).await.expect("send");
    }

    /// Next raw frame (pings included), or None on close/timeout.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            _ => None,
        }
    }

    /// Next JSON text message, skipping pings/pongs. Panics on timeout.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return serde_json::from_str(&t).expect("server sends JSON");
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Next JSON message whose type is not heartbeat/state noise we did not ask for.
    /// Bounded by [`WAIT`] in all: other frames arriving all the time (host data
    /// every few milliseconds) must not make it wait forever.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} message within {WAIT:?}; the last one was {v}"
            );
        }
    }

    pub async fn subscribe(&mut self, types: &[&str]) -> Value {
        self.send_json(json!({"type": "subscribe", "data": {"types": types}}))
            .await;
        self.next_of("subscribed").await
    }

    /// Waits for the close frame; returns its code and reason.
    pub async fn expect_close(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(CloseFrame { code, reason }))))) => {
                    return (code.into(), reason.to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("error before close frame: {e}"),
                Ok(None) => panic!("stream ended without a close frame"),
                Err(_) => panic!("no close frame within {within:?}"),
            }
        }
    }
}

/// Hand-built frames over a raw socket (protocol-violation tests).
pub mod raw;

/// REST, stats and delivery-barrier helpers for the hub suites.
pub mod hub;

/// The fixture host of the collector suites.
pub mod host;
