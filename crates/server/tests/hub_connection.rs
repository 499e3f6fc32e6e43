//! One connection's life on `/ws`: keep-alive, bad input, inbound limits, the
//! connection cap and graceful shutdown. Real server, real sockets; intervals
//! come from config in milliseconds.
mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::hub::{assert_contiguous, events, ms, seq_in_text};
use common::raw::{self, RawWs};
use common::{TestServer, WAIT};

#[tokio::test]
async fn passive_client_stays_connected_through_many_pings() {
    // Silence is fatal after 100 + 400 ms; twelve pings take over a second, so the
    // connection survives only because the client's automatic pongs count.
    let srv = TestServer::spawn_with(|c| {
        c.ws_ping_interval = ms(100);
        c.ws_pong_timeout = ms(400);
    })
    .await;
    let mut c = srv.connect().await;
    assert_eq!(c.welcome["data"]["ping_interval_ms"], 100);
    assert_eq!(c.welcome["data"]["pong_timeout_ms"], 400);
    let mut pings = 0;
    while pings < 12 {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("closed after {pings} pings: {frame:?}")
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("after {pings} pings: {other:?}"),
        }
    }
    c.ping_pong().await;
    let stats = srv.hub_stats().await;
    assert_eq!(stats["keepalive_timeouts"], 0, "{stats}");
    assert_eq!(stats["clients"], 1, "{stats}");
}

#[tokio::test]
async fn the_ping_rides_on_the_heartbeat() {
    // Heartbeat every 300 ms, ping every 400 ms: a ping at least 100 ms old goes out
    // with the next heartbeat, in the same write, so each heartbeat is followed by
    // its ping and the sweeper never needs to ping on its own (which would show as
    // two heartbeats without a ping between them, or two pings without a heartbeat).
    let srv = TestServer::spawn_with(|c| {
        c.ws_ping_interval = ms(400);
        c.ws_pong_timeout = ms(2000);
        c.heartbeat_interval = ms(300);
    })
    .await;
    let mut c = srv.connect().await;
    let mut seen = String::new();
    while seen.matches('H').count() < 8 {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => seen.push('P'),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "heartbeat" {
                    seen.push('H');
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("after {seen}: {other:?}"),
        }
    }
    // Before the first pairing the ping may be too young to ride (a heartbeat right
    // after connecting) or come from the sweeper; once one heartbeat has carried a
    // ping, heartbeat and ping alternate.
    let from_first = &seen[seen.find("HP").unwrap_or(0)..];
    let paired = from_first.strip_suffix('H').unwrap_or(from_first);
    assert!(paired.len() >= 10, "too few pairs: {seen}");
    assert_eq!(
        paired,
        "HP".repeat(paired.len() / 2),
        "heartbeats (H) and pings (P) as received: {seen}"
    );
    c.ping_pong().await;
}

#[tokio::test]
async fn peer_that_never_answers_pings_is_closed_with_4000() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_ping_interval = ms(100);
        c.ws_pong_timeout = ms(100);
    })
    .await;
    // A hand-rolled client: it never writes after the handshake, so no pongs.
    let mut peer = RawWs::connect_as(srv.addr, &srv.token, "/ws").await;
    tokio::time::sleep(ms(100 + 100 + 1000)).await;

    let mut pings = 0;
    let (code, reason) = loop {
        let frame = peer
            .next_frame(WAIT)
            .await
            .unwrap_or_else(|e| panic!("no close frame (after {pings} pings): {e:?}"));
        match frame.opcode {
            raw::PING => pings += 1,
            raw::CLOSE => break frame.close_code(),
            _ => {}
        }
    };
    assert_eq!(code, 4000, "close reason {reason:?}");
    assert!(reason.starts_with("keepalive_timeout"), "{reason:?}");
    assert!(pings >= 1, "the server closed without ever pinging");
    peer.expect_tcp_close(WAIT).await;

    let stats = srv.wait_stats("the dead peer gone", |s| s["clients"] == 0).await;
    assert!(stats["keepalive_timeouts"].as_u64() >= Some(1), "{stats}");
}

