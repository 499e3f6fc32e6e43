//! Runs the real `sigmavault` binary as a child process and talks to it the way
//! an operator's tools would: its stdout, its stderr, signals via `kill`, and
//! HTTP over a plain socket.
//!
//! Test servers start with a known first-admin password ([`ADMIN_PASSWORD`]) and
//! the rate limits and socket caps off; [`Server::token`] logs in as `admin` and
//! creates an admin API key for the REST calls, sockets and client commands.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Generous functional deadline for "should happen" waits.
pub const WAIT: Duration = Duration::from_secs(15);

/// The first admin's password on every test server (`SIGMAVAULT_ADMIN_PASSWORD`).
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// The environment of every test server: the first admin's password, and no rate
/// limits or socket caps (tests open many sockets and requests from 127.0.0.1).
/// Environment rather than flags, so a test's own flags still take precedence.
pub const SERVER_ENV: [(&str, &str); 6] = [
    ("SIGMAVAULT_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ("SIGMAVAULT_HTTP_RATE_LIMIT", "off"),
    ("SIGMAVAULT_LOGIN_RATE_LIMIT", "off"),
    ("SIGMAVAULT_LOGIN_USER_RATE_LIMIT", "off"),
    ("SIGMAVAULT_WS_MAX_PER_IP", "0"),
    ("SIGMAVAULT_WS_MAX_PER_USER", "0"),
];

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sigmavault")
}

/// A `sigmavault` command with a clean environment: no stray `SIGMAVAULT_*` or
/// `RUST_LOG` from the developer's shell changes what is tested.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// A finished process: status and everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it (and failing) if it outlives `within`.
pub fn run_to_exit(mut cmd: Command, within: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = read_all_in_background(child.stdout.take().expect("stdout"));
    let stderr = read_all_in_background(child.stderr.take().expect("stderr"));
    let status = wait_timeout(&mut child, within).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("process still running after {within:?}");
    });
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn read_all_in_background(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Polls for the child's exit; `None` if it is still running after `within`.
pub fn wait_timeout(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal with the `kill` command (no libc in tests either).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A running `sigmavault serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The first stdout line, verbatim.
    pub listening_line: String,
    /// stdout after the first line (there should be none).
    more_stdout: mpsc::Receiver<String>,
    /// Every stderr line so far (the log).
    pub stderr: Arc<Mutex<Vec<String>>>,
    data_dir: std::path::PathBuf,
    /// An admin API key, made on first use.
    token: OnceLock<String>,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts `serve --port 0 --data-dir <temp>` plus `args`, optionally under a
    /// wrapper (`prlimit ...`) that execs the binary, and waits for the listening line.
    pub fn start(wrapper: &[&str], args: &[&str]) -> Server {
        Server::try_start(wrapper, 0, None, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `serve --port <port>` (a fixed port, e.g. the one a stopped server had),
    /// retrying for `within` while the port cannot be bound yet.
    pub fn start_on_port(port: u16, data_dir: Option<&Path>, args: &[&str], within: Duration) -> Server {
        let deadline = Instant::now() + within;
        loop {
            match Server::try_start(&[], port, data_dir, args) {
                Ok(server) => return server,
                Err(e) if Instant::now() >= deadline => panic!("cannot start a server on port {port}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Starts `serve --port <port> --data-dir <dir or a new temp dir>` plus `args`; an
    /// error (with the server's stderr) if it exits or stays silent instead of listening.
    pub fn try_start(wrapper: &[&str], port: u16, data_dir: Option<&Path>, args: &[&str]) -> Result<Server, String> {
        let data = tempfile::tempdir().expect("tempdir");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = command(program);
                c.args(rest).arg(bin());
                c
            }
            None => command(bin()),
        };
        cmd.arg("serve")
            .args(["--port", &port.to_string(), "--data-dir"])
            .arg(data_dir.unwrap_or(data.path()))
            .args(args)
            .envs(SERVER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sigmavault serve");

        let (line_tx, line_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (stderr, stderr_reader) = collect_lines(child.stderr.take().expect("stderr"));

        let listening_line = match line_rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = stderr_reader.join();
                let log = stderr.lock().expect("stderr lines").join("\n");
                return Err(format!("no listening line ({e}); stderr:\n{log}"));
            }
        };
        let addr = listening_line
            .strip_prefix("listening on http://")
            .or_else(|| listening_line.strip_prefix("listening on https://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line: {listening_line:?}"));
        Ok(Server {
            child,
            addr,
            listening_line,
            more_stdout: line_rx,
            stderr,
            data_dir: data_dir.map_or_else(|| data.path().to_owned(), Path::to_owned),
            token: OnceLock::new(),
            _data: data,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An admin API key for this server: the one made earlier for the same data
    /// directory if it still works (a restarted server keeps its keys), else a new
    /// one (log in as `admin`, create a key).
    pub fn token(&self) -> &str {
        self.token.get_or_init(|| {
            static KEYS: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
            let keys = KEYS.get_or_init(Mutex::default);
            let known = keys.lock().expect("keys").get(&self.data_dir).cloned();
            if let Some(key) = known
                && matches!(http_get_as(self.addr, "/api/v1/auth/me", &key, WAIT), Ok((200, _)))
            {
                return key;
            }
            let key = admin_key(self.addr);
            keys.lock().expect("keys").insert(self.data_dir.clone(), key.clone());
            key
        })
    }

    /// The data directory the server runs with.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// stdout lines after the listening line, so far.
    pub fn extra_stdout(&self) -> Vec<String> {
        self.more_stdout.try_iter().collect()
    }

    /// stderr lines that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .expect("stderr lines")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM, then the exit status (fails if it does not exit within [`WAIT`]).
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        match wait_timeout(&mut self.child, WAIT) {
            Some(status) => status,
            None => panic!("no exit within {WAIT:?} of SIGTERM; log:\n{}", self.log()),
        }
    }

    /// User + system CPU time so far, from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`, normally 100).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    cpu_time_from_stat(&stat, clock_ticks())
}

