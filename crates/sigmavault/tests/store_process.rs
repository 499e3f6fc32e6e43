//! The database as an operator meets it, with the real binary as a child process:
//! acknowledged events and notifications survive `kill -9`, a damaged, too-new or
//! misplaced database stops `serve` with one line and exit 74, `db backup | check |
//! restore` work against a live server (and restore is refused while it runs), and
//! the data directory is private and held by one process at a time.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{Finished, Server, WAIT, command, http_get, http_get_as, http_post_json_as, run_to_exit};

/// The exit status of `serve` when the database cannot be used (EX_IOERR).
const EXIT_STORE: i32 = 74;

/// Deadline for a whole replay or a round of concurrent publishing on a loaded box.
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// `serve` on a fresh port with `dir` as its data directory; waits for the listening line.
fn start(dir: &Path) -> Server {
    // Port 0: never a port clash. The retries cover a lock still being released by a
    // process that was just killed.
    Server::start_on_port(0, Some(dir), &[], WAIT)
}

/// SIGKILL: no shutdown path runs, nothing is flushed or checkpointed.
fn kill_9(srv: &mut Server) {
    common::signal(srv.pid(), "KILL");
    let status = common::wait_timeout(&mut srv.child, WAIT).unwrap_or_else(|| panic!("alive after SIGKILL"));
    assert_eq!(killed_by(status), Some(9), "{status}");
}

fn killed_by(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

/// Stops with SIGTERM and expects a clean exit.
fn stop(srv: &mut Server) {
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
}

/// `sigmavault serve --port 0 --data-dir DIR`, to run to its exit.
fn serve_cmd(dir: &Path) -> Command {
    let mut cmd = command(common::bin());
    cmd.args(["serve", "--port", "0", "--data-dir"]).arg(dir);
    cmd
}

/// `sigmavault db ARGS… --data-dir DIR`.
fn db_cmd(dir: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = command(common::bin());
    cmd.arg("db").args(args).arg("--data-dir").arg(dir);
    cmd
}

fn db(dir: &Path, args: &[&std::ffi::OsStr]) -> Finished {
    run_to_exit(db_cmd(dir, args), LONG)
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// `serve` refused to start: exit 74 promptly, nothing on stdout, exactly one stderr
/// line `sigmavault: …` containing every one of `needles`, and no panic text.
fn assert_start_refused(dir: &Path, needles: &[&str]) -> String {
    let started = Instant::now();
    let out = run_to_exit(serve_cmd(dir), WAIT);
    assert_eq!(out.status.code(), Some(EXIT_STORE), "{out:?}");
    assert!(started.elapsed() < WAIT, "refused, not stuck ({:?})", started.elapsed());
    assert!(out.stdout.is_empty(), "nothing is announced: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(!out.stderr.contains("RUST_BACKTRACE"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {:?}", out.stderr);
    let line = lines[0];
    assert!(line.starts_with("sigmavault: "), "{line:?}");
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} in {line:?}");
    }
    line.to_owned()
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

fn server_epoch(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/api/v1/info", WAIT).expect("GET /api/v1/info");
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("info is JSON");
    info["epoch"].as_str().expect("epoch").to_owned()
}

/// One `custom.test` event per label (`data.id`), as one all-or-nothing batch.
fn batch_body(labels: &[String]) -> String {
    let events: Vec<Value> = labels
        .iter()
        .map(|id| json!({"type": "custom.test", "data": {"id": id}}))
        .collect();
    json!({ "events": events }).to_string()
}

/// A `notification` whose title is `title`.
fn notification_body(title: &str) -> String {
    json!({"type": "notification", "data": {"level": "warning", "title": title, "message": "m"}}).to_string()
}

/// The seqs of a 202 reply.
fn seqs_of(reply: &str) -> Vec<u64> {
    let reply: Value = serde_json::from_str(reply).unwrap_or_else(|e| panic!("publish reply {reply:?}: {e}"));
    reply["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs in {reply}"))
        .iter()
        .map(|s| s.as_u64().expect("seq is a number"))
        .collect()
}

