//! What a connection does with the messages its peer sends.
//!
//! The reader task (`connection.rs`) is the same for every endpoint; the
//! endpoint decides what a message means through [`Inbound`].

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use sigmavault_proto::{ClientCommand, ClientMessage, CloseCode};

use super::ratelimit::{RateLimit, Verdict};
use super::resume::ResumeOutcome;
use super::session::Session;
use super::{Hub, control, error_frame};

/// Interprets inbound data messages. Returning `Err` closes the connection with that code.
pub(crate) trait Inbound: Send + 'static {
    /// A complete text message (already UTF-8 validated).
    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), CloseCode>;
    /// A complete binary message.
    fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode>;
}

/// The `/ws` protocol: subscribe, unsubscribe, resume, ping.
pub(crate) struct HubInbound {
    hub: Hub,
    session: Arc<Session>,
    rate: RateLimit,
}

impl HubInbound {
    pub(crate) fn new(hub: Hub, session: Arc<Session>) -> Self {
        let cfg = hub.config();
        let rate = RateLimit::new(cfg.rate_limit, cfg.rate_burst);
        HubInbound { hub, session, rate }
    }

    fn reply_error(&self, id: Option<&serde_json::Value>, code: &str, message: &str) {
        tracing::debug!(client_id = %self.session.client_id, code, message, "refused client message");
        self.session
            .with_outbox(|o| o.push_control(error_frame(id, code, message)));
    }
}

impl Inbound for HubInbound {
    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), CloseCode> {
        match self.rate.check(tokio::time::Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse { notify } => {
                if notify {
                    self.hub
                        .counters()
                        .rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Every refused message is answered (with its id when it has one), so a
                // client slightly over the rate never loses a command silently.
                let id = ClientMessage::parse(&text).ok().and_then(|m| m.id);
                self.reply_error(
                    id.as_ref(),
                    "rate_limited",
                    "too many messages; this one was not processed. Slow down or the connection \
                     will be closed with 4429",
                );
                return Ok(());
            }
            Verdict::Close => {
                tracing::warn!(client_id = %self.session.client_id, "inbound rate limit exceeded; closing with 4429");
                return Err(CloseCode::RateLimited);
            }
        }
        let msg = match ClientMessage::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                self.reply_error(None, e.code(), e.message());
                return Ok(());
            }
        };
        let id = msg.id.as_ref();
        let command = match msg.command() {
            Ok(c) => c,
            Err(e) => {
                self.reply_error(id, e.code(), e.message());
                return Ok(());
            }
        };
        match command {
            ClientCommand::Subscribe(patterns) => self.hub.subscribe(&self.session, patterns, id),
            ClientCommand::Unsubscribe(patterns) => self.hub.unsubscribe(&self.session, &patterns, id),
            ClientCommand::Ping => {
                let pong = control("pong", id, &serde_json::json!({}));
                self.session.with_outbox(|o| o.push_control(pong));
            }
            ClientCommand::Resume { epoch, since } => match self.hub.resume(&self.session, &epoch, since, id) {
                ResumeOutcome::Replaying | ResumeOutcome::Reset | ResumeOutcome::Untracked => {}
                ResumeOutcome::SinceAhead { head } => self.reply_error(
                    id,
                    "since_ahead",
                    &format!("since {since} is ahead of the latest seq {head}"),
                ),
            },
        }
        Ok(())
    }

    fn on_binary(&mut self, _data: Bytes) -> Result<(), CloseCode> {
        Err(CloseCode::UnsupportedData)
    }
}
