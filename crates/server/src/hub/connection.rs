//! One WebSocket connection: a reader task and a writer task around one socket.
//!
//! The reader parses what the peer sends and never writes; the writer is the only
//! code that writes, draining the session's outbox in batches (many frames, one
//! flush, usually one syscall). Neither task is on the publish path: publishers
//! only touch the outbox. This is the shape the original server got wrong — its
//! reader ran on the handler's task and tore the socket down under the writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use sigmavault_proto::CloseCode;

use super::echo::EchoInbound;
use super::inbound::{HubInbound, Inbound};
use super::keepalive;
use super::outbox::{Batch, CloseRequest, EventFrame, Mode, ReplayRound};
use super::resume::HistoryRead;
use super::session::{Session, SessionKind};
use super::subscriptions::Opening;
use super::wire::{self, ReaderIo};
use super::{Admission, Hub};
use crate::auth::{Auth, SocketAuth, SocketSlot};

/// History frames written per replay round; small enough that control replies
/// and the keep-alive interleave with a long replay.
const REPLAY_CHUNK: usize = 256;

/// Longest close reason RFC 6455 allows (125-byte control payload minus the code).
const MAX_CLOSE_REASON: usize = 123;

/// Who may use a new connection, decided at the upgrade.
pub(crate) struct Gate {
    /// Checks tokens (first-message `auth`, re-auth); `None` for the echo endpoint.
    pub(crate) auth: Option<Auth>,
    /// Credentials that came with the upgrade; `None`: wait for an `auth` message.
    pub(crate) initial: Option<SocketAuth>,
    /// Connection-cap slots taken at the upgrade.
    pub(crate) slots: Vec<SocketSlot>,
}

/// Runs a connection to completion; returns when the socket is closed.
pub(crate) async fn run<S>(
    hub: Hub,
    kind: SessionKind,
    opening: Opening,
    io: S,
    ws_config: WebSocketConfig,
    admission: Admission,
    gate: Gate,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let session = hub.new_session(kind);
    session.slots.lock().extend(gate.slots);
    // Until authenticated the session is not registered: nothing is delivered
    // to it, not even `welcome`.
    let pending = match (kind, gate.initial) {
        (SessionKind::Events, Some(initial)) => {
            session.set_auth(initial.clone());
            hub.register(&session, opening);
            if let Some(auth) = &gate.auth
                && !auth.still_valid(&initial)
            {
                session.with_outbox(|o| o.request_close(CloseCode::Unauthorized, "token revoked"));
            }
            None
        }
        (SessionKind::Events, None) => Some(opening),
        (SessionKind::Echo, _) => {
            hub.register(&session, opening);
            None
        }
    };
    let _registered = Registered {
        hub: hub.clone(),
        session: session.clone(),
        _admission: admission,
    };
    hub.counters().connections_total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client_id = %session.client_id, ?kind, "websocket connected");
    let (read, mut write) = tokio::io::split(io);
    let reader_io = ReaderIo {
        read,
        session: session.clone(),
    };
    let stream = WebSocketStream::from_raw_socket(reader_io, Role::Server, Some(ws_config)).await;
    let reader = match kind {
        SessionKind::Events => {
            let inbound = HubInbound::new(hub.clone(), session.clone(), gate.auth, pending);
            hub.inner
                .tracker
                .spawn(read_loop(hub.clone(), session.clone(), stream, inbound))
        }
        SessionKind::Echo => {
            let inbound = EchoInbound {
                session: session.clone(),
            };
            hub.inner
                .tracker
                .spawn(read_loop(hub.clone(), session.clone(), stream, inbound))
        }
    };
    let outcome = write_loop(&hub, &session, &mut write, reader).await;
    tracing::debug!(
        client_id = %session.client_id,
        outcome,
        last_seq = session.last_delivered_seq.load(Ordering::Relaxed),
        "websocket disconnected"
    );
}

/// Unregisters the session and frees its connection slot on every way out of
/// `run`, a panic included.
struct Registered {
    hub: Hub,
    session: Arc<Session>,
    _admission: Admission,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.unregister(&self.session);
    }
}

type Reader<S> = WebSocketStream<ReaderIo<S>>;

