//! Account changes, limits and records of issue #6, from outside: the last
//! admin, password changes, disabled users, login and REST throttling, the
//! security headers, the audit log and the first-admin bootstrap. Real server
//! in-process, real HTTP. Tokens, sessions, roles and keys: `security_rest.rs`.
mod common;
mod security_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use common::{ADMIN_PASSWORD, TestServer, WAIT};
use security_support::{Cred, Resp, create_user, get, login, patch, post, s, try_login, try_refresh};
use sigmavault_server::config::Config;
use sigmavault_server::config::security::{RateSpec, normalize_origin};

fn rate(burst: u32, secs: u64) -> Option<RateSpec> {
    Some(RateSpec {
        burst,
        period: Duration::from_secs(secs),
    })
}

/// `POST /api/v1/auth/password`, whatever its outcome.
async fn change_password(addr: std::net::SocketAddr, cred: Cred<'_>, current: &str, new: &str) -> Resp {
    let body = json!({"current_password": current, "new_password": new});
    post(addr, "/api/v1/auth/password", cred, body).await
}

/// The Retry-After of a 429, in seconds (at least 1).
fn retry_after(r: &Resp) -> Duration {
    let secs: u64 = r
        .header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("429 without integer Retry-After: {:?}", r.headers));
    assert!(secs >= 1, "Retry-After {secs}");
    Duration::from_secs(secs)
}

