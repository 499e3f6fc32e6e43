//! `/api/v1/storage/shares` against a real server, real directories and a real
//! WebSocket client: every validation code, paths that try to leave the share
//! roots (symlinks, the data directory, system directories), case-insensitive
//! names, the CRUD round trip with its `storage.share.*` events, and a share
//! that outlives a restart.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::{Map, Value, json};

use common::{TestServer, WsClient};

const SHARES: &str = "/api/v1/storage/shares";

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn one(id: &Value) -> String {
    format!("{SHARES}/{id}")
}

fn text(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_owned()
}

fn canonical(p: &Path) -> String {
    text(&std::fs::canonicalize(p).expect("canonicalize"))
}

/// REST shortcuts for this suite.
impl TestServer {
    async fn post_share(&self, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        send(self.http.post(self.url(SHARES)).json(body)).await
    }

    async fn create_share(&self, body: &Value) -> Value {
        let (status, _, created) = self.post_share(body).await;
        assert_eq!(status, 201, "{created}");
        created
    }

    async fn put_share(&self, id: &Value, body: &Value) -> (u16, Value) {
        let (status, _, body) = send(self.http.put(self.url(&one(id))).json(body)).await;
        (status, body)
    }

    async fn patch_share(&self, id: &Value, body: &Value) -> (u16, Value) {
        let (status, _, body) = send(self.http.patch(self.url(&one(id))).json(body)).await;
        (status, body)
    }

    async fn list_shares(&self) -> Vec<Value> {
        let (status, _, body) = send(self.http.get(self.url(SHARES))).await;
        assert_eq!(status, 200, "{body}");
        body["shares"].as_array().expect("shares array").clone()
    }
}