/// Reads until the peer closes, errs or goes silent, then hands the close to the writer.
async fn read_loop<S, I>(hub: Hub, session: Arc<Session>, mut stream: Reader<S>, mut inbound: I)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    I: Inbound,
{
    loop {
        let deadline = inbound.deadline();
        let next = tokio::select! {
            biased;
            _ = session.abort.reader_aborted() => return,
            _ = until(deadline) => {
                tracing::info!(client_id = %session.client_id, "no auth message in time; closing with 4401");
                session.with_outbox(|o| o.request_close(CloseCode::Unauthorized, "authentication timeout: send {\"type\":\"auth\"} first"));
                return;
            }
            next = stream.next() => next,
        };
        let result = match next {
            None => Err(None),
            Some(Ok(msg)) => {
                session.touch(hub.now_ms());
                match msg {
                    Message::Text(text) => inbound.on_text(text).map_err(Some),
                    Message::Binary(data) => inbound
                        .on_binary(data)
                        .map_err(|code| Some((code, "binary frames are not supported".to_owned()))),
                    Message::Close(_) => {
                        // Let tungstenite hand its close reply to the writer (via ReaderIo).
                        let _ = stream.flush().await;
                        Err(None)
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                }
            }
            Some(Err(e)) => Err(classify(&e)),
        };
        match result {
            Ok(()) => {}
            Err(Some((code, reason))) => {
                tracing::info!(client_id = %session.client_id, code = code.code(), reason, "closing connection");
                session.with_outbox(|o| o.request_close(code, reason));
                return;
            }
            Err(None) => {
                session.with_outbox(|o| o.peer_closed());
                return;
            }
        }
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Maps a read error to the close code the peer should get; `None` when the
/// peer is already gone and no close frame can be delivered.
fn classify(e: &WsError) -> Option<(CloseCode, String)> {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(p) => Some((CloseCode::ProtocolError, p.to_string())),
        WsError::Utf8(_) => Some((CloseCode::InvalidPayload, "invalid UTF-8 in a text message".to_owned())),
        WsError::Capacity(c) => Some((CloseCode::MessageTooBig, c.to_string())),
        other => Some((CloseCode::InternalError, other.to_string())),
    }
}

/// Waits for work in the outbox.
async fn next_batch(session: &Session) -> Batch {
    std::future::poll_fn(|cx| {
        let mut outbox = session.outbox.lock();
        if outbox.has_work() {
            std::task::Poll::Ready(outbox.take_batch())
        } else {
            outbox.waker = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
    .await
}

/// Drains the outbox to the socket until the connection ends. Returns a short
/// description of how it ended, for the log.
async fn write_loop<W>(
    hub: &Hub,
    session: &Arc<Session>,
    w: &mut W,
    reader: tokio::task::JoinHandle<()>,
) -> &'static str
where
    W: AsyncWrite + Unpin,
{
    let mut reader = Some(reader);
    let outcome = loop {
        let mut batch = tokio::select! {
            biased;
            _ = session.abort.writer_aborted() => break "aborted",
            batch = next_batch(session) => batch,
        };
        let close = batch.close.take();
        let replay = batch.replay.take();
        let written = tokio::select! {
            biased;
            _ = session.abort.writer_aborted() => break "aborted",
            r = write_batch(hub, session, w, batch) => r,
        };
        if written.is_err() {
            break "peer gone";
        }
        if let Some(round) = replay {
            let replayed = tokio::select! {
                biased;
                _ = session.abort.writer_aborted() => break "aborted",
                r = replay_step(hub, session, w, round) => r,
            };
            if replayed.is_err() {
                break "peer gone";
            }
        }
        if let Some(close) = close {
            break send_close(hub, session, w, &mut reader, close).await;
        }
    };
    session.write_started_ms.store(0, Ordering::Relaxed);
    if let Some(reader) = reader {
        reader.abort();
        let _ = reader.await;
    }
    outcome
}

/// Writes frames with vectored I/O, marking the write for the stall detector.
async fn write_frames<W>(hub: &Hub, session: &Session, w: &mut W, frames: &mut [Bytes]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    // The stall clock restarts whenever bytes move: a slow but reading client is
    // not a stalled one, however large the batch.
    let mark = || session.write_started_ms.store(hub.now_ms().max(1), Ordering::Relaxed);
    mark();
    let result = wire::write_all(w, frames, mark).await;
    session.write_started_ms.store(0, Ordering::Relaxed);
    result
}

/// Writes one batch: control replies, then state, then events, then a ping.
async fn write_batch<W>(hub: &Hub, session: &Session, w: &mut W, batch: Batch) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let delivered = (batch.state.len() + batch.events.len()) as u64;
    let last_seq = batch.events.back().map(|e| e.seq);
    let ping = batch.ping || keepalive::ping_with_heartbeat(hub, session, &batch.state);
    let mut frames: Vec<Bytes> = Vec::with_capacity(batch.control.len() + batch.state.len() + batch.events.len() + 1);
    frames.extend(batch.control);
    frames.extend(batch.state.into_iter().map(|s| s.bytes));
    frames.extend(batch.events.into_iter().map(|e| e.bytes));
    if ping {
        frames.push(wire::ping());
    }
    write_frames(hub, session, w, &mut frames).await?;
    if let Some(seq) = last_seq {
        session.last_delivered_seq.store(seq, Ordering::Relaxed);
    }
    if delivered > 0 {
        hub.counters().delivered.fetch_add(delivered, Ordering::Relaxed);
    }
    Ok(())
}

/// Streams one chunk of history after the cursor, or finishes the replay.
async fn replay_step<W>(hub: &Hub, session: &Session, w: &mut W, round: ReplayRound) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let cursor = round.cursor;
    let chunk = match hub.history_after(cursor, REPLAY_CHUNK).await {
        HistoryRead::Frames(chunk) => chunk,
        HistoryRead::Gone => {
            hub.replay_overrun(session, cursor);
            return Ok(());
        }
    };
    let Some(last) = chunk.last().map(|f| f.seq) else {
        hub.finish_replay(session, cursor);
        return Ok(());
    };
    let subs = session.subs.lock().clone();
    let wanted =
        |f: &EventFrame| subs.matches(&f.kind) && session.may_see(&f.kind) && !round.skip.delivered(f.seq, &f.kind);
    let mut frames: Vec<Bytes> = chunk.into_iter().filter(wanted).map(|f| f.bytes).collect();
    let sent = frames.len() as u64;
    // Advance the cursor before writing: a `resume` that arrives while this chunk
    // is on its way then counts it as sent. If one arrived before, drop the chunk.
    let current = session.with_outbox(|o| match &mut o.mode {
        Mode::Replaying {
            cursor: c, replayed, ..
        } if *c == cursor => {
            *c = last;
            *replayed += sent;
            true
        }
        _ => false,
    });
    if !current {
        return Ok(());
    }
    write_frames(hub, session, w, &mut frames).await?;
    if sent > 0 {
        session.last_delivered_seq.store(last, Ordering::Relaxed);
        hub.counters().delivered.fetch_add(sent, Ordering::Relaxed);
    }
    Ok(())
}

/// Sends our close frame (unless the peer closed first, in which case its reply
/// already went out with the last batch) and waits briefly for the peer's
/// reply, so the close handshake completes whenever the peer is alive.
async fn send_close<W>(
    hub: &Hub,
    session: &Session,
    w: &mut W,
    reader: &mut Option<tokio::task::JoinHandle<()>>,
    close: CloseRequest,
) -> &'static str
where
    W: AsyncWrite + Unpin,
{
    if close.by_peer {
        return "closed by peer";
    }
    let grace = hub.config().pong_timeout.min(Duration::from_secs(2));
    let mut reason = if close.code == CloseCode::SlowConsumer {
        format!(
            "slow_consumer: last_seq={}",
            session.last_delivered_seq.load(Ordering::Relaxed)
        )
    } else if close.reason.is_empty() {
        close.code.name().to_owned()
    } else {
        format!("{}: {}", close.code.name(), close.reason)
    };
    truncate_at_char(&mut reason, MAX_CLOSE_REASON);
    let mut frame = [wire::close(close.code.code(), &reason)];
    let sent = tokio::select! {
        biased;
        _ = session.abort.writer_aborted() => false,
        r = write_frames(hub, session, w, &mut frame) => r.is_ok(),
    };
    if sent && let Some(handle) = reader.as_mut() {
        // The reader ends when the peer's close reply arrives.
        if tokio::time::timeout(grace, handle).await.is_ok() {
            *reader = None;
        }
    }
    close.code.name()
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        let mut s = "é".repeat(100);
        truncate_at_char(&mut s, MAX_CLOSE_REASON);
        assert!(s.len() <= MAX_CLOSE_REASON);
        assert!(s.is_char_boundary(s.len()));
    }

    #[test]
    fn classifies_errors() {
        assert!(classify(&WsError::ConnectionClosed).is_none());
        assert_eq!(
            classify(&WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)).map(|c| c.0),
            Some(CloseCode::ProtocolError)
        );
        assert_eq!(
            classify(&WsError::Utf8("x".into())).map(|c| c.0),
            Some(CloseCode::InvalidPayload)
        );
    }
}
