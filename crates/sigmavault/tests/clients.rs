//! The two client commands end to end: `sigmavault watch` and `sigmavault bench`
//! run as child processes against a real `sigmavault serve`, observed the way a
//! user sees them (stdout, stderr, exit status) and driven with signals.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use common::{Server, Spawned, WAIT, command, http_get, http_get_as, http_post_json_as, run_to_exit};

/// Fast keep-alive so dead links are noticed quickly; the watch client derives its own
/// idle limit from the welcome.
const KEEPALIVE: [&str; 4] = ["--ws-ping-interval", "200ms", "--ws-pong-timeout", "200ms"];

fn start_server(extra: &[&str]) -> Server {
    let mut args: Vec<&str> = KEEPALIVE.to_vec();
    args.extend_from_slice(extra);
    Server::start(&[], &args)
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Publishes a batch of `custom.*` events and returns the seqs the server assigned.
fn publish(srv: &Server, events: &[(&str, Value)]) -> Vec<u64> {
    let events: Vec<Value> = events
        .iter()
        .map(|(kind, data)| json!({"type": kind, "data": data}))
        .collect();
    let body = json!({ "events": events }).to_string();
    let (status, reply) =
        http_post_json_as(srv.addr, "/api/v1/events", &body, srv.token(), WAIT).expect("POST /api/v1/events");
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("publish reply {reply:?}: {e}"));
    reply["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs in {reply}"))
        .iter()
        .map(|s| s.as_u64().expect("seq is a number"))
        .collect()
}

/// Publishes one `custom.test` event `{"n": n}` and returns its seq.
fn publish_n(srv: &Server, n: u64) -> u64 {
    let seqs = publish(srv, &[("custom.test", json!({ "n": n }))]);
    assert_eq!(seqs.len(), 1);
    seqs[0]
}

fn server_epoch(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/api/v1/info", WAIT).expect("GET /api/v1/info");
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("info is JSON");
    info["epoch"].as_str().expect("epoch").to_owned()
}

/// `sigmavault watch --url ws://ADDR/ws --json --types custom.*` plus `extra`, with
/// `token` in `SIGMAVAULT_TOKEN`.
fn watch(addr: SocketAddr, token: &str, extra: &[&str]) -> Spawned {
    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &ws_url(addr), "--json", "--types", "custom.*"])
        .args(extra)
        .env("SIGMAVAULT_TOKEN", token);
    Spawned::spawn(cmd)
}

/// Every stdout line of `watch --json` is one server message; parse them all.
fn messages(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}")))
        .collect()
}

fn kind(msg: &Value) -> &str {
    msg["type"].as_str().unwrap_or_default()
}

/// The `custom.*` events among the printed messages, as (seq, data.n).
fn custom_events(lines: &[String]) -> Vec<(u64, u64)> {
    messages(lines)
        .iter()
        .filter(|m| kind(m).starts_with("custom."))
        .map(|m| {
            (
                m["seq"].as_u64().unwrap_or_else(|| panic!("event without seq: {m}")),
                m["data"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("event without n: {m}")),
            )
        })
        .collect()
}

fn count_kind(lines: &[String], wanted: &str) -> usize {
    messages(lines).iter().filter(|m| kind(m) == wanted).count()
}

/// Waits until watch has `n` `subscribed` replies on stdout: from then on, events
/// published reach it live (the subscription is a command sent after the welcome).
fn wait_subscribed(w: &mut Spawned, n: usize) -> Vec<String> {
    w.wait_stdout(&format!("{n} subscribed replies"), WAIT, |l| {
        count_kind(l, "subscribed") >= n
    })
}

fn wait_events(w: &mut Spawned, n: usize) -> Vec<String> {
    w.wait_stdout(&format!("{n} custom events"), WAIT, |l| custom_events(l).len() >= n)
}

/// Ctrl-C ends watch with status 0.
fn interrupt(w: &mut Spawned) {
    common::signal(w.pid(), "INT");
    let status = w.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", w.output());
}

