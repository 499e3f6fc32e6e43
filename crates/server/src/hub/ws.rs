//! The HTTP side of a WebSocket: validating the upgrade request, answering 101,
//! and handing the upgraded socket to a connection task.
//!
//! We do the RFC 6455 handshake ourselves (it is a few header checks) instead of
//! using axum's extractor, so that the tungstenite configuration, the error
//! answers (426, 400, 503 with JSON bodies) and the connection cap are ours.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use sigmavault_proto::{Pattern, SubscriptionSet};

use super::session::SessionKind;
use super::subscriptions::{MAX_PATTERNS_PER_CLIENT, Opening};
use super::{AdmitError, Hub};

/// Largest message the echo endpoint accepts (the Autobahn cases go up to 16 MiB).
pub(crate) const ECHO_MAX_MESSAGE: usize = 32 << 20;

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Not a WebSocket upgrade at all (a plain GET).
    #[error("this endpoint speaks WebSocket only: send an upgrade request (Connection: Upgrade, Upgrade: websocket)")]
    NotUpgrade,
    /// A WebSocket version other than 13.
    #[error("unsupported Sec-WebSocket-Version; only 13 is supported")]
    BadVersion,
    /// Missing or malformed `Sec-WebSocket-Key`.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// Malformed `epoch`/`since` query.
    #[error("{0}")]
    BadQuery(String),
    /// The connection cap is reached.
    #[error("the server is at its connection limit; retry later")]
    Full,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The 101 response could not be built (a bug; the detail is logged).
    #[error("internal error")]
    Internal(String),
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The token a browser sends as the subprotocol `bearer.<base64url token>`
/// next to `sigmavault.v1` (browsers cannot set headers on a WebSocket). Only
/// `sigmavault.v1` is ever selected, so the token is never echoed back.
pub(crate) fn subprotocol_token(headers: &HeaderMap) -> Result<Option<String>, UpgradeError> {
    use base64::Engine;
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(encoded) = offered.iter().find_map(|p| p.strip_prefix("bearer.")) else {
        return Ok(None);
    };
    if !offered.contains(&sigmavault_proto::SUBPROTOCOL) {
        return Err(UpgradeError::BadQuery(format!(
            "offer the subprotocol {} together with bearer.<token>",
            sigmavault_proto::SUBPROTOCOL
        )));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| UpgradeError::BadQuery("bearer.<token>: the token must be base64url-encoded".into()))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| UpgradeError::BadQuery("bearer.<token>: the token is not UTF-8".into()))
}

/// Parses `?types=a,b.*&epoch=E&since=N` (epoch and since both or neither).
/// A repeated parameter: the last one counts.
fn parse_opening(query: Option<&str>) -> Result<Opening, UpgradeError> {
    let (mut epoch, mut since, mut types) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "types" => types = Some(v),
            "epoch" => epoch = Some(v.to_owned()),
            "since" => since = Some(v),
            _ => {}
        }
    }
    let since = since
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| UpgradeError::BadQuery(format!("since must be a non-negative integer, got {v:?}")))
        })
        .transpose()?;
    let types = types
        .map(|v| {
            let decoded = v
                .replace("%2A", "*")
                .replace("%2a", "*")
                .replace("%2C", ",")
                .replace("%2c", ",");
            let patterns = decoded
                .split(',')
                .filter(|t| !t.is_empty())
                .map(Pattern::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| UpgradeError::BadQuery(format!("types: {e}")))?;
            let set = SubscriptionSet::from_patterns(patterns);
            if set.len() > MAX_PATTERNS_PER_CLIENT {
                return Err(UpgradeError::BadQuery(format!(
                    "types: at most {MAX_PATTERNS_PER_CLIENT} patterns"
                )));
            }
            Ok(set.iter().cloned().collect::<Vec<_>>())
        })
        .transpose()?;
    let resume = match (epoch, since) {
        (Some(e), Some(s)) => Some((e, s)),
        (None, None) => None,
        _ => return Err(UpgradeError::BadQuery("epoch and since must be given together".into())),
    };
    Ok(Opening { types, resume })
}

/// Validates the upgrade, answers 101 and spawns the connection.
pub(crate) fn upgrade(
    hub: &Hub,
    echo: bool,
    mut req: Request<Body>,
    gate: super::connection::Gate,
) -> Result<Response<Body>, UpgradeError> {
    let headers = req.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(UpgradeError::NotUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(UpgradeError::BadVersion);
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(UpgradeError::BadKey)?;
    if key.len() != 24 {
        return Err(UpgradeError::BadKey);
    }
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, sigmavault_proto::SUBPROTOCOL);
    let opening = parse_opening(req.uri().query())?;
    let admission = hub.try_admit().map_err(|e| match e {
        AdmitError::Full => UpgradeError::Full,
        AdmitError::Closing => UpgradeError::ShuttingDown,
    })?;
    let on_upgrade = hyper::upgrade::on(&mut req);

    let cfg = hub.config();
    let max_message = if echo { ECHO_MAX_MESSAGE } else { cfg.max_message };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer)
        // tungstenite only writes its own pong/close replies, straight into the outbox.
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let kind = if echo { SessionKind::Echo } else { SessionKind::Events };
    let task_hub = hub.clone();
    hub.inner.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        super::connection::run(
            task_hub,
            kind,
            opening,
            TokioIo::new(upgraded),
            ws_config,
            admission,
            gate,
        )
        .await;
    });

    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if subprotocol {
        builder = builder.header(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(sigmavault_proto::SUBPROTOCOL),
        );
    }
    builder
        .body(Body::empty())
        .map_err(|e| UpgradeError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_query() {
        assert!(parse_opening(None).unwrap().resume.is_none());
        assert_eq!(
            parse_opening(Some("epoch=e&since=4")).unwrap().resume,
            Some(("e".into(), 4))
        );
        assert!(parse_opening(Some("epoch=e")).is_err());
        assert!(parse_opening(Some("epoch=e&since=-1")).is_err());
        let o = parse_opening(Some("types=custom.*,notification")).unwrap();
        assert_eq!(o.types.map(|t| t.len()), Some(2));
        assert_eq!(
            parse_opening(Some("types=custom.%2A")).unwrap().types.map(|t| t.len()),
            Some(1)
        );
        assert!(parse_opening(Some("types=A")).is_err());
        assert!(
            parse_opening(Some("types=A&types=custom.*")).is_ok(),
            "the last one counts"
        );
        let dup = vec!["custom.x"; 300].join(",");
        assert_eq!(
            parse_opening(Some(&format!("types={dup}")))
                .unwrap()
                .types
                .map(|t| t.len()),
            Some(1)
        );
    }
}
