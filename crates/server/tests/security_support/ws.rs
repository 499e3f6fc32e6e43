//! WebSocket helpers for the security suites: upgrade requests with chosen
//! headers, refused upgrades, first-message auth, liveness checks.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};

use super::super::common::{ADMIN_PASSWORD, TestServer, WAIT, WsClient};
use super::{Cred, call, login, post, s};

/// An upgrade request for `path` with extra headers.
pub fn request(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = srv.ws_url(path).into_client_request().expect("ws url");
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        req.headers_mut().insert(name, value.parse().expect("header value"));
    }
    req
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Completes the upgrade (101) without reading anything.
pub async fn open(req: Request) -> (WsClient, Response) {
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("ws connect");
    let client = WsClient {
        ws,
        welcome: Value::Null,
    };
    (client, resp)
}

/// Upgrades and reads the welcome.
pub async fn welcomed(req: Request) -> WsClient {
    let (mut c, _) = open(req).await;
    let welcome = c.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c.welcome = welcome;
    c
}

/// Connects to /ws with a bearer token.
pub async fn connect_as(srv: &TestServer, token: &str) -> WsClient {
    welcomed(request(srv, "/ws", &[("authorization", &bearer(token))])).await
}

/// Expects the upgrade to be refused over HTTP; returns the status and JSON body.
pub async fn refused(req: Request) -> (u16, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, resp)) => panic!("expected an HTTP refusal, got {}", resp.status()),
    }
}

/// Asserts the upgrade is refused with `status` and `error.code`.
pub async fn assert_upgrade_refused(req: Request, status: u16, code: &str, what: &str) {
    let (got, body) = refused(req).await;
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{what}: {body}"
    );
}

/// Connects once a cap has room again (a closed socket frees its slot when its task ends).
pub async fn connect_when_free(srv: &TestServer, auth: &str) -> WsClient {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(request(srv, "/ws", &[("authorization", auth)])).await {
            Ok((ws, _)) => {
                let mut c = WsClient {
                    ws,
                    welcome: Value::Null,
                };
                c.welcome = c.next_of("welcome").await;
                return c;
            }
            Err(WsError::Http(r)) if r.status() == 429 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no room after closing a socket: {e}"),
        }
    }
}

pub fn auth_msg(token: &str) -> Value {
    json!({"type": "auth", "data": {"token": token}})
}

/// Asserts the socket is alive and authenticated: a ping round trip. Returns
/// the other messages that arrived before the pong.
pub async fn alive(c: &mut WsClient, what: &str) -> Vec<Value> {
    c.send_json(json!({"type": "ping", "id": what})).await;
    let mut before = Vec::new();
    loop {
        let m = c.next_json().await;
        if m["type"] == "pong" && m["id"] == what {
            return before;
        }
        before.push(m);
    }
}

/// An access token whose session has been logged out.
pub async fn logged_out_token(srv: &TestServer) -> String {
    let pair = login(srv.addr, "admin", ADMIN_PASSWORD).await;
    let token = s(&pair["access_token"]).to_owned();
    let r = post(srv.addr, "/api/v1/auth/logout", Cred::Bearer(&token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    token
}

/// The close code and reason after a first-message `auth` with `token`.
pub async fn first_message_auth_close(srv: &TestServer, token: &str) -> (u16, String) {
    let (mut c, _) = open(request(srv, "/ws", &[])).await;
    c.send_json(auth_msg(token)).await;
    c.expect_close(WAIT).await
}

pub async fn revoke_key(srv: &TestServer, id: &Value) {
    let path = format!("/api/v1/auth/keys/{id}");
    let r = call(srv.addr, reqwest::Method::DELETE, &path, Cred::Bearer(&srv.token), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
