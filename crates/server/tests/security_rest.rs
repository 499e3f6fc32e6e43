//! The REST doors of issue #6, from outside: credentials, forged and expired
//! tokens, login, refresh rotation, logout, roles and API keys. Real server
//! in-process, real HTTP. Account changes, limits, headers, audit and the
//! first-admin bootstrap are in `security_accounts.rs`.
mod common;
mod security_support;

use reqwest::Method;
use serde_json::{Value, json};

use common::{ADMIN_PASSWORD, TestServer};
use security_support::{Cred, b64url, call, claims_of, create_user, get, login, now, post, s, try_login, try_refresh};
use sigmavault_server::auth::jwt::Signer;

#[tokio::test]
async fn requests_without_credentials_get_401_json_with_www_authenticate() {
    let srv = TestServer::spawn().await;
    for path in ["/api/v1/health", "/api/v1/ready", "/api/v1/info"] {
        assert_ne!(get(srv.addr, path, Cred::None).await.status, 401, "{path} is public");
    }
    for path in [
        "/api/v1/notifications",
        "/api/v1/hub",
        "/api/v1/auth/me",
        "/api/v1/users",
    ] {
        let r = get(srv.addr, path, Cred::None).await;
        r.refused(401, "unauthorized", path);
        assert!(r.body["error"]["message"].is_string(), "{}", r.body);
        assert!(
            r.header("www-authenticate").starts_with("Bearer"),
            "{path}: WWW-Authenticate {:?}",
            r.header("www-authenticate")
        );
        assert!(r.header("content-type").starts_with("application/json"));
    }
    let r = post(srv.addr, "/api/v1/events", Cred::None, json!({"events": []})).await;
    r.refused(401, "unauthorized", "POST without credentials");
    let r = call(srv.addr, Method::GET, "/api/v1/hub", Cred::None, None).await;
    assert_eq!(r.status, 401);
    // Another scheme is not a token.
    let basic = reqwest::Client::new()
        .get(srv.url("/api/v1/hub"))
        .header("authorization", "Basic YWRtaW46eA==")
        .send()
        .await
        .expect("request");
    assert_eq!(basic.status(), 401);
    let body: Value = basic.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "unauthorized", "another scheme: {body}");
    srv.stop().await;
}

#[tokio::test]
async fn forged_tokens_are_refused_as_invalid_token() {
    let srv = TestServer::spawn().await;
    let admin = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    create_user(&srv, "vera", "viewer-password-1", "viewer").await;
    let viewer = login(srv.addr, "vera", "viewer-password-1").await;
    let token = s(&viewer["access_token"]);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {token}");
    let me = get(srv.addr, "/api/v1/auth/me", Cred::Bearer(token)).await;
    assert_eq!(me.status, 200, "the genuine token works: {}", me.body);
    let claims = claims_of(token);
    assert_eq!(claims.typ, "access");

    // Same claims, signed with another key.
    let other_key = Signer::new(&[0x42; 32], 0).sign(&claims).expect("sign");
    // The genuine signature with one character changed.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    let flipped = format!("{}.{}.{}", parts[0], parts[1], sig.into_iter().collect::<String>());
    // `alg: none` with genuine claims and no signature.
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let none = format!("{none_header}.{}.", parts[1]);
    let none_sig = format!("{none_header}.{}.{}", parts[1], parts[2]);
    // The viewer's claims made into the admin's, the viewer's signature kept.
    let mut elevated = claims.clone();
    elevated.sub = admin["user"]["id"].as_i64().expect("admin id").to_string();
    assert_ne!(elevated.sub, claims.sub);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(&serde_json::to_vec(&elevated).expect("claims")),
        parts[2]
    );
    // A later expiry, the signature kept.
    let mut longer = claims.clone();
    longer.exp += 3600;
    let extended = format!(
        "{}.{}.{}",
        parts[0],
        b64url(&serde_json::to_vec(&longer).expect("claims")),
        parts[2]
    );
    let cases = [
        ("signed with another key", other_key.as_str()),
        ("signature changed", flipped.as_str()),
        ("alg none, no signature", none.as_str()),
        ("alg none, old signature", none_sig.as_str()),
        ("sub changed to the admin", tampered.as_str()),
        ("exp changed", extended.as_str()),
        ("two parts", &format!("{}.{}", parts[0], parts[1])),
        ("garbage", "not-a-token"),
        ("unknown API key", "svk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ("unknown refresh token used as access", s(&viewer["refresh_token"])),
    ];
    for (what, t) in cases {
        let r = get(srv.addr, "/api/v1/auth/me", Cred::Bearer(t)).await;
        r.refused(401, "invalid_token", what);
        let r = post(
            srv.addr,
            "/api/v1/users",
            Cred::Bearer(t),
            json!({"username": "x", "password": "y"}),
        )
        .await;
        r.refused(401, "invalid_token", what);
    }
    let r = get(srv.addr, "/api/v1/auth/me", Cred::Key("svk_nope")).await;
    r.refused(401, "invalid_token", "unknown X-API-Key");
    srv.stop().await;
}

