//! `resume`: a reconnecting client gets exactly the events it missed, then live
//! events with no gap or duplicate at the seam — or a `reset` saying why not.
mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::TestServer;
use common::hub::{NonstopPublisher, assert_contiguous, events, publish_in_background, seq};
use sigmavault_server::config::HistoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_message_replays_exactly_the_missed_events_then_goes_live() {
    const SEEN: u64 = 100;
    const MISSED: u64 = 2000;
    const DURING: u64 = 500;
    let srv = TestServer::spawn_with(|c| c.history = 10_000).await;
    let mut a = srv.connect().await;
    let epoch = a.welcome["data"]["epoch"].as_str().expect("epoch").to_owned();
    a.subscribe(&["custom.*"]).await;
    srv.publish_in_batches("custom.seen", SEEN as usize, 50).await;
    for want in 1..=SEEN {
        assert_eq!(seq(&a.next_event().await), want);
    }
    a.close().await;

    srv.publish_in_batches("custom.missed", MISSED as usize, 100).await;

    let mut b = srv.connect().await;
    assert_eq!(b.welcome["data"]["seq"], SEEN + MISSED);
    b.subscribe(&["custom.*"]).await;
    b.send_json(json!({"type": "resume", "id": "r1", "data": {"epoch": epoch, "since": SEEN}}))
        .await;
    // The first replayed event proves the replay started; publish during the rest of it.
    let first = b.next_event().await;
    assert_eq!(seq(&first), SEEN + 1);
    assert_eq!(first["type"], "custom.missed");
    let during = publish_in_background(&srv, "custom.during", DURING as usize / 10, 10);

    let last = SEEN + MISSED + DURING;
    let (mut replayed, resumed) = b.read_replay().await;
    replayed.insert(0, SEEN + 1);
    let through = resumed["data"]["through"].as_u64().expect("through");
    assert!(through >= SEEN + MISSED, "{resumed}");
    assert_eq!(resumed["id"], "r1");
    assert_eq!(resumed["data"]["epoch"], epoch.as_str());
    assert_eq!(resumed["data"]["since"], SEEN);
    assert_eq!(resumed["data"]["replayed"], through - SEEN, "{resumed}");
    assert_contiguous("replay", &replayed, SEEN + 1, through);
    if through < last {
        let live = b.read_events_through(last).await;
        assert_contiguous("live after the replay", &live, through + 1, last);
    }
    let during = during.await.expect("publisher");
    assert_contiguous("published during the replay", &during, SEEN + MISSED + 1, last);

    // Nothing beyond what was published.
    let extra: Vec<Value> = b.sync().await.into_iter().filter(|m| m.get("seq").is_some()).collect();
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_query_replays_from_the_upgrade_request() {
    // `notification` is in the default set, which is what a query resume replays against.
    const SEEN: u64 = 50;
    const MISSED: u64 = 500;
    const DURING: u64 = 200;
    let srv = TestServer::spawn().await;
    let mut a = srv.connect().await;
    let epoch = a.welcome["data"]["epoch"].as_str().expect("epoch").to_owned();
    srv.publish_in_batches("notification", SEEN as usize, 10).await;
    for want in 1..=SEEN {
        assert_eq!(seq(&a.next_event().await), want);
    }
    a.close().await;
    srv.publish_in_batches("notification", MISSED as usize, 50).await;

    // Registration and the replay start are atomic: publishing concurrently
    // with the upgrade itself must not matter.
    let during = publish_in_background(&srv, "notification", DURING as usize / 10, 10);
    let mut b = srv.connect_path(&format!("/ws?epoch={epoch}&since={SEEN}")).await;
    let last = SEEN + MISSED + DURING;
    let (replayed, resumed) = b.read_replay().await;
    let through = resumed["data"]["through"].as_u64().expect("through");
    assert_eq!(resumed["data"]["since"], SEEN);
    assert_eq!(resumed["data"]["replayed"], through - SEEN);
    assert!(through >= SEEN + MISSED);
    assert_contiguous("replay", &replayed, SEEN + 1, through);
    if through < last {
        let live = b.read_events_through(last).await;
        assert_contiguous("live after the replay", &live, through + 1, last);
    }
    during.await.expect("publisher");
}

#[tokio::test]
async fn resume_at_the_head_replays_nothing() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.x", 5, "x")).await;
    for want in 1..=5 {
        assert_eq!(seq(&c.next_event().await), want);
    }
    c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 5}}))
        .await;
    let resumed = c.next_of("resumed").await;
    assert_eq!(resumed["data"]["through"], 5);
    assert_eq!(resumed["data"]["replayed"], 0);
    srv.publish(&events("custom.x", 1, "y")).await;
    assert_eq!(seq(&c.next_event().await), 6);
}

