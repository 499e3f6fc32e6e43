//! Server → client messages: `{"type", "timestamp", "seq"?, "id"?, "data"}`.
//!
//! The server encodes each hub message once with [`encode`]; clients decode any
//! message with [`ServerMessage`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Any message from the server, as a client sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerMessage {
    /// Event or reply type, e.g. `system.status`, `welcome`, `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// Present on event-class messages (and in replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The id of the client request this answers, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

/// Encodes one message. `data` must already be JSON text (an object, usually).
pub fn encode(kind: &str, timestamp: &str, seq: Option<u64>, id: Option<&Value>, data_json: &str) -> String {
    let mut out = String::with_capacity(kind.len() + data_json.len() + 80);
    out.push_str("{\"type\":");
    push_json_str(&mut out, kind);
    out.push_str(",\"timestamp\":\"");
    out.push_str(timestamp);
    out.push('"');
    if let Some(seq) = seq {
        out.push_str(",\"seq\":");
        out.push_str(&seq.to_string());
    }
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(&id.to_string());
    }
    out.push_str(",\"data\":");
    out.push_str(data_json);
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    // Types are validated to [a-z0-9_.-]; control replies are ours. Still escape properly.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// `welcome`: the first frame on every connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Welcome {
    /// This connection's id (UUID v4).
    pub client_id: String,
    /// The server's version.
    pub server_version: String,
    /// [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Identifies the event history; seqs are meaningful only within one epoch.
    pub epoch: String,
    /// The latest seq published so far (0 when none).
    pub seq: u64,
    /// Current subscriptions.
    pub subscriptions: Vec<String>,
    /// How often the server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// How long after a missed ping the server gives up, in milliseconds.
    pub pong_timeout_ms: u64,
    /// Limits that apply to this connection.
    pub limits: Limits,
}

/// Per-connection limits announced in `welcome`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Largest inbound message in bytes.
    pub max_message_bytes: usize,
    /// Event-class messages queued for this client before it is closed with 4008.
    pub queue_events: usize,
    /// Sustained inbound messages per second.
    pub inbound_per_second: u32,
    /// Inbound burst allowance.
    pub inbound_burst: u32,
}

/// `subscribed` / `unsubscribed`: the full current set after the change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subscriptions {
    /// Sorted patterns.
    pub subscriptions: Vec<String>,
}

/// `resumed`: the replay is complete; live events follow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Resumed {
    /// The epoch replayed from.
    pub epoch: String,
    /// The `since` the client asked for.
    pub since: u64,
    /// The last seq the replay covered (events above it arrive live).
    pub through: u64,
    /// How many events the replay delivered (after subscription filtering).
    pub replayed: u64,
}

/// `reset`: the client's position cannot be honoured; refetch state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reset {
    /// `epoch_mismatch`, `history_too_old` or `history_overrun`.
    pub reason: String,
    /// Human explanation.
    pub message: String,
    /// The current epoch.
    pub epoch: String,
    /// The oldest seq still retained.
    pub oldest_seq: u64,
    /// The latest seq; live delivery continues after it.
    pub seq: u64,
}

/// `error`: a request was refused; the connection stays open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorFrame {
    /// Stable code: `bad_json`, `unknown_type`, `bad_request`, `since_ahead`, `rate_limited`,
    /// `resume_unavailable`.
    pub code: String,
    /// Human explanation.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        let id = Value::from("r1");
        let s = encode("custom.x", "2026-01-01T00:00:00.000Z", Some(5), Some(&id), r#"{"a":1}"#);
        let m: ServerMessage = serde_json::from_str(&s).unwrap();
        assert_eq!(m.kind, "custom.x");
        assert_eq!(m.seq, Some(5));
        assert_eq!(m.id, Some(id));
        assert_eq!(m.data["a"], 1);
        let s = encode("heartbeat", "t", None, None, "{}");
        assert_eq!(s, r#"{"type":"heartbeat","timestamp":"t","data":{}}"#);
    }
}
