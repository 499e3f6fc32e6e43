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

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
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
        f(&mut config);
        let server = sigmavault_server::start(config).await.expect("server starts");
        let addr = server.addr;
        TestServer {
            server: Some(server),
            addr,
            http: reqwest::Client::new(),
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
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(path))
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
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
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
