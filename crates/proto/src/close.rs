//! WebSocket close codes the server sends, and what a client should do about each.
//!
//! Modelled on centrifuge's disconnect table: every code says whether reconnecting
//! makes sense, so clients do not have to guess.

/// A close code with its meaning. `code()` is what goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the client asked to close, or the server finished a test endpoint.
    Normal,
    /// 1001: the server is shutting down. Reconnect with backoff and resume.
    GoingAway,
    /// 1002: a WebSocket protocol violation (bad opcode, unmasked frame, bad close code,
    /// fragmented control frame, …). Fix the client; do not reconnect in a loop.
    ProtocolError,
    /// 1003: a binary frame; the protocol is JSON text only.
    UnsupportedData,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidPayload,
    /// 1009: a message larger than the advertised `max_message_bytes`.
    MessageTooBig,
    /// 1011: an unexpected server error. Reconnect with backoff.
    InternalError,
    /// 4000: the peer sent nothing (no pong, no frame) for ping interval + pong timeout.
    KeepaliveTimeout,
    /// 4008: the client read too slowly; its event queue overflowed. The close reason
    /// carries the last seq delivered. Reconnect and resume from it.
    SlowConsumer,
    /// 4401: authentication missing, invalid, expired or revoked. Refresh, then reconnect.
    Unauthorized,
    /// 4403: authenticated but not allowed.
    Forbidden,
    /// 4429: the client kept sending after being told it exceeded its rate limit.
    RateLimited,
}

impl CloseCode {
    /// Every code, for documentation and tests.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::KeepaliveTimeout,
        CloseCode::SlowConsumer,
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
        CloseCode::RateLimited,
    ];

    /// The numeric code sent in the close frame.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::KeepaliveTimeout => 4000,
            CloseCode::SlowConsumer => 4008,
            CloseCode::Unauthorized => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::RateLimited => 4429,
        }
    }

    /// Short snake_case name, used as (the start of) the close reason.
    pub const fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::KeepaliveTimeout => "keepalive_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::RateLimited => "rate_limited",
        }
    }

    /// Whether a well-behaved client should reconnect (with jittered backoff).
    pub const fn reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::GoingAway
                | CloseCode::InternalError
                | CloseCode::KeepaliveTimeout
                | CloseCode::SlowConsumer
                | CloseCode::Unauthorized
                | CloseCode::RateLimited
        )
    }

    /// Looks a numeric code up.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
    }
}