#[tokio::test]
async fn resume_from_before_the_history_resets_with_history_too_old() {
    // The in-memory ring alone (the durable log's retention has its own test).
    let srv = TestServer::spawn_with(|c| {
        c.history = 10;
        c.history_store = HistoryStore::Memory;
    })
    .await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].as_str().expect("epoch").to_owned();
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.x", 50, "x")).await;
    for want in 1..=50 {
        assert_eq!(seq(&c.next_event().await), want);
    }
    let stats = srv.hub_stats().await;
    assert_eq!(stats["history_oldest_seq"], 41, "{stats}");

    let reset = c
        .request(
            json!({"type": "resume", "id": 1, "data": {"epoch": epoch, "since": 0}}),
            "reset",
        )
        .await;
    assert_eq!(reset["id"], 1);
    let data = &reset["data"];
    assert_eq!(data["reason"], "history_too_old", "{reset}");
    assert_eq!(data["epoch"], epoch.as_str());
    assert_eq!(data["oldest_seq"], 41);
    assert_eq!(data["seq"], 50);
    assert!(data["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Live delivery continues.
    srv.publish(&events("custom.x", 1, "after")).await;
    assert_eq!(seq(&c.next_event().await), 51);
    assert!(srv.hub_stats().await["resets"].as_u64() >= Some(1));

    // The oldest retained position itself is still resumable.
    let mut d = srv.connect().await;
    d.subscribe(&["custom.*"]).await;
    assert_eq!(srv.hub_stats().await["history_oldest_seq"], 42);
    d.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 41}}))
        .await;
    let (replayed, resumed) = d.read_replay().await;
    assert_contiguous("replay", &replayed, 42, 51);
    assert_eq!(resumed["data"]["replayed"], 10);
}

#[tokio::test]
async fn resume_with_another_epoch_resets_with_epoch_mismatch() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].as_str().expect("epoch").to_owned();
    srv.publish(&events("custom.x", 3, "x")).await;
    let reset = c
        .request(
            json!({"type": "resume", "id": "e", "data": {"epoch": "not-this-one", "since": 1}}),
            "reset",
        )
        .await;
    assert_eq!(reset["id"], "e");
    assert_eq!(reset["data"]["reason"], "epoch_mismatch", "{reset}");
    assert_eq!(reset["data"]["epoch"], epoch.as_str());
    assert_eq!(reset["data"]["seq"], 3);

    // The same through the upgrade query: welcome first, then the reset.
    let mut q = srv.connect_path("/ws?epoch=not-this-one&since=1").await;
    let reset = q.next_of("reset").await;
    assert_eq!(reset["data"]["reason"], "epoch_mismatch", "{reset}");
    q.ping_pong().await;
}

#[tokio::test]
async fn resume_ahead_of_the_head_is_an_error() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    srv.publish(&events("custom.x", 3, "x")).await;
    let err = c
        .request(
            json!({"type": "resume", "id": 9, "data": {"epoch": epoch, "since": 4}}),
            "error",
        )
        .await;
    assert_eq!(err["id"], 9);
    assert_eq!(err["data"]["code"], "since_ahead", "{err}");
    // The connection carries on.
    c.ping_pong().await;
}

