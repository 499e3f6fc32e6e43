//! The durable store through the real server: restart continuity, resume across
//! a restart, retention, notifications, concurrent writers and a full database.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::hub::{assert_contiguous, events, seq};
use common::{TestServer, WAIT};
use sigmavault_server::config::Config;
use sigmavault_server::store::{self, DB_FILE};

/// Starts a server on an existing data dir (so a test can restart on it).
async fn server_on(dir: &Path, f: impl FnOnce(&mut Config)) -> TestServer {
    let dir = dir.to_path_buf();
    TestServer::spawn_with(move |c| {
        c.data_dir = dir;
        f(c);
    })
    .await
}

fn epoch_of(c: &common::WsClient) -> String {
    c.welcome["data"]["epoch"].as_str().expect("epoch").to_owned()
}

#[tokio::test]
async fn first_start_creates_a_private_migrated_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let srv = server_on(&data, |_| {}).await;
    srv.publish(&events("custom.x", 2, "a")).await;
    srv.stop().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "data dir");
        assert_eq!(mode(&data.join(DB_FILE)), 0o600, "database");
    }
    let summary = store::backup::check(&data).expect("integrity check passes");
    assert_eq!(summary.schema_version, store::schema::latest_version());
    assert_eq!(summary.last_seq, 2);
    assert_eq!(summary.events, 2);
}

#[tokio::test]
async fn epoch_and_seq_continue_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server_on(dir.path(), |_| {}).await;
    let c = srv.connect().await;
    let epoch = epoch_of(&c);
    assert_eq!(srv.publish(&events("custom.x", 3, "a")).await, vec![1, 2, 3]);
    drop(c);
    srv.stop().await;

    let srv = server_on(dir.path(), |_| {}).await;
    let c = srv.connect().await;
    assert_eq!(epoch_of(&c), epoch, "same history, same epoch");
    assert_eq!(c.welcome["data"]["seq"], 3, "{}", c.welcome);
    assert_eq!(srv.publish(&events("custom.x", 1, "b")).await, vec![4], "seq continues");
}

#[tokio::test]
async fn memory_history_starts_a_new_epoch_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let memory = |c: &mut Config| c.history_store = sigmavault_server::config::HistoryStore::Memory;
    let srv = server_on(dir.path(), memory).await;
    let first = epoch_of(&srv.connect().await);
    srv.publish(&events("custom.x", 3, "a")).await;
    srv.stop().await;
    let srv = server_on(dir.path(), memory).await;
    let c = srv.connect().await;
    assert_ne!(epoch_of(&c), first);
    assert_eq!(c.welcome["data"]["seq"], 0);
}

#[tokio::test]
async fn resume_across_a_restart_replays_exactly_the_missed_events_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    // A ring of 4: most of the replay must come from the database.
    let cfg = |c: &mut Config| c.history = 4;
    let srv = server_on(dir.path(), cfg).await;
    let mut c = srv.connect().await;
    let epoch = epoch_of(&c);
    c.subscribe(&["custom.*"]).await;
    srv.publish(&events("custom.x", 10, "before")).await;
    for want in 1..=5 {
        assert_eq!(seq(&c.next_event().await), want);
    }
    // The client saw 1..=5 and went away; 6..=10 were published before the restart.
    drop(c);
    srv.stop().await;

    let srv = server_on(dir.path(), cfg).await;
    srv.publish(&events("custom.x", 20, "after")).await;
    let mut c = srv
        .connect_path(&format!("/ws?epoch={epoch}&since=5&types=custom.*"))
        .await;
    let (replayed, resumed) = c.read_replay().await;
    assert_contiguous("replay across the restart", &replayed, 6, 30);
    assert_eq!(resumed["data"]["replayed"], 25, "{resumed}");
    // Live after the seam, without a gap or a duplicate.
    srv.publish(&events("custom.x", 1, "live")).await;
    assert_eq!(seq(&c.next_event().await), 31);

    // The replayed frames are the ones first sent: same type, seq and data.
    let mut d = srv
        .connect_path(&format!("/ws?epoch={epoch}&since=0&types=custom.*"))
        .await;
    let first = d.next_event().await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["data"], json!({"tag": "before", "i": 0}));
}