/// POSTs `body` to /api/v1/events with `token` and expects 202; the assigned seqs.
fn publish_as(addr: SocketAddr, token: &str, body: &str) -> Vec<u64> {
    let (status, reply) = http_post_json_as(addr, "/api/v1/events", body, token, WAIT).expect("POST /api/v1/events");
    assert_eq!(status, 202, "{reply}");
    seqs_of(&reply)
}

/// POSTs `body` to the server's /api/v1/events and expects 202; the assigned seqs.
fn publish(srv: &Server, body: &str) -> Vec<u64> {
    publish_as(srv.addr, srv.token(), body)
}

/// Titles of all notifications, newest first.
fn notification_titles(srv: &Server) -> Vec<String> {
    let (status, body) =
        http_get_as(srv.addr, "/api/v1/notifications?limit=500", srv.token(), WAIT).expect("GET notifications");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("notifications are JSON");
    page["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications array: {page}"))
        .iter()
        .map(|n| n["title"].as_str().expect("title").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

fn kind(msg: &Value) -> &str {
    msg["type"].as_str().unwrap_or_default()
}

/// What a client resuming at connect time (`/ws?types=*&epoch=E&since=N`) receives.
struct Replay {
    welcome: Value,
    /// Every frame with a `seq`, in arrival order.
    events: Vec<Value>,
    /// The `resumed` or `reset` that ended the replay.
    end: Value,
}

impl Replay {
    fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect()
    }

    /// (seq, label): `data.id` of a custom event, `data.title` of a notification.
    fn labelled(&self) -> Vec<(u64, String)> {
        self.events
            .iter()
            .map(|e| (e["seq"].as_u64().expect("seq"), label(e)))
            .collect()
    }
}

fn label(event: &Value) -> String {
    let data = &event["data"];
    match kind(event) {
        "notification" => data["title"].as_str(),
        _ => data["id"].as_str(),
    }
    .unwrap_or_else(|| panic!("an event this test did not publish: {event}"))
    .to_owned()
}

/// Connects with `?types=*&epoch=E&since=N` and reads until `resumed` or `reset`.
fn resume(srv: &Server, epoch: &str, since: u64) -> Replay {
    let url = format!("ws://{}/ws?types=*&epoch={epoch}&since={since}", srv.addr);
    let request = common::ws_request(&url, srv.token());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let msgs: Vec<Value> = rt.block_on(async {
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("ws connect in time")
            .expect("ws connect");
        let deadline = tokio::time::Instant::now() + LONG;
        let mut msgs: Vec<Value> = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let msg: Value =
                        serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t}"));
                    let last = matches!(kind(&msg), "resumed" | "reset");
                    msgs.push(msg);
                    if last {
                        break;
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => panic!("closed during the replay: {frame:?}; got {msgs:?}"),
                Ok(Some(Ok(_))) => {}
                other => panic!("the replay did not end: {other:?}; got {} messages", msgs.len()),
            }
        }
        let _ = ws.close(None).await;
        msgs
    });
    let welcome = msgs.first().cloned().expect("a welcome");
    assert_eq!(kind(&welcome), "welcome", "{welcome}");
    let end = msgs.last().cloned().expect("an end");
    let events = msgs[1..msgs.len() - 1]
        .iter()
        .filter(|m| m["seq"].is_u64())
        .cloned()
        .collect();
    Replay { welcome, events, end }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Deterministic noise (xorshift), so a failure reproduces.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// A new data directory holding `bytes` as its `sigmavault.db`.
fn data_dir_with_db(parent: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(dir.join("sigmavault.db"), bytes).expect("write db");
    dir
}

/// A value from `db backup`/`db check` output: `… last seq 7, …` → `7`.
fn summary_field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .split(key)
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).find(|w| !w.is_empty()))
        .unwrap_or_else(|| panic!("{key:?} in {stdout:?}"))
}