#[tokio::test]
async fn resume_query_must_be_complete() {
    let srv = TestServer::spawn().await;
    for query in ["epoch=e", "since=3", "epoch=e&since=-1", "epoch=e&since=x"] {
        match tokio_tungstenite::connect_async(common::ws_request(&srv.ws_url(&format!("/ws?{query}")), &srv.token))
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{query}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON body");
                assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
            }
            other => panic!("{query}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_overtaken_by_the_ring_resets_with_history_overrun() {
    const HISTORY: u64 = 100;
    let srv = TestServer::spawn_with(|c| {
        c.history = HISTORY as usize;
        // Only the memory ring can be overtaken; the durable log backs replays otherwise.
        c.history_store = HistoryStore::Memory;
        c.ws_send_buffer = 4096;
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let pad = "x".repeat(32 * 1024);
    let big = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"type": "custom.big", "data": {"i": i, "pad": pad}}))
            .collect()
    };
    for _ in 0..10 {
        srv.publish(&big(10)).await;
    }
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    c.subscribe(&["custom.*"]).await;
    c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 0}}))
        .await;
    // The replay of 100 × 32 KiB has started and now stalls on the unread socket
    // while the ring moves on by a whole history.
    assert_eq!(seq(&c.next_event().await), 1);
    for _ in 0..20 {
        srv.publish(&big(10)).await;
    }
    let mut replayed = vec![1];
    let reset = loop {
        let m = c.next_json().await;
        if m["type"] == "reset" {
            break m;
        }
        assert_ne!(m["type"], "resumed", "replay finished although overtaken: {m}");
        if m.get("seq").is_some() {
            replayed.push(seq(&m));
        }
    };
    assert_eq!(reset["data"]["reason"], "history_overrun", "{reset}");
    assert_eq!(reset["data"]["seq"], 300);
    assert_eq!(reset["data"]["oldest_seq"], 201);
    let last = *replayed.last().expect("replayed");
    assert_contiguous("replay before the overrun", &replayed, 1, last);
    // Live after the reset.
    srv.publish(&events("custom.x", 1, "after")).await;
    assert_eq!(seq(&c.next_event().await), 301);
}

