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

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use sigmavault_proto::CloseCode;

use super::echo::EchoInbound;
use super::inbound::{HubInbound, Inbound};
use super::outbox::{Batch, CloseRequest, Mode, ReplayRound};
use super::session::{Session, SessionKind};
use super::subscriptions::Opening;
use super::{Admission, Hub};

/// History frames written per replay round; small enough that control replies
/// and the keep-alive interleave with a long replay.
const REPLAY_CHUNK: usize = 256;

/// Longest close reason RFC 6455 allows (125-byte control payload minus the code).
const MAX_CLOSE_REASON: usize = 123;

/// Runs a connection to completion; returns when the socket is closed.
pub(crate) async fn run<S>(hub: Hub, kind: SessionKind, opening: Opening, ws: WebSocketStream<S>, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = hub.register(kind, opening);
    hub.counters().connections_total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client_id = %session.client_id, ?kind, "websocket connected");
    let (sink, stream) = ws.split();
    let reader = match kind {
        SessionKind::Events => {
            let inbound = HubInbound::new(hub.clone(), session.clone());
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
    let outcome = write_loop(&hub, &session, sink, reader).await;
    hub.unregister(&session);
    drop(admission);
    tracing::debug!(
        client_id = %session.client_id,
        outcome,
        last_seq = session.last_delivered_seq.load(Ordering::Relaxed),
        "websocket disconnected"
    );
}

/// Reads until the peer closes, errs or goes silent, then hands the close to the writer.
async fn read_loop<S, I>(hub: Hub, session: Arc<Session>, mut stream: SplitStream<WebSocketStream<S>>, mut inbound: I)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Inbound,
{
    loop {
        let next = tokio::select! {
            biased;
            _ = session.abort.cancelled() => return,
            next = stream.next() => next,
        };
        let result = match next {
            None => Err(None),
            Some(Ok(msg)) => {
                session.touch(hub.now_ms());
                match msg {
                    Message::Text(text) => inbound.on_text(text).map_err(|code| Some((code, String::new()))),
                    Message::Binary(data) => inbound
                        .on_binary(data)
                        .map_err(|code| Some((code, "binary frames are not supported".to_owned()))),
                    Message::Close(_) => Err(None),
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

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Drains the outbox to the socket until the connection ends. Returns a short
/// description of how it ended, for the log.
async fn write_loop<S>(
    hub: &Hub,
    session: &Arc<Session>,
    mut sink: Sink<S>,
    reader: tokio::task::JoinHandle<()>,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = Some(reader);
    let outcome = loop {
        let mut batch = tokio::select! {
            biased;
            _ = session.abort.cancelled() => break "aborted",
            batch = next_batch(session) => batch,
        };
        let close = batch.close.clone();
        let replay = batch.replay.take();
        let written = tokio::select! {
            biased;
            _ = session.abort.cancelled() => break "aborted",
            r = write_batch(hub, session, &mut sink, batch) => r,
        };
        if written.is_err() {
            break "peer gone";
        }
        if let Some(round) = replay {
            let replayed = tokio::select! {
                biased;
                _ = session.abort.cancelled() => break "aborted",
                r = replay_step(hub, session, &mut sink, round) => r,
            };
            if replayed.is_err() {
                break "peer gone";
            }
        }
        if let Some(close) = close {
            break send_close(hub, session, &mut sink, &mut reader, close).await;
        }
    };
    session.write_started_ms.store(0, Ordering::Relaxed);
    if let Some(reader) = reader {
        reader.abort();
        let _ = reader.await;
    }
    outcome
}

/// Writes one batch and flushes once.
async fn write_batch<S>(hub: &Hub, session: &Session, sink: &mut Sink<S>, batch: Batch) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let frames = batch.control.len() + batch.state.len() + batch.events.len() + usize::from(batch.ping);
    if frames == 0 {
        return Ok(());
    }
    session.write_started_ms.store(hub.now_ms().max(1), Ordering::Relaxed);
    for msg in batch.control {
        sink.feed(msg).await?;
    }
    let delivered = (batch.state.len() + batch.events.len()) as u64;
    for state in batch.state {
        sink.feed(Message::Text(state.bytes)).await?;
    }
    let mut last_seq = None;
    for event in batch.events {
        last_seq = Some(event.seq);
        sink.feed(Message::Text(event.bytes)).await?;
    }
    if batch.ping {
        sink.feed(Message::Ping(Bytes::new())).await?;
    }
    sink.flush().await?;
    session.write_started_ms.store(0, Ordering::Relaxed);
    if let Some(seq) = last_seq {
        session.last_delivered_seq.store(seq, Ordering::Relaxed);
    }
    hub.counters().delivered.fetch_add(delivered, Ordering::Relaxed);
    Ok(())
}

/// Streams one chunk of history after `cursor`, or finishes the replay.
async fn replay_step<S>(hub: &Hub, session: &Session, sink: &mut Sink<S>, round: ReplayRound) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cursor = round.cursor;
    let Some(chunk) = hub.history_after(cursor, REPLAY_CHUNK) else {
        hub.replay_overrun(session, cursor);
        return Ok(());
    };
    let Some(last) = chunk.last().map(|f| f.seq) else {
        hub.finish_replay(session, cursor);
        return Ok(());
    };
    let subs = session.subs.lock().clone();
    session.write_started_ms.store(hub.now_ms().max(1), Ordering::Relaxed);
    let mut sent = 0u64;
    let wanted = |f: &super::outbox::EventFrame| subs.matches(&f.kind) && !round.skip.delivered(f.seq, &f.kind);
    for frame in chunk.into_iter().filter(wanted) {
        sink.feed(Message::Text(frame.bytes)).await?;
        sent += 1;
    }
    sink.flush().await?;
    session.write_started_ms.store(0, Ordering::Relaxed);
    if sent > 0 {
        session.last_delivered_seq.store(last, Ordering::Relaxed);
        hub.counters().delivered.fetch_add(sent, Ordering::Relaxed);
    }
    session.with_outbox(|o| {
        if let Mode::Replaying {
            cursor: c, replayed, ..
        } = &mut o.mode
            && *c == cursor
        {
            *c = last;
            *replayed += sent;
        }
    });
    Ok(())
}

/// Sends our close frame (unless the peer closed first) and waits briefly for the
/// peer's reply, so the close handshake completes whenever the peer is alive.
async fn send_close<S>(
    hub: &Hub,
    session: &Session,
    sink: &mut Sink<S>,
    reader: &mut Option<tokio::task::JoinHandle<()>>,
    close: CloseRequest,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let grace = hub.config().pong_timeout.min(Duration::from_secs(2));
    if close.by_peer {
        // tungstenite queued its reply to the peer's close; push it out.
        let _ = tokio::time::timeout(grace, sink.flush()).await;
        return "closed by peer";
    }
    let mut reason = if close.code == CloseCode::SlowConsumer {
        format!(
            "slow_consumer last_seq={}",
            session.last_delivered_seq.load(Ordering::Relaxed)
        )
    } else if close.reason.is_empty() {
        close.code.name().to_owned()
    } else {
        format!("{}: {}", close.code.name(), close.reason)
    };
    truncate_at_char(&mut reason, MAX_CLOSE_REASON);
    let frame = CloseFrame {
        code: close.code.code().into(),
        reason: reason.into(),
    };
    session.write_started_ms.store(hub.now_ms().max(1), Ordering::Relaxed);
    let sent = tokio::select! {
        biased;
        _ = session.abort.cancelled() => false,
        r = sink.send(Message::Close(Some(frame))) => r.is_ok(),
    };
    session.write_started_ms.store(0, Ordering::Relaxed);
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