/// A populated database copied out with `db backup`: a self-contained file (no WAL),
/// unlike the server's own file, whose pages may live in `sigmavault.db-wal`.
fn real_database(tmp: &Path) -> Vec<u8> {
    let dir = tmp.join("source");
    let mut srv = start(&dir);
    for round in 0..4 {
        let labels: Vec<String> = (0..25).map(|i| format!("src-{round}-{i}")).collect();
        publish(&srv, &batch_body(&labels));
        publish(&srv, &notification_body(&format!("source {round}")));
    }
    stop(&mut srv);
    let file = tmp.join("source-backup.db");
    let out = db(&dir, &[os("backup"), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::read(&file).expect("read the backup")
}

/// Where two byte strings first differ (a length difference counts), if they do.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// The SQLite page size from a database header (bytes 16..18, 1 meaning 65536).
fn page_size(db: &[u8]) -> usize {
    match u16::from_be_bytes([db[16], db[17]]) {
        1 => 65536,
        n => n as usize,
    }
}

// ---------------------------------------------------------------------------
// 1. kill -9
// ---------------------------------------------------------------------------

/// Each acknowledgement is followed at once by SIGKILL; after every restart the
/// epoch is the same, the seq continues, notifications are listed, and a resuming
/// client gets every acknowledged event exactly once, in order.
#[test]
fn acknowledged_writes_survive_kill_9_right_after_the_reply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = start(&dir);
    let epoch = server_epoch(srv.addr);
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut titles: Vec<String> = Vec::new();
    let next = |acked: &[(u64, String)]| acked.last().map_or(1, |(s, _)| s + 1);

    for round in 0..5 {
        let labels: Vec<String> = (0..4).map(|i| format!("r{round}-e{i}")).collect();
        let seqs = publish(&srv, &batch_body(&labels));
        kill_9(&mut srv);
        let first = next(&acked);
        assert_eq!(seqs, (first..first + 4).collect::<Vec<_>>(), "round {round}");
        acked.extend(seqs.into_iter().zip(labels));

        srv = start(&dir);
        assert_eq!(
            server_epoch(srv.addr),
            epoch,
            "round {round}: the epoch survives kill -9"
        );
        let title = format!("t{round}");
        let seqs = publish(&srv, &notification_body(&title));
        kill_9(&mut srv);
        assert_eq!(seqs, vec![next(&acked)], "round {round}: seq continues after kill -9");
        acked.push((seqs[0], title.clone()));
        titles.push(title);

        srv = start(&dir);
        assert_eq!(server_epoch(srv.addr), epoch, "round {round}");
        let listed = notification_titles(&srv);
        let mut expected = titles.clone();
        expected.reverse();
        assert_eq!(listed, expected, "round {round}: every acknowledged notification, once");
    }

    let replay = resume(&srv, &epoch, 0);
    assert_eq!(replay.welcome["data"]["epoch"], epoch.as_str(), "{}", replay.welcome);
    assert_eq!(
        replay.welcome["data"]["seq"],
        acked.last().expect("acked").0,
        "{}",
        replay.welcome
    );
    assert_eq!(kind(&replay.end), "resumed", "{}", replay.end);
    assert_eq!(
        replay.labelled(),
        acked,
        "every acknowledged event exactly once, in order"
    );
    let kinds: Vec<&str> = replay.events.iter().map(kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "notification").count(), 5, "{kinds:?}");

    let seq = publish(&srv, &batch_body(&["after".to_owned()]));
    assert_eq!(seq, vec![next(&acked)]);
    stop(&mut srv);
}

/// One POST and what became of it.
struct Attempt {
    labels: Vec<String>,
    notification: bool,
    /// `Some(seqs)` when acknowledged (202); `None` when the server died first.
    seqs: Option<Vec<u64>>,
}

