//! A fixture host for the collector suites: the procfs, network and storage
//! fixture trees copied into one temp dir (so a test can break it), and a client
//! that keeps every message it reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use sigmavault_server::config::Config;

use super::{TestServer, WAIT, WsClient};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(link, target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One host made of the three fixtures: procfs (system), network and storage.
pub fn host(dir: &Path) -> (PathBuf, PathBuf) {
    let proc = dir.join("proc");
    let sys = dir.join("sys");
    copy_tree(&fixtures().join("procfs/basic"), &proc);
    copy_tree(&fixtures().join("network/basic/proc"), &proc);
    copy_tree(&fixtures().join("storage/basic/proc"), &proc);
    copy_tree(&fixtures().join("network/basic/sys"), &sys);
    copy_tree(&fixtures().join("storage/basic/sys"), &sys);
    (proc, sys)
}

/// A client that keeps every message it reads, so waiting for one type never
/// throws away another the test will ask for next.
pub struct Inbox {
    pub c: WsClient,
    pub kept: std::collections::VecDeque<Value>,
}

impl Inbox {
    /// Wraps a connected client.
    pub fn new(c: WsClient) -> Inbox {
        Inbox {
            c,
            kept: Default::default(),
        }
    }

    /// The first `kind` message (kept or new) whose data satisfies `pred`, within
    /// the functional deadline. Messages before it stay kept.
    pub async fn wait(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.kept.iter().position(|m| m["type"] == kind && pred(&m["data"])) {
            return self.kept.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = match tokio::time::timeout(left, self.c.next_json()).await {
                Ok(m) => m,
                Err(_) => panic!("no matching {kind} within {WAIT:?}"),
            };
            if m["type"] == kind && pred(&m["data"]) {
                return m;
            }
            self.kept.push_back(m);
            if self.kept.len() > 10_000 {
                self.kept.pop_front();
            }
        }
    }
}

/// GET, answering status and JSON body.
pub async fn get(srv: &TestServer, path: &str) -> (u16, Value) {
    let resp = srv.http.get(srv.url(path)).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// A server reading the fixture host in `dir`, sampling every 50 ms.
pub async fn server(dir: &Path, f: impl FnOnce(&mut Config)) -> TestServer {
    let (proc, sys) = host(dir);
    TestServer::spawn_with(move |c| {
        c.procfs_root = proc;
        c.sysfs_root = sys;
        c.poll_interval = Duration::from_millis(50);
        f(c);
    })
    .await
}

/// Polls a REST mirror until it has a sample.
pub async fn get_when_ready(srv: &TestServer, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(srv, path).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_ready");
        assert!(tokio::time::Instant::now() < deadline, "{path} never got a sample");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