/// Parses utime and stime (fields 14 and 15) from a /proc/PID/stat line; the
/// command name in field 2 may contain spaces, so count from its closing ')'.
pub fn cpu_time_from_stat(stat: &str, ticks_per_sec: u64) -> Duration {
    let rest = &stat[stat.rfind(')').expect("comm field") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1000 / ticks_per_sec)
}

/// One HTTP/1.1 GET over a fresh socket; the status code and body, or the I/O error.
pub fn http_get(addr: SocketAddr, path: &str, within: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None, None, within)
}

/// Retries [`http_get`] until it answers or `within` passes.
pub fn http_get_eventually(addr: SocketAddr, path: &str, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        match http_get(addr, path, Duration::from_secs(2)) {
            Ok(r) => return r,
            Err(e) if Instant::now() >= deadline => panic!("GET {path} never answered: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Reads `pipe` line by line into a shared vector until it closes.
pub fn collect_lines(pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("output lines").push(line);
        }
    });
    (lines, reader)
}

/// A running client command (`watch`, `bench`) whose stdout and stderr lines are
/// collected as they come, so a test can wait for a line while the process runs.
pub struct Spawned {
    pub child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Spawned {
    /// Spawns `cmd` with piped stdout/stderr and no stdin.
    pub fn spawn(mut cmd: Command) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (stdout, out_reader) = collect_lines(child.stdout.take().expect("stdout"));
        let (stderr, err_reader) = collect_lines(child.stderr.take().expect("stderr"));
        Spawned {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    /// stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    /// Both streams, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n")
        )
    }

    /// Waits until `done(stdout lines)` holds; panics with the output after `within`.
    pub fn wait_stdout(&mut self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.wait_lines(true, what, within, done)
    }

    /// Waits until `done(stderr lines)` holds; panics with the output after `within`.
    pub fn wait_stderr(&mut self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.wait_lines(false, what, within, done)
    }

    fn wait_lines(
        &mut self,
        stdout: bool,
        what: &str,
        within: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines = if stdout { self.stdout() } else { self.stderr() };
            if done(&lines) {
                return lines;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Give the readers a moment to take the last lines, then look once more.
                thread::sleep(Duration::from_millis(100));
                let lines = if stdout { self.stdout() } else { self.stderr() };
                if done(&lines) {
                    return lines;
                }
                panic!("waiting for {what}: the process exited ({status}); {}", self.output());
            }
            if Instant::now() >= deadline {
                panic!("waiting for {what}: nothing after {within:?}; {}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit (killing it and failing after `within`), then for the last
    /// output lines.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let Some(status) = wait_timeout(&mut self.child, within) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("still running after {within:?}; {}", self.output());
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 POST of a JSON body over a fresh socket; the status code and body.
pub fn http_post_json(addr: SocketAddr, path: &str, body: &str, within: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "POST", path, None, Some(body), within)
}

/// [`http_post_json`] with `Authorization: Bearer <token>`.
pub fn http_post_json_as(
    addr: SocketAddr,
    path: &str,
    body: &str,
    token: &str,
    within: Duration,
) -> std::io::Result<(u16, String)> {
    http_request(addr, "POST", path, Some(token), Some(body), within)
}

/// [`http_get`] with `Authorization: Bearer <token>`.
pub fn http_get_as(addr: SocketAddr, path: &str, token: &str, within: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, Some(token), None, within)
}

/// One HTTP/1.1 request over a fresh socket, with a bearer token and a JSON body if
/// given; the status code and body, or the I/O error.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    within: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, within)?;
    s.set_read_timeout(Some(within))?;
    s.set_write_timeout(Some(within))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method != "GET" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(s, "{head}\r\n{body}")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `POST /api/v1/auth/login`: the status and the JSON body.
pub fn login(addr: SocketAddr, username: &str, password: &str) -> (u16, Value) {
    let body = json!({"username": username, "password": password}).to_string();
    let (status, reply) = http_post_json(addr, "/api/v1/auth/login", &body, WAIT).expect("POST /api/v1/auth/login");
    let reply = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("login reply {reply:?}: {e}"));
    (status, reply)
}

/// Logs in as `admin` and creates an admin API key; the key.
pub fn admin_key(addr: SocketAddr) -> String {
    let (status, session) = login(addr, "admin", ADMIN_PASSWORD);
    assert_eq!(status, 200, "admin login: {session}");
    let access = session["access_token"].as_str().expect("access_token");
    let body = json!({"name": "tests", "role": "admin"}).to_string();
    let (status, reply) =
        http_post_json_as(addr, "/api/v1/auth/keys", &body, access, WAIT).expect("POST /api/v1/auth/keys");
    assert_eq!(status, 201, "create an API key: {reply}");
    let reply: Value = serde_json::from_str(&reply).expect("key reply is JSON");
    reply["key"].as_str().expect("key").to_owned()
}

/// A WebSocket upgrade request for `url` carrying `Authorization: Bearer <token>`.
pub fn ws_request(url: &str, token: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("a ws:// URL");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

/// A port nothing listens on (bound, then released, by this process).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
