//! Fan-out on `/ws`: who gets what (subscriptions and patterns), in what order
//! (seq, exactly once), and what happens to a client that cannot keep up
//! (events: closed with 4008; state: conflated to the latest value).
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use sigmavault_proto::topics::DEFAULT_SUBSCRIPTIONS;

use common::hub::{
    NonstopPublisher, assert_contiguous, connect_many, documented_order, events, ms, seq, seq_in_text, strings,
};
use common::{TestServer, WAIT};

fn set_of(v: &Value) -> BTreeSet<String> {
    strings(v).into_iter().collect()
}

fn defaults_plus(extra: &[&str]) -> BTreeSet<String> {
    DEFAULT_SUBSCRIPTIONS
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// Asserts a `subscriptions` list: exactly `want`, in the documented order.
fn assert_subscriptions(list: &Value, want: BTreeSet<String>) {
    assert_eq!(strings(list), documented_order(want), "{list}");
}

/// (type, seq) of every event-class message in `msgs`.
fn typed_seqs(msgs: &[Value]) -> Vec<(String, u64)> {
    msgs.iter()
        .filter(|m| m.get("seq").is_some())
        .map(|m| (m["type"].as_str().expect("type").to_owned(), seq(m)))
        .collect()
}

#[tokio::test]
async fn subscriptions_filter_by_exact_prefix_and_wildcard() {
    let srv = TestServer::spawn().await;
    let mut plain = srv.connect().await;
    assert_subscriptions(&plain.welcome["data"]["subscriptions"], defaults_plus(&[]));

    let mut exact = srv.connect().await;
    let reply = exact
        .request(
            json!({"type": "subscribe", "id": "s1", "data": {"types": ["custom.a"]}}),
            "subscribed",
        )
        .await;
    assert_eq!(reply["id"], "s1");
    assert_subscriptions(&reply["data"]["subscriptions"], defaults_plus(&["custom.a"]));

    let mut prefix = srv.connect().await;
    let reply = prefix
        .request(
            json!({"type": "subscribe", "id": 2, "data": {"types": ["custom.b.*"]}}),
            "subscribed",
        )
        .await;
    assert_eq!(reply["id"], 2);
    assert_subscriptions(&reply["data"]["subscriptions"], defaults_plus(&["custom.b.*"]));

    let mut all = srv.connect().await;
    let reply = all.subscribe(&["*"]).await;
    assert!(reply.get("id").is_none(), "no id asked, none echoed: {reply}");
    assert_subscriptions(&reply["data"]["subscriptions"], defaults_plus(&["*"]));

    let kinds = [
        "custom.a",
        "custom.b.x",
        "custom.b.y.z",
        "custom.bx",
        "custom.c",
        "notification",
    ];
    let batch: Vec<Value> = kinds
        .iter()
        .map(|k| json!({"type": k, "data": {"title": "a notification needs a title"}}))
        .collect();
    assert_eq!(srv.publish(&batch).await, vec![1, 2, 3, 4, 5, 6]);

    let expect = |picks: &[u64]| -> Vec<(String, u64)> {
        picks.iter().map(|&s| (kinds[s as usize - 1].to_owned(), s)).collect()
    };
    // Every client is subscribed to `notification` by default.
    assert_eq!(typed_seqs(&plain.sync().await), expect(&[6]), "default set");
    assert_eq!(typed_seqs(&exact.sync().await), expect(&[1, 6]), "exact");
    assert_eq!(typed_seqs(&prefix.sync().await), expect(&[2, 3, 6]), "prefix.*");
    assert_eq!(typed_seqs(&all.sync().await), expect(&[1, 2, 3, 4, 5, 6]), "*");
}

#[tokio::test]
async fn unsubscribing_stops_delivery() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let mut witness = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    witness.subscribe(&["custom.*"]).await;

    srv.publish(&events("custom.x", 1, "before")).await;
    assert_eq!(seq(&c.next_event().await), 1);
    assert_eq!(seq(&witness.next_event().await), 1);

    let reply = c
        .request(
            json!({"type": "unsubscribe", "id": "u1", "data": {"types": ["custom.*", "notification"]}}),
            "unsubscribed",
        )
        .await;
    assert_eq!(reply["id"], "u1");
    let mut want = defaults_plus(&[]);
    want.remove("notification");
    assert_subscriptions(&reply["data"]["subscriptions"], want.clone());

    // Removing what is not subscribed changes nothing and is not an error.
    let reply = c
        .request(
            json!({"type": "unsubscribe", "data": {"types": ["custom.never"]}}),
            "unsubscribed",
        )
        .await;
    assert_subscriptions(&reply["data"]["subscriptions"], want);

    let seqs = srv
        .publish(&[
            json!({"type": "custom.x", "data": {"tag": "after"}}),
            json!({"type": "notification", "data": {"title": "t"}}),
        ])
        .await;
    assert_eq!(seqs, vec![2, 3]);
    // The witness proves the events went out; the barrier proves `c` saw the same moment.
    assert_eq!(seq(&witness.next_event().await), 2);
    let leaked = typed_seqs(&c.sync().await);
    assert!(leaked.is_empty(), "delivered after unsubscribing: {leaked:?}");
}