#[tokio::test]
async fn tokens_signed_with_the_servers_secret_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_path_buf();
    let srv = TestServer::spawn_with(|c| c.data_dir = data_dir.clone()).await;
    let raw = std::fs::read(dir.path().join("jwt-secret")).expect("jwt-secret");
    let key: Vec<u8> = raw.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
    let signer = Signer::new(&key, 0);
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let genuine = claims_of(s(&pair["access_token"]));
    let t = now();

    // Control: a token made here with the same secret is accepted, so the
    // refusals below are about time and type, not about the key.
    let mut fresh = genuine.clone();
    (fresh.iat, fresh.exp, fresh.jti) = (t, t + 120, "tests-fresh".into());
    let r = get(
        srv.addr,
        "/api/v1/auth/me",
        Cred::Bearer(&signer.sign(&fresh).expect("sign")),
    )
    .await;
    assert_eq!(r.status, 200, "own token with the server's secret: {}", r.body);

    let mut expired = genuine.clone();
    (expired.iat, expired.exp, expired.jti) = (t - 600, t - 300, "tests-expired".into());
    let expired = signer.sign(&expired).expect("sign");
    get(srv.addr, "/api/v1/auth/me", Cred::Bearer(&expired))
        .await
        .refused(401, "token_expired", "expired token");
    get(srv.addr, "/api/v1/notifications", Cred::Bearer(&expired))
        .await
        .refused(401, "token_expired", "expired token");

    let mut refresh_typed = fresh.clone();
    refresh_typed.typ = "refresh".into();
    let r = get(
        srv.addr,
        "/api/v1/auth/me",
        Cred::Bearer(&signer.sign(&refresh_typed).expect("sign")),
    )
    .await;
    r.refused(401, "invalid_token", "typ refresh");

    let mut future = fresh.clone();
    (future.iat, future.exp) = (t + 3600, t + 7200);
    let r = get(
        srv.addr,
        "/api/v1/auth/me",
        Cred::Bearer(&signer.sign(&future).expect("sign")),
    )
    .await;
    r.refused(401, "invalid_token", "issued an hour from now");

    let mut ghost = fresh.clone();
    ghost.sid = "no-such-session".into();
    let r = get(
        srv.addr,
        "/api/v1/auth/me",
        Cred::Bearer(&signer.sign(&ghost).expect("sign")),
    )
    .await;
    assert_eq!(r.status, 401, "unknown session: {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn login_succeeds_and_unknown_user_and_wrong_password_look_the_same() {
    let srv = TestServer::spawn().await;
    let r = try_login(srv.addr, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let b = &r.body;
    assert!(
        b["access_token"].as_str().is_some_and(|t| t.split('.').count() == 3),
        "{b}"
    );
    assert!(b["refresh_token"].as_str().is_some_and(|t| !t.is_empty()), "{b}");
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 900);
    assert!(b["session_id"].is_string(), "{b}");
    let user = &b["user"];
    assert_eq!(
        (&user["username"], &user["role"], &user["disabled"]),
        (&json!("admin"), &json!("admin"), &json!(false))
    );
    for field in ["id", "created_at", "updated_at", "password_changed_at", "last_login_at"] {
        assert!(user.get(field).is_some(), "user.{field} missing: {user}");
    }
    let text = user.to_string();
    assert!(
        !text.contains("hash") && !text.contains(ADMIN_PASSWORD),
        "user leaks a secret: {text}"
    );

    let wrong_pw = try_login(srv.addr, "admin", "not-the-password").await;
    let unknown = try_login(srv.addr, "nobody-here", "not-the-password").await;
    wrong_pw.refused(401, "invalid_credentials", "wrong password");
    unknown.refused(401, "invalid_credentials", "unknown user");
    assert_eq!(
        wrong_pw.body, unknown.body,
        "the two failures must be indistinguishable"
    );
    let r = post(srv.addr, "/api/v1/auth/login", Cred::None, json!({"username": "admin"})).await;
    assert_eq!(r.status, 422, "missing password: {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_a_spent_refresh_token_revokes_the_session() {
    let srv = TestServer::spawn().await;
    let p1 = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let r = try_refresh(srv.addr, &p1["refresh_token"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let p2 = r.body;
    assert_eq!(p2["session_id"], p1["session_id"], "refresh keeps the session");
    assert_ne!(p2["refresh_token"], p1["refresh_token"]);
    assert_ne!(p2["access_token"], p1["access_token"]);
    let me = get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&p2["access_token"]))).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["auth"]["method"], "session");
    assert_eq!(me.body["auth"]["session_id"], p1["session_id"]);
    let p3 = try_refresh(srv.addr, &p2["refresh_token"]).await;
    assert_eq!(p3.status, 200, "the new refresh token rotates too: {}", p3.body);

    // p1's refresh token was spent: presenting it again is theft or a bug.
    try_refresh(srv.addr, &p1["refresh_token"])
        .await
        .refused(401, "token_revoked", "spent refresh token");
    for (what, t) in [("first", &p1), ("second", &p2), ("third", &p3.body)] {
        get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&t["access_token"])))
            .await
            .refused(401, "token_revoked", &format!("{what} access token after reuse"));
    }
    let r = try_refresh(srv.addr, &p3.body["refresh_token"]).await;
    assert_eq!(
        r.status, 401,
        "the latest refresh token died with its session: {}",
        r.body
    );
    // Another session of the same user is untouched.
    let other = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&other["access_token"])))
            .await
            .status,
        200
    );
    let audit = get(
        srv.addr,
        "/api/v1/audit?action=auth.refresh_reused",
        Cred::Bearer(&srv.token),
    )
    .await;
    assert_eq!(
        audit.body["records"].as_array().map(Vec::len),
        Some(1),
        "{}",
        audit.body
    );
    srv.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_access_and_the_refresh_token() {
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let other = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let access = s(&pair["access_token"]);
    let r = post(srv.addr, "/api/v1/auth/logout", Cred::Bearer(access), json!({})).await;
    assert_eq!((r.status, &r.body), (200, &json!({"logged_out": true})));
    get(srv.addr, "/api/v1/auth/me", Cred::Bearer(access)).await.refused(
        401,
        "token_revoked",
        "access token after logout",
    );
    let r = try_refresh(srv.addr, &pair["refresh_token"]).await;
    assert_eq!(r.status, 401, "refresh after logout: {}", r.body);
    assert_eq!(
        get(srv.addr, "/api/v1/auth/me", Cred::Bearer(s(&other["access_token"])))
            .await
            .status,
        200,
        "another session survives"
    );
    let r = post(srv.addr, "/api/v1/auth/logout", Cred::Bearer(&srv.token), json!({})).await;
    r.refused(403, "forbidden", "logout with an API key");
    srv.stop().await;
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_write_or_read_admin_data() {
    let srv = TestServer::spawn().await;
    create_user(&srv, "vera", "viewer-password-1", "viewer").await;
    // Without a role the user is a viewer.
    let r = post(
        srv.addr,
        "/api/v1/users",
        Cred::Bearer(&srv.token),
        json!({"username": "vic", "password": "viewer-password-2"}),
    )
    .await;
    assert_eq!((r.status, &r.body["role"]), (201, &json!("viewer")), "{}", r.body);
    let pair = login(srv.addr, "vera", "viewer-password-1").await;
    assert_eq!(pair["user"]["role"], "viewer");
    let v = Cred::Bearer(s(&pair["access_token"]));
    for path in [
        "/api/v1/notifications",
        "/api/v1/hub",
        "/api/v1/storage/shares",
        "/api/v1/auth/me",
    ] {
        let r = get(srv.addr, path, v).await;
        assert_eq!(r.status, 200, "viewer GET {path}: {}", r.body);
    }
    for path in ["/api/v1/users", "/api/v1/audit"] {
        get(srv.addr, path, v).await.refused(403, "forbidden", path);
    }
    post(
        srv.addr,
        "/api/v1/events",
        v,
        json!({"events": [{"type": "custom.x", "data": {}}]}),
    )
    .await
    .refused(403, "forbidden", "viewer publishes");
    post(
        srv.addr,
        "/api/v1/users",
        v,
        json!({"username": "eve", "password": "eve-password-1"}),
    )
    .await
    .refused(403, "forbidden", "viewer creates a user");
    post(srv.addr, "/api/v1/notifications/read-all", v, json!({}))
        .await
        .refused(403, "forbidden", "viewer marks notifications read");

    // Self-service keys: a viewer key yes, an admin key no.
    let r = post(
        srv.addr,
        "/api/v1/auth/keys",
        v,
        json!({"name": "mine", "role": "viewer"}),
    )
    .await;
    assert_eq!((r.status, &r.body["role"]), (201, &json!("viewer")), "{}", r.body);
    let vkey = s(&r.body["key"]).to_owned();
    let r = post(srv.addr, "/api/v1/auth/keys", v, json!({"name": "up", "role": "admin"})).await;
    r.refused(403, "forbidden", "viewer creates an admin key");
    let r = post(srv.addr, "/api/v1/auth/keys", v, json!({"name": "default"})).await;
    assert_eq!(
        (r.status, &r.body["role"]),
        (201, &json!("viewer")),
        "default key role: {}",
        r.body
    );
    // The viewer's key reads and cannot write.
    assert_eq!(
        get(srv.addr, "/api/v1/notifications", Cred::Key(&vkey)).await.status,
        200
    );
    post(srv.addr, "/api/v1/events", Cred::Key(&vkey), json!({"events": []}))
        .await
        .refused(403, "forbidden", "viewer key publishes");
    // The viewer sees only their own keys.
    let keys = get(srv.addr, "/api/v1/auth/keys", v).await;
    let owners: Vec<&Value> = keys.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["username"])
        .collect();
    assert!(
        !owners.is_empty() && owners.iter().all(|u| *u == "vera"),
        "{}",
        keys.body
    );
    srv.stop().await;
}