/// `(field, code)` of every rejected field, in the order the server listed them.
fn rejected(status: u16, body: &Value) -> Vec<(String, String)> {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    body["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("422 without fields: {body}"))
        .iter()
        .map(|f| {
            let message = f["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "field error without a message: {f}");
            (
                f["field"].as_str().expect("field").to_owned(),
                f["code"].as_str().expect("code").to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(f, c)| (f.to_string(), c.to_string())).collect()
}

/// The message of the one rejected field.
fn message_of(body: &Value) -> String {
    body["error"]["fields"][0]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A share root holding a directory `dir`, a regular file `file`, and nothing called `missing`.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("dir")).expect("mkdir");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, p: &str) -> String {
        text(&self.path().join(p))
    }
}

async fn server_with_root(root: &Root) -> TestServer {
    let r = root.path().to_path_buf();
    TestServer::spawn_with(move |c| c.share_roots = vec![r]).await
}

/// Fields to set (`Some`) or leave out (`None`).
type Changes<'a> = Vec<(&'a str, Option<Value>)>;

fn with(base: &Value, changes: &[(&str, Option<Value>)]) -> Value {
    let mut m: Map<String, Value> = base.as_object().expect("object").clone();
    for (k, v) in changes {
        match v {
            Some(v) => m.insert((*k).to_owned(), v.clone()),
            None => m.remove(*k),
        };
    }
    Value::Object(m)
}

/// The next `storage.share.*` event; checks it carries a seq and the full record.
async fn share_event(ws: &mut WsClient, kind: &str, record: &Value) {
    let ev = ws.next_event().await;
    assert_eq!(ev["type"], kind, "{ev}");
    assert!(ev["seq"].as_u64().is_some(), "{ev}");
    assert_eq!(&ev["data"], record, "the event carries the full record");
}

#[tokio::test]
async fn every_validation_code_is_reported() {
    let root = Root::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let srv = server_with_root(&root).await;
    let base = json!({"name": "ok", "path": root.join("dir"), "protocol": "smb"});
    let s = |v: &str| Some(json!(v));
    let hosts = |n: usize| Some(json!((0..n).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>()));
    let users = |n: usize| Some(json!((0..n).map(|i| format!("u{i}")).collect::<Vec<_>>()));
    let cases: Vec<(Changes, &str, &str)> = vec![
        (vec![("name", None)], "name", "required"),
        (vec![("name", s(""))], "name", "required"),
        (vec![("name", Some(json!(5)))], "name", "invalid"),
        (vec![("name", s("a/b"))], "name", "invalid"),
        (vec![("name", s("a:b"))], "name", "invalid"),
        (vec![("name", s(".dot"))], "name", "invalid"),
        (vec![("name", s("-dash"))], "name", "invalid"),
        (vec![("name", s(" pad"))], "name", "invalid"),
        (vec![("name", s("pad "))], "name", "invalid"),
        (vec![("name", s("tab\there"))], "name", "invalid"),
        (vec![("name", Some(json!("n".repeat(81))))], "name", "too_long"),
        (vec![("name", s("homes"))], "name", "reserved_name"),
        (vec![("name", s("Printers"))], "name", "reserved_name"),
        (vec![("name", s("GLOBAL"))], "name", "reserved_name"),
        (vec![("name", s("print$"))], "name", "reserved_name"),
        (vec![("name", s("IPC$"))], "name", "reserved_name"),
        (vec![("name", s("admin$"))], "name", "reserved_name"),
        (vec![("name", s("C$"))], "name", "reserved_name"),
        (vec![("name", s("d$"))], "name", "reserved_name"),
        (vec![("path", None)], "path", "required"),
        (vec![("path", Some(json!(["/x"])))], "path", "invalid"),
        (vec![("path", s("srv/share"))], "path", "not_absolute"),
        (
            vec![("path", Some(json!(format!("{}/../dir", root.join("dir")))))],
            "path",
            "invalid",
        ),
        (
            vec![("path", Some(json!(format!("{}\0x", root.join("dir")))))],
            "path",
            "invalid",
        ),
        (
            vec![("path", Some(json!(format!("{}\nx", root.join("dir")))))],
            "path",
            "invalid",
        ),
        (
            vec![("path", Some(json!(format!("/{}", "p".repeat(5000)))))],
            "path",
            "too_long",
        ),
        (vec![("path", Some(json!(root.join("missing"))))], "path", "not_found"),
        (
            vec![("path", Some(json!(root.join("file"))))],
            "path",
            "not_a_directory",
        ),
        (
            vec![("path", Some(json!(root.join("file/sub"))))],
            "path",
            "not_a_directory",
        ),
        (
            vec![("path", Some(json!(text(outside.path()))))],
            "path",
            "outside_share_roots",
        ),
        (vec![("path", s("/"))], "path", "forbidden_path"),
        (vec![("path", s("/etc"))], "path", "forbidden_path"),
        (vec![("path", s("/etc/ssh"))], "path", "forbidden_path"),
        (vec![("path", s("/proc/self"))], "path", "forbidden_path"),
        (vec![("path", s("/sys"))], "path", "forbidden_path"),
        (vec![("path", s("/dev"))], "path", "forbidden_path"),
        (vec![("path", s("/boot"))], "path", "forbidden_path"),
        (vec![("path", s("/run/"))], "path", "forbidden_path"),
        (vec![("protocol", None)], "protocol", "required"),
        (vec![("protocol", s("afp"))], "protocol", "unknown_protocol"),
        (vec![("protocol", s("SMB"))], "protocol", "unknown_protocol"),
        (vec![("protocol", Some(json!(true)))], "protocol", "invalid"),
        (vec![("read_only", s("yes"))], "read_only", "invalid"),
        (vec![("read_only", Some(json!(1)))], "read_only", "invalid"),
        (vec![("allowed_hosts", s("*"))], "allowed_hosts", "invalid"),
        (vec![("allowed_hosts", hosts(65))], "allowed_hosts", "too_long"),
        (
            vec![("allowed_hosts", Some(json!(["*", 7])))],
            "allowed_hosts[1]",
            "invalid",
        ),
        (
            vec![("allowed_hosts", Some(json!(["*", "a b"])))],
            "allowed_hosts[1]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["*(rw)"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["10.0.0.0/33"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["10.0.0.1/8"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["fd00::/129"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["10.0.0"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["@"])))],
            "allowed_hosts[0]",
            "invalid_host",
        ),
        (
            vec![("allowed_hosts", Some(json!(["nas.lan", "NAS.lan"])))],
            "allowed_hosts[1]",
            "duplicate",
        ),
        (
            vec![("allowed_users", Some(json!({"u": 1})))],
            "allowed_users",
            "invalid",
        ),
        (vec![("allowed_users", users(257))], "allowed_users", "too_long"),
        (
            vec![("allowed_users", Some(json!(["alice", "Bob"])))],
            "allowed_users[1]",
            "invalid_user",
        ),
        (
            vec![("allowed_users", Some(json!(["1st"])))],
            "allowed_users[0]",
            "invalid_user",
        ),
        (
            vec![("allowed_users", Some(json!([format!("a{}", "b".repeat(32))])))],
            "allowed_users[0]",
            "invalid_user",
        ),
        (
            vec![("allowed_users", Some(json!(["@"])))],
            "allowed_users[0]",
            "invalid_user",
        ),
        (
            vec![("allowed_users", Some(json!([null])))],
            "allowed_users[0]",
            "invalid",
        ),
        (vec![("comment", Some(json!("c".repeat(257))))], "comment", "too_long"),
        (vec![("comment", s("two\nlines"))], "comment", "invalid"),
        (vec![("comment", Some(json!(3)))], "comment", "invalid"),
        (vec![("colour", s("blue"))], "colour", "unknown_field"),
        (vec![("id", Some(json!(7)))], "id", "unknown_field"),
        (
            vec![("created_at", s("2024-01-01T00:00:00Z"))],
            "created_at",
            "unknown_field",
        ),
    ];
    let mut codes = BTreeSet::new();
    for (changes, field, code) in cases {
        let body = with(&base, &changes);
        let (status, _, reply) = srv.post_share(&body).await;
        assert_eq!(
            rejected(status, &reply),
            pairs(&[(field, code)]),
            "body {body}: {reply}"
        );
        codes.insert(code);
    }
    let want: BTreeSet<&str> = [
        "required",
        "invalid",
        "too_long",
        "reserved_name",
        "not_absolute",
        "not_found",
        "not_a_directory",
        "outside_share_roots",
        "forbidden_path",
        "unknown_protocol",
        "invalid_host",
        "invalid_user",
        "unknown_field",
        "duplicate",
    ]
    .into();
    assert_eq!(codes, want, "every code is exercised");
    assert!(srv.list_shares().await.is_empty(), "nothing refused was stored");

    // The edges of the same rules, accepted.
    let edge = json!({
        "name": "n".repeat(80),
        "path": root.join("dir"),
        "protocol": "nfs",
        "read_only": null,
        "allowed_hosts": [
            "*", "192.168.1.0/24", "10.0.0.0/255.0.0.0", "fd00::/8", "::1", "*.lan", "host?.lan", "@trusted"
        ],
        "allowed_users": ["alice", "@staff", "_svc", "pc01$", format!("a{}", "b".repeat(31))],
        "comment": "c".repeat(256),
    });
    let created = srv.create_share(&edge).await;
    assert_eq!(created["read_only"], false);
    assert_eq!(created["allowed_hosts"], edge["allowed_hosts"]);
    let hidden = srv
        .create_share(&json!({"name": "Backup Set.v2_final$", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    assert_eq!(hidden["allowed_hosts"], json!([]));
    assert_eq!(hidden["allowed_users"], json!([]));
    assert_eq!(hidden["comment"], "");
    srv.stop().await;
}

#[tokio::test]
async fn every_rejected_field_is_reported_at_once() {
    let root = Root::new();
    let srv = server_with_root(&root).await;
    let body = json!({
        "name": "homes",
        "path": "relative/dir",
        "protocol": "afp",
        "read_only": "no",
        "allowed_hosts": ["*", "not a host", "10.1.1.1/8"],
        "allowed_users": ["Bob", "ok", 3],
        "comment": "bell\u{7}",
        "extra": true,
        "id": 1,
    });
    let (status, _, reply) = srv.post_share(&body).await;
    assert_eq!(
        rejected(status, &reply),
        pairs(&[
            ("name", "reserved_name"),
            ("path", "not_absolute"),
            ("protocol", "unknown_protocol"),
            ("read_only", "invalid"),
            ("allowed_hosts[1]", "invalid_host"),
            ("allowed_hosts[2]", "invalid_host"),
            ("allowed_users[0]", "invalid_user"),
            ("allowed_users[2]", "invalid"),
            ("comment", "invalid"),
            ("extra", "unknown_field"),
            ("id", "unknown_field"),
        ]),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("11 field(s)")),
        "{reply}"
    );

    // A filesystem finding is reported together with the syntax findings.
    let body = json!({"name": "a/b", "path": root.join("missing"), "allowed_users": ["X"]});
    let (status, _, reply) = srv.post_share(&body).await;
    assert_eq!(
        rejected(status, &reply),
        pairs(&[
            ("name", "invalid"),
            ("path", "not_found"),
            ("protocol", "required"),
            ("allowed_users[0]", "invalid_user"),
        ]),
    );
    srv.stop().await;
}

#[tokio::test]
async fn without_share_roots_every_path_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = TestServer::spawn().await;
    let body = json!({"name": "x", "path": text(dir.path()), "protocol": "smb"});
    let (status, _, reply) = srv.post_share(&body).await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "outside_share_roots")]));
    assert!(message_of(&reply).contains("--share-root"), "{reply}");
    // Not even an existence probe: a missing path reads the same.
    let body = json!({"name": "x", "path": text(&dir.path().join("missing")), "protocol": "smb"});
    let (status, _, reply) = srv.post_share(&body).await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "outside_share_roots")]));
    srv.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_cannot_lead_out_of_a_share_root() {
    use std::os::unix::fs::symlink;
    let root = Root::new();
    let outside = tempfile::tempdir().expect("tempdir");
    symlink(outside.path(), root.path().join("escape")).expect("symlink");
    symlink("/etc", root.path().join("etc")).expect("symlink");
    symlink(root.path().join("dir"), root.path().join("inside")).expect("symlink");
    let srv = server_with_root(&root).await;

    let (status, _, reply) = srv
        .post_share(&json!({"name": "x", "path": root.join("escape"), "protocol": "nfs"}))
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "outside_share_roots")]));
    assert!(message_of(&reply).contains("symlink"), "{reply}");
    // Below the link is outside too.
    std::fs::create_dir(outside.path().join("sub")).expect("mkdir");
    let (status, _, reply) = srv
        .post_share(&json!({"name": "x", "path": root.join("escape/sub"), "protocol": "nfs"}))
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "outside_share_roots")]));

    let (status, _, reply) = srv
        .post_share(&json!({"name": "x", "path": root.join("etc"), "protocol": "nfs"}))
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "forbidden_path")]));

    // A link that stays inside is fine; the canonical directory is what is stored.
    let created = srv
        .create_share(&json!({"name": "x", "path": root.join("inside"), "protocol": "nfs"}))
        .await;
    assert_eq!(created["path"], canonical(&root.path().join("dir")));
    // So is the root itself.
    let created = srv
        .create_share(&json!({"name": "whole", "path": text(root.path()), "protocol": "smb"}))
        .await;
    assert_eq!(created["path"], canonical(root.path()));
    srv.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_system_dirs_are_never_shared() {
    let top = tempfile::tempdir().expect("tempdir");
    let data = top.path().join("data");
    std::fs::create_dir_all(top.path().join("media")).expect("mkdir");
    let (d, r) = (data.clone(), top.path().to_path_buf());
    let srv = TestServer::spawn_with(move |c| {
        c.data_dir = d;
        c.share_roots = vec![r, PathBuf::from("/")];
    })
    .await;
    std::fs::create_dir_all(data.join("inner")).expect("mkdir");
    std::os::unix::fs::symlink(&data, top.path().join("sneaky")).expect("symlink");

    for path in [
        text(&data),
        text(&data.join("inner")),
        format!("{}/", text(&data)),
        format!("{}/./data", text(top.path())),
        text(top.path()),
        text(&top.path().join("sneaky")),
        "/".to_owned(),
        "//".to_owned(),
        "/etc".to_owned(),
        "/etc/".to_owned(),
        "/./etc".to_owned(),
        "/etc/ssh".to_owned(),
        "/proc".to_owned(),
        "/sys/kernel".to_owned(),
        "/dev".to_owned(),
        "/run".to_owned(),
    ] {
        let (status, _, reply) = srv
            .post_share(&json!({"name": "x", "path": path, "protocol": "smb"}))
            .await;
        assert_eq!(rejected(status, &reply), pairs(&[("path", "forbidden_path")]), "{path}");
    }
    let data_reply = srv
        .post_share(&json!({"name": "x", "path": text(&data), "protocol": "smb"}))
        .await
        .2;
    assert!(message_of(&data_reply).contains("data directory"), "{data_reply}");

    // A sibling of the data directory is an ordinary share.
    let created = srv
        .create_share(&json!({"name": "media", "path": text(&top.path().join("media")), "protocol": "smb"}))
        .await;
    assert_eq!(created["path"], canonical(&top.path().join("media")));
    srv.stop().await;
}

