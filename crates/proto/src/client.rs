//! Client → server messages: `{"type": "...", "id": optional, "data": {...}}`.

use serde::Deserialize;
use serde_json::Value;

use crate::pattern::{Pattern, PatternError};

/// Most patterns one `subscribe`/`unsubscribe` may carry.
pub const MAX_TYPES_PER_REQUEST: usize = 64;

/// The raw envelope, before the command is interpreted.
#[derive(Debug, Deserialize)]
pub struct ClientMessage {
    /// The command name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Optional correlation id (string or number), echoed in the reply.
    #[serde(default)]
    pub id: Option<Value>,
    /// Command arguments.
    #[serde(default)]
    pub data: Option<Value>,
}

/// A command the server understands.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// Add patterns to the subscription set.
    Subscribe(Vec<Pattern>),
    /// Remove patterns from the subscription set.
    Unsubscribe(Vec<Pattern>),
    /// Replay events with seq > `since` from history `epoch`, then continue live.
    Resume {
        /// The history the client's seq numbers belong to.
        epoch: String,
        /// The last seq the client processed.
        since: u64,
    },
    /// Application-level ping; answered with `pong`.
    Ping,
    /// Authenticate (first message of an upgrade without credentials) or extend
    /// an open socket's authentication with a fresh token of the same user.
    Auth {
        /// An access token or API key.
        token: Secret,
    },
}

/// A credential: its `Debug` never shows it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(serde::Deserialize)]
struct AuthData {
    token: String,
}

/// Why a client message was refused. Each maps to an `error` frame code.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandError {
    /// Not JSON, or not an object with a string `type`.
    BadJson(String),
    /// A `type` the server does not know.
    UnknownType(String),
    /// A known type with a missing or malformed field.
    BadRequest(String),
}

impl CommandError {
    /// The stable `code` of the error frame.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::BadJson(_) => "bad_json",
            CommandError::UnknownType(_) => "unknown_type",
            CommandError::BadRequest(_) => "bad_request",
        }
    }

    /// The human message of the error frame.
    pub fn message(&self) -> &str {
        match self {
            CommandError::BadJson(m) | CommandError::UnknownType(m) | CommandError::BadRequest(m) => m,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypesData {
    types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeData {
    epoch: String,
    since: u64,
}

impl ClientMessage {
    /// Parses the envelope. Errors are `bad_json`; the id is not known yet then.
    pub fn parse(text: &str) -> Result<ClientMessage, CommandError> {
        let msg: ClientMessage = serde_json::from_str(text)
            .map_err(|e| CommandError::BadJson(format!("expected {{\"type\": string, \"id\"?, \"data\"?}}: {e}")))?;
        match &msg.id {
            None | Some(Value::String(_)) | Some(Value::Number(_)) => Ok(msg),
            Some(_) => Err(CommandError::BadRequest("\"id\" must be a string or a number".into())),
        }
    }

    /// Interprets the command.
    pub fn command(&self) -> Result<ClientCommand, CommandError> {
        match self.kind.as_str() {
            "subscribe" => Ok(ClientCommand::Subscribe(self.types()?)),
            "unsubscribe" => Ok(ClientCommand::Unsubscribe(self.types()?)),
            "resume" => {
                let data: ResumeData = self.data_as("{\"epoch\": string, \"since\": integer >= 0}")?;
                Ok(ClientCommand::Resume {
                    epoch: data.epoch,
                    since: data.since,
                })
            }
            "ping" => Ok(ClientCommand::Ping),
            "auth" => {
                let data: AuthData = self.data_as("{\"token\": string}")?;
                Ok(ClientCommand::Auth {
                    token: Secret(data.token),
                })
            }
            other => Err(CommandError::UnknownType(format!(
                "unknown message type {:?}; expected subscribe, unsubscribe, resume, ping or auth",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }

    fn data_as<T: serde::de::DeserializeOwned>(&self, shape: &str) -> Result<T, CommandError> {
        let data = self
            .data
            .clone()
            .ok_or_else(|| CommandError::BadRequest(format!("{}: \"data\" must be {shape}", self.kind)))?;
        serde_json::from_value(data)
            .map_err(|e| CommandError::BadRequest(format!("{}: \"data\" must be {shape}: {e}", self.kind)))
    }

    fn types(&self) -> Result<Vec<Pattern>, CommandError> {
        let data: TypesData = self.data_as("{\"types\": [pattern, …]}")?;
        if data.types.is_empty() {
            return Err(CommandError::BadRequest(format!("{}: \"types\" is empty", self.kind)));
        }
        if data.types.len() > MAX_TYPES_PER_REQUEST {
            return Err(CommandError::BadRequest(format!(
                "{}: at most {MAX_TYPES_PER_REQUEST} types per request",
                self.kind
            )));
        }
        data.types
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<Result<Vec<_>, PatternError>>()
            .map_err(|e| CommandError::BadRequest(format!("{}: {e}", self.kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<ClientCommand, CommandError> {
        ClientMessage::parse(s)?.command()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            cmd(r#"{"type":"subscribe","data":{"types":["a.*","b"]}}"#).unwrap(),
            ClientCommand::Subscribe(vec![Pattern::parse("a.*").unwrap(), Pattern::parse("b").unwrap()])
        );
        assert_eq!(cmd(r#"{"type":"ping","id":7}"#).unwrap(), ClientCommand::Ping);
        assert_eq!(
            cmd(r#"{"type":"resume","data":{"epoch":"e","since":5}}"#).unwrap(),
            ClientCommand::Resume {
                epoch: "e".into(),
                since: 5
            }
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(cmd("nope").unwrap_err().code(), "bad_json");
        assert_eq!(cmd("[1]").unwrap_err().code(), "bad_json");
        assert_eq!(cmd(r#"{"type":5}"#).unwrap_err().code(), "bad_json");
        assert_eq!(cmd(r#"{"type":"dance"}"#).unwrap_err().code(), "unknown_type");
        assert_eq!(cmd(r#"{"type":"subscribe"}"#).unwrap_err().code(), "bad_request");
        assert_eq!(
            cmd(r#"{"type":"subscribe","data":{"types":"x"}}"#).unwrap_err().code(),
            "bad_request"
        );
        assert_eq!(
            cmd(r#"{"type":"subscribe","data":{"types":["A"]}}"#)
                .unwrap_err()
                .code(),
            "bad_request"
        );
        assert_eq!(
            cmd(r#"{"type":"resume","data":{"epoch":"e","since":-1}}"#)
                .unwrap_err()
                .code(),
            "bad_request"
        );
        assert_eq!(cmd(r#"{"type":"ping","id":{}}"#).unwrap_err().code(), "bad_request");
    }
}