#[test]
fn watch_prints_one_json_line_per_message_with_custom_events_in_order() {
    let srv = start_server(&[]);
    let mut w = watch(srv.addr, srv.token(), &[]);
    wait_subscribed(&mut w, 1);

    for n in 1..=3 {
        assert_eq!(publish_n(&srv, n), n, "a fresh server numbers events from 1");
    }
    let lines = wait_events(&mut w, 3);
    assert_eq!(custom_events(&lines), vec![(1, 1), (2, 2), (3, 3)], "{}", w.output());

    let msgs = messages(&lines);
    assert_eq!(kind(&msgs[0]), "welcome", "the welcome is printed first: {lines:?}");
    let subscribed = msgs.iter().find(|m| kind(m) == "subscribed").expect("subscribed");
    let patterns = subscribed["data"]["subscriptions"].to_string();
    assert!(patterns.contains("custom.*"), "{subscribed}");
    for m in msgs.iter().filter(|m| kind(m).starts_with("custom.")) {
        assert_eq!(kind(m), "custom.test", "{m}");
        assert!(m["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{m}");
    }
    // Every line is a whole message as the server sent it, nothing else.
    for line in &lines {
        assert!(line.starts_with(r#"{"type":""#), "{line:?}");
    }
    interrupt(&mut w);
}

const MEMORY_HISTORY: [&str; 6] = [
    "--ws-ping-interval",
    "200ms",
    "--ws-pong-timeout",
    "200ms",
    "--history-store",
    "memory",
];

#[test]
fn watch_resumes_across_a_server_restart_with_the_durable_history() {
    let mut srv = start_server(&[]);
    let port = srv.addr.port();
    let epoch = server_epoch(srv.addr);
    let mut w = watch(srv.addr, srv.token(), &[]);
    wait_subscribed(&mut w, 1);
    for n in 1..=3 {
        publish_n(&srv, n);
    }
    wait_events(&mut w, 3);

    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
    w.wait_stderr("a reconnect notice", WAIT, |l| {
        l.iter()
            .any(|l| l.contains("going_away") && l.contains("reconnecting in"))
    });

    // Same data dir: same epoch, seq continues. Events published before watch is
    // back are replayed from the database on its resume.
    let srv2 = Server::start_on_port(port, Some(srv.data_dir()), &KEEPALIVE, Duration::from_secs(5));
    assert_eq!(server_epoch(srv2.addr), epoch, "the durable history keeps its epoch");
    assert_eq!(publish_n(&srv2, 4), 4, "seq continues after a restart");
    wait_events(&mut w, 4);
    assert_eq!(publish_n(&srv2, 5), 5);
    let lines = wait_events(&mut w, 5);
    assert_eq!(
        custom_events(&lines),
        vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)],
        "{}",
        w.output()
    );
    interrupt(&mut w);
    let stderr = w.stderr();
    assert!(!stderr.iter().any(|l| l.contains("RESET")), "{stderr:?}");
    assert!(
        !stderr.iter().any(|l| l.contains("skipped")),
        "no duplicates: {stderr:?}"
    );
}

#[test]
fn watch_reconnects_after_a_memory_history_restart_and_reports_the_reset() {
    let mut srv = start_server(&["--history-store", "memory"]);
    let port = srv.addr.port();
    let old_epoch = server_epoch(srv.addr);
    let mut w = watch(srv.addr, srv.token(), &[]);
    wait_subscribed(&mut w, 1);
    for n in 1..=3 {
        publish_n(&srv, n);
    }
    wait_events(&mut w, 3);

    // Stop the server: watch is told 1001 and keeps retrying with backoff.
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
    w.wait_stderr("a reconnect notice", WAIT, |l| {
        l.iter()
            .any(|l| l.contains("going_away") && l.contains("reconnecting in"))
    });
    // Let a few connection attempts fail against the closed port.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.is_running(),
        "watch gave up while the server was down; {}",
        w.output()
    );

    // A new process on the same port and data dir: a new epoch, seq back at 0.
    let srv2 = Server::start_on_port(port, Some(srv.data_dir()), &MEMORY_HISTORY, Duration::from_secs(5));
    assert_eq!(srv2.addr.port(), port);
    let new_epoch = server_epoch(srv2.addr);
    assert_ne!(new_epoch, old_epoch, "a restart starts a new epoch");

    let stderr = w.wait_stderr("the reset notice", WAIT, |l| {
        l.iter().any(|l| l.contains("RESET (epoch_mismatch)"))
    });
    let connected: Vec<&String> = stderr.iter().filter(|l| l.starts_with("watch: connected to")).collect();
    assert_eq!(connected.len(), 2, "{stderr:?}");
    assert!(
        connected[1].contains(&format!("epoch {new_epoch}"))
            && connected[1].contains(&format!("resuming after seq 3 of epoch {old_epoch}")),
        "{:?}",
        connected[1]
    );
    let reset = stderr.iter().find(|l| l.contains("RESET")).expect("reset line");
    assert!(reset.contains(&format!("epoch {new_epoch}")), "{reset:?}");

    // The reset came after the new subscription took effect: new events flow.
    wait_subscribed(&mut w, 2);
    for n in 4..=5 {
        publish_n(&srv2, n);
    }
    let lines = wait_events(&mut w, 5);
    assert_eq!(
        custom_events(&lines),
        vec![(1, 1), (2, 2), (3, 3), (1, 4), (2, 5)],
        "{}",
        w.output()
    );
    let msgs = messages(&lines);
    let reset_at = msgs.iter().position(|m| kind(m) == "reset").expect("reset printed");
    let first_new = msgs.iter().position(|m| m["data"]["n"] == 4).expect("event 4");
    assert!(reset_at < first_new, "{lines:?}");
    assert_eq!(msgs[reset_at]["data"]["reason"], "epoch_mismatch");
    interrupt(&mut w);
    assert!(
        !w.stderr().iter().any(|l| l.contains("skipped")),
        "no duplicates: {}",
        w.output()
    );
}