#[tokio::test]
async fn nothing_of_an_unsubscribed_type_follows_the_reply() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    // Queue a burst, then unsubscribe while some of it may still be queued.
    srv.publish(&events("custom.burst", 200, "burst")).await;
    c.send_json(json!({"type": "unsubscribe", "data": {"types": ["custom.*"]}}))
        .await;
    let mut got = Vec::new();
    loop {
        let m = c.next_json().await;
        if m["type"] == "unsubscribed" {
            break;
        }
        if m.get("seq").is_some() {
            got.push(seq(&m));
        }
    }
    // Whatever arrived is a gap-free prefix; nothing arrives after the reply.
    if let Some(&last) = got.last() {
        assert_contiguous("before unsubscribed", &got, 1, last);
    }
    let after = typed_seqs(&c.sync().await);
    assert!(after.is_empty(), "after unsubscribed: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_every_client_gets_every_seq_once_in_order() {
    const PUBLISHERS: usize = 4;
    const BATCHES: usize = 50;
    const PER_BATCH: usize = 10;
    const CLIENTS: usize = 5;
    const TOTAL: usize = PUBLISHERS * BATCHES * PER_BATCH;
    // Order and completeness are under test here, not back-pressure.
    let srv = TestServer::spawn_with(|c| c.ws_queue = TOTAL * 2).await;
    let clients = connect_many(&srv, CLIENTS, "/ws").await;

    let mut readers = JoinSet::new();
    for mut c in clients {
        readers.spawn(async move {
            let mut got = Vec::with_capacity(TOTAL);
            while got.len() < TOTAL {
                let ev = c.next_event().await;
                got.push((seq(&ev), ev["data"].clone()));
            }
            got
        });
    }

    let mut publishers = JoinSet::new();
    for p in 0..PUBLISHERS {
        let (http, url) = (srv.http.clone(), srv.url("/api/v1/events"));
        publishers.spawn(async move {
            let mut assigned = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<Value> = (0..PER_BATCH)
                    .map(|i| json!({"type": "custom.load", "data": {"p": p, "b": b, "i": i}}))
                    .collect();
                let resp = http
                    .post(&url)
                    .json(&json!({ "events": batch }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), 202);
                let body: Value = resp.json().await.expect("body");
                let seqs: Vec<u64> = body["seqs"]
                    .as_array()
                    .expect("seqs")
                    .iter()
                    .map(|s| s.as_u64().expect("seq"))
                    .collect();
                assert_eq!(seqs.len(), PER_BATCH);
                assert_contiguous("one batch", &seqs, seqs[0], seqs[0] + PER_BATCH as u64 - 1);
                for (i, s) in seqs.into_iter().enumerate() {
                    assigned.push((s, json!({"p": p, "b": b, "i": i})));
                }
            }
            assigned
        });
    }
    let mut by_seq = vec![Value::Null; TOTAL + 1];
    while let Some(assigned) = publishers.join_next().await {
        for (s, data) in assigned.expect("publisher") {
            let slot = &mut by_seq[usize::try_from(s).expect("seq")];
            assert!(slot.is_null(), "seq {s} assigned twice");
            *slot = data;
        }
    }
    assert!(
        by_seq[1..].iter().all(|d| !d.is_null()),
        "seqs 1..={TOTAL} all assigned"
    );

    while let Some(got) = readers.join_next().await {
        let got = got.expect("reader");
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_contiguous("a client's stream", &seqs, 1, TOTAL as u64);
        for (s, data) in &got {
            assert_eq!(data, &by_seq[*s as usize], "payload of seq {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_1000_clients() {
    const CLIENTS: usize = 1000;
    let srv = TestServer::spawn().await;
    let clients = connect_many(&srv, CLIENTS, "/ws").await;
    let stats = srv.hub_stats().await;
    assert_eq!(stats["clients"], CLIENTS, "{}", stats["clients"]);
    assert_eq!(stats["subscriptions"]["custom.*"], CLIENTS);

    let mut readers = JoinSet::new();
    for mut c in clients {
        readers.spawn(async move { c.next_event().await });
    }
    let seqs = srv.publish(&events("custom.broadcast", 1, "all")).await;
    let mut received = 0;
    while let Some(ev) = readers.join_next().await {
        let ev = ev.expect("reader");
        assert_eq!(ev["type"], "custom.broadcast");
        assert_eq!(seq(&ev), seqs[0]);
        received += 1;
    }
    assert_eq!(received, CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4008_while_100_readers_get_everything() {
    const READERS: usize = 100;
    const MIN_EVENTS: u64 = 2000;
    // Publish in lockstep batches no larger than the queue: a reader that keeps
    // up can then never overflow, whatever the scheduling.
    const BATCH: usize = 8;
    let srv = TestServer::spawn_with(|c| {
        c.ws_queue = 16;
        c.ws_send_buffer = 4096;
        // The stalled write must outlive the whole publishing phase; pings are
        // off the table too (a non-reader does not answer them).
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let mut slow = srv.connect().await;
    slow.subscribe(&["custom.*"]).await;
    let readers = connect_many(&srv, READERS, "/ws").await;

    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = JoinSet::new();
    for (r, mut c) in readers.into_iter().enumerate() {
        let progress = progress.clone();
        tasks.spawn(async move {
            let mut last = 0u64;
            loop {
                let text = match tokio::time::timeout(WAIT * 3, c.ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(Message::Close(f)))) => {
                        panic!("reader {r} closed after seq {last}: {f:?}")
                    }
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("reader {r} after seq {last}: {other:?}"),
                };
                if !text.starts_with("{\"type\":\"custom.") {
                    continue;
                }
                let s = seq_in_text(&text).expect("event seq");
                assert_eq!(s, last + 1, "reader {r}: gap or duplicate");
                last = s;
                progress[r].store(s, Ordering::Release);
                if text.starts_with("{\"type\":\"custom.end\"") {
                    return last;
                }
            }
        });
    }

    let pad = "x".repeat(1000);
    let mut head;
    let mut rounds = 0u64;
    loop {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| json!({"type": "custom.bulk", "data": {"i": i, "pad": pad}}))
            .collect();
        head = *srv.publish(&batch).await.last().expect("seqs");
        rounds += 1;
        let deadline = tokio::time::Instant::now() + WAIT;
        while progress.iter().any(|p| p.load(Ordering::Acquire) < head) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "readers did not receive seq {head} within {WAIT:?}"
            );
            tokio::time::sleep(ms(1)).await;
        }
        if head >= MIN_EVENTS && rounds.is_multiple_of(25) {
            let stats = srv.hub_stats().await;
            if stats["dropped_by_close"].as_u64() >= Some(1) {
                break;
            }
            assert!(head < 50 * MIN_EVENTS, "the stalled client was never closed: {stats}");
        }
    }
    let end = srv.publish(&events("custom.end", 1, "end")).await[0];
    while let Some(last) = tasks.join_next().await {
        assert_eq!(last.expect("reader"), end);
    }

    // The slow client reads again: what it was sent, gap-free, then 4008 naming the last seq.
    let mut got = Vec::new();
    let (code, reason) = loop {
        match tokio::time::timeout(WAIT, slow.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.starts_with("{\"type\":\"custom.") {
                    got.push(seq_in_text(&t).expect("seq"));
                }
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => break (u16::from(f.code), f.reason.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("slow client after {} events: {other:?}", got.len()),
        }
    };
    assert_eq!(code, 4008, "{reason:?}");
    let last_seq: u64 = reason
        .split_once("last_seq=")
        .unwrap_or_else(|| panic!("reason without last_seq=: {reason:?}"))
        .1
        .parse()
        .expect("last_seq number");
    assert!(last_seq < head, "closed only after everything was sent?");
    assert_contiguous("slow client before 4008", &got, 1, last_seq);
    slow.finish().await;

    let stats = srv.hub_stats().await;
    assert!(stats["dropped_by_close"].as_u64() >= Some(1), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_topics_conflate_for_a_stalled_client_instead_of_closing_it() {
    let srv = TestServer::spawn_with(|c| {
        c.heartbeat_interval = ms(5);
        c.ws_queue = 4;
        c.ws_send_buffer = 4096;
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;

    // Stop reading and fill the pipe with large events until the server's writer
    // stalls (nothing delivered for a while although heartbeats keep coming).
    // One event at a time, so at most a couple ever wait in the 4-event queue.
    let pad = "x".repeat(48 * 1024);
    let mut stalled = false;
    for _ in 0..200 {
        srv.publish(&[json!({"type": "custom.fill", "data": {"pad": pad}})])
            .await;
        let before = srv.hub_stats().await["events_delivered"].clone();
        tokio::time::sleep(ms(300)).await;
        if srv.hub_stats().await["events_delivered"] == before {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the writer never stalled on a client that does not read");
    let blocked_from = now_rfc3339();
    let published_before = srv.hub_stats().await["events_published"].as_u64().expect("count");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = srv.hub_stats().await;
    let published_while_blocked = stats["events_published"].as_u64().expect("count") - published_before;
    assert!(published_while_blocked >= 20, "heartbeats kept coming: {stats}");
    assert_eq!(stats["dropped_by_close"], 0, "state must not close a client: {stats}");
    assert_eq!(stats["clients"], 1, "{stats}");
    let resumed_at = now_rfc3339();

    // Read again until heartbeats are live; count those stamped while blocked.
    let mut during = Vec::new();
    loop {
        let m = match c.frame_within(WAIT).await {
            Some(Message::Text(t)) => t,
            Some(_) => continue,
            None => panic!("nothing arrived after reading again"),
        };
        if !m.starts_with("{\"type\":\"heartbeat\"") {
            continue;
        }
        let hb: Value = serde_json::from_str(&m).expect("JSON");
        let at = hb["data"]["server_time"].as_str().expect("server_time").to_owned();
        if at > resumed_at {
            break;
        }
        if at > blocked_from {
            during.push(at);
        }
    }
    assert!(
        during.len() <= 5,
        "{} heartbeats from the blocked period were delivered (of {published_while_blocked} \
         published): a backlog, not the latest value: {during:?}",
        during.len()
    );
    c.ping_pong().await;
    assert_eq!(srv.hub_stats().await["dropped_by_close"], 0);
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn new_subscriber_gets_the_current_state_value_at_once() {
    // One heartbeat at start-up, the next in an hour: whatever arrives is the stored value.
    let srv = TestServer::spawn_with(|c| c.heartbeat_interval = Duration::from_secs(3600)).await;
    srv.wait_stats("the start-up heartbeat", |s| s["events_published"].as_u64() >= Some(1))
        .await;
    let mut c = srv.connect().await;
    // The current state values follow welcome at once (heartbeat, and the host
    // data topics once sampled), all without a seq.
    let first = loop {
        let m = c.next_json().await;
        assert!(m.get("seq").is_none(), "state carries no seq: {m}");
        if m["type"] == "heartbeat" {
            break m;
        }
        assert!(
            ["system.status", "storage.update"].contains(&m["type"].as_str().unwrap_or("")),
            "only state values follow welcome: {m}"
        );
    };

    c.request(
        json!({"type": "unsubscribe", "data": {"types": ["heartbeat"]}}),
        "unsubscribed",
    )
    .await;
    let reply = c.subscribe(&["heartbeat"]).await;
    assert!(set_of(&reply["data"]["subscriptions"]).contains("heartbeat"));
    let again = c.next_of("heartbeat").await;
    assert_eq!(again, first, "the stored value, right after `subscribed`");

    // Already matched by the old set: not sent again.
    c.subscribe(&["*"]).await;
    let rest = c.sync().await;
    assert!(
        rest.iter().all(|m| m["type"] != "heartbeat"),
        "re-sent a state value the client already had: {rest:?}"
    );
}

#[tokio::test]
async fn types_query_replaces_the_default_subscriptions() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect_path("/ws?types=custom.a,custom.b.%2A").await;
    assert_eq!(c.welcome["data"]["subscriptions"], json!(["custom.b.*", "custom.a"]));
    let mut none = srv.connect_path("/ws?types=").await;
    assert_eq!(none.welcome["data"]["subscriptions"], json!([]));
    srv.publish(&[
        json!({"type": "custom.a"}),
        json!({"type": "custom.b.x"}),
        json!({"type": "notification", "data": {"title": "t"}}),
    ])
    .await;
    let got = typed_seqs(&c.sync().await);
    assert_eq!(got, vec![("custom.a".into(), 1), ("custom.b.x".into(), 2)]);
    let got = none.sync().await;
    assert!(got.is_empty(), "subscribed to nothing, got {got:?}");

    for bad in ["A*", "custom..x", "a.*.*"] {
        match tokio_tungstenite::connect_async(common::ws_request(&srv.ws_url(&format!("/ws?types={bad}")), &srv.token))
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{bad}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON body");
                assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
            }
            other => panic!("types={bad}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn a_connection_holds_a_bounded_number_of_patterns() {
    const MAX: usize = 256;
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let mut held = DEFAULT_SUBSCRIPTIONS.len();
    let mut n = 0;
    while held < MAX {
        let take = (MAX - held).min(64);
        let types: Vec<String> = (n..n + take).map(|i| format!("custom.p{i}")).collect();
        n += take;
        let reply = c
            .request(json!({"type": "subscribe", "data": {"types": types}}), "subscribed")
            .await;
        held = strings(&reply["data"]["subscriptions"]).len();
        assert_eq!(held, DEFAULT_SUBSCRIPTIONS.len() + n);
    }
    let err = c
        .request(
            json!({"type": "subscribe", "id": "over", "data": {"types": ["custom.one_more"]}}),
            "error",
        )
        .await;
    assert_eq!(err["id"], "over");
    assert_eq!(err["data"]["code"], "bad_request", "{err}");
    // Refused as a whole; re-adding a held pattern is still fine.
    let reply = c.subscribe(&["custom.p0"]).await;
    assert_eq!(strings(&reply["data"]["subscriptions"]).len(), MAX);
    assert!(!set_of(&reply["data"]["subscriptions"]).contains("custom.one_more"));
}

#[tokio::test]
async fn one_batch_larger_than_the_queue_reaches_a_client_that_keeps_up() {
    // The bound is on events still waiting when more arrive, not on one publish.
    let srv = TestServer::spawn_with(|c| c.ws_queue = 16).await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.big_batch", 100, "b")).await;
    for want in 1..=100 {
        assert_eq!(seq(&c.next_event().await), want);
    }
    c.ping_pong().await;
    assert_eq!(srv.hub_stats().await["dropped_by_close"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_seq_is_an_exact_cut_while_publishing_never_stops() {
    const CLIENTS: usize = 30;
    const FOLLOW: u64 = 5;
    let srv = TestServer::spawn().await;
    let publisher = NonstopPublisher::start(&srv, json!({"events": events("custom.flow", 3, "f")}));
    for i in 0..CLIENTS {
        let mut c = srv.connect_path("/ws?types=custom.*").await;
        let cut = c.welcome["data"]["seq"].as_u64().expect("seq");
        let got: Vec<u64> = {
            let mut got = Vec::new();
            while got.len() < FOLLOW as usize {
                got.push(seq(&c.next_event().await));
            }
            got
        };
        assert_contiguous(
            &format!("client {i} after welcome.seq {cut}"),
            &got,
            cut + 1,
            cut + FOLLOW,
        );
    }
    publisher.stop().await;
}
