//! `/ws/echo`: sends every data message back unchanged.
//!
//! It exists so the Autobahn conformance cases can exercise the very connection
//! code `/ws` runs on (framing, ping/pong, close handling, limits); it is mounted
//! only with `--ws-echo true`.

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use sigmavault_proto::CloseCode;

use super::inbound::Inbound;
use super::session::Session;
use super::wire::{self, OpCode};

/// Echoes data messages through the session's outbox (and so through the writer task).
pub(crate) struct EchoInbound {
    pub(crate) session: Arc<Session>,
}

impl Inbound for EchoInbound {
    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), (CloseCode, String)> {
        self.session.with_outbox(|o| o.push_control(wire::text(&text)));
        Ok(())
    }

    fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode> {
        self.session
            .with_outbox(|o| o.push_control(wire::frame(OpCode::Binary, &data)));
        Ok(())
    }
}