#[test]
fn watch_since_replays_history_then_goes_live_without_duplicates() {
    let srv = start_server(&[]);
    for n in 1..=5 {
        publish_n(&srv, n);
    }
    let epoch = server_epoch(srv.addr);
    let mut w = watch(srv.addr, srv.token(), &["--since", "0", "--epoch", &epoch]);
    // Race the connection: these land before, between or after the welcome, the
    // subscribe and the resume; each must be printed exactly once, in order.
    for n in 6..=10 {
        publish_n(&srv, n);
    }
    let stderr = w.wait_stderr("the resumed notice", WAIT, |l| l.iter().any(|l| l.contains("resumed:")));
    let notice = stderr.iter().find(|l| l.contains("resumed:")).expect("resumed");
    assert!(notice.contains("after seq 0"), "{notice:?}");
    for n in 11..=13 {
        publish_n(&srv, n);
    }
    let lines = wait_events(&mut w, 13);
    let expected: Vec<(u64, u64)> = (1..=13).map(|n| (n, n)).collect();
    assert_eq!(custom_events(&lines), expected, "{}", w.output());

    // The replay ends with `resumed`; what is published after it arrives live.
    let msgs = messages(&lines);
    let resumed = msgs.iter().position(|m| kind(m) == "resumed").expect("resumed printed");
    assert_eq!(msgs[resumed]["data"]["epoch"], epoch.as_str());
    assert_eq!(msgs[resumed]["data"]["since"], 0);
    let replayed = msgs[..resumed].iter().filter(|m| m["seq"].is_u64()).count();
    assert!(replayed >= 5, "the 5 earlier events come before `resumed`: {lines:?}");
    let live: Vec<u64> = msgs[resumed..].iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(live.ends_with(&[11, 12, 13]), "{live:?}");
    assert!(!stderr.iter().any(|l| l.contains("RESET")), "{stderr:?}");

    interrupt(&mut w);
    assert_eq!(
        custom_events(&w.stdout()).len(),
        13,
        "nothing more after the last event"
    );
}

