//! The `sigmavault serve` process as an operator and a supervisor see it: its
//! stdout contract, its exit statuses, SIGTERM handling, and how it survives
//! running out of file descriptors.
mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use common::{Server, WAIT, command, http_get, http_get_eventually, run_to_exit};

#[test]
fn prints_the_listening_line_and_serves_health() {
    let mut srv = Server::start(&[], &[]);
    let port = srv.addr.port();
    assert_ne!(port, 0);
    assert_eq!(srv.listening_line, format!("listening on http://127.0.0.1:{port}"));
    let (status, body) = http_get(srv.addr, "/api/v1/health", WAIT).expect("health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
    // The listening line is the whole of stdout: logs go to stderr.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(srv.extra_stdout(), Vec::<String>::new());
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut srv = Server::start(&[], &[]);
    let url = format!("ws://{}/ws", srv.addr);
    let token = srv.token().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_request(&url, &token))
        .await
        .expect("ws connect");
    let welcome = tokio::time::timeout(WAIT, ws.next()).await.expect("welcome in time");
    assert!(
        matches!(welcome, Some(Ok(Message::Text(ref t))) if t.contains(r#""type":"welcome""#)),
        "{welcome:?}"
    );

    common::signal(srv.pid(), "TERM");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("close frame with a code");
    assert_eq!(u16::from(frame.code), 1001, "reason {:?}", frame.reason);
    // Keep reading so tungstenite sends our close reply; the server then hangs up.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}

    let status = tokio::task::spawn_blocking(move || {
        let status = common::wait_timeout(&mut srv.child, WAIT);
        (status, srv)
    })
    .await
    .expect("wait task");
    let (status, srv) = status;
    let status = status.unwrap_or_else(|| panic!("still running; log:\n{}", srv.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
}

/// A bad value exits 64 with exactly one stderr line that names the key.
fn assert_config_error(cmd: std::process::Command, key: &str) {
    let out = run_to_exit(cmd, WAIT);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {:?}", out.stderr);
    assert!(lines[0].contains(key), "the line names {key}: {:?}", lines[0]);
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
}

fn serve(data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = command(common::bin());
    cmd.args(["serve", "--port", "0", "--data-dir"]).arg(data_dir);
    cmd
}

#[test]
fn invalid_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");

    let mut flag = serve(dir.path());
    flag.args(["--ws-ping-interval", "soon"]);
    assert_config_error(flag, "ws-ping-interval");

    let mut env = serve(dir.path());
    env.env("SIGMAVAULT_WS_QUEUE", "0");
    assert_config_error(env, "ws-queue");

    let file = common::write_file(dir.path(), "sigmavault.toml", "port = 0\nws_ping_intervall = \"5s\"\n");
    let mut toml = serve(dir.path());
    toml.arg("--config").arg(&file);
    assert_config_error(toml, "ws_ping_intervall");

    let mut toml_value = serve(dir.path());
    let file = common::write_file(dir.path(), "bad-value.toml", "ws-max-message = \"huge\"\n");
    toml_value.arg("--config").arg(&file);
    assert_config_error(toml_value, "ws-max-message");
}

/// The open-file limit for the descriptor test; the server's own validation
/// wants max-connections <= limit - 128, so 64 connections fit under 192.
const NOFILE: u32 = 192;
/// More raw connections than the server has descriptors left.
const EXTRA_CONNECTIONS: usize = 260;

fn nofile_wrapper() -> Vec<String> {
    let prlimit_exists = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if prlimit_exists {
        vec!["prlimit".into(), format!("--nofile={NOFILE}:{NOFILE}")]
    } else {
        // `sh -c '...' BIN ARGS...` execs the binary with the lowered limit.
        vec![
            "sh".into(),
            "-c".into(),
            format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""),
        ]
    }
}

#[test]
fn survives_descriptor_exhaustion_without_spinning() {
    let wrapper = nofile_wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut srv = Server::start(&wrapper, &["--max-connections", "64", "--http-idle-timeout", "2m"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).expect("limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(&NOFILE.to_string())),
        "the limit applies to the server process itself:\n{limits}"
    );

    // Idle HTTP connections: each holds one server descriptor once accepted.
    let mut held = Vec::with_capacity(EXTRA_CONNECTIONS);
    for _ in 0..EXTRA_CONNECTIONS {
        held.push(TcpStream::connect(srv.addr).expect("connect (the backlog takes it)"));
    }
    let deadline = Instant::now() + WAIT;
    while srv.log_lines_with("accept failed").is_empty() {
        assert!(Instant::now() < deadline, "accept never failed; log:\n{}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Out of descriptors: alive, idle rather than retrying in a tight loop.
    let (cpu0, t0) = (srv.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu1, wall) = (srv.cpu_time(), t0.elapsed());
    assert!(srv.is_running(), "the server died; log:\n{}", srv.log());
    assert!(
        (cpu1 - cpu0) * 2 < wall,
        "busy loop: {:?} CPU in {:?} wall",
        cpu1 - cpu0,
        wall
    );
    let logged = srv.log_lines_with("accept failed").len();
    assert!(
        logged <= 3,
        "accept errors must be rate-limited in the log, got {logged} lines"
    );

    drop(held);
    let (status, body) = http_get_eventually(srv.addr, "/api/v1/health", WAIT);
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + WAIT;
    while srv.log_lines_with("accepting connections again").is_empty() {
        assert!(Instant::now() < deadline, "recovery is logged; log:\n{}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
}

#[test]
fn parses_cpu_time_from_proc_stat() {
    let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 4 0";
    assert_eq!(common::cpu_time_from_stat(stat, 100), Duration::from_millis(2000));
}

#[test]
fn a_closed_stderr_neither_crashes_the_server_nor_stops_it_from_shutting_down() {
    use std::io::BufRead;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(common::bin())
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().trim_start_matches("listening on http://").parse().unwrap();
    // The log reader goes away (a log shipper died, `| head` ended).
    drop(child.stderr.take());
    // Requests log a line each: the server must keep serving.
    for _ in 0..3 {
        let (status, _) = http_get(addr, "/api/v1/health", WAIT).expect("still serving");
        assert_eq!(status, 200);
    }
    common::signal(child.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after SIGTERM with stderr closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