#[tokio::test]
async fn api_keys_work_by_header_and_bearer_are_listed_without_secret_and_revoked() {
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let admin = Cred::Bearer(s(&pair["access_token"]));
    let r = post(
        srv.addr,
        "/api/v1/auth/keys",
        admin,
        json!({"name": "backup-job", "role": "admin"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let created = r.body;
    let key = s(&created["key"]).to_owned();
    let id = created["id"].as_i64().expect("key id");
    assert!(key.starts_with("svk_"), "{key}");
    assert!(
        key.starts_with(s(&created["prefix"])),
        "prefix {} of {key}",
        created["prefix"]
    );
    assert_eq!(
        (&created["name"], &created["role"], &created["username"]),
        (&json!("backup-job"), &json!("admin"), &json!("admin"))
    );
    assert_eq!(
        (&created["last_used_at"], &created["revoked_at"]),
        (&Value::Null, &Value::Null)
    );

    for cred in [Cred::Key(&key), Cred::Bearer(&key)] {
        let me = get(srv.addr, "/api/v1/auth/me", cred).await;
        assert_eq!(me.status, 200, "{}", me.body);
        assert_eq!(
            (&me.body["auth"]["method"], &me.body["auth"]["key_id"]),
            (&json!("api_key"), &json!(id))
        );
        let pub_ = post(
            srv.addr,
            "/api/v1/events",
            cred,
            json!({"events": [{"type": "custom.k", "data": {}}]}),
        )
        .await;
        assert_eq!(pub_.status, 202, "admin key writes: {}", pub_.body);
    }
    // A key cannot mint keys (session only).
    let r = post(srv.addr, "/api/v1/auth/keys", Cred::Key(&key), json!({"name": "child"})).await;
    r.refused(403, "forbidden", "key creates a key");

    let list = get(srv.addr, "/api/v1/auth/keys", admin).await;
    assert_eq!(list.status, 200);
    let listed = list.body["keys"].as_array().expect("keys");
    let mine = listed.iter().find(|k| k["id"] == id).expect("the new key is listed");
    assert!(mine.get("key").is_none(), "the list carries the secret: {mine}");
    assert!(!list.body.to_string().contains(&key), "the secret appears in the list");
    assert!(
        !list.body.to_string().contains(&srv.token),
        "the harness key's secret appears in the list"
    );

    let r = call(
        srv.addr,
        Method::DELETE,
        &format!("/api/v1/auth/keys/{id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revoked"]["id"], id);
    assert!(r.body["revoked"]["revoked_at"].is_string(), "{}", r.body);
    for cred in [Cred::Key(&key), Cred::Bearer(&key)] {
        let r = get(srv.addr, "/api/v1/auth/me", cred).await;
        assert_eq!(r.status, 401, "revoked key: {}", r.body);
    }
    // Revoking again, or someone else's revoked key: nothing to do.
    let r = call(srv.addr, Method::DELETE, "/api/v1/auth/keys/999999", admin, None).await;
    assert_eq!(r.status, 404, "unknown key id: {}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_as_token_revoked() {
    // api.md: "revoked session/key or disabled user → 401 token_revoked".
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let admin = Cred::Bearer(s(&pair["access_token"]));
    let created = post(srv.addr, "/api/v1/auth/keys", admin, json!({"name": "short-lived"})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let (key, id) = (s(&created.body["key"]), &created.body["id"]);
    let r = call(
        srv.addr,
        Method::DELETE,
        &format!("/api/v1/auth/keys/{id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for cred in [Cred::Key(key), Cred::Bearer(key)] {
        get(srv.addr, "/api/v1/auth/me", cred)
            .await
            .refused(401, "token_revoked", "revoked key");
    }
    srv.stop().await;
}