/// Without a restart: a watch that stops reading (SIGSTOP) falls behind, the server
/// closes it with 4008, and on waking up it reconnects and resumes exactly where it was.
#[test]
fn watch_resumes_exactly_after_a_slow_consumer_close() {
    // Default keep-alive (30 s), so the pause cannot end in a 4000 instead.
    let srv = Server::start(&[], &["--ws-queue", "4", "--ws-send-buffer", "4KiB"]);
    let mut w = watch(srv.addr, srv.token(), &[]);
    wait_subscribed(&mut w, 1);

    common::signal(w.pid(), "STOP");
    // 400 events of ~1 KiB: far more than the socket buffers plus a 4-event queue hold.
    let pad = "x".repeat(1000);
    for batch in 0..20u64 {
        let events: Vec<(&str, Value)> = (0..20u64)
            .map(|i| ("custom.test", json!({"n": batch * 20 + i + 1, "pad": pad})))
            .collect();
        publish(&srv, &events);
    }
    common::signal(w.pid(), "CONT");

    let lines = wait_events(&mut w, 400);
    let expected: Vec<(u64, u64)> = (1..=400).map(|n| (n, n)).collect();
    assert_eq!(custom_events(&lines), expected, "{}", w.stderr().join("\n"));
    let stderr = w.wait_stderr("the resumed notice", WAIT, |l| l.iter().any(|l| l.contains("resumed:")));
    let closed = stderr
        .iter()
        .find(|l| l.contains("close 4008 (slow_consumer)"))
        .unwrap_or_else(|| panic!("a 4008 notice: {stderr:?}"));
    assert!(closed.contains("reconnecting in"), "{closed:?}");
    let last_seq: u64 = closed
        .split("last_seq=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("last_seq in {closed:?}"));
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("watch: connected to") && l.contains(&format!("resuming after seq {last_seq} "))),
        "resumes from the close's last_seq {last_seq}: {stderr:?}"
    );
    assert!(!stderr.iter().any(|l| l.contains("RESET")), "{stderr:?}");
    interrupt(&mut w);
    assert!(
        !w.stderr().iter().any(|l| l.contains("skipped")),
        "no frame came twice: {}",
        w.stderr().join("\n")
    );
    let (_, hub) = http_get_as(srv.addr, "/api/v1/hub", srv.token(), WAIT).expect("GET /api/v1/hub");
    assert!(hub.contains(r#""dropped_by_close":1"#), "{hub}");
}

/// Started before the server: watch keeps retrying, then connects by itself.
#[test]
fn watch_waits_for_a_server_that_is_not_up_yet() {
    // Watch needs its key before the server is up: make one in a first run on the
    // data directory the server will start with (keys are kept in the database).
    let data = tempfile::tempdir().expect("tempdir");
    let token = {
        let mut first = Server::start_on_port(0, Some(data.path()), &[], WAIT);
        let token = first.token().to_owned();
        assert_eq!(first.terminate().code(), Some(0), "log:\n{}", first.log());
        token
    };
    let port = common::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut w = watch(addr, &token, &[]);
    w.wait_stderr("two failed attempts", WAIT, |l| {
        l.iter()
            .filter(|l| l.contains("connect failed") && l.contains("reconnecting in"))
            .count()
            >= 2
    });
    let srv = Server::start_on_port(port, Some(data.path()), &KEEPALIVE, Duration::from_secs(5));
    wait_subscribed(&mut w, 1);
    assert_eq!(publish_n(&srv, 1), 1);
    let lines = wait_events(&mut w, 1);
    assert_eq!(custom_events(&lines), vec![(1, 1)]);
    interrupt(&mut w);
}

/// A refusal that retrying cannot fix ends watch at once, with status 1 and a reason.
#[test]
fn watch_fails_at_once_on_a_permanent_refusal_or_a_bad_pattern() {
    let srv = start_server(&[]);
    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &format!("ws://{}/no-such-path", srv.addr)]);
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("404")),
        "{out:?}"
    );

    // A refused token: the server says 401 before any 101, and watch cannot refresh it.
    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &ws_url(srv.addr), "--token", "svk_not-a-real-key"]);
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("401")),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("svk_not-a-real-key"),
        "the token is not echoed: {out:?}"
    );

    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &ws_url(srv.addr), "--types", "custom.*,Bad"]);
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: --types") && l.contains("Bad")),
        "{out:?}"
    );
}

