//! Helpers for the hub suites (`hub_*.rs`, `http_api.rs`): REST shortcuts, hub
//! statistics polling, a delivery barrier, and seq bookkeeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{TestServer, WAIT, WsClient};

/// Ids for app-level pings, unique in the test binary.
static NEXT_PING_ID: AtomicU64 = AtomicU64::new(1);

/// Shorthand for millisecond config values.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `seq` of a server message; panics if it has none.
pub fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("message without seq: {v}"))
}

/// The envelope `seq` of an encoded event without parsing the whole message.
///
/// The load tests move hundreds of megabytes through debug-build clients, where
/// a full JSON parse per message would dominate the run time. The envelope puts
/// `seq` before `data`, and `type` cannot contain a quote, so the first `"seq":`
/// is the envelope's.
pub fn seq_in_text(text: &str) -> Option<u64> {
    let at = text.find("\"seq\":")? + 6;
    let digits: &str = &text[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `n` events of type `kind` whose data carries `tag` and the index.
pub fn events(kind: &str, n: usize, tag: &str) -> Vec<Value> {
    // Notifications are stored records: their data is a title and a message.
    (0..n)
        .map(|i| match kind {
            "notification" => json!({"type": kind, "data": {"title": format!("{tag} {i}"), "message": "m"}}),
            _ => json!({"type": kind, "data": {"tag": tag, "i": i}}),
        })
        .collect()
}

/// Asserts that `seqs` is exactly `first..=last`, in order.
pub fn assert_contiguous(what: &str, seqs: &[u64], first: u64, last: u64) {
    let want: Vec<u64> = (first..=last).collect();
    if seqs != want.as_slice() {
        let dup = seqs.windows(2).find(|w| w[1] <= w[0]);
        let gap = seqs.windows(2).find(|w| w[1] > w[0] + 1);
        panic!(
            "{what}: expected seqs {first}..={last} exactly once in order; got {} seqs \
             from {:?} to {:?}; first non-increase {dup:?}; first gap {gap:?}",
            seqs.len(),
            seqs.first(),
            seqs.last()
        );
    }
}

impl TestServer {
    /// GET `path`; asserts 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.expect("JSON body")
    }

    /// `GET /api/v1/hub`.
    pub async fn hub_stats(&self) -> Value {
        self.get_json("/api/v1/hub").await
    }

    /// Polls `/api/v1/hub` until `pred` holds; panics with the last snapshot after [`WAIT`].
    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stats = self.hub_stats().await;
            if pred(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub stats never showed {what} within {WAIT:?}; last: {stats}"
            );
            tokio::time::sleep(ms(20)).await;
        }
    }

    /// `POST /api/v1/events` with a JSON body; returns status and JSON body.
    pub async fn post_events(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/api/v1/events"))
            .json(body)
            .send()
            .await
            .expect("publish request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }
}

impl WsClient {
    /// Sends `msg` and returns the next message of type `reply`.
    pub async fn request(&mut self, msg: Value, reply: &str) -> Value {
        self.send_json(msg).await;
        self.next_of(reply).await
    }

    /// One app-level ping round trip. Returns every other message that arrived
    /// before the pong.
    ///
    /// A single pong is not a barrier: the writer sends each batch's replies
    /// before the events queued with them, so a pong may overtake events that
    /// were queued before the ping. Use [`WsClient::sync`] for ordering.
    pub async fn ping_pong(&mut self) -> Vec<Value> {
        let id = NEXT_PING_ID.fetch_add(1, Ordering::Relaxed);
        self.send_json(json!({"type": "ping", "id": id})).await;
        let mut before = Vec::new();
        loop {
            let v = self.next_json().await;
            if v["type"] == "pong" && v["id"] == id {
                return before;
            }
            before.push(v);
        }
    }

    /// Delivery barrier: when it returns, everything the server queued for this
    /// client before the call has been received (and is in the returned list).
    ///
    /// Two round trips: the first pong is taken from the outbox together with
    /// every event queued before it, so the second pong, queued only after the
    /// first arrived, is written after all of them.
    pub async fn sync(&mut self) -> Vec<Value> {
        let mut seen = self.ping_pong().await;
        seen.extend(self.ping_pong().await);
        seen
    }

    /// The next event-class message (one carrying a seq), skipping state and replies.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v.get("seq").is_some() {
                return v;
            }
        }
    }

    /// After a close frame: keeps reading until the stream ends, which lets
    /// tungstenite flush its close reply and the server finish the handshake.
    pub async fn finish(&mut self) {
        let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }

    /// Closes from the client side and completes the handshake.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        self.finish().await;
    }

    /// The next frame, or `None` when nothing arrives within `within`;
    /// panics if the connection closes or fails.
    pub async fn frame_within(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Err(_) => None,
            Ok(Some(Ok(Message::Close(frame)))) => panic!("unexpected close: {frame:?}"),
            Ok(Some(Ok(m))) => Some(m),
            Ok(other) => panic!("connection failed: {other:?}"),
        }
    }
}