#[tokio::test]
async fn the_last_enabled_admin_cannot_be_disabled_or_demoted() {
    let srv = TestServer::spawn().await;
    let admin = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let admin_id = admin["user"]["id"].as_i64().expect("id");
    let path = format!("/api/v1/users/{admin_id}");
    let key = Cred::Bearer(&srv.token);
    patch(srv.addr, &path, key, json!({"disabled": true}))
        .await
        .refused(409, "conflict", "disable the only admin");
    patch(srv.addr, &path, key, json!({"role": "viewer"}))
        .await
        .refused(409, "conflict", "demote the only admin");

    let root2 = create_user(&srv, "root2", "second-admin-pw", "admin").await;
    let r2 = login(srv.addr, "root2", "second-admin-pw").await;
    let r2c = Cred::Bearer(s(&r2["access_token"]));
    let r = patch(srv.addr, &path, r2c, json!({"role": "viewer"})).await;
    assert_eq!((r.status, &r.body["role"]), (200, &json!("viewer")), "{}", r.body);
    // The first admin's key now acts with its user's role.
    post(
        srv.addr,
        "/api/v1/users",
        key,
        json!({"username": "x1", "password": "password-x1"}),
    )
    .await
    .refused(403, "forbidden", "demoted admin's key writes");
    let root2_path = format!("/api/v1/users/{root2}");
    patch(srv.addr, &root2_path, r2c, json!({"role": "viewer"}))
        .await
        .refused(409, "conflict", "demote the new last admin");
    patch(srv.addr, &root2_path, r2c, json!({"disabled": true}))
        .await
        .refused(409, "conflict", "disable the new last admin");
    // Two admins again, one disabled: the enabled one is still the last.
    let r = patch(srv.addr, &path, r2c, json!({"role": "admin", "disabled": true})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    patch(srv.addr, &root2_path, r2c, json!({"disabled": true}))
        .await
        .refused(409, "conflict", "disable the last enabled admin");
    srv.stop().await;
}

#[tokio::test]
async fn users_are_validated_and_listed_without_secrets() {
    let srv = TestServer::spawn().await;
    let key = Cred::Bearer(&srv.token);
    let id = create_user(&srv, "lister", "lister-password", "viewer").await;
    for (name, pw, status) in [
        ("LISTER", "other-password", 409),
        ("bad name!", "bad-name-password", 422),
        ("short", "short", 422),
    ] {
        let r = post(
            srv.addr,
            "/api/v1/users",
            key,
            json!({"username": name, "password": pw}),
        )
        .await;
        assert_eq!(r.status, status, "{name}/{pw}: {}", r.body);
    }
    let list = get(srv.addr, "/api/v1/users", key).await;
    let names: Vec<&str> = list.body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| s(&u["username"]))
        .collect();
    assert_eq!(names, ["admin", "lister"], "{}", list.body);
    let text = list.body.to_string();
    assert!(
        !text.contains("hash") && !text.contains("lister-password") && !text.contains(ADMIN_PASSWORD),
        "{text}"
    );
    let one = get(srv.addr, &format!("/api/v1/users/{id}"), key).await;
    assert_eq!(
        (one.status, &one.body["username"]),
        (200, &json!("lister")),
        "{}",
        one.body
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_password_change_revokes_the_users_other_sessions() {
    let srv = TestServer::spawn().await;
    create_user(&srv, "pat", "old-password-1", "viewer").await;
    let a = login(srv.addr, "pat", "old-password-1").await;
    let b = login(srv.addr, "pat", "old-password-1").await;
    let ac = Cred::Bearer(s(&a["access_token"]));
    let r = change_password(srv.addr, ac, "wrong-password", "new-password-1").await;
    r.refused(422, "validation_failed", "wrong current password");
    assert_eq!(r.body["error"]["fields"][0]["field"], "current_password", "{}", r.body);
    let r = change_password(srv.addr, ac, "old-password-1", "short").await;
    assert_eq!(r.status, 422, "a 5-character password: {}", r.body);
    // Nothing changed so far.
    assert_eq!(
        get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&b["access_token"])))
            .await
            .status,
        200
    );

    let r = change_password(srv.addr, ac, "old-password-1", "new-password-1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.body;
    let me = get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&fresh["access_token"]))).await;
    assert_eq!(me.status, 200, "the returned pair works: {}", me.body);
    get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&b["access_token"])))
        .await
        .refused(401, "token_revoked", "other session after a password change");
    let r = try_refresh(srv.addr, &b["refresh_token"]).await;
    assert_eq!(r.status, 401, "other session's refresh: {}", r.body);
    let old = try_login(srv.addr, "pat", "old-password-1").await;
    old.refused(401, "invalid_credentials", "old password");
    login(srv.addr, "pat", "new-password-1").await;
    let r = change_password(srv.addr, Cred::Bearer(&srv.token), ADMIN_PASSWORD, "another-password").await;
    r.refused(403, "forbidden", "password change with an API key");
    srv.stop().await;
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in_and_their_key_stops_working() {
    let srv = TestServer::spawn().await;
    let id = create_user(&srv, "dan", "dan-password-1", "viewer").await;
    let pair = login(srv.addr, "dan", "dan-password-1").await;
    let session = Cred::Bearer(s(&pair["access_token"]));
    let r = post(srv.addr, "/api/v1/auth/keys", session, json!({"name": "dan-key"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = s(&r.body["key"]).to_owned();
    assert_eq!(
        get(srv.addr, "/api/v1/notifications", Cred::Key(&key)).await.status,
        200
    );

    let r = patch(
        srv.addr,
        &format!("/api/v1/users/{id}"),
        Cred::Bearer(&srv.token),
        json!({"disabled": true}),
    )
    .await;
    assert_eq!((r.status, &r.body["disabled"]), (200, &json!(true)), "{}", r.body);
    try_login(srv.addr, "dan", "dan-password-1")
        .await
        .refused(401, "invalid_credentials", "disabled user logs in");
    get(srv.addr, "/api/v1/notifications", Cred::Key(&key))
        .await
        .refused(401, "token_revoked", "disabled user's key");
    get(srv.addr, "/api/v1/notifications", session)
        .await
        .refused(401, "token_revoked", "disabled user's session");
    let r = try_refresh(srv.addr, &pair["refresh_token"]).await;
    assert_eq!(r.status, 401, "disabled user's refresh: {}", r.body);
    // Enabled again: the password works, the sessions ended by the change stay ended.
    let r = patch(
        srv.addr,
        &format!("/api/v1/users/{id}"),
        Cred::Bearer(&srv.token),
        json!({"disabled": false}),
    )
    .await;
    assert_eq!((r.status, &r.body["disabled"]), (200, &json!(false)), "{}", r.body);
    login(srv.addr, "dan", "dan-password-1").await;
    get(srv.addr, "/api/v1/notifications", session)
        .await
        .refused(401, "token_revoked", "session ended by the disable");
    srv.stop().await;
}

#[tokio::test]
async fn an_admin_password_reset_revokes_the_users_sessions() {
    let srv = TestServer::spawn().await;
    let id = create_user(&srv, "rita", "rita-password-1", "viewer").await;
    let pair = login(srv.addr, "rita", "rita-password-1").await;
    let path = format!("/api/v1/users/{id}/password");
    let r = post(srv.addr, &path, Cred::Bearer(&srv.token), json!({"password": "short"})).await;
    assert_eq!(r.status, 422, "a 5-character password: {}", r.body);
    let r = post(
        srv.addr,
        &path,
        Cred::Bearer(s(&pair["access_token"])),
        json!({"password": "rita-password-2"}),
    )
    .await;
    r.refused(403, "forbidden", "a viewer resets a password");
    let r = post(
        srv.addr,
        &path,
        Cred::Bearer(&srv.token),
        json!({"password": "rita-password-2"}),
    )
    .await;
    assert_eq!((r.status, &r.body["username"]), (200, &json!("rita")), "{}", r.body);
    assert!(!r.body.to_string().contains("rita-password"), "{}", r.body);
    get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&pair["access_token"])))
        .await
        .refused(401, "token_revoked", "session after a reset");
    try_login(srv.addr, "rita", "rita-password-1").await.refused(
        401,
        "invalid_credentials",
        "old password after a reset",
    );
    login(srv.addr, "rita", "rita-password-2").await;
    let audit = get(
        srv.addr,
        "/api/v1/audit?action=user.password_reset",
        Cred::Bearer(&srv.token),
    )
    .await;
    assert_eq!(
        audit.body["records"][0]["target"],
        format!("user/{id}"),
        "{}",
        audit.body
    );
    srv.stop().await;
}