/// A NAS reachable beyond loopback serves TLS, so watch speaks wss:// and checks the
/// certificate: trusted through `--ca-cert`, refused at once (not retried) when it is
/// not in the trusted set.
#[test]
fn watch_connects_over_wss_and_checks_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let cert_path = common::write_file(dir.path(), "tls.crt", &cert.pem());
    let key_path = common::write_file(dir.path(), "tls.key", &signing_key.serialize_pem());
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let other_path = common::write_file(dir.path(), "other-ca.crt", &other.cert.pem());

    // An API key made over plain HTTP, then the same data dir served with TLS.
    let data = tempfile::tempdir().expect("tempdir");
    let mut plain = Server::try_start(&[], 0, Some(data.path()), &KEEPALIVE).unwrap_or_else(|e| panic!("{e}"));
    let token = plain.token().to_owned();
    plain.terminate();
    let mut args: Vec<&str> = KEEPALIVE.to_vec();
    let (cert_arg, key_arg) = (cert_path.to_string_lossy(), key_path.to_string_lossy());
    args.extend_from_slice(&["--tls-cert", &cert_arg, "--tls-key", &key_arg]);
    let srv = Server::try_start(&[], 0, Some(data.path()), &args).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        srv.listening_line.starts_with("listening on https://"),
        "{}",
        srv.listening_line
    );
    let url = format!("wss://127.0.0.1:{}/ws", srv.addr.port());

    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &url, "--json", "--types", "custom.*", "--ca-cert"])
        .arg(&cert_path)
        .env("SIGMAVAULT_TOKEN", &token);
    let mut w = Spawned::spawn(cmd);
    let lines = wait_subscribed(&mut w, 1);
    assert!(messages(&lines).iter().any(|m| kind(m) == "welcome"), "{lines:?}");
    w.wait_stderr("the connected notice", WAIT, |l| {
        l.iter()
            .any(|l| l.starts_with("watch: connected to") && l.contains("wss://"))
    });
    interrupt(&mut w);

    // A certificate outside the trusted set: one clear error, exit 1, no retry loop.
    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &url])
        .env("SIGMAVAULT_TOKEN", &token)
        .env("SSL_CERT_FILE", &other_path);
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("certificate")),
        "{out:?}"
    );
    assert!(!out.stderr.contains("reconnecting"), "{out:?}");

    // A CA file that does not exist is named.
    let mut cmd = command(common::bin());
    cmd.args(["watch", "--url", &url, "--ca-cert", "/nonexistent/ca.pem"]);
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{out:?}");
}

/// A URL watch can never connect to (wrong scheme) should fail like bench does, not
/// retry forever.
#[test]

fn watch_rejects_a_non_ws_url_at_once() {
    let srv = start_server(&[]);
    for url in [format!("http://{}/ws", srv.addr), format!("ftp://{}/ws", srv.addr)] {
        let mut cmd = command(common::bin());
        cmd.args(["watch", "--url", &url]);
        let out = run_to_exit(cmd, WAIT);
        assert_eq!(out.status.code(), Some(1), "{url}: {out:?}");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains("ws://")),
            "{url}: {out:?}"
        );
    }
}