#[tokio::test]
async fn retention_by_count_prunes_the_log_and_resets_resumes_that_need_pruned_events() {
    let srv = TestServer::spawn_with(|c| {
        c.history = 2;
        c.history_max_events = 5;
    })
    .await;
    let mut c = srv.connect().await;
    let epoch = epoch_of(&c);
    srv.publish(&events("custom.x", 20, "x")).await;
    let stats = srv.hub_stats().await;
    assert_eq!(stats["history_oldest_seq"], 16, "{stats}");

    let reset = c
        .request(
            json!({"type": "resume", "id": 7, "data": {"epoch": epoch, "since": 3}}),
            "reset",
        )
        .await;
    assert_eq!(reset["data"]["reason"], "history_too_old", "{reset}");
    assert_eq!(reset["data"]["oldest_seq"], 16, "{reset}");
    assert_eq!(reset["data"]["seq"], 20);

    // The oldest retained event is still replayable (from the database: the ring holds 2).
    let mut d = srv
        .connect_path(&format!("/ws?epoch={epoch}&since=15&types=custom.*"))
        .await;
    let (replayed, _) = d.read_replay().await;
    assert_contiguous("replay", &replayed, 16, 20);
}

#[tokio::test]
async fn retention_by_age_empties_the_log_and_seq_still_continues() {
    let srv = TestServer::spawn_with(|c| {
        c.history = 0;
        c.history_max_age = Duration::from_millis(50);
        c.retention_interval = Duration::from_millis(50);
    })
    .await;
    let mut c = srv.connect().await;
    let epoch = epoch_of(&c);
    srv.publish(&events("custom.x", 5, "old")).await;
    // Retention runs on its own timer; wait until the log is empty.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = srv.hub_stats().await;
        if stats["history_oldest_seq"].is_null() {
            assert_eq!(stats["store"]["oldest_seq"], 6, "{stats}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "retention never ran: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reset = c
        .request(json!({"type": "resume", "data": {"epoch": epoch, "since": 0}}), "reset")
        .await;
    assert_eq!(reset["data"]["reason"], "history_too_old", "{reset}");
    assert_eq!(reset["data"]["oldest_seq"], 6);
    assert_eq!(srv.publish(&events("custom.x", 1, "new")).await, vec![6]);
}

async fn get(srv: &TestServer, path: &str) -> (u16, Value) {
    let resp = srv.http.get(srv.url(path)).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn post(srv: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = srv.http.post(srv.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn notifications_are_stored_listed_read_and_deleted_with_events() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.subscribe(&["notification", "notification.*"]).await;

    let mut ids = Vec::new();
    for (level, title) in [
        ("info", "backup done"),
        ("critical", "disk failing"),
        ("warning", "hot"),
    ] {
        let (status, body) = post(
            &srv,
            "/api/v1/events",
            Some(json!({"type": "notification", "data": {"level": level, "title": title, "message": "m", "source": "test"}})),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let ev = c.next_of("notification").await;
        assert_eq!(ev["seq"], body["seq"], "{ev}");
        assert_eq!(ev["data"]["title"], title);
        assert_eq!(ev["data"]["level"], level);
        assert!(ev["data"]["read_at"].is_null());
        assert!(ev["data"]["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        ids.push(ev["data"]["id"].as_i64().expect("id"));
    }

    let (status, page) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 3);
    assert_eq!(page["unread"], 3);
    let listed: Vec<i64> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2], ids[1], ids[0]], "newest first");

    let (_, page) = get(&srv, "/api/v1/notifications?level=critical,warning").await;
    assert_eq!(page["total"], 2, "{page}");
    let (_, page) = get(&srv, "/api/v1/notifications?limit=2").await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_i64().expect("a next page");
    let (_, page) = get(&srv, &format!("/api/v1/notifications?limit=2&before={before}")).await;
    assert_eq!(page["notifications"][0]["id"], ids[0]);
    assert!(page["next_before"].is_null());
    let (_, page) = get(&srv, "/api/v1/notifications?since=2999-01-01T00:00:00Z").await;
    assert_eq!(page["total"], 0);

    // Mark one read: a notification.read event, and it leaves the unread list.
    let (status, n) = post(&srv, &format!("/api/v1/notifications/{}/read", ids[1]), None).await;
    assert_eq!(status, 200, "{n}");
    assert!(n["read_at"].is_string());
    let ev = c.next_of("notification.read").await;
    assert_eq!(ev["data"]["ids"], json!([ids[1]]));
    let (_, page) = get(&srv, "/api/v1/notifications?unread=true").await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["unread"], 2);

    // Marking it again changes nothing and publishes nothing.
    let (status, again) = post(&srv, &format!("/api/v1/notifications/{}/read", ids[1]), None).await;
    assert_eq!(status, 200);
    assert_eq!(again["read_at"], n["read_at"]);

    let (status, body) = post(&srv, "/api/v1/notifications/read-all", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["marked"], 2);
    let ev = c.next_of("notification.read").await;
    assert_eq!(
        ev["data"]["ids"],
        json!([ids[0], ids[2]]),
        "the one already read is not repeated"
    );
    let (_, page) = get(&srv, "/api/v1/notifications?unread=true").await;
    assert_eq!(page["total"], 0);

    let resp = srv
        .http
        .delete(srv.url(&format!("/api/v1/notifications/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev = c.next_of("notification.deleted").await;
    assert_eq!(ev["data"]["id"], ids[0]);
    let resp = srv
        .http
        .delete(srv.url(&format!("/api/v1/notifications/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    for bad in [
        "/api/v1/notifications?level=loud",
        "/api/v1/notifications?unread=maybe",
        "/api/v1/notifications?x=1",
    ] {
        let (status, body) = get(&srv, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = post(&srv, "/api/v1/notifications/abc/read", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_invalid_notification_fails_the_whole_batch_and_uses_no_seq() {
    let srv = TestServer::spawn().await;
    assert_eq!(srv.publish(&events("custom.x", 1, "a")).await, vec![1]);
    for data in [
        json!({"level": "loud", "title": "t"}),
        json!({"message": "no title"}),
        json!({"title": "t", "extra": 1}),
        json!({"title": 5}),
    ] {
        let (status, body) = post(
            &srv,
            "/api/v1/events",
            Some(json!({"events": [{"type": "custom.x"}, {"type": "notification", "data": data}]})),
        )
        .await;
        assert_eq!(status, 422, "{data}: {body}");
        assert_eq!(body["error"]["code"], "invalid_event", "{body}");
    }
    assert_eq!(
        srv.publish(&events("custom.x", 1, "b")).await,
        vec![2],
        "no seq was consumed"
    );
    let (_, page) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(page["total"], 0, "nothing half-written: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_see_a_locked_database() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*", "notification", "notification.*"]).await;
    const PUBLISHERS: usize = 6;
    const ROUNDS: usize = 40;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let http = srv.http.clone();
        let url = srv.url("/api/v1/events");
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for r in 0..ROUNDS {
                let body = if r % 4 == 0 {
                    json!({"events": [{"type": "notification", "data": {"title": format!("p{p} r{r}")}}, {"type": "custom.c", "data": {"p": p}}]})
                } else {
                    json!({"events": (0..5).map(|i| json!({"type": "custom.c", "data": {"p": p, "i": i}})).collect::<Vec<_>>()})
                };
                let resp = http.post(&url).json(&body).send().await.unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap();
                assert_eq!(status, 202, "{body}");
                seqs.extend(body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()));
            }
            seqs
        }));
    }
    // Readers and read-markers at the same time.
    let http = srv.http.clone();
    let base = srv.url("");
    let marker = tokio::spawn(async move {
        for _ in 0..30 {
            let resp = http
                .post(format!("{base}/api/v1/notifications/read-all"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let resp = http
                .get(format!("{base}/api/v1/notifications?unread=true"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    });
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    marker.await.unwrap();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "no seq acknowledged twice");

    // The subscriber got every event (custom, notification, notification.read)
    // in order, exactly once, with no gap: nothing acknowledged was lost.
    let head = srv.hub_stats().await["seq"].as_u64().unwrap();
    let mut got = Vec::new();
    while got.len() < head as usize {
        got.push(seq(&c.next_event().await));
    }
    assert_contiguous("delivered", &got, 1, head);
    assert!(all.iter().all(|s| *s <= head));
    let (_, page) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(page["total"], (PUBLISHERS * ROUNDS / 4) as u64);
}

#[tokio::test]
async fn a_full_database_refuses_with_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server_on(dir.path(), |c| c.db_max_size = 1 << 20).await;
    let mut c = srv.connect().await;
    c.subscribe(&["custom.*"]).await;
    let pad = "x".repeat(60 * 1024);
    let mut acknowledged = Vec::new();
    let refused = loop {
        let (status, body) = post(
            &srv,
            "/api/v1/events",
            Some(json!({"type": "custom.big", "data": {"pad": pad}})),
        )
        .await;
        match status {
            202 => acknowledged.push(body["seq"].as_u64().unwrap()),
            _ => break (status, body),
        }
        assert!(acknowledged.len() < 100, "a 1 MiB database never filled up");
    };
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "storage_full", "{}", refused.1);
    assert!(!acknowledged.is_empty());
    let last = *acknowledged.last().unwrap();

    // Every acknowledged event was delivered; the refused one never was.
    for want in 1..=last {
        assert_eq!(seq(&c.next_event().await), want);
    }
    // A server-internal event that cannot be stored is still delivered, live,
    // without a seq and marked non-durable; it does not disturb the sequence.
    let hub = srv.server.as_ref().expect("running").hub.clone();
    c.subscribe(&["storage.disk.*"]).await;
    hub.publish_internal("storage.disk.removed", json!({"name": "sdz", "pad": pad}));
    let ev = c.next_of("storage.disk.removed").await;
    assert_eq!(ev["durable"], false, "{}", &ev.to_string()[..200]);
    assert!(ev.get("seq").is_none());
    assert_eq!(ev["data"]["name"], "sdz");

    // Reads still work while writes are refused.
    let (status, _) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(status, 200);
    // A small event after the failure gets the next seq (none was consumed) or is refused too.
    let (status, body) = post(&srv, "/api/v1/events", Some(json!({"type": "custom.small"}))).await;
    if status == 202 {
        assert_eq!(body["seq"], last + 1, "{body}");
    } else {
        assert_eq!(status, 503, "{body}");
    }
    srv.stop().await;

    // After a restart with room, every acknowledged event is there and seq continues.
    let srv = server_on(dir.path(), |_| {}).await;
    let mut d = srv.connect().await;
    let head = d.welcome["data"]["seq"].as_u64().unwrap();
    assert!(
        head == last || head == last + 1,
        "head {head}, last acknowledged {last}"
    );
    let epoch = epoch_of(&d);
    d.subscribe(&["custom.*"]).await;
    d.send_json(json!({"type": "resume", "data": {"epoch": epoch, "since": 0}}))
        .await;
    let (replayed, _) = d.read_replay().await;
    assert_contiguous("after restart", &replayed, 1, head);
}

#[tokio::test]
async fn a_notification_raised_inside_the_server_is_stored_and_published() {
    let srv = TestServer::spawn().await;
    let mut c = srv.connect().await;
    let hub = srv.server.as_ref().expect("running").hub.clone();
    hub.publish_internal(
        "notification",
        json!({"level": "critical", "title": "sda failing", "message": "SMART says so", "source": "smart"}),
    );
    // `notification` is in the default subscriptions.
    let ev = c.next_of("notification").await;
    assert_eq!(ev["seq"], 1, "{ev}");
    assert!(ev.get("durable").is_none(), "stored events carry no durable flag: {ev}");
    let id = ev["data"]["id"].as_i64().expect("a stored record has an id");
    let (_, page) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(page["notifications"][0]["id"], id);
    assert_eq!(page["notifications"][0]["source"], "smart");
    assert_eq!(page["notifications"][0]["level"], "critical");
}

#[tokio::test]
async fn notification_retention_keeps_the_newest_within_the_count() {
    let srv = TestServer::spawn_with(|c| {
        c.notifications_max_count = 3;
        c.retention_interval = Duration::from_millis(50);
    })
    .await;
    for i in 0..5 {
        let (status, _) = post(
            &srv,
            "/api/v1/events",
            Some(json!({"type": "notification", "data": {"title": format!("n{i}")}})),
        )
        .await;
        assert_eq!(status, 202);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, page) = get(&srv, "/api/v1/notifications").await;
        if page["total"] == 3 {
            let titles: Vec<&str> = page["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["title"].as_str().unwrap())
                .collect();
            assert_eq!(titles, vec!["n4", "n3", "n2"], "the newest are kept");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "retention never ran: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes `path` unwritable even for root (`chattr +i`), or says why it cannot.
/// Returns a guard that undoes it.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &Path) -> Result<Immutable, String> {
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A directory nobody can write to: mode 0500 for an ordinary user, `chattr +i`
/// for root. `None` (with a notice) where the filesystem supports neither.
fn read_only_dir(dir: &Path) -> Option<Option<Immutable>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let probe = dir.join(".probe");
    if std::fs::write(&probe, b"x").is_err() {
        return Some(None);
    }
    let _ = std::fs::remove_file(&probe);
    match Immutable::set(dir) {
        Ok(guard) if std::fs::write(&probe, b"x").is_err() => Some(Some(guard)),
        Ok(_) => {
            eprintln!(
                "NOTICE: chattr +i does not make {} read-only here; skipped",
                dir.display()
            );
            None
        }
        Err(e) => {
            eprintln!("NOTICE: cannot make {} read-only here ({e}); skipped", dir.display());
            None
        }
    }
}

#[tokio::test]
async fn a_read_only_data_dir_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server_on(dir.path(), |_| {}).await;
    srv.publish(&events("custom.x", 1, "a")).await;
    srv.stop().await;
    let Some(_guard) = read_only_dir(dir.path()) else {
        return;
    };
    let config = Config {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let err = match sigmavault_server::start(config).await {
        Ok(_) => panic!("a server started on a read-only data dir"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[tokio::test]
async fn a_database_that_turns_read_only_answers_503_and_keeps_serving_reads() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server_on(dir.path(), |_| {}).await;
    assert_eq!(srv.publish(&events("custom.x", 1, "a")).await, vec![1]);
    // Not the -shm file: SQLite maps it into memory, and a mapping that cannot be
    // written faults the whole process (SIGBUS), which no error handling can catch.
    let files: Vec<std::path::PathBuf> = ["", "-wal"]
        .iter()
        .map(|s| dir.path().join(format!("{DB_FILE}{s}")))
        .filter(|p| p.exists())
        .collect();
    let mut guards = Vec::new();
    for f in &files {
        match Immutable::set(f) {
            Ok(g) => guards.push(g),
            Err(e) => {
                eprintln!("NOTICE: cannot make {} read-only here ({e}); skipped", f.display());
                return;
            }
        }
    }
    let (status, body) = post(&srv, "/api/v1/events", Some(json!({"type": "custom.x"}))).await;
    if status == 202 {
        eprintln!("NOTICE: writes through open descriptors still succeed after chattr +i here; skipped");
        return;
    }
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("storage_")),
        "{body}"
    );
    let (status, _) = get(&srv, "/api/v1/notifications").await;
    assert_eq!(status, 200, "reads still work");
    drop(guards);
    // Once writable again, writes succeed and the failed publish used no seq.
    assert_eq!(srv.publish(&events("custom.x", 1, "b")).await, vec![2]);
}

#[tokio::test]
async fn a_memory_history_run_leaves_the_durable_history_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let memory = |c: &mut Config| c.history_store = sigmavault_server::config::HistoryStore::Memory;
    let srv = server_on(dir.path(), |_| {}).await;
    let durable_epoch = epoch_of(&srv.connect().await);
    assert_eq!(srv.publish(&events("custom.x", 3, "durable")).await, vec![1, 2, 3]);
    srv.stop().await;

    let srv = server_on(dir.path(), memory).await;
    let memory_epoch = epoch_of(&srv.connect().await);
    assert_ne!(memory_epoch, durable_epoch);
    assert_eq!(srv.publish(&events("custom.x", 2, "memory")).await, vec![1, 2]);
    srv.stop().await;

    let srv = server_on(dir.path(), |_| {}).await;
    let mut c = srv.connect().await;
    assert_eq!(epoch_of(&c), durable_epoch, "the durable history continues");
    assert_eq!(c.welcome["data"]["seq"], 3);
    let reset = c
        .request(
            json!({"type": "resume", "data": {"epoch": memory_epoch, "since": 2}}),
            "reset",
        )
        .await;
    assert_eq!(reset["data"]["reason"], "epoch_mismatch", "{reset}");
    assert_eq!(srv.publish(&events("custom.x", 1, "again")).await, vec![4]);
    let mut d = srv
        .connect_path(&format!("/ws?epoch={durable_epoch}&since=0&types=custom.*"))
        .await;
    let (replayed, _) = d.read_replay().await;
    assert_contiguous("durable history", &replayed, 1, 4);
}
