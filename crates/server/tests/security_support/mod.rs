//! Helpers shared by the security suites (`security_*.rs`): one-shot REST
//! calls with a chosen credential, hand-made base64url and JWT inspection.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use reqwest::Method;
use serde_json::{Value, json};

use sigmavault_server::auth::jwt::Claims;

use super::common::TestServer;

/// WebSocket helpers.
pub mod ws;

/// A response: status, headers and the JSON body (`Null` when not JSON).
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts an error response: status and `error.code`.
    pub fn refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{what}: body {}", self.body);
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Cred<'a> {
    None,
    Bearer(&'a str),
    Key(&'a str),
}

pub async fn call(addr: SocketAddr, method: Method, path: &str, cred: Cred<'_>, body: Option<Value>) -> Resp {
    let mut req = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    req = match cred {
        Cred::None => req,
        Cred::Bearer(t) => req.bearer_auth(t),
        Cred::Key(k) => req.header("x-api-key", k),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

pub async fn get(addr: SocketAddr, path: &str, cred: Cred<'_>) -> Resp {
    call(addr, Method::GET, path, cred, None).await
}

pub async fn post(addr: SocketAddr, path: &str, cred: Cred<'_>, body: Value) -> Resp {
    call(addr, Method::POST, path, cred, Some(body)).await
}

pub async fn patch(addr: SocketAddr, path: &str, cred: Cred<'_>, body: Value) -> Resp {
    call(addr, Method::PATCH, path, cred, Some(body)).await
}

/// Logs in (asserting 200) and returns the whole token-pair body.
pub async fn login(addr: SocketAddr, user: &str, pw: &str) -> Value {
    super::common::login(addr, user, pw).await
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Creates a user through the admin key; returns its id.
pub async fn create_user(srv: &TestServer, name: &str, pw: &str, role: &str) -> i64 {
    let body = json!({"username": name, "password": pw, "role": role});
    let r = post(srv.addr, "/api/v1/users", Cred::Bearer(&srv.token), body).await;
    assert_eq!(r.status, 201, "create {name}: {}", r.body);
    r.body["id"].as_i64().expect("user id")
}

pub const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

pub fn b64url_decode(text: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in text.bytes() {
        let v = B64.iter().position(|&x| x == c).expect("base64url character") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// The claims of a JWT (read without checking anything).
pub fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&b64url_decode(payload)).expect("JWT claims")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// One login attempt, whatever its outcome.
pub async fn try_login(addr: SocketAddr, user: &str, pw: &str) -> Resp {
    post(
        addr,
        "/api/v1/auth/login",
        Cred::None,
        json!({"username": user, "password": pw}),
    )
    .await
}

/// One refresh attempt, whatever its outcome.
pub async fn try_refresh(addr: SocketAddr, refresh_token: &Value) -> Resp {
    post(
        addr,
        "/api/v1/auth/refresh",
        Cred::None,
        json!({"refresh_token": refresh_token}),
    )
    .await
}