#[tokio::test]
async fn names_are_unique_ignoring_case() {
    let root = Root::new();
    let srv = server_with_root(&root).await;
    let media = srv
        .create_share(&json!({"name": "Media", "path": root.join("dir"), "protocol": "smb"}))
        .await;

    let (status, _, reply) = srv
        .post_share(&json!({"name": "media", "path": root.join("dir"), "protocol": "nfs"}))
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("name", "duplicate")]));
    // Reported together with the other mistakes.
    let (status, _, reply) = srv
        .post_share(&json!({"name": "MEDIA", "path": root.join("dir"), "protocol": "ftp"}))
        .await;
    assert_eq!(
        rejected(status, &reply),
        pairs(&[("name", "duplicate"), ("protocol", "unknown_protocol")])
    );

    let other = srv
        .create_share(&json!({"name": "other", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    let (status, reply) = srv
        .put_share(
            &other["id"],
            &json!({"name": "mEdIa", "path": root.join("dir"), "protocol": "smb"}),
        )
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("name", "duplicate")]));
    let (status, reply) = srv.patch_share(&other["id"], &json!({"name": "MEDIA"})).await;
    assert_eq!(rejected(status, &reply), pairs(&[("name", "duplicate")]));

    // A share may change the case of its own name.
    let (status, renamed) = srv.patch_share(&media["id"], &json!({"name": "MEDIA"})).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "MEDIA");
    // And once a name is free again it can be taken.
    let (status, _, _) = send(srv.http.delete(srv.url(&one(&media["id"])))).await;
    assert_eq!(status, 200);
    let (status, renamed) = srv.patch_share(&other["id"], &json!({"name": "media"})).await;
    assert_eq!(status, 200, "{renamed}");
    srv.stop().await;
}

