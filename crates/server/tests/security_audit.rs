//! The audit trail of data-plane writes: publishing events and handling
//! notifications are admin writes, so each is recorded with who and from
//! where; audit events reach admin sockets live, without a seq, and a client
//! that missed some catches up with `GET /api/v1/audit?after=ID`.

mod common;

use serde_json::{Value, json};

use common::{TestServer, WAIT};

async fn audit(srv: &TestServer, query: &str) -> Vec<Value> {
    let resp = srv
        .http
        .get(srv.url(&format!("/api/v1/audit?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["records"].as_array().expect("records").clone()
}

#[tokio::test]
async fn publishes_and_notification_changes_are_audited_and_streamed_live_without_a_seq() {
    let srv = TestServer::spawn().await;
    let mut admin = srv.connect().await;
    admin.subscribe(&["audit.*"]).await;
    let head_before = admin.welcome["data"]["seq"].as_u64().expect("welcome seq");

    let seqs = srv
        .publish(&[
            json!({"type": "custom.a", "data": {}}),
            json!({"type": "custom.b", "data": {}}),
            json!({"type": "notification", "data": {"level": "info", "title": "t", "message": "m"}}),
        ])
        .await;
    assert_eq!(seqs.len(), 3);
    assert_eq!(seqs[0], head_before + 1, "audit records take no seq: {seqs:?}");

    // The live audit event: no seq, the record's id, who and from where.
    let live = admin.next_of("audit.events.publish").await;
    assert!(
        live.get("seq").is_none(),
        "audit events are outside the seq space: {live}"
    );
    assert!(
        live["data"]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("admin (key ")),
        "{live}"
    );
    assert_eq!(live["data"]["ip"], "127.0.0.1");
    assert_eq!(live["data"]["detail"]["count"], 3);
    assert_eq!(
        live["data"]["detail"]["types"],
        json!(["custom.a", "custom.b", "notification"])
    );
    let first_id = live["data"]["id"].as_i64().expect("audit id");

    // Notification writes.
    let list: Value = srv
        .http
        .get(srv.url("/api/v1/notifications"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list["notifications"][0]["id"].as_i64().expect("notification id");
    for (method, path) in [
        ("POST", format!("/api/v1/notifications/{id}/read")),
        ("POST", "/api/v1/notifications/read-all".to_owned()),
        ("DELETE", format!("/api/v1/notifications/{id}")),
    ] {
        let req = match method {
            "POST" => srv.http.post(srv.url(&path)),
            _ => srv.http.delete(srv.url(&path)),
        };
        let status = req.send().await.unwrap().status();
        assert!(status.is_success(), "{method} {path}: {status}");
    }

    // Catching up from the first live record: exactly what followed it, newest first.
    let deadline = tokio::time::Instant::now() + WAIT;
    let later = loop {
        let records = audit(&srv, &format!("after={first_id}")).await;
        if records.len() >= 3 || tokio::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let actions: Vec<&str> = later.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(
        actions,
        vec!["notification.delete", "notification.read_all", "notification.read"],
        "{later:?}"
    );
    assert!(later.iter().all(|r| r["id"].as_i64() > Some(first_id)));
    assert!(later.iter().all(|r| r["ip"] == "127.0.0.1"));

    // And the same records reached the admin socket live, in order.
    for action in ["notification.read", "notification.read_all", "notification.delete"] {
        let ev = admin.next_of(&format!("audit.{action}")).await;
        assert!(ev.get("seq").is_none(), "{ev}");
    }
    srv.stop().await;
}

/// `X-Forwarded-For` is believed only from a `--trusted-proxy`: then the audit
/// log (and the limits) see the client behind the proxy; otherwise the peer.
#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    async fn login_via_proxy(srv: &TestServer) {
        let resp = reqwest::Client::new()
            .post(srv.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
            .json(&json!({"username": "admin", "password": common::ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let last_login_ip = async |srv: &TestServer| {
        audit(srv, "action=auth.login&limit=1").await[0]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let trusting = TestServer::spawn_with(|c| {
        c.security.trusted_proxies = vec![sigmavault_server::config::Cidr::parse("127.0.0.0/8").unwrap()];
    })
    .await;
    login_via_proxy(&trusting).await;
    assert_eq!(
        last_login_ip(&trusting).await,
        "203.0.113.7",
        "the right-most address the trusted proxy added"
    );
    trusting.stop().await;

    let direct = TestServer::spawn().await;
    login_via_proxy(&direct).await;
    assert_eq!(
        last_login_ip(&direct).await,
        "127.0.0.1",
        "a header from an untrusted peer is ignored"
    );
    direct.stop().await;
}
