//! What a connection does with the messages its peer sends.
//!
//! The reader task (`connection.rs`) is the same for every endpoint; the
//! endpoint decides what a message means through [`Inbound`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use sigmavault_proto::{ClientCommand, ClientMessage, CloseCode};

use super::ratelimit::{RateLimit, Verdict};
use super::resume::ResumeOutcome;
use super::session::Session;
use super::subscriptions::Opening;
use super::{Hub, control, error_frame};
use crate::auth::{Auth, AuthError, SocketAuth};

/// Interprets inbound data messages. Returning `Err` closes the connection with that code.
pub(crate) trait Inbound: Send + 'static {
    /// A complete text message (already UTF-8 validated).
    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), (CloseCode, String)>;
    /// When the connection must have done something by (first-message auth).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
    /// A complete binary message.
    fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode>;
}

/// The `/ws` protocol: auth, subscribe, unsubscribe, resume, ping.
pub(crate) struct HubInbound {
    hub: Hub,
    session: Arc<Session>,
    rate: RateLimit,
    auth: Option<Auth>,
    /// Set while waiting for the first `auth` message: the upgrade's opening
    /// (subscriptions, resume point) and the deadline.
    pending: Option<(Opening, tokio::time::Instant)>,
}

impl HubInbound {
    pub(crate) fn new(hub: Hub, session: Arc<Session>, auth: Option<Auth>, pending: Option<Opening>) -> Self {
        let cfg = hub.config();
        let rate = RateLimit::new(cfg.rate_limit, cfg.rate_burst);
        let deadline = tokio::time::Instant::now() + cfg.auth_timeout;
        HubInbound {
            hub,
            session,
            rate,
            auth,
            pending: pending.map(|o| (o, deadline)),
        }
    }

    /// The first `auth` of a connection that came without credentials.
    fn first_auth(&mut self, token: &str) -> Result<(), (CloseCode, String)> {
        let unauthorized = |e: AuthError| (CloseCode::Unauthorized, e.code().to_owned());
        let auth = self
            .auth
            .as_ref()
            .ok_or((CloseCode::Unauthorized, "unauthorized".to_owned()))?;
        let principal = auth.authenticate(token).map_err(unauthorized)?;
        let slot = auth.sockets().take_user(principal.user_id).ok_or_else(|| {
            (
                CloseCode::RateLimited,
                format!(
                    "too many connections for this user (at most {})",
                    auth.sockets().max_per_user()
                ),
            )
        })?;
        self.session.slots.lock().push(slot);
        let socket_auth = SocketAuth::from_principal(&principal);
        self.session.set_auth(socket_auth.clone());
        if let Some((opening, _)) = self.pending.take() {
            tracing::debug!(client_id = %self.session.client_id, user_id = principal.user_id, "socket authenticated by message");
            self.hub.register(&self.session, opening);
        }
        // A revocation between the check above and the registration would have missed us.
        if !auth.still_valid(&socket_auth) {
            return Err((CloseCode::Unauthorized, "token_revoked".to_owned()));
        }
        Ok(())
    }

    /// `auth` on an authenticated socket: a fresh token of the same user extends it.
    fn reauth(&self, token: &str, id: Option<&serde_json::Value>) {
        let Some(auth) = &self.auth else { return };
        let principal = match auth.authenticate(token) {
            Ok(p) => p,
            Err(e) => {
                self.reply_error(
                    id,
                    e.code(),
                    &format!("{e}; the connection keeps its current authentication"),
                );
                return;
            }
        };
        let mut current = self.session.auth.lock();
        let Some(a) = current.as_mut() else { return };
        if a.user_id != principal.user_id || a.role != principal.role {
            drop(current);
            self.reply_error(
                id,
                "forbidden",
                "the token belongs to another user or role; open a new connection for it",
            );
            return;
        }
        let renewed = SocketAuth::from_principal(&principal);
        *a = renewed.clone();
        self.session
            .expires_at_ms
            .store(renewed.expires_at_ms.unwrap_or(i64::MAX), Ordering::Relaxed);
        drop(current);
        // As for a first `auth`: a revocation racing this renewal must not be missed.
        if !auth.still_valid(&renewed) {
            self.session
                .with_outbox(|o| o.request_close(CloseCode::Unauthorized, "token revoked"));
            return;
        }
        let reply = serde_json::json!({
            "user": &*principal.username,
            "role": principal.role,
            "expires_at": principal.expires_at.map(|s| chrono::DateTime::from_timestamp(s, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))),
        });
        self.session
            .with_outbox(|o| o.push_control(control("authenticated", id, &reply)));
    }

    fn reply_error(&self, id: Option<&serde_json::Value>, code: &str, message: &str) {
        tracing::debug!(client_id = %self.session.client_id, code, message, "refused client message");
        self.session
            .with_outbox(|o| o.push_control(error_frame(id, code, message)));
    }
}

impl Inbound for HubInbound {
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.pending.as_ref().map(|(_, d)| *d)
    }

    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), (CloseCode, String)> {
        match self.rate.check(tokio::time::Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse { notify } => {
                if notify {
                    self.hub
                        .counters()
                        .rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if self.pending.is_some() {
                    return Ok(());
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
                return Err((CloseCode::RateLimited, "inbound message rate exceeded".to_owned()));
            }
        }
        if self.pending.is_some() {
            // Before authentication only `auth` is answered.
            return match ClientMessage::parse(&text).ok().and_then(|m| m.command().ok()) {
                Some(ClientCommand::Auth { token }) => self.first_auth(&token.0),
                _ => Ok(()),
            };
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
            ClientCommand::Auth { token } => self.reauth(&token.0, id),
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
