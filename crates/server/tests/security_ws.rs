//! The WebSocket doors of issue #6, from outside: credentials on the upgrade
//! (header, key, subprotocol) or in the first message, origins, query tokens,
//! revocation closing sockets, token expiry and renewal, admin-only topics,
//! connection caps and the inbound flood limit. Real server, real sockets.
mod common;
mod security_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use common::{ADMIN_PASSWORD, TestServer, WAIT};
use security_support::ws::{
    alive, assert_upgrade_refused, auth_msg, bearer, connect_as, connect_when_free, first_message_auth_close,
    logged_out_token, open, refused, request, revoke_key, welcomed,
};
use security_support::{Cred, b64url, call, create_user, login, post, s, try_refresh};
use sigmavault_server::config::security::normalize_origin;

/// How soon a revocation must reach an open socket (api.md: "at once").
const PROMPT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn an_upgrade_without_credentials_hears_nothing_until_it_authenticates() {
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let (mut c, resp) = open(request(&srv, "/ws?types=custom.*", &[])).await;
    assert_eq!(resp.status(), 101);
    assert!(
        c.frame_within(Duration::from_millis(500)).await.is_none(),
        "no welcome before auth"
    );
    c.send_json(json!({"type": "ping", "id": "before-auth"})).await;
    c.send_json(json!({"type": "subscribe", "id": "sub", "data": {"types": ["*"]}}))
        .await;
    assert!(
        c.frame_within(Duration::from_millis(300)).await.is_none(),
        "messages before auth are not answered"
    );
    c.send_json(auth_msg(s(&pair["access_token"]))).await;
    let welcome = c.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    // The upgrade's ?types apply from now on.
    srv.publish_custom("custom.after-auth", 1).await;
    c.next_of("custom.after-auth").await;
    let seen = c.sync().await;
    assert!(
        seen.iter().all(|m| m["id"] != "before-auth" && m["id"] != "sub"),
        "a pre-auth message was answered later: {seen:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn first_message_auth_times_out_with_4401() {
    let timeout = Duration::from_millis(300);
    let srv = TestServer::spawn_with(|c| c.security.ws_auth_timeout = timeout).await;
    let (mut c, _) = open(request(&srv, "/ws", &[])).await;
    let start = Instant::now();
    let (code, reason) = c.expect_close(timeout + Duration::from_secs(2)).await;
    assert_eq!(code, 4401, "{reason}");
    assert!(
        reason.starts_with("unauthorized: authentication timeout"),
        "reason {reason:?}"
    );
    assert!(
        start.elapsed() >= timeout / 2,
        "closed before the timeout: {:?}",
        start.elapsed()
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_credentials_on_the_upgrade_get_401_before_any_101() {
    let srv = TestServer::spawn().await;
    let gone = logged_out_token(&srv).await;
    let garbage_proto = format!("sigmavault.v1, bearer.{}", b64url(b"not-a-token"));
    let cases: [(&str, &str, &str, &str); 5] = [
        ("bearer garbage", "authorization", "Bearer not-a-token", "invalid_token"),
        (
            "unknown key",
            "x-api-key",
            "svk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "invalid_token",
        ),
        (
            "unknown key as bearer",
            "authorization",
            "Bearer svk_nope",
            "invalid_token",
        ),
        (
            "subprotocol garbage",
            "sec-websocket-protocol",
            &garbage_proto,
            "invalid_token",
        ),
        ("logged-out session", "authorization", &bearer(&gone), "token_revoked"),
    ];
    for (what, name, value, code) in cases {
        assert_upgrade_refused(request(&srv, "/ws", &[(name, value)]), 401, code, what).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_bad_token_as_first_message_closes_4401() {
    let srv = TestServer::spawn().await;
    let gone = logged_out_token(&srv).await;
    for (token, code) in [("not-a-token", "invalid_token"), (gone.as_str(), "token_revoked")] {
        let (close, reason) = first_message_auth_close(&srv, token).await;
        // protocol.md §16: the reason is `unauthorized: <code>`.
        assert_eq!((close, reason), (4401, format!("unauthorized: {code}")));
    }
    srv.stop().await;
}

#[tokio::test]
async fn subprotocol_auth_selects_only_sigmavault_v1() {
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let encoded = b64url(s(&pair["access_token"]).as_bytes());
    let offer = format!("sigmavault.v1, bearer.{encoded}");
    let (mut c, resp) = open(request(&srv, "/ws", &[("sec-websocket-protocol", &offer)])).await;
    let selected: Vec<&str> = resp
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(selected, ["sigmavault.v1"], "the token must not be echoed");
    assert!(
        !format!("{:?}", resp.headers()).contains(&encoded),
        "{:?}",
        resp.headers()
    );
    assert_eq!(c.next_json().await["type"], "welcome");
    alive(&mut c, "subprotocol").await;
    // The bearer entry alone (without sigmavault.v1) is not accepted.
    let lone = format!("bearer.{encoded}");
    let req = request(&srv, "/ws", &[("sec-websocket-protocol", &lone)]);
    assert_upgrade_refused(req, 400, "bad_request", "bearer.<token> without sigmavault.v1").await;
    srv.stop().await;
}

#[tokio::test]
async fn only_the_servers_own_origin_and_allowed_origins_may_connect() {
    let ui = "https://ui.example.com";
    let srv =
        TestServer::spawn_with(|c| c.security.allowed_origins = vec![normalize_origin(ui).expect("origin")]).await;
    let auth = bearer(&srv.token);
    for bad in [
        "http://evil.example",
        &format!("https://{}", srv.addr),
        "null",
        "http://127.0.0.1:1",
    ] {
        let req = request(&srv, "/ws", &[("authorization", &auth), ("origin", bad)]);
        assert_upgrade_refused(req, 403, "origin_not_allowed", bad).await;
    }
    // A foreign origin is refused even before credentials are looked at.
    let req = request(&srv, "/ws", &[("origin", "http://evil.example")]);
    assert_upgrade_refused(req, 403, "origin_not_allowed", "no credentials").await;
    for good in [format!("http://{}", srv.addr), ui.to_owned()] {
        let mut c = welcomed(request(&srv, "/ws", &[("authorization", &auth), ("origin", &good)])).await;
        alive(&mut c, &good).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_origin_is_the_servers_own() {
    // A TLS-terminating proxy on 127.0.0.1 in front of a plain-HTTP server: the
    // browser's page is https://nas.example, and the proxy says so.
    let srv = TestServer::spawn_with(|c| {
        c.security.trusted_proxies = vec![sigmavault_server::config::Cidr::parse("127.0.0.0/8").expect("cidr")];
    })
    .await;
    let auth = bearer(&srv.token);
    let page = "https://nas.example";
    let host_kept = [
        ("authorization", auth.as_str()),
        ("origin", page),
        ("host", "nas.example"),
        ("x-forwarded-proto", "https"),
    ];
    let mut c = welcomed(request(&srv, "/ws", &host_kept)).await;
    alive(&mut c, "Host kept by the proxy").await;
    // A proxy that rewrites Host names the public one in X-Forwarded-Host.
    let host_rewritten = [
        ("authorization", auth.as_str()),
        ("origin", page),
        ("x-forwarded-host", "nas.example"),
        ("x-forwarded-proto", "https"),
    ];
    let mut c = welcomed(request(&srv, "/ws", &host_rewritten)).await;
    alive(&mut c, "X-Forwarded-Host").await;
    // Another page stays foreign, and the forwarded scheme must match the page's.
    for (origin, proto) in [("https://evil.example", "https"), (page, "http")] {
        let req = request(
            &srv,
            "/ws",
            &[
                ("authorization", auth.as_str()),
                ("origin", origin),
                ("host", "nas.example"),
                ("x-forwarded-proto", proto),
            ],
        );
        assert_upgrade_refused(req, 403, "origin_not_allowed", origin).await;
    }
    srv.stop().await;

    // From a peer that is not a trusted proxy the forwarded headers are not believed.
    let srv = TestServer::spawn().await;
    let auth = bearer(&srv.token);
    let req = request(
        &srv,
        "/ws",
        &[
            ("authorization", auth.as_str()),
            ("origin", page),
            ("host", "nas.example"),
            ("x-forwarded-proto", "https"),
        ],
    );
    assert_upgrade_refused(req, 403, "origin_not_allowed", "untrusted forwarded headers").await;
    srv.stop().await;
}

#[tokio::test]
async fn tokens_in_the_query_string_are_refused_with_400() {
    let srv = TestServer::spawn().await;
    let auth = bearer(&srv.token);
    for q in ["token", "access_token", "api_key", "key"] {
        for path in [format!("/ws?{q}={}", srv.token), format!("/ws?types=custom.*&{q}=x")] {
            let (status, body) = refused(request(&srv, &path, &[("authorization", &auth)])).await;
            assert_eq!(
                (status, &body["error"]["code"]),
                (400, &json!("bad_request")),
                "{q}: {body}"
            );
            assert!(!body.to_string().contains(&srv.token), "the token is echoed: {body}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn revoking_a_key_closes_its_sockets_at_once() {
    let srv = TestServer::spawn().await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let r = post(
        srv.addr,
        "/api/v1/auth/keys",
        Cred::Bearer(s(&pair["access_token"])),
        json!({"name": "ws"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = s(&r.body["key"]);
    let mut by_bearer = connect_as(&srv, key).await;
    let mut by_header = welcomed(request(&srv, "/ws", &[("x-api-key", key)])).await;
    let (mut by_message, _) = open(request(&srv, "/ws", &[])).await;
    by_message.send_json(auth_msg(key)).await;
    assert_eq!(by_message.next_json().await["type"], "welcome");
    let mut other = srv.connect().await;
    revoke_key(&srv, &r.body["id"]).await;
    for c in [&mut by_bearer, &mut by_header, &mut by_message] {
        assert_eq!(c.expect_close(PROMPT).await.0, 4401);
    }
    alive(&mut other, "other-key").await;
    srv.stop().await;
}

#[tokio::test]
async fn logout_closes_that_sessions_sockets_and_no_other() {
    let srv = TestServer::spawn().await;
    let a = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let b = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let mut a1 = connect_as(&srv, s(&a["access_token"])).await;
    let (mut a2, _) = open(request(&srv, "/ws", &[])).await;
    a2.send_json(auth_msg(s(&a["access_token"]))).await;
    assert_eq!(a2.next_json().await["type"], "welcome");
    let mut b1 = connect_as(&srv, s(&b["access_token"])).await;
    let r = post(
        srv.addr,
        "/api/v1/auth/logout",
        Cred::Bearer(s(&a["access_token"])),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for c in [&mut a1, &mut a2] {
        let (code, reason) = c.expect_close(PROMPT).await;
        assert_eq!(code, 4401, "{reason}");
        assert!(reason.contains("logged out"), "reason {reason:?}");
    }
    alive(&mut b1, "other-session").await;
    srv.stop().await;
}

#[tokio::test]
async fn refresh_reuse_and_user_changes_close_the_affected_sockets() {
    let srv = TestServer::spawn().await;
    let uid = create_user(&srv, "vic", "vic-password-1", "viewer").await;
    // A spent refresh token presented again ends its session and sockets.
    let p1 = login(srv.addr, "vic", "vic-password-1").await;
    let mut stolen = connect_as(&srv, s(&p1["access_token"])).await;
    assert_eq!(try_refresh(srv.addr, &p1["refresh_token"]).await.status, 200);
    assert_eq!(try_refresh(srv.addr, &p1["refresh_token"]).await.status, 401);
    assert_eq!(stolen.expect_close(PROMPT).await.0, 4401);
    // A change to the user ends all their sockets, session and key alike.
    let p2 = login(srv.addr, "vic", "vic-password-1").await;
    let r = post(
        srv.addr,
        "/api/v1/auth/keys",
        Cred::Bearer(s(&p2["access_token"])),
        json!({"name": "k"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut by_session = connect_as(&srv, s(&p2["access_token"])).await;
    let mut by_key = connect_as(&srv, s(&r.body["key"])).await;
    let mut admin = srv.connect().await;
    let path = format!("/api/v1/users/{uid}");
    let r = call(
        srv.addr,
        reqwest::Method::PATCH,
        &path,
        Cred::Bearer(&srv.token),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for c in [&mut by_session, &mut by_key] {
        assert_eq!(c.expect_close(PROMPT).await.0, 4401);
    }
    alive(&mut admin, "admin").await;
    srv.stop().await;
}

#[tokio::test]
async fn an_expiring_token_is_warned_and_can_be_renewed_on_the_socket() {
    let srv = TestServer::spawn_with(|c| {
        c.security.access_token_ttl = Duration::from_secs(3);
        c.security.token_leeway = Duration::ZERO;
        c.security.auth_expiry_warning = Duration::from_secs(2);
    })
    .await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let mut renewing = connect_as(&srv, s(&pair["access_token"])).await;
    let mut lapsing = connect_as(&srv, s(&pair["access_token"])).await;
    let warning = renewing.next_of("auth.expiring").await;
    assert!(warning["data"]["expires_at"].is_string(), "{warning}");
    let left = warning["data"]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(left <= 3000, "{warning}");
    let fresh = try_refresh(srv.addr, &pair["refresh_token"]).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let token = s(&fresh.body["access_token"]);
    renewing
        .send_json(json!({"type": "auth", "id": "renew", "data": {"token": token}}))
        .await;
    let ok = renewing.next_of("authenticated").await;
    assert_eq!(ok["id"], "renew", "{ok}");
    assert_eq!(
        (&ok["data"]["user"], &ok["data"]["role"]),
        (&json!("admin"), &json!("admin")),
        "{ok}"
    );
    assert!(ok["data"]["expires_at"].is_string(), "{ok}");
    // The socket that kept the first token is closed when it expires...
    let (code, reason) = lapsing.expect_close(WAIT).await;
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("expired"), "reason {reason:?}");
    // ...while the renewed one lives past that moment, and is warned about the new token.
    let seen = alive(&mut renewing, "renewed").await;
    let again = match seen.into_iter().find(|m| m["type"] == "auth.expiring") {
        Some(m) => m,
        None => renewing.next_of("auth.expiring").await,
    };
    assert_ne!(again["data"]["expires_at"], warning["data"]["expires_at"], "{again}");
    srv.stop().await;
}

#[tokio::test]
async fn renewal_with_a_bad_or_foreign_token_is_refused_and_the_socket_keeps_its_auth() {
    let srv = TestServer::spawn().await;
    create_user(&srv, "vera", "viewer-password-1", "viewer").await;
    let viewer = login(srv.addr, "vera", "viewer-password-1").await;
    let a = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let b = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let gone = logged_out_token(&srv).await;
    let mut c = connect_as(&srv, s(&a["access_token"])).await;
    let cases = [
        ("garbage", "not-a-token", "invalid_token"),
        ("revoked", &gone, "token_revoked"),
        ("foreign", s(&viewer["access_token"]), "forbidden"),
    ];
    for (id, token, code) in cases {
        c.send_json(json!({"type": "auth", "id": id, "data": {"token": token}}))
            .await;
        let e = c.next_of("error").await;
        assert_eq!((&e["id"], &e["data"]["code"]), (&json!(id), &json!(code)), "{e}");
    }
    alive(&mut c, "after-refusals").await;
    // The same user's token from another session is accepted.
    c.send_json(json!({"type": "auth", "id": "same", "data": {"token": b["access_token"]}}))
        .await;
    assert_eq!(c.next_of("authenticated").await["id"], "same");
    srv.stop().await;
}

#[tokio::test]
async fn audit_events_reach_admins_only() {
    let srv = TestServer::spawn().await;
    create_user(&srv, "vera", "viewer-password-1", "viewer").await;
    let viewer = login(srv.addr, "vera", "viewer-password-1").await;
    let vt = s(&viewer["access_token"]);
    let mut refused_sub = connect_as(&srv, vt).await;
    for pattern in ["audit.*", "audit.auth.login"] {
        refused_sub
            .send_json(json!({"type": "subscribe", "id": pattern, "data": {"types": [pattern]}}))
            .await;
        let e = refused_sub.next_of("error").await;
        assert_eq!(
            (&e["id"], &e["data"]["code"]),
            (&json!(pattern), &json!("forbidden")),
            "{e}"
        );
    }
    let mut on_upgrade = welcomed(request(&srv, "/ws?types=audit.*", &[("authorization", &bearer(vt))])).await;
    assert_eq!(on_upgrade.next_of("error").await["data"]["code"], "forbidden");
    let mut star = connect_as(&srv, vt).await;
    star.subscribe(&["*"]).await;
    let mut admin = srv.connect().await;
    admin.subscribe(&["audit.*"]).await;

    login(srv.addr, "vera", "viewer-password-1").await;
    let ev = admin.next_of("audit.auth.login").await;
    assert_eq!(
        (&ev["data"]["actor"], &ev["data"]["action"]),
        (&json!("vera"), &json!("auth.login")),
        "{ev}"
    );
    assert_eq!(ev["data"]["ip"], "127.0.0.1");
    assert!(ev.get("seq").is_none(), "audit events carry no seq: {ev}");
    // The viewer on `*` gets events published after the login, and no audit event.
    srv.publish_custom("custom.marker", 1).await;
    let mut seen = Vec::new();
    loop {
        let m = star.next_json().await;
        let done = m["type"] == "custom.marker";
        seen.push(m);
        if done {
            break;
        }
    }
    seen.extend(star.sync().await);
    let audit: Vec<&Value> = seen.iter().filter(|m| s(&m["type"]).starts_with("audit.")).collect();
    assert!(audit.is_empty(), "a viewer received audit events: {audit:?}");
    srv.stop().await;
}

#[tokio::test]
async fn sockets_per_ip_are_capped() {
    let srv = TestServer::spawn_with(|c| c.security.ws_max_per_ip = 3).await;
    let mut open_ones = vec![srv.connect().await, srv.connect().await, srv.connect().await];
    let auth = bearer(&srv.token);
    assert_upgrade_refused(
        request(&srv, "/ws", &[("authorization", &auth)]),
        429,
        "too_many_connections",
        "fourth socket",
    )
    .await;
    assert_upgrade_refused(
        request(&srv, "/ws", &[]),
        429,
        "too_many_connections",
        "fourth socket, no credentials",
    )
    .await;
    open_ones.pop().expect("socket").close().await;
    connect_when_free(&srv, &auth).await;
    srv.stop().await;
}

#[tokio::test]
async fn sockets_per_user_are_capped() {
    let srv = TestServer::spawn_with(|c| c.security.ws_max_per_user = 2).await;
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let mut first = srv.connect().await;
    let _second = connect_as(&srv, s(&pair["access_token"])).await;
    // A third for the same user, whichever credential it uses.
    assert_upgrade_refused(
        request(&srv, "/ws", &[("authorization", &bearer(&srv.token))]),
        429,
        "too_many_connections",
        "third socket of the admin",
    )
    .await;
    let (mut late, _) = open(request(&srv, "/ws", &[])).await;
    late.send_json(auth_msg(&srv.token)).await;
    assert_eq!(
        late.expect_close(WAIT).await.0,
        4429,
        "first-message auth over the user cap"
    );
    // Another user is not affected.
    create_user(&srv, "vera", "viewer-password-1", "viewer").await;
    let viewer = login(srv.addr, "vera", "viewer-password-1").await;
    let mut v = connect_as(&srv, s(&viewer["access_token"])).await;
    alive(&mut v, "viewer").await;
    alive(&mut first, "first").await;
    first.close().await;
    connect_when_free(&srv, &bearer(&srv.token)).await;
    srv.stop().await;
}

#[tokio::test]
async fn an_inbound_flood_is_refused_then_closed_4429_while_others_keep_receiving() {
    let srv = TestServer::spawn_with(|c| {
        c.ws_rate_limit = 20;
        c.ws_rate_burst = 20;
    })
    .await;
    let mut bystander = srv.connect().await;
    bystander.subscribe(&["custom.*"]).await;
    let flooder = srv.connect().await;
    let (mut tx, mut rx) = flooder.ws.split();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 2000 {
                let ping = json!({"type": "ping", "id": sent}).to_string();
                if tx.send(Message::Text(ping.into())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }
    });
    // Read the flooder until its close frame, counting the refusals.
    let reader = tokio::spawn(async move {
        let mut refusals = 0;
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: Value = serde_json::from_str(&t).expect("JSON");
                    if m["type"] == "error" && m["data"]["code"] == "rate_limited" {
                        refusals += 1;
                    }
                }
                Ok(Some(Ok(Message::Close(Some(CloseFrame { code, .. }))))) => {
                    return (refusals, Some(u16::from(code)));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("flooder: no close frame ({refusals} refusals): {other:?}"),
            }
        }
    });
    let seqs = srv.publish_custom("custom.during-flood", 3).await;
    for want in &seqs {
        assert_eq!(&bystander.next_of("custom.during-flood").await["seq"], &json!(want));
    }
    let (refusals, code) = reader.await.expect("reader");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.expect("sender");
    assert!(
        refusals >= 1,
        "no rate_limited error frame before the close ({sent} sent)"
    );
    assert_eq!(code, Some(4429), "{refusals} refusals, {sent} sent");
    alive(&mut bystander, "bystander").await;
    srv.publish_custom("custom.after-flood", 1).await;
    bystander.next_of("custom.after-flood").await;
    srv.stop().await;
}