/// The strings of a JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// The documented order of a subscription list: `*`, then `prefix.*` patterns,
/// then exact types, each group sorted.
pub fn documented_order(patterns: impl IntoIterator<Item = String>) -> Vec<String> {
    let group = |p: &String| match p.as_str() {
        "*" => 0,
        s if s.ends_with(".*") => 1,
        _ => 2,
    };
    let mut list: Vec<String> = patterns.into_iter().collect();
    list.sort_by(|a, b| group(a).cmp(&group(b)).then(a.cmp(b)));
    list
}

/// Connects `n` clients to `path` (at most 32 handshakes at a time), each
/// subscribed to `custom.*`.
pub async fn connect_many(srv: &TestServer, n: usize, path: &str) -> Vec<WsClient> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let url = srv.ws_url(path);
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (gate, url, token) = (gate.clone(), url.clone(), srv.token.clone());
        set.spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            let (ws, _) = tokio_tungstenite::connect_async(super::ws_request(&url, &token))
                .await
                .expect("ws connect");
            let mut c = WsClient {
                ws,
                welcome: Value::Null,
            };
            c.welcome = c.next_of("welcome").await;
            c.subscribe(&["custom.*"]).await;
            c
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(c) = set.join_next().await {
        clients.push(c.expect("connect task"));
    }
    clients
}

/// The seqs of a `POST /api/v1/events` answer.
fn seqs_of(body: &Value) -> Vec<u64> {
    body["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs: {body}"))
        .iter()
        .map(|s| s.as_u64().expect("seq"))
        .collect()
}

/// Publishes `batches` batches of `per_batch` events of `kind` from a task;
/// the task returns the seqs assigned.
pub fn publish_in_background(
    srv: &TestServer,
    kind: &'static str,
    batches: usize,
    per_batch: usize,
) -> JoinHandle<Vec<u64>> {
    let (http, url) = (srv.http.clone(), srv.url("/api/v1/events"));
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        for b in 0..batches {
            let resp = http
                .post(&url)
                .json(&json!({ "events": events(kind, per_batch, &format!("bg{b}")) }))
                .send()
                .await
                .expect("publish");
            assert_eq!(resp.status(), 202);
            seqs.extend(seqs_of(&resp.json().await.expect("body")));
        }
        seqs
    })
}

/// A task that POSTs the same body to `/api/v1/events` back to back until stopped.
pub struct NonstopPublisher {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl NonstopPublisher {
    pub fn start(srv: &TestServer, body: Value) -> NonstopPublisher {
        let stop = CancellationToken::new();
        let (http, url, token) = (srv.http.clone(), srv.url("/api/v1/events"), stop.clone());
        let task = tokio::spawn(async move {
            while !token.is_cancelled() {
                let resp = http.post(&url).json(&body).send().await.expect("publish");
                assert_eq!(resp.status(), 202);
            }
        });
        NonstopPublisher { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("publisher");
    }
}

impl TestServer {
    /// Publishes `total` events of `kind`, `per_batch` per request.
    pub async fn publish_in_batches(&self, kind: &str, total: usize, per_batch: usize) {
        for b in 0..total / per_batch {
            self.publish(&events(kind, per_batch, &format!("b{b}"))).await;
        }
    }
}

impl WsClient {
    /// Reads a replay: event seqs until `resumed`, which it returns too.
    /// Panics on `reset` or `error`.
    pub async fn read_replay(&mut self) -> (Vec<u64>, Value) {
        let mut replayed = Vec::new();
        loop {
            let m = self.next_json().await;
            match m["type"].as_str() {
                Some("resumed") => return (replayed, m),
                Some("reset") | Some("error") => panic!("resume refused: {m}"),
                _ if m.get("seq").is_some() => replayed.push(seq(&m)),
                _ => {}
            }
        }
    }

    /// Reads events until one with seq `last` or greater; returns their seqs.
    pub async fn read_events_through(&mut self, last: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = Vec::new();
        while seqs.last().is_none_or(|&s| s < last) {
            seqs.push(seq(&self.next_event().await));
        }
        seqs
    }
}