/// The replay/live seam under pressure: a connection resumes again and again
/// (message form, from the last seq it received, while more are in flight) as a
/// publisher never pauses and a crowd of other subscribers makes each fan-out
/// slow. Events already delivered live are not sent again and the seam after
/// `resumed` is exact, so the connection's stream stays gap- and duplicate-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_resumes_under_nonstop_publishing_keep_the_stream_exact() {
    const CROWD: usize = 200;
    const ROUNDS: usize = 1000;
    let srv = TestServer::spawn_with(|c| {
        // One resume message per round, as fast as the round trips allow.
        c.ws_rate_limit = 1_000_000;
        c.ws_rate_burst = 1_000_000;
        // The crowd never reads: let its queues and stalled writes be.
        c.ws_queue = 1_000_000;
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let mut crowd = Vec::new();
    for _ in 0..CROWD {
        crowd.push(srv.connect().await);
    }
    let epoch = crowd[0].welcome["data"]["epoch"].as_str().expect("epoch").to_owned();
    let publisher = NonstopPublisher::start(&srv, json!({"type": "notification", "data": {"title": "t"}}));
    // `notification` is in the default set and the only type published, so this
    // connection must see every seq after its welcome, once, in order.
    let mut c = srv.connect().await;
    let mut last = c.welcome["data"]["seq"].as_u64().expect("seq");
    let started = tokio::time::Instant::now();
    for round in 0..ROUNDS {
        // A time budget, not an assertion: fewer rounds on a slow machine.
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        let since = last;
        c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": since}}))
            .await;
        let mut through = None;
        while through.is_none_or(|t| last <= t) {
            let m = c.next_json().await;
            match m["type"].as_str() {
                Some("resumed") => {
                    let t = m["data"]["through"].as_u64().expect("through");
                    assert!(
                        t >= last,
                        "round {round}: resumed through {t} < {last} already seen: {m}"
                    );
                    through = Some(t);
                }
                Some("reset") | Some("error") => panic!("round {round}: {m}"),
                _ if m.get("seq").is_some() => {
                    let s = seq(&m);
                    assert_eq!(
                        s,
                        last + 1,
                        "round {round}: after seq {last} (resume since {since}, resumed through {through:?})"
                    );
                    last = s;
                }
                _ => {}
            }
        }
    }
    publisher.stop().await;
}

#[tokio::test]
async fn resume_on_a_live_connection_skips_what_it_already_delivered() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.x", 10, "x")).await;
    for want in 1..=10 {
        assert_eq!(seq(&c.next_event().await), want);
    }
    // Events 6..=10 were delivered live on this connection: nothing to replay.
    c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 5}}))
        .await;
    let (replayed, resumed) = c.read_replay().await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(resumed["data"]["through"], 10);
    assert_eq!(resumed["data"]["replayed"], 0);
    srv.publish(&events("custom.x", 1, "y")).await;
    assert_eq!(seq(&c.next_event().await), 11);

    // Events of a type subscribed only now were not delivered: they are replayed.
    let seqs = srv.publish(&events("notification", 2, "n")).await;
    assert_eq!(seqs, vec![12, 13]);
    assert_eq!(seq(&c.next_event().await), 12);
    assert_eq!(seq(&c.next_event().await), 13);
    c.request(
        json!({"type": "unsubscribe", "data": {"types": ["notification"]}}),
        "unsubscribed",
    )
    .await;
    srv.publish(&events("notification", 1, "n")).await;
    c.subscribe(&["notification"]).await;
    c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 11}}))
        .await;
    let (replayed, resumed) = c.read_replay().await;
    assert_eq!(replayed, vec![14], "only the notification published while unsubscribed");
    assert_eq!(resumed["data"]["through"], 14);
}

#[tokio::test]
async fn a_second_resume_does_not_repeat_what_the_first_replay_delivered() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    srv.publish(&events("custom.x", 10, "x")).await;
    c.subscribe(&["custom.*"]).await;
    let resume = json!({"type": "resume", "data": {"epoch": epoch, "since": 5}});
    c.send_json(resume.clone()).await;
    let (replayed, _) = c.read_replay().await;
    assert_eq!(replayed, vec![6, 7, 8, 9, 10]);
    // Same position again: on this connection 6..=10 have been delivered, by the
    // replay this time instead of live, and a resume skips delivered events.
    c.send_json(resume).await;
    let (replayed, resumed) = c.read_replay().await;
    assert!(
        replayed.is_empty(),
        "delivered twice on one connection: {replayed:?} ({resumed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_events_that_unsubscribe_purged_from_the_queue() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_send_buffer = 4096;
        c.ws_queue = 10_000;
        c.ws_write_timeout = Duration::from_secs(600);
        c.ws_ping_interval = Duration::from_secs(600);
        c.ws_pong_timeout = Duration::from_secs(600);
    })
    .await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    c.subscribe(&["custom.*"]).await;
    // Stall the writer on an unread socket so that later events wait in the queue.
    let pad = "x".repeat(32 * 1024);
    const N: u64 = 60;
    for i in 0..N {
        srv.publish(&[json!({"type": "custom.big", "data": {"i": i, "pad": pad}})])
            .await;
    }
    // Drop what is still queued, then subscribe again and take one more event live.
    // The stats show each change has been applied while the socket is still
    // unread (reading would let the writer take the queue before the purge).
    c.send_json(json!({"type": "unsubscribe", "data": {"types": ["custom.*"]}}))
        .await;
    srv.wait_stats("custom.* unsubscribed", |s| s["subscriptions"]["custom.*"].is_null())
        .await;
    c.send_json(json!({"type": "subscribe", "data": {"types": ["custom.*"]}}))
        .await;
    srv.wait_stats("custom.* subscribed again", |s| s["subscriptions"]["custom.*"] == 1)
        .await;
    let mut live = Vec::new();
    let mut replies = 0;
    while replies < 2 {
        let m = c.next_json().await;
        if m["type"] == "unsubscribed" || m["type"] == "subscribed" {
            replies += 1;
        } else if m.get("seq").is_some() {
            live.push(seq(&m));
        }
    }
    let delivered = *live.last().expect("some events were written before the stall");
    assert!(delivered < N, "nothing was purged; the test did not stall the writer");
    assert_contiguous("before the purge", &live, 1, delivered);
    srv.publish(&events("custom.after", 1, "after")).await;
    assert_eq!(seq(&c.next_event().await), N + 1);

    // Events delivered+1..=N were never delivered on this connection.
    c.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": delivered}}))
        .await;
    let (replayed, resumed) = c.read_replay().await;
    assert_contiguous(&format!("replay after {resumed}"), &replayed, delivered + 1, N);
}