#[tokio::test]
async fn bad_messages_get_error_frames_and_the_connection_stays_open() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let subs_before = c.welcome["data"]["subscriptions"].clone();
    // (message, id the error must echo, code)
    let cases: &[(&str, Option<Value>, &str)] = &[
        ("not json at all", None, "bad_json"),
        ("[1,2]", None, "bad_json"),
        (r#"{"type":5}"#, None, "bad_json"),
        (r#"{"type":"dance","id":"u1"}"#, Some(json!("u1")), "unknown_type"),
        (r#"{"type":"subscribe","id":2}"#, Some(json!(2)), "bad_request"),
        (
            r#"{"type":"subscribe","id":3,"data":{}}"#,
            Some(json!(3)),
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","id":4,"data":{"types":["A*"]}}"#,
            Some(json!(4)),
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","id":5,"data":{"types":[]}}"#,
            Some(json!(5)),
            "bad_request",
        ),
        (
            r#"{"type":"unsubscribe","id":6,"data":{"types":["a.*.*"]}}"#,
            Some(json!(6)),
            "bad_request",
        ),
        (
            r#"{"type":"resume","id":7,"data":{"epoch":"e","since":-1}}"#,
            Some(json!(7)),
            "bad_request",
        ),
        // An id that is neither string nor number cannot be echoed.
        (r#"{"type":"ping","id":{"x":1}}"#, None, "bad_request"),
    ];
    for (text, id, code) in cases {
        c.send_text(text).await;
        let reply = c.next_of("error").await;
        assert_eq!(reply["data"]["code"], *code, "reply to {text}: {reply}");
        assert!(
            reply["data"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "reply to {text}: {reply}"
        );
        assert_eq!(reply.get("id"), id.as_ref(), "id echo for {text}: {reply}");
        assert!(reply.get("seq").is_none(), "replies carry no seq: {reply}");
    }
    // Still open, and nothing was half-applied.
    c.ping_pong().await;
    let reply = c
        .request(
            json!({"type": "unsubscribe", "data": {"types": ["custom.none"]}}),
            "unsubscribed",
        )
        .await;
    assert_eq!(reply["data"]["subscriptions"], subs_before);
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into())).await.expect("send");
    let (code, reason) = c.expect_close(WAIT).await;
    assert_eq!(code, 1003, "{reason:?}");
    assert!(reason.starts_with("unsupported_data"), "{reason:?}");
}

#[tokio::test]
async fn message_over_max_message_closes_with_1009() {
    let srv = TestServer::spawn_with(|c| c.ws_max_message = 1024).await;
    let mut c = srv.connect().await;
    assert_eq!(c.welcome["data"]["limits"]["max_message_bytes"], 1024);
    // Exactly at the limit is fine.
    let frame = |len: usize| {
        let skeleton = r#"{"type":"ping","id":""}"#;
        let id = "x".repeat(len - skeleton.len());
        let text = json!({"type": "ping", "id": id}).to_string();
        assert_eq!(text.len(), len);
        (text, id)
    };
    let (text, id) = frame(1024);
    c.send_text(&text).await;
    let pong = c.next_of("pong").await;
    assert_eq!(pong["id"], id);
    // One byte more is not.
    let (text, _) = frame(1025);
    c.send_text(&text).await;
    let (code, reason) = c.expect_close(WAIT).await;
    assert_eq!(code, 1009, "{reason:?}");
    assert!(reason.starts_with("message_too_big"), "{reason:?}");
}

#[tokio::test]
async fn inbound_rate_limit_warns_then_closes_with_4429() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_rate_limit = 5;
        c.ws_rate_burst = 5;
    })
    .await;
    let mut c = srv.connect().await;
    let limits = &c.welcome["data"]["limits"];
    assert_eq!(limits["inbound_per_second"], 5);
    assert_eq!(limits["inbound_burst"], 5);

    // Six pings in one write: the burst allows five, the sixth is refused with a warning.
    for id in 1..=6 {
        let msg = json!({"type": "ping", "id": id}).to_string();
        c.ws.feed(Message::Text(msg.into())).await.expect("feed");
    }
    c.ws.flush().await.expect("flush");
    for id in 1..=5 {
        let pong = c.next_of("pong").await;
        assert_eq!(pong["id"], id);
    }
    let warning = c.next_of("error").await;
    assert_eq!(warning["type"], "error", "{warning}");
    assert_eq!(warning["data"]["code"], "rate_limited", "{warning}");

    // Ignoring the warning closes the connection.
    for id in 7..=60 {
        let msg = json!({"type": "ping", "id": id}).to_string();
        if c.ws.feed(Message::Text(msg.into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let (code, reason) = c.expect_close(WAIT).await;
    assert_eq!(code, 4429, "{reason:?}");
    assert!(reason.starts_with("rate_limited"), "{reason:?}");
    let stats = srv.hub_stats().await;
    assert!(stats["rate_limited"].as_u64() >= Some(1), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_every_client_with_1001() {
    const EVENTS: u64 = 200;
    let srv = TestServer::spawn_with(|c| c.shutdown_grace = Duration::from_secs(60)).await;
    let addr = srv.addr;
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = srv.connect_path("/ws?types=custom.*").await;
        let go = go.clone();
        readers.push(tokio::spawn(async move {
            // Read only once shutdown has begun: what was queued must come first.
            go.acquire().await.expect("semaphore").forget();
            let mut seqs = Vec::new();
            let close = loop {
                match tokio::time::timeout(WAIT, c.ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => seqs.push(seq_in_text(&t).expect("event")),
                    Ok(Some(Ok(Message::Close(Some(f))))) => break (u16::from(f.code), f.reason.to_string()),
                    Ok(Some(Ok(_))) => {}
                    other => panic!("after {} events: {other:?}", seqs.len()),
                }
            };
            c.finish().await;
            (seqs, close)
        }));
    }
    srv.wait_stats("three clients", |s| s["clients"] == 3).await;
    srv.publish(&events("custom.before_shutdown", EVENTS as usize, "x"))
        .await;
    let stop = tokio::spawn(srv.stop());
    go.add_permits(3);
    // Well inside the 60 s grace: the server must not need it when clients answer.
    tokio::time::timeout(WAIT, stop)
        .await
        .expect("shutdown finishes without waiting out the grace period")
        .expect("stop");
    for r in readers {
        let (seqs, (code, reason)) = r.await.expect("reader");
        assert_contiguous("events queued before shutdown", &seqs, 1, EVENTS);
        assert_eq!(code, 1001, "{reason:?}");
        assert_eq!(reason, "going_away: server shutting down");
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_a_stalled_client_when_the_grace_period_ends() {
    let srv = TestServer::spawn_with(|c| {
        c.shutdown_grace = ms(500);
        c.ws_send_buffer = 4096;
        c.ws_queue = 10_000;
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    // Never reads: its socket fills and the server's writer stalls.
    let mut stalled = RawWs::connect_as(srv.addr, &srv.token, "/ws?types=custom.*").await;
    let pad = "x".repeat(32 * 1024);
    for i in 0..40 {
        srv.publish(&[json!({"type": "custom.big", "data": {"i": i, "pad": pad}})])
            .await;
    }
    tokio::time::timeout(WAIT, srv.stop())
        .await
        .expect("shutdown ends once the grace period has run out");
    // What was written arrives, then the connection ends without a close frame (1006).
    loop {
        match stalled.next_frame(WAIT).await {
            Ok(f) => assert_ne!(f.opcode, raw::CLOSE, "a stalled client cannot get a close frame"),
            Err(raw::Ended::Closed) => break,
            Err(raw::Ended::TimedOut) => panic!("the stalled connection was left open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_write_drops_the_connection_without_a_close_frame() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_send_buffer = 4096;
        c.ws_queue = 10_000;
        c.ws_write_timeout = ms(300);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let mut stalled = RawWs::connect_as(srv.addr, &srv.token, "/ws?types=custom.*").await;
    let pad = "x".repeat(32 * 1024);
    for i in 0..40 {
        srv.publish(&[json!({"type": "custom.big", "data": {"i": i, "pad": pad}})])
            .await;
    }
    let stats = srv
        .wait_stats("the stalled client dropped", |s| s["clients"] == 0)
        .await;
    assert!(stats["write_stalls"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["dropped_by_close"], 0, "{stats}");
    loop {
        match stalled.next_frame(WAIT).await {
            Ok(f) => assert_ne!(f.opcode, raw::CLOSE, "a stalled client cannot get a close frame"),
            Err(raw::Ended::Closed) => break,
            Err(raw::Ended::TimedOut) => panic!("the stalled connection was left open"),
        }
    }
}

#[tokio::test]
async fn connection_cap_answers_503_json_and_frees_the_slot_on_close() {
    let srv = TestServer::spawn_with(|c| c.max_connections = 5).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(srv.connect().await);
    }
    let health = srv.get_json("/api/v1/health").await;
    assert_eq!(health["components"]["hub"]["status"], "degraded", "{health}");

    match tokio_tungstenite::connect_async(common::ws_request(&srv.ws_url("/ws"), &srv.token)).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"5"[..]));
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON error body");
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        }
        Ok(_) => panic!("a sixth connection was admitted with max_connections = 5"),
        Err(e) => panic!("expected an HTTP 503, got {e}"),
    }
    let stats = srv.hub_stats().await;
    assert!(stats["rejected_connections"].as_u64() >= Some(1), "{stats}");

    clients.pop().expect("a client").close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(common::ws_request(&srv.ws_url("/ws"), &srv.token)).await {
            Ok(_) => break,
            Err(WsError::Http(resp)) if resp.status() == 503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was not freed within {WAIT:?}"
                );
                tokio::time::sleep(ms(20)).await;
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_connection_storm_still_closes_everyone_with_1001() {
    // Connections whose upgrade is in flight when shutdown begins must get 1001
    // too, and must not hold shutdown up until the grace period runs out.
    let srv = TestServer::spawn_with(|c| c.shutdown_grace = Duration::from_secs(60)).await;
    let url = srv.ws_url("/ws");
    let welcomed = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (url, welcomed, token) = (url.clone(), welcomed.clone(), srv.token.clone());
        clients.spawn(async move {
            // Refused, reset or 503 once shutdown has begun: all fine.
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(common::ws_request(&url, &token)).await else {
                return None;
            };
            welcomed.add_permits(1);
            loop {
                match tokio::time::timeout(WAIT, ws.next()).await {
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                        return Some(frame.map(|f| u16::from(f.code)));
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("connection ended without a close frame: {other:?}"),
                }
            }
        });
    }
    // Shut down while most handshakes are still under way.
    let _ = welcomed.acquire_many(30).await.expect("semaphore");
    tokio::time::timeout(WAIT * 2, srv.stop())
        .await
        .expect("shutdown waited for the grace period: a connection missed its 1001");
    let mut closed = 0;
    while let Some(r) = clients.join_next().await {
        if let Some(code) = r.expect("client") {
            assert_eq!(code, Some(1001));
            closed += 1;
        }
    }
    assert!(closed >= 30, "{closed}");
}