#[tokio::test]
async fn login_attempts_per_user_are_throttled_then_recover() {
    // A bucket of three, one token back every three seconds: the checks made
    // while throttled cannot be outrun by the refill even on a loaded machine.
    let srv = TestServer::spawn_with(|c| c.security.login_user_rate_limit = rate(3, 9)).await;
    create_user(&srv, "victim", "victim-password", "viewer").await;
    let deadline = Instant::now() + WAIT;
    let limited = loop {
        let r = try_login(srv.addr, "victim", "a-wrong-guess").await;
        if r.status == 429 {
            break r;
        }
        r.refused(401, "invalid_credentials", "a wrong guess before the limit");
        assert!(Instant::now() < deadline, "wrong guesses were never throttled");
    };
    limited.refused(429, "rate_limited", "throttled login");
    assert!(limited.body["error"]["message"].is_string(), "{}", limited.body);
    let wait = retry_after(&limited);
    // While throttled even the right password is refused, or guessing would go on.
    try_login(srv.addr, "victim", "victim-password").await.refused(
        429,
        "rate_limited",
        "right password while throttled",
    );
    // The name is compared case-insensitively.
    try_login(srv.addr, "VICTIM", "a-wrong-guess")
        .await
        .refused(429, "rate_limited", "the same user in capitals");
    // Only this (user, IP) bucket is empty: another user from the same IP gets in.
    login(srv.addr, "admin", ADMIN_PASSWORD).await;
    tokio::time::sleep(wait).await;
    let r = try_login(srv.addr, "victim", "victim-password").await;
    assert_eq!(r.status, 200, "after Retry-After ({wait:?}): {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn login_attempts_per_ip_are_throttled_across_usernames() {
    // The harness's own admin login takes one of the four; one back every three seconds.
    let srv = TestServer::spawn_with(|c| c.security.login_rate_limit = rate(4, 12)).await;
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    let limited = loop {
        i += 1;
        let r = try_login(srv.addr, &format!("nobody{i}"), "a-wrong-guess").await;
        if r.status == 429 {
            break r;
        }
        r.refused(401, "invalid_credentials", "a wrong guess before the limit");
        assert!(Instant::now() < deadline, "logins from one IP were never throttled");
    };
    limited.refused(429, "rate_limited", "throttled IP");
    let wait = retry_after(&limited);
    try_login(srv.addr, "admin", ADMIN_PASSWORD).await.refused(
        429,
        "rate_limited",
        "another user from the throttled IP",
    );
    // The REST API stays open with a key (only logins are throttled).
    assert_eq!(
        get(srv.addr, "/api/v1/auth/me", Cred::Bearer(&srv.token)).await.status,
        200
    );
    tokio::time::sleep(wait).await;
    let r = try_login(srv.addr, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 200, "after Retry-After ({wait:?}): {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn a_rest_burst_is_throttled_then_recovers() {
    // The harness's setup (login, key creation) takes two of the twenty; two
    // come back per second, far fewer than 80 requests at once need.
    let srv = TestServer::spawn_with(|c| c.security.http_rate_limit = rate(20, 10)).await;
    let burst = (0..80).map(|_| get(srv.addr, "/api/v1/auth/me", Cred::Bearer(&srv.token)));
    let results = futures_util::future::join_all(burst).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Resp> = results.iter().filter(|r| r.status != 200).collect();
    assert!(ok > 0, "nothing got through");
    assert!(
        !limited.is_empty(),
        "80 requests at once against a bucket of 20: none refused"
    );
    for r in &limited {
        r.refused(429, "rate_limited", "REST burst");
    }
    let wait = retry_after(limited[0]);
    tokio::time::sleep(wait).await;
    let r = get(srv.addr, "/api/v1/auth/me", Cred::Bearer(&srv.token)).await;
    assert_eq!(r.status, 200, "after Retry-After ({wait:?}): {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_cors_only_for_allowed_origins() {
    let ui = "https://ui.example.com";
    let srv = TestServer::spawn_with(|c| {
        c.security.allowed_origins = vec![normalize_origin(ui).expect("origin")];
    })
    .await;
    let key = Cred::Bearer(&srv.token);
    let cases = [
        ("/api/v1/health", Cred::None, 200),
        ("/api/v1/hub", Cred::None, 401),
        ("/api/v1/hub", key, 200),
        ("/api/v1/no-such-route", key, 404),
    ];
    for (path, cred, status) in cases {
        let r = get(srv.addr, path, cred).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        for (name, want) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(r.header(name), want, "{path} ({status}): {name}");
        }
        assert!(r.headers.get("strict-transport-security").is_none(), "HSTS without TLS");
        assert!(
            r.headers.get("access-control-allow-origin").is_none(),
            "CORS without Origin"
        );
    }
    let with_origin = |method: reqwest::Method, origin: &str| {
        reqwest::Client::new()
            .request(method, srv.url("/api/v1/hub"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .bearer_auth(&srv.token)
            .send()
    };
    let r = with_origin(reqwest::Method::GET, ui).await.expect("request");
    assert_eq!(
        r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(ui.as_bytes())
    );
    let r = with_origin(reqwest::Method::OPTIONS, ui).await.expect("request");
    assert_eq!(r.status(), 204, "preflight from an allowed origin");
    assert_eq!(
        r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(ui.as_bytes())
    );
    let methods = r
        .headers()
        .get("access-control-allow-methods")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert!(methods.is_some_and(|m| m.contains("POST")), "{:?}", r.headers());
    for method in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
        let r = with_origin(method.clone(), "https://evil.example")
            .await
            .expect("request");
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{method} from another origin: {r:?}"
        );
        assert_ne!(r.status(), 204, "{method}: a preflight from another origin succeeded");
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_audit_log_records_logins_failures_keys_and_user_changes() {
    let srv = TestServer::spawn().await;
    let key = Cred::Bearer(&srv.token);
    let key_id = get(srv.addr, "/api/v1/auth/me", key).await.body["auth"]["key_id"].clone();
    try_login(srv.addr, "admin", "wrong-password-1")
        .await
        .refused(401, "invalid_credentials", "wrong password");
    try_login(srv.addr, "ghost", "whatever-password")
        .await
        .refused(401, "invalid_credentials", "unknown user");
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let session = Cred::Bearer(s(&pair["access_token"]));
    let uid = create_user(&srv, "audited", "audited-password", "viewer").await;
    let r = patch(
        srv.addr,
        &format!("/api/v1/users/{uid}"),
        session,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(srv.addr, "/api/v1/auth/keys", session, json!({"name": "audited-key"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_key = s(&r.body["key"]).to_owned();

    let all = get(srv.addr, "/api/v1/audit?limit=1000", session).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let text = all.body.to_string();
    for secret in [
        ADMIN_PASSWORD,
        "wrong-password-1",
        "whatever-password",
        "audited-password",
        &new_key,
        &srv.token,
    ] {
        assert!(
            !text.contains(secret),
            "the audit log holds a secret {secret:?}: {text}"
        );
    }
    let records = all.body["records"].as_array().expect("records").clone();
    let ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let find = |action: &str, actor: &str| -> Value {
        records
            .iter()
            .find(|r| r["action"] == action && r["actor"] == actor)
            .unwrap_or_else(|| panic!("no {action} by {actor:?} in {text}"))
            .clone()
    };
    let failed = find("auth.login_failed", "ghost");
    assert_eq!(failed["ip"], "127.0.0.1");
    assert!(failed["detail"]["reason"].is_string(), "{failed}");
    assert_eq!(find("auth.login_failed", "admin")["ip"], "127.0.0.1");
    let ok = find("auth.login", "admin");
    assert_eq!(ok["ip"], "127.0.0.1");
    for field in ["id", "at", "target", "detail"] {
        assert!(ok.get(field).is_some(), "{field} missing: {ok}");
    }
    let created = find("user.create", &format!("admin (key {key_id})"));
    assert_eq!(
        (&created["target"], &created["ip"]),
        (&json!(format!("user/{uid}")), &json!("127.0.0.1"))
    );
    assert_eq!(find("user.update", "admin")["target"], format!("user/{uid}"));
    find("key.create", "admin");

    let auth_only = get(srv.addr, "/api/v1/audit?action=auth.", session).await.body;
    let actions: Vec<&str> = auth_only["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| s(&r["action"]))
        .collect();
    assert!(
        actions.len() >= 4 && actions.iter().all(|a| a.starts_with("auth.")),
        "{actions:?}"
    );
    let failures = get(srv.addr, "/api/v1/audit?action=auth.login_failed", session)
        .await
        .body;
    assert_eq!(failures["records"].as_array().map(Vec::len), Some(2), "{failures}");
    let ghost = get(srv.addr, "/api/v1/audit?actor=ghost", session).await.body;
    assert_eq!(ghost["records"].as_array().map(Vec::len), Some(1), "{ghost}");
    // Paging backwards and catching up forwards.
    let page = get(srv.addr, "/api/v1/audit?limit=2", session).await.body;
    assert_eq!(page["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_before"], page["records"][1]["id"], "{page}");
    let before = page["next_before"].as_i64().expect("next_before");
    let rest = get(srv.addr, &format!("/api/v1/audit?limit=1000&before={before}"), session)
        .await
        .body;
    let rest_ids: Vec<i64> = rest["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(rest_ids, ids[2..].to_vec());
    let after = get(srv.addr, &format!("/api/v1/audit?after={}", ids[2]), session)
        .await
        .body;
    assert_eq!(after["records"].as_array().map(Vec::len), Some(2), "{after}");
    assert_eq!(get(srv.addr, "/api/v1/audit?limit=0", session).await.status, 400);
    srv.stop().await;
}

#[tokio::test]
async fn without_an_admin_password_the_first_admin_gets_a_generated_one_in_a_private_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || {
        let mut config = Config {
            port: 0,
            data_dir: dir.path().to_path_buf(),
            environment: "test".into(),
            ..Config::default()
        };
        common::test_security(&mut config);
        config.security.admin_password = None;
        config
    };
    let server = sigmavault_server::start(config()).await.expect("server starts");
    let addr = server.addr;
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("initial-admin-password"), 0o600, "initial-admin-password mode");
    assert_eq!(mode("jwt-secret"), 0o600, "jwt-secret mode");
    let file = dir.path().join("initial-admin-password");
    let generated = std::fs::read_to_string(&file).expect("read").trim().to_owned();
    assert!(generated.len() >= 16, "a weak generated password: {generated:?}");
    let pair = login(addr, "admin", &generated).await;
    let r = change_password(
        addr,
        Cred::Bearer(s(&pair["access_token"])),
        &generated,
        "chosen-admin-password",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!file.exists(), "the generated password's file outlives the password");
    try_login(addr, "admin", &generated).await.refused(
        401,
        "invalid_credentials",
        "generated password after the change",
    );
    login(addr, "admin", "chosen-admin-password").await;
    server.stop().await.expect("clean shutdown");
    // A restart with users in the store generates nothing.
    let server = sigmavault_server::start(config()).await.expect("server restarts");
    assert!(!file.exists(), "a second start wrote a new initial password");
    login(server.addr, "admin", "chosen-admin-password").await;
    server.stop().await.expect("clean shutdown");
}