/// Publishes from `threads` threads until the server stops answering; returns every attempt.
fn publishers(
    addr: SocketAddr,
    token: &str,
    round: usize,
    threads: usize,
    acks: Arc<AtomicUsize>,
) -> Vec<thread::JoinHandle<Vec<Attempt>>> {
    (0..threads)
        .map(|t| {
            let acks = acks.clone();
            let token = token.to_owned();
            thread::spawn(move || {
                let mut attempts = Vec::new();
                for k in 0.. {
                    let notification = t == 0 && k % 4 == 3;
                    let (labels, body) = if notification {
                        let title = format!("n-{round}-{t}-{k}");
                        (vec![title.clone()], notification_body(&title))
                    } else {
                        let labels: Vec<String> = (0..3).map(|i| format!("e-{round}-{t}-{k}-{i}")).collect();
                        let body = batch_body(&labels);
                        (labels, body)
                    };
                    let outcome = http_post_json_as(addr, "/api/v1/events", &body, &token, Duration::from_secs(10));
                    let seqs = match outcome {
                        Ok((202, reply)) => Some(seqs_of(&reply)),
                        // A live server must not refuse a valid publish.
                        Ok((status, reply)) => panic!("publish answered {status}: {reply}"),
                        // Killed mid-request (or before it): the outcome is unknown.
                        Err(_) => None,
                    };
                    let done = seqs.is_none();
                    if !done {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    attempts.push(Attempt {
                        labels,
                        notification,
                        seqs,
                    });
                    if done {
                        break;
                    }
                }
                attempts
            })
        })
        .collect()
}

/// Several publishers race SIGKILL in every round. Whatever was acknowledged is
/// there after the restart at the seq it was given; batches are all or nothing;
/// nothing appears twice or out of nowhere; seqs have no holes and are never reused.
#[test]
fn concurrent_publishers_racing_kill_9_lose_nothing_acknowledged() {
    const ROUNDS: usize = 5;
    const THREADS: usize = 4;
    const ACKS_PER_ROUND: usize = 25;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut epoch: Option<String> = None;
    let mut attempts: Vec<Attempt> = Vec::new();

    for round in 0..ROUNDS {
        let mut srv = start(&dir);
        let now = server_epoch(srv.addr);
        assert_eq!(
            epoch.get_or_insert_with(|| now.clone()),
            &now,
            "round {round}: same epoch"
        );
        let acks = Arc::new(AtomicUsize::new(0));
        let handles = publishers(srv.addr, srv.token(), round, THREADS, acks.clone());
        let deadline = Instant::now() + LONG;
        while acks.load(Ordering::SeqCst) < ACKS_PER_ROUND {
            assert!(srv.is_running(), "round {round}: the server died; log:\n{}", srv.log());
            assert!(Instant::now() < deadline, "round {round}: too few acknowledgements");
            thread::sleep(Duration::from_millis(5));
        }
        // Requests are in flight: some committed and answered, some committed and not
        // answered yet, some not committed.
        kill_9(&mut srv);
        for h in handles {
            attempts.extend(h.join().expect("publisher thread"));
        }
    }

    let srv = start(&dir);
    let epoch = epoch.expect("epoch");
    assert_eq!(server_epoch(srv.addr), epoch);
    let replay = resume(&srv, &epoch, 0);
    assert_eq!(kind(&replay.end), "resumed", "{}", replay.end);
    let head = replay.welcome["data"]["seq"].as_u64().expect("welcome seq");
    assert_eq!(
        replay.seqs(),
        (1..=head).collect::<Vec<_>>(),
        "no hole, no duplicate, in order"
    );
    let stored: HashMap<u64, String> = replay.labelled().into_iter().collect();
    let mut seen_labels: HashMap<&str, u64> = HashMap::new();
    for (seq, label) in &stored {
        assert!(seen_labels.insert(label, *seq).is_none(), "{label} stored twice");
    }

    let mut acked_seqs: HashSet<u64> = HashSet::new();
    let mut attempted: HashSet<&str> = HashSet::new();
    let mut acknowledged = 0;
    let mut unknown = 0;
    for a in &attempts {
        attempted.extend(a.labels.iter().map(String::as_str));
        let present = a.labels.iter().filter(|l| seen_labels.contains_key(l.as_str())).count();
        assert!(
            present == 0 || present == a.labels.len(),
            "a batch is all or nothing: {present} of {:?}",
            a.labels
        );
        match &a.seqs {
            Some(seqs) => {
                acknowledged += 1;
                for (seq, label) in seqs.iter().zip(&a.labels) {
                    assert!(
                        acked_seqs.insert(*seq),
                        "seq {seq} acknowledged twice (reused after a kill)"
                    );
                    assert_eq!(
                        stored.get(seq),
                        Some(label),
                        "acknowledged {label} at seq {seq} is in the history"
                    );
                }
            }
            None => unknown += 1,
        }
    }
    for label in seen_labels.keys() {
        assert!(attempted.contains(label), "{label} was never published");
    }
    assert!(acknowledged >= ROUNDS * ACKS_PER_ROUND, "{acknowledged}");
    assert!(unknown >= 1, "every round ends with requests cut off");
    let committed_unanswered = attempts
        .iter()
        .filter(|a| a.seqs.is_none() && seen_labels.contains_key(a.labels[0].as_str()))
        .count();
    eprintln!(
        "{acknowledged} acknowledged publishes, {unknown} cut off by kill -9 \
         ({committed_unanswered} of those committed anyway), {head} events stored"
    );

    let listed: HashSet<String> = notification_titles(&srv).into_iter().collect();
    for a in attempts.iter().filter(|a| a.notification && a.seqs.is_some()) {
        assert!(
            listed.contains(&a.labels[0]),
            "acknowledged notification {:?} is listed",
            a.labels[0]
        );
    }
    let seqs = publish(&srv, &batch_body(&["after".to_owned()]));
    assert_eq!(seqs, vec![head + 1], "seq continues after the last stored event");
}

// ---------------------------------------------------------------------------
// 2. A damaged database
// ---------------------------------------------------------------------------

#[test]
fn a_damaged_database_stops_start_up_with_one_line_and_db_check_says_damaged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = real_database(tmp.path());
    let page = page_size(&real);
    assert!(
        real.len() >= 4 * page,
        "a database of several pages: {} bytes",
        real.len()
    );
    assert_eq!(&real[..16], b"SQLite format 3\0");

    let mut garbled_schema = real.clone();
    garbled_schema[100..page].copy_from_slice(&noise(page - 100, 1));
    let mut garbled_pages = real.clone();
    let rest = real.len() - page;
    garbled_pages[page..].copy_from_slice(&noise(rest, 2));
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", noise(64 * 1024, 3)),
        // A valid 100-byte header, then noise where the schema is.
        ("garbled-schema", garbled_schema),
        // Page 1 intact; every other page (the tables) overwritten.
        ("garbled-pages", garbled_pages),
        ("truncated", real[..real.len() / 2].to_vec()),
    ];
    let (mut unnamed, mut touched) = (Vec::new(), Vec::new());
    for (name, bytes) in &variants {
        let dir = data_dir_with_db(tmp.path(), name, bytes);
        // One line that says what is wrong with which file (checked last, below).
        let line = assert_start_refused(&dir, &["corrupt"]);
        if !line.contains("sigmavault.db") {
            unnamed.push(format!("{name}: {line}"));
        }

        let out = db(&dir, &[os("check")]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{name}: {out:?}");
        assert!(
            out.stderr.lines().any(|l| l.starts_with("damaged: ")),
            "{name}: {out:?}"
        );
        if let Some(at) = first_difference(&std::fs::read(dir.join("sigmavault.db")).expect("read"), bytes) {
            touched.push(format!("{name}: first changed byte at offset {at}"));
        }
    }

    // The undamaged original passes both.
    let dir = data_dir_with_db(tmp.path(), "intact", &real);
    let out = db(&dir, &[os("check")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("ok: "), "{out:?}");
    let mut srv = start(&dir);
    assert_eq!(notification_titles(&srv).len(), 4);
    stop(&mut srv);

    // Checked last, together, so one run reports every variant:
    // - an operator with several data directories needs to know which file is damaged;
    // - a refused database is not written to: it is evidence, and what `db check` reads.
    assert!(
        unnamed.is_empty() && touched.is_empty(),
        "start-up errors that do not name the file: {unnamed:#?}\nrefused databases that were modified: {touched:#?}"
    );
}

// ---------------------------------------------------------------------------
// 3. A database from a newer SigmaVault
// ---------------------------------------------------------------------------

#[test]
fn a_database_with_a_newer_schema_is_refused_naming_both_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = start(&dir);
    publish(&srv, &batch_body(&["one".to_owned()]));
    stop(&mut srv);
    // A clean stop checkpoints, so the main file's header is the truth. With a WAL
    // left behind, page 1 could be newer there and a patch of the main file be lost.
    let db_file = dir.join("sigmavault.db");
    let wal = with_suffix(&db_file, "-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "a clean stop leaves no WAL to replay");
    let out = db(&dir, &[os("check")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let known: u32 = summary_field(&out.stdout, "schema v").parse().expect("schema version");
    let epoch = summary_field(&out.stdout, "epoch ").to_owned();

    // PRAGMA user_version = 99, by hand: 4 bytes big-endian at offset 60 of the header.
    let mut bytes = std::fs::read(&db_file).expect("read the database");
    assert_eq!(&bytes[60..64], &known.to_be_bytes(), "user_version at offset 60");
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&db_file, &bytes).expect("patch the database");

    assert_start_refused(
        &dir,
        &["sigmavault.db", "schema version 99", &format!("({known})"), "newer"],
    );
    // "A database newer than this binary is refused before anything touches it"
    // (store/schema.rs): no migration, no journal-mode switch, no backup.
    let after = std::fs::read(&db_file).expect("read the database");
    assert_eq!(
        first_difference(&after, &bytes),
        None,
        "the refused database was modified at this offset"
    );
    assert!(
        !dir.join("backups").exists(),
        "no pre-migration backup of a database it will not migrate"
    );
    let out = db(&dir, &[os("check")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(summary_field(&out.stdout, "schema v"), "99", "{out:?}");
    assert_eq!(summary_field(&out.stdout, "epoch "), epoch, "{out:?}");
    assert_eq!(summary_field(&out.stdout, "last seq "), "1", "{out:?}");

    // `db restore` of such a file is refused too, and leaves the current database alone.
    let patched = tmp.path().join("future.db");
    std::fs::write(&patched, &bytes).expect("write");
    let other = tmp.path().join("other");
    let mut srv = start(&other);
    let other_epoch = server_epoch(srv.addr);
    stop(&mut srv);
    let out = db(&other, &[os("restore"), patched.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(
        out.stderr.contains("schema version 99") && out.stderr.contains(&format!("({known})")),
        "{out:?}"
    );
    let out = db(&other, &[os("check")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(summary_field(&out.stdout, "epoch "), other_epoch, "{out:?}");
}

// ---------------------------------------------------------------------------
// 4. Backup and restore around a live server
// ---------------------------------------------------------------------------

#[test]
fn backup_while_publishing_then_restore_gives_a_new_epoch_and_the_backed_up_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = start(&dir);
    let old_epoch = server_epoch(srv.addr);
    publish(&srv, &notification_body("before the backup"));

    // A publisher keeps writing while the backup is taken.
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let halt = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, halt, addr) = (acked.clone(), halt.clone(), srv.addr);
        let token = srv.token().to_owned();
        thread::spawn(move || {
            let mut k = 0;
            while !halt.load(Ordering::SeqCst) || k < 20 {
                let labels: Vec<String> = (0..5).map(|i| format!("b-{k}-{i}")).collect();
                let seqs = publish_as(addr, &token, &batch_body(&labels));
                acked.lock().expect("acked").extend(seqs.into_iter().zip(labels));
                k += 1;
            }
        })
    };
    while acked.lock().expect("acked").len() < 50 {
        thread::sleep(Duration::from_millis(5));
    }
    let file = tmp.path().join("backups").join("nightly.db");
    let out = db(&dir, &[os("backup"), file.as_os_str()]);
    halt.store(true, Ordering::SeqCst);
    writer.join().expect("publisher");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("backup written to "), "{out:?}");
    assert_eq!(summary_field(&out.stdout, "epoch "), old_epoch, "{out:?}");
    let backed_up: u64 = summary_field(&out.stdout, "last seq ").parse().expect("last seq");
    assert!(backed_up >= 51, "the backup saw the writes so far: {out:?}");
    assert_eq!(mode(&file), 0o600, "a backup holds the same data: private");
    assert!(!with_suffix(&file, "-wal").exists(), "self-contained");
    publish(&srv, &notification_body("after the backup"));
    let acked = acked.lock().expect("acked").clone();
    let last_acked = *acked.keys().last().expect("acked");
    assert!(last_acked > backed_up, "writes went on after the backup");

    // The copy is a healthy database on its own.
    let copy_dir = data_dir_with_db(tmp.path(), "check", &std::fs::read(&file).expect("read backup"));
    let out = db(&copy_dir, &[os("check")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("ok: "), "{out:?}");
    assert_eq!(
        summary_field(&out.stdout, "last seq "),
        backed_up.to_string(),
        "{out:?}"
    );

    // Restore is refused while the server holds the data directory.
    let out = db(&dir, &[os("restore"), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(
        out.stderr.contains("another sigmavault process") && out.stderr.contains("data directory"),
        "{out:?}"
    );
    assert!(srv.is_running());
    assert_eq!(server_epoch(srv.addr), old_epoch, "nothing was replaced");
    assert_eq!(publish(&srv, &batch_body(&["still".to_owned()])), vec![last_acked + 2]);
    stop(&mut srv);

    let out = db(&dir, &[os("restore"), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let new_epoch = summary_field(&out.stdout, "new epoch ").to_owned();
    assert_ne!(new_epoch, old_epoch, "{out:?}");
    let kept: Vec<String> = std::fs::read_dir(dir.join("backups"))
        .expect("backups/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter().any(|n| n.starts_with("sigmavault-before-restore-")),
        "the replaced database is kept: {kept:?}"
    );

    let mut srv = start(&dir);
    assert_eq!(server_epoch(srv.addr), new_epoch);
    assert_eq!(notification_titles(&srv), vec!["before the backup".to_owned()]);

    let reset = resume(&srv, &old_epoch, last_acked);
    assert_eq!(kind(&reset.end), "reset", "{}", reset.end);
    assert_eq!(reset.end["data"]["reason"], "epoch_mismatch", "{}", reset.end);
    assert_eq!(reset.end["data"]["epoch"], new_epoch.as_str(), "{}", reset.end);
    assert!(reset.events.is_empty(), "nothing replayed across epochs");

    let replay = resume(&srv, &new_epoch, 0);
    assert_eq!(kind(&replay.end), "resumed", "{}", replay.end);
    assert_eq!(replay.welcome["data"]["seq"], backed_up, "{}", replay.welcome);
    let mut expected: Vec<(u64, String)> = vec![(1, "before the backup".to_owned())];
    expected.extend(acked.range(..=backed_up).map(|(s, l)| (*s, l.clone())));
    assert_eq!(replay.labelled(), expected, "exactly the backed-up events");
    assert_eq!(
        publish(&srv, &batch_body(&["restored".to_owned()])),
        vec![backed_up + 1]
    );
    stop(&mut srv);
}

// ---------------------------------------------------------------------------
// 5. File modes and the data-directory lock
// ---------------------------------------------------------------------------

#[test]
fn the_data_directory_is_private_and_held_by_one_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut srv = start(&dir);
    publish(&srv, &notification_body("private"));

    assert_eq!(mode(&dir), 0o700, "the data directory is made private");
    let db_file = dir.join("sigmavault.db");
    assert_eq!(mode(&db_file), 0o600);
    for suffix in ["-wal", "-shm"] {
        let f = with_suffix(&db_file, suffix);
        if f.exists() {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
    // Nothing in it (the lock file included) is open to the group or others.
    for entry in std::fs::read_dir(&dir).expect("read the data directory") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path) & 0o077, 0, "{} is {:o}", path.display(), mode(&path));
    }

    let line = assert_start_refused(&dir, &["another sigmavault process", "data directory"]);
    assert!(line.contains(&*dir.to_string_lossy()), "names the directory: {line:?}");
    assert!(srv.is_running(), "the first server is untouched");
    assert_eq!(notification_titles(&srv), vec!["private".to_owned()]);
    stop(&mut srv);

    // Once it is gone, the directory is free again.
    let mut srv = start(&dir);
    assert_eq!(notification_titles(&srv), vec!["private".to_owned()]);
    stop(&mut srv);
}

// ---------------------------------------------------------------------------
// 6. A directory where the database file should be
// ---------------------------------------------------------------------------

#[test]
fn a_directory_in_place_of_the_database_file_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(dir.join("sigmavault.db")).expect("mkdir");
    assert_start_refused(&dir, &["sigmavault.db", "not a regular file"]);
    assert!(dir.join("sigmavault.db").is_dir(), "left alone");
    let out = db(&dir, &[os("check")]);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stderr.contains("sigmavault.db"), "{out:?}");
}