#[test]
fn watch_exits_0_on_sigint_quietly() {
    let srv = start_server(&[]);
    let mut w = watch(srv.addr, srv.token(), &[]);
    wait_subscribed(&mut w, 1);
    w.wait_stderr("the connected notice", WAIT, |l| !l.is_empty());

    interrupt(&mut w);
    let stderr = w.stderr();
    assert_eq!(stderr.len(), 1, "only the connected notice: {stderr:?}");
    assert!(stderr[0].starts_with("watch: connected to"), "{stderr:?}");
    for alarming in ["error", "RESET", "reconnecting", "panicked", "refused", "skipped"] {
        assert!(
            !stderr.iter().any(|l| l.contains(alarming)),
            "{alarming:?} in {stderr:?}"
        );
    }
    // stdout stayed well-formed to the end.
    messages(&w.stdout());
    // The server saw a normal close and has no client left.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http_get_as(srv.addr, "/api/v1/hub", srv.token(), WAIT).expect("GET /api/v1/hub");
        let hub: Value = serde_json::from_str(&body).expect("hub is JSON");
        if hub["clients"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch's connection lingers: {hub}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bench_reports_exact_delivery_and_closes_slow_clients_with_4008() {
    // A small queue and send buffer, so the two clients that never read overflow.
    let srv = start_server(&["--ws-queue", "16", "--ws-send-buffer", "4KiB"]);
    let pid = srv.pid().to_string();
    let url = ws_url(srv.addr);
    let mut cmd = command(common::bin());
    cmd.args(["bench", "--url", &url, "--token", srv.token()])
        .args(["--clients", "50", "--burst", "20", "--rounds", "3", "--batch", "20"])
        .args(["--rate", "20", "--duration", "1s", "--probes", "2", "--slow", "2"])
        .args(["--size", "1000", "--deadline", "2m", "--json", "--server-pid", &pid]);
    let out = run_to_exit(cmd, Duration::from_secs(150));
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {:?}", out.stdout);
    let r: Value = serde_json::from_str(lines[0]).expect("the report is JSON");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["problems"], json!([]), "{r}");
    assert_eq!(r["url"], url.as_str());
    assert_eq!(r["connect"]["connected"], 50, "{}", r["connect"]);
    let d = &r["delivery"];
    for key in ["lost", "duplicated", "out_of_order", "dropped_connections"] {
        assert_eq!(d[key], 0, "{key}: {d}");
    }
    let b = &r["burst"];
    assert_eq!(b["events"], 60, "{b}");
    assert_eq!(b["expected_deliveries"], 50 * 60, "{b}");
    assert_eq!(b["deliveries"], b["expected_deliveries"], "{b}");
    assert_eq!(b["complete"], true, "{b}");
    assert_eq!(r["fanout"]["complete"], 2, "{}", r["fanout"]);
    let st = &r["steady"];
    assert_eq!(st["deliveries"], st["expected_deliveries"], "{st}");
    let slow = &r["slow"];
    assert_eq!(slow["requested"], 2, "{slow}");
    assert_eq!(slow["closed_slow_consumer"], 2, "{slow}");
    assert_eq!(slow["reason_seq_matches"], 2, "{slow}");
    let server = &r["server"];
    assert_eq!(server["pid"], srv.pid(), "{server}");
    assert!(
        server["rss_per_connection_bytes"].as_u64().is_some_and(|b| b > 0),
        "{server}"
    );
    assert_eq!(r["hub"]["dropped_by_close"], 2, "{}", r["hub"]);
}

#[test]
fn bench_fails_clearly_when_the_server_is_unreachable() {
    let port = common::free_port();
    let mut cmd = command(common::bin());
    cmd.args(["bench", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--clients", "2", "--json"]);
    let out = run_to_exit(cmd, WAIT);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(out.status.code().is_some(), "exited, not killed: {out:?}");
    assert!(out.stdout.is_empty(), "no report without a server: {:?}", out.stdout);
    let error = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line: {:?}", out.stderr));
    assert!(
        error.contains(&format!("127.0.0.1:{port}")),
        "names the server: {error:?}"
    );
    assert!(
        error.to_lowercase().contains("connection refused"),
        "says why: {error:?}"
    );
}
