//! Secrets never reach the logs (issue #6): every door is used once — login
//! right and wrong, refresh and refresh reuse, API keys, WebSocket auth by
//! header, subprotocol and first message, failed WebSocket auth, password
//! change and reset, the generated first-admin password — with the server's
//! `tracing` output captured at TRACE, then the capture is searched for every
//! password, token, key and signing secret involved.
//!
//! One test only: the capturing subscriber is the process-wide default, with
//! the `log` bridge installed as the binary installs it. The in-process test
//! clients log through the same WebSocket library; their lines (handshake
//! requests, frames they send) are told apart and skipped.
mod common;
mod security_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use common::{ADMIN_PASSWORD, TestServer, WAIT};
use security_support::ws::{auth_msg, bearer, first_message_auth_close, open, refused, request, welcomed};
use security_support::{Cred, b64url, create_user, get, login, post, s, try_login, try_refresh};
use sigmavault_server::config::Config;

/// Log output, shared between the subscriber and the test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

fn install(capture: &Capture) {
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        // The binary's filter at its most verbose.
        .with_env_filter(sigmavault_server::cli::log_filter("trace").expect("filter"))
        .with_span_events(
            tracing_subscriber::fmt::format::FmtSpan::NEW | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        )
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // As the binary does (`try_init`): global default plus the `log` bridge.
    tracing_subscriber::util::SubscriberInitExt::try_init(subscriber).expect("the only subscriber of this binary");
}

/// Remembers a secret (and, for tokens, the parts worth hiding on their own).
fn remember(secrets: &mut Vec<(String, String)>, what: &str, secret: &str) {
    assert!(!secret.is_empty(), "{what} is empty");
    secrets.push((what.to_owned(), secret.to_owned()));
    if let Some(signature) = secret.split('.').nth(2).filter(|p| p.len() >= 16) {
        secrets.push((format!("{what} (signature)"), signature.to_owned()));
    }
    // A key or refresh token minus its public prefix.
    if secret.len() > 24 && (secret.starts_with("svk_") || secret.starts_with("svr_")) {
        secrets.push((format!("{what} (tail)"), secret[secret.len() - 20..].to_owned()));
    }
}