#[tokio::test]
async fn resume_after_too_many_subscription_changes_is_refused() {
    // Each change at a new head with a new set is one more segment of "what was
    // sent" to remember; past a bound the server refuses rather than guess.
    const CHANGES: usize = 100;
    let srv = TestServer::spawn_with(|c| c.ws_rate_burst = 10_000).await;
    let mut c = srv.connect().await;
    let epoch = c.welcome["data"]["epoch"].clone();
    let resume = json!({"type": "resume", "id": "r", "data": {"epoch": epoch, "since": 0}});
    for i in 0..CHANGES {
        c.subscribe(&[&format!("custom.t{i}")]).await;
        srv.publish(&events("custom.elsewhere", 1, "x")).await;
    }
    let err = c.request(resume.clone(), "error").await;
    assert_eq!(err["id"], "r");
    assert_eq!(err["data"]["code"], "resume_unavailable", "{err}");
    c.ping_pong().await;

    // The query form on a new connection is the way out.
    let mut d = srv
        .connect_path(&format!(
            "/ws?types=custom.t0&epoch={}&since=0",
            epoch.as_str().expect("epoch")
        ))
        .await;
    let (replayed, resumed) = d.read_replay().await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(resumed["data"]["through"], CHANGES);
}

#[tokio::test]
async fn resume_query_ahead_of_the_head_is_an_error_frame() {
    let srv = TestServer::spawn().await;
    let epoch = srv.get_json("/api/v1/info").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    srv.publish(&events("notification", 2, "n")).await;
    let mut c = srv.connect_path(&format!("/ws?epoch={epoch}&since=3")).await;
    let err = c.next_of("error").await;
    assert_eq!(err["data"]["code"], "since_ahead", "{err}");
    assert!(err.get("id").is_none());
    // Live delivery is unaffected.
    srv.publish(&events("notification", 1, "n")).await;
    assert_eq!(seq(&c.next_event().await), 3);
}

#[tokio::test]
async fn types_query_sets_the_subscriptions_a_query_resume_replays() {
    let srv = TestServer::spawn().await;
    let epoch = srv.get_json("/api/v1/info").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    srv.publish(&[
        json!({"type": "custom.a"}),
        json!({"type": "notification", "data": {"title": "t"}}),
        json!({"type": "custom.b"}),
    ])
    .await;
    let mut c = srv
        .connect_path(&format!("/ws?types=custom.*&epoch={epoch}&since=0"))
        .await;
    assert_eq!(c.welcome["data"]["subscriptions"], json!(["custom.*"]));
    let (replayed, resumed) = c.read_replay().await;
    assert_eq!(replayed, vec![1, 3], "only custom.* is replayed");
    assert_eq!(resumed["data"]["replayed"], 2);
    assert_eq!(resumed["data"]["through"], 3);
}