#[tokio::test]
async fn crud_round_trip_publishes_every_change() {
    let root = Root::new();
    std::fs::create_dir(root.path().join("other")).expect("mkdir");
    let srv = server_with_root(&root).await;
    let mut ws = srv.connect().await;
    ws.subscribe(&["storage.share.*"]).await;
    assert!(srv.list_shares().await.is_empty());

    // Create.
    let body = json!({"name": "Photos", "path": root.join("dir"), "protocol": "smb", "comment": "family"});
    let (status, headers, created) = srv.post_share(&body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].clone();
    assert!(id.as_i64().is_some_and(|i| i > 0), "{created}");
    assert_eq!(
        headers.get(LOCATION).and_then(|v| v.to_str().ok()),
        Some(one(&id).as_str())
    );
    let want = json!({
        "id": id,
        "name": "Photos",
        "path": canonical(&root.path().join("dir")),
        "protocol": "smb",
        "read_only": false,
        "allowed_hosts": [],
        "allowed_users": [],
        "comment": "family",
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    });
    assert_eq!(created, want);
    chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().expect("created_at")).expect("RFC 3339");
    share_event(&mut ws, "storage.share.added", &created).await;
    assert_eq!(srv.get_json(&one(&id)).await, created);
    assert_eq!(srv.list_shares().await, vec![created.clone()]);

    // Full replace: what is left out takes its default.
    let replacement = json!({
        "name": "photos-nfs",
        "path": root.join("other"),
        "protocol": "nfs",
        "read_only": true,
        "allowed_hosts": ["192.168.1.0/24", "nas.lan"],
        "allowed_users": ["alice", "@staff"],
    });
    let (status, replaced) = srv.put_share(&id, &replacement).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["name"], "photos-nfs");
    assert_eq!(replaced["path"], canonical(&root.path().join("other")));
    assert_eq!(replaced["protocol"], "nfs");
    assert_eq!(replaced["read_only"], true);
    assert_eq!(replaced["allowed_hosts"], replacement["allowed_hosts"]);
    assert_eq!(replaced["allowed_users"], replacement["allowed_users"]);
    assert_eq!(replaced["comment"], "", "left out of a PUT: back to the default");
    assert_eq!(replaced["created_at"], created["created_at"]);
    assert!(replaced["updated_at"].as_str() >= created["updated_at"].as_str());
    share_event(&mut ws, "storage.share.changed", &replaced).await;

    // Partial update: only the given fields change.
    let (status, patched) = srv
        .patch_share(&id, &json!({"read_only": false, "comment": "patched"}))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched,
        with(
            &replaced,
            &[
                ("read_only", Some(json!(false))),
                ("comment", Some(json!("patched"))),
                ("updated_at", Some(patched["updated_at"].clone()))
            ]
        )
    );
    share_event(&mut ws, "storage.share.changed", &patched).await;
    // null resets to the default.
    let (status, reset) = srv
        .patch_share(&id, &json!({"comment": null, "allowed_hosts": null}))
        .await;
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["comment"], "");
    assert_eq!(reset["allowed_hosts"], json!([]));
    assert_eq!(reset["allowed_users"], patched["allowed_users"]);
    share_event(&mut ws, "storage.share.changed", &reset).await;
    // The merged whole is validated: a required field cannot be patched away,
    // and the merge is checked against the protocol's rules like a full body.
    let (status, reply) = srv
        .patch_share(&id, &json!({"name": null, "allowed_hosts": ["bad host"]}))
        .await;
    assert_eq!(
        rejected(status, &reply),
        pairs(&[("name", "required"), ("allowed_hosts[0]", "invalid_host")])
    );
    // PATCH takes merge-patch+json too.
    let (status, _, merged) = send(
        srv.http
            .patch(srv.url(&one(&id)))
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .body(r#"{"comment": "merge"}"#),
    )
    .await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["comment"], "merge");
    share_event(&mut ws, "storage.share.changed", &merged).await;
    // A change that changes nothing publishes nothing and keeps updated_at.
    let (status, same) = srv.patch_share(&id, &json!({})).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same, merged);
    let (status, same) = srv
        .patch_share(&id, &json!({"comment": "merge", "protocol": "nfs"}))
        .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same, merged);
    let quiet = ws.sync().await;
    assert!(
        quiet
            .iter()
            .all(|m| !m["type"].as_str().unwrap_or("").starts_with("storage.share")),
        "no-op updates published: {quiet:?}"
    );

    // Delete.
    let (status, _, deleted) = send(srv.http.delete(srv.url(&one(&id)))).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"deleted": merged}));
    share_event(&mut ws, "storage.share.removed", &merged).await;
    assert!(srv.list_shares().await.is_empty());
    let (status, _, reply) = send(srv.http.get(srv.url(&one(&id)))).await;
    assert_error(status, &reply, 404, "not_found");
    let (status, _, reply) = send(srv.http.delete(srv.url(&one(&id)))).await;
    assert_error(status, &reply, 404, "not_found");
    let (status, reply) = srv.put_share(&id, &replacement).await;
    assert_error(status, &reply, 404, "not_found");
    let (status, reply) = srv.patch_share(&id, &json!({"comment": "x"})).await;
    assert_error(status, &reply, 404, "not_found");
    let quiet = ws.sync().await;
    assert!(
        quiet
            .iter()
            .all(|m| !m["type"].as_str().unwrap_or("").starts_with("storage.share")),
        "refused requests published: {quiet:?}"
    );

    // A client with the default subscriptions hears none of it.
    let mut plain = srv.connect().await;
    srv.create_share(&json!({"name": "again", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    share_event(&mut ws, "storage.share.added", &srv.list_shares().await[0]).await;
    let heard = plain.sync().await;
    assert!(heard.iter().all(|m| m.get("seq").is_none()), "{heard:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_patch_revalidates_the_stored_path() {
    let root = Root::new();
    std::fs::create_dir(root.path().join("gone")).expect("mkdir");
    let srv = server_with_root(&root).await;
    let share = srv
        .create_share(&json!({"name": "tmp", "path": root.join("gone"), "protocol": "smb"}))
        .await;
    std::fs::remove_dir(root.path().join("gone")).expect("rmdir");
    let (status, reply) = srv.patch_share(&share["id"], &json!({"comment": "still here?"})).await;
    assert_eq!(rejected(status, &reply), pairs(&[("path", "not_found")]));
    // Pointing it somewhere that exists fixes it.
    let (status, fixed) = srv
        .patch_share(&share["id"], &json!({"path": root.join("dir"), "comment": "moved"}))
        .await;
    assert_eq!(status, 200, "{fixed}");
    assert_eq!(fixed["path"], canonical(&root.path().join("dir")));
    srv.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let root = Root::new();
    let r = root.path().to_path_buf();
    let srv = TestServer::spawn_with(move |c| {
        c.share_roots = vec![r];
        c.http_max_body = 1024;
    })
    .await;
    let url = srv.url(SHARES);
    let (status, _, body) = send(srv.http.post(&url).body(r#"{"name":"x"}"#)).await;
    assert_error(status, &body, 415, "unsupported_media_type");
    let (status, _, body) = send(
        srv.http
            .post(&url)
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"name":"x"}"#),
    )
    .await;
    assert_error(status, &body, 415, "unsupported_media_type");
    let (status, _, body) = send(
        srv.http
            .post(&url)
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .body("{}"),
    )
    .await;
    assert_error(status, &body, 415, "unsupported_media_type");
    for bad in ["{", "", "[1, 2]", "\"share\"", "null", "{\"name\": \"x\",}"] {
        let (status, _, body) = send(
            srv.http
                .post(&url)
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(bad),
        )
        .await;
        assert_error(status, &body, 400, "bad_json");
    }
    let big = json!({"name": "x", "comment": "c".repeat(2000)});
    let (status, _, body) = srv.post_share(&big).await;
    assert_error(status, &body, 413, "payload_too_large");

    for id in ["abc", "0", "-1", "+1", "01", "1.5", "99999999999999999999"] {
        let path = format!("{SHARES}/{id}");
        let (status, _, body) = send(srv.http.get(srv.url(&path))).await;
        assert_error(status, &body, 400, "bad_request");
        let (status, _, body) = send(srv.http.delete(srv.url(&path))).await;
        assert_error(status, &body, 400, "bad_request");
        let (status, _, body) = send(srv.http.patch(srv.url(&path)).json(&json!({}))).await;
        assert_error(status, &body, 400, "bad_request");
    }
    let (status, _, body) = send(srv.http.get(srv.url(&format!("{SHARES}/12345")))).await;
    assert_error(status, &body, 404, "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("share 12345")),
        "{body}"
    );
    let (status, _, body) = send(srv.http.delete(srv.url(SHARES))).await;
    assert_error(status, &body, 405, "method_not_allowed");
    let (status, _, body) = send(srv.http.post(srv.url(&format!("{SHARES}/1"))).json(&json!({}))).await;
    assert_error(status, &body, 405, "method_not_allowed");
    srv.stop().await;
}

#[tokio::test]
async fn shares_survive_a_restart_and_every_change_is_audited() {
    let root = Root::new();
    let data = tempfile::tempdir().expect("tempdir");
    let config = |data: PathBuf, root: PathBuf| {
        move |c: &mut sigmavault_server::config::Config| {
            c.data_dir = data;
            c.share_roots = vec![root];
        }
    };
    let srv = TestServer::spawn_with(config(data.path().to_path_buf(), root.path().to_path_buf())).await;
    let kept = srv
        .create_share(&json!({
            "name": "Kept",
            "path": root.join("dir"),
            "protocol": "nfs",
            "read_only": true,
            "allowed_hosts": ["10.0.0.0/8"],
            "allowed_users": ["alice"],
            "comment": "survives",
        }))
        .await;
    let gone = srv
        .create_share(&json!({"name": "Gone", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    let (status, kept) = srv
        .patch_share(&kept["id"], &json!({"comment": "survives restarts"}))
        .await;
    assert_eq!(status, 200, "{kept}");
    let (status, _, _) = send(srv.http.delete(srv.url(&one(&gone["id"])))).await;
    assert_eq!(status, 200);
    srv.stop().await;

    let srv = TestServer::spawn_with(config(data.path().to_path_buf(), root.path().to_path_buf())).await;
    assert_eq!(srv.get_json(&one(&kept["id"])).await, kept);
    assert_eq!(srv.list_shares().await, vec![kept.clone()]);
    // Ids are not reused after a delete, even across a restart.
    let next = srv
        .create_share(&json!({"name": "Gone", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    assert!(next["id"].as_i64() > gone["id"].as_i64(), "{next}");
    // The name is still unique after a restart.
    let (status, _, reply) = srv
        .post_share(&json!({"name": "KEPT", "path": root.join("dir"), "protocol": "smb"}))
        .await;
    assert_eq!(rejected(status, &reply), pairs(&[("name", "duplicate")]));
    srv.stop().await;

    let db = rusqlite::Connection::open_with_flags(
        data.path().join(sigmavault_server::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    let audit = sigmavault_server::store::audit::recent(&db, 100).expect("audit");
    let shares_only: Vec<_> = audit.iter().filter(|a| a.action.starts_with("share.")).collect();
    assert!(
        shares_only
            .iter()
            .all(|a| a.actor.starts_with("admin (key ") && a.ip == "127.0.0.1"),
        "share changes are audited with who and from where: {shares_only:?}"
    );
    let trail: Vec<(String, String)> = shares_only
        .iter()
        .rev()
        .map(|a| (a.action.clone(), a.target.clone()))
        .collect();
    let target = |v: &Value| format!("share/{v}");
    assert_eq!(
        trail,
        vec![
            ("share.create".to_owned(), target(&kept["id"])),
            ("share.create".to_owned(), target(&gone["id"])),
            ("share.update".to_owned(), target(&kept["id"])),
            ("share.delete".to_owned(), target(&gone["id"])),
            ("share.create".to_owned(), target(&next["id"])),
        ]
    );
    let audit = shares_only;
    // Newest first: the last create, the delete, the update.
    let update = &audit[2];
    assert_eq!(update.detail["before"]["comment"], "survives");
    assert_eq!(update.detail["after"], kept);
    assert_eq!(audit[1].detail, gone, "a delete records what was removed");
    assert_eq!(audit[0].detail, next, "a create records the new record");
}