fn pair_secrets(secrets: &mut Vec<(String, String)>, what: &str, pair: &Value) {
    remember(secrets, &format!("{what} access token"), s(&pair["access_token"]));
    remember(secrets, &format!("{what} refresh token"), s(&pair["refresh_token"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_logs() {
    let capture = Capture::default();
    install(&capture);
    let mut secrets: Vec<(String, String)> = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_path_buf();
    let srv = TestServer::spawn_with(|c| c.data_dir = data_dir.clone()).await;
    let addr = srv.addr;
    remember(&mut secrets, "admin password", ADMIN_PASSWORD);
    remember(&mut secrets, "harness key", &srv.token);
    let signing_key = std::fs::read_to_string(dir.path().join("jwt-secret")).expect("jwt-secret");
    remember(&mut secrets, "signing key", signing_key.trim());

    // Logins, right and wrong.
    let first = login(addr, "admin", ADMIN_PASSWORD).await;
    pair_secrets(&mut secrets, "first login", &first);
    for (user, pw) in [("admin", "wrong-admin-guess-1"), ("nobody", "unknown-user-guess-2")] {
        remember(&mut secrets, "failed login password", pw);
        try_login(addr, user, pw)
            .await
            .refused(401, "invalid_credentials", "wrong login");
    }
    // Refresh, and a spent refresh token replayed.
    let second = try_refresh(addr, &first["refresh_token"]).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let second = second.body;
    pair_secrets(&mut secrets, "refreshed", &second);
    let access = s(&second["access_token"]).to_owned();
    let spare = login(addr, "admin", ADMIN_PASSWORD).await;
    pair_secrets(&mut secrets, "spare login", &spare);
    let spare2 = try_refresh(addr, &spare["refresh_token"]).await.body;
    pair_secrets(&mut secrets, "spare refreshed", &spare2);
    assert_eq!(
        try_refresh(addr, &spare["refresh_token"]).await.status,
        401,
        "refresh reuse"
    );

    // An API key, created and used both ways.
    let created = post(
        addr,
        "/api/v1/auth/keys",
        Cred::Bearer(&access),
        json!({"name": "logs"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = s(&created.body["key"]).to_owned();
    remember(&mut secrets, "API key", &key);
    for cred in [Cred::Key(&key), Cred::Bearer(&key)] {
        assert_eq!(get(addr, "/api/v1/auth/me", cred).await.status, 200);
    }
    let bad_key = "svk_ThisIsAMistypedKeyThatLooksReal0123456789";
    remember(&mut secrets, "mistyped key", bad_key);
    assert_eq!(get(addr, "/api/v1/auth/me", Cred::Key(bad_key)).await.status, 401);

    // Tokens in a query string are never read (and must not be logged with the path).
    let r = get(addr, &format!("/api/v1/auth/me?token={access}"), Cred::None).await;
    assert_eq!(r.status, 401, "a query token is not a credential: {}", r.body);
    let (status, _) = refused(request(&srv, &format!("/ws?access_token={key}"), &[])).await;
    assert_eq!(status, 400);

    // WebSocket auth: header, subprotocol, first message; and failures.
    let mut by_header = welcomed(request(&srv, "/ws", &[("authorization", &bearer(&access))])).await;
    let encoded = b64url(access.as_bytes());
    remember(&mut secrets, "subprotocol value", &encoded);
    let offer = format!("sigmavault.v1, bearer.{encoded}");
    let mut by_protocol = welcomed(request(&srv, "/ws", &[("sec-websocket-protocol", &offer)])).await;
    let (mut by_message, _) = open(request(&srv, "/ws", &[])).await;
    by_message.send_json(auth_msg(&key)).await;
    assert_eq!(by_message.next_json().await["type"], "welcome");
    by_message
        .send_json(json!({"type": "auth", "id": "renew", "data": {"token": spare2["access_token"]}}))
        .await;
    assert_eq!(
        by_message.next_of("error").await["id"],
        "renew",
        "a renewal with a revoked token"
    );
    let bad_ws = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.MistypedSignatureThatLooksReal012345";
    remember(&mut secrets, "bad WebSocket token", bad_ws);
    let (status, _) = refused(request(&srv, "/ws", &[("authorization", &bearer(bad_ws))])).await;
    assert_eq!(status, 401);
    let bad_proto = format!("sigmavault.v1, bearer.{}", b64url(bad_ws.as_bytes()));
    remember(&mut secrets, "bad subprotocol value", &b64url(bad_ws.as_bytes()));
    let (status, _) = refused(request(&srv, "/ws", &[("sec-websocket-protocol", &bad_proto)])).await;
    assert_eq!(status, 401);
    assert_eq!(first_message_auth_close(&srv, bad_ws).await.0, 4401);
    // A real token of a revoked session (the replayed refresh ended it).
    assert_eq!(first_message_auth_close(&srv, s(&spare["access_token"])).await.0, 4401);

    // Account changes with passwords.
    create_user(&srv, "logan", "logan-initial-pw", "viewer").await;
    remember(&mut secrets, "new user's password", "logan-initial-pw");
    let logan = login(addr, "logan", "logan-initial-pw").await;
    pair_secrets(&mut secrets, "viewer login", &logan);
    let r = post(
        addr,
        "/api/v1/auth/password",
        Cred::Bearer(s(&logan["access_token"])),
        json!({"current_password": "wrong-current-pw", "new_password": "logan-changed-pw"}),
    )
    .await;
    assert_eq!(r.status, 422);
    remember(&mut secrets, "wrong current password", "wrong-current-pw");
    let r = post(
        addr,
        "/api/v1/auth/password",
        Cred::Bearer(s(&logan["access_token"])),
        json!({"current_password": "logan-initial-pw", "new_password": "logan-changed-pw"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    remember(&mut secrets, "changed password", "logan-changed-pw");
    pair_secrets(&mut secrets, "after password change", &r.body);
    let id = login(addr, "logan", "logan-changed-pw").await["user"]["id"].clone();
    let r = post(
        addr,
        &format!("/api/v1/users/{id}/password"),
        Cred::Bearer(&srv.token),
        json!({"password": "logan-reset-pw"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    remember(&mut secrets, "reset password", "logan-reset-pw");
    for c in [&mut by_header, &mut by_protocol, &mut by_message] {
        c.send_json(json!({"type": "ping", "id": "end"})).await;
        c.next_of("pong").await;
    }
    srv.stop().await;

    // The generated first-admin password of a fresh data directory.
    let fresh = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        port: 0,
        data_dir: fresh.path().to_path_buf(),
        environment: "test".into(),
        ..Config::default()
    };
    common::test_security(&mut config);
    config.security.admin_password = None;
    let server = sigmavault_server::start(config).await.expect("server starts");
    let generated = std::fs::read_to_string(fresh.path().join("initial-admin-password")).expect("password file");
    remember(&mut secrets, "generated admin password", generated.trim());
    login(server.addr, "admin", generated.trim()).await;
    server.stop().await.expect("clean shutdown");

    // Let the last lines land (writers run on server tasks), then search.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !capture.text().contains("initial-admin-password") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = capture.text();
    assert!(log.contains("login failed"), "failed logins are logged:\n{log}");
    assert!(
        log.contains("initial-admin-password"),
        "the password file's path is logged"
    );
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "captured at TRACE/DEBUG"
    );
    // The server's own `tracing` events (and any tracing-native dependency).
    let leaks = leaks_in(&secrets, log.lines().filter(|l| !from_log_crate(l)));
    assert!(
        leaks.is_empty(),
        "{} secret(s) in the server's log:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // What the server's own tungstenite reader logs through the `log` bridge (the
    // binary's `try_init` installs it): at TRACE it prints every message it receives.
    let bridged = leaks_in(&secrets, log.lines().filter(|l| from_log_crate(l) && !client_side(l)));
    assert!(
        bridged.is_empty(),
        "{} secret(s) in `log`-crate records of the server's WebSocket reader at TRACE (target \
         tungstenite::protocol; the binary bridges `log` into its subscriber, so `--log-level trace` \
         writes them):\n{}",
        bridged.len(),
        bridged.join("\n")
    );
}

/// Records bridged from the `log` crate (the WebSocket library logs that way).
fn from_log_crate(line: &str) -> bool {
    line.contains(" tungstenite::") || line.contains(" tokio_tungstenite::")
}

/// `log` records that only the in-process test clients write: their handshake
/// requests and the frames they send (the server sends nothing secret, and a
/// secret it echoed would show in the clients' "Received message" lines).
fn client_side(line: &str) -> bool {
    line.contains(" tungstenite::handshake::client:")
        || line.contains("Sending frame: ")
        || line.contains("writing frame ")
}

/// Each secret found in `lines`, with the first line holding it.
fn leaks_in<'a>(secrets: &[(String, String)], lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    let lines: Vec<&str> = lines.collect();
    secrets
        .iter()
        .filter_map(|(what, secret)| {
            let line = lines.iter().find(|l| l.contains(secret.as_str()))?;
            Some(format!("{what}: {}", line.chars().take(400).collect::<String>()))
        })
        .collect()
}
