//! `--slow K`: clients that subscribe and then never read their socket, to check the hub
//! closes a consumer that falls behind (4008) instead of buffering for it without bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};

use super::clients::join_bench;
use super::scan::scan;
use crate::client::{CloseInfo, ConnectOptions, Target, Ws, connect};

/// The close code the server must use for a consumer whose queue overflowed.
const SLOW_CONSUMER: u16 = 4008;

/// A tiny kernel receive buffer, so the backlog builds in the server's queue rather than
/// in megabytes of autotuned socket buffers.
pub(crate) const SLOW_RECV_BUFFER: u32 = 4096;

/// The slow clients, connected and subscribed.
#[derive(Default)]
pub(crate) struct SlowClients {
    /// Each socket with the welcome's seq (nothing at or below it can be delivered).
    sockets: Vec<(Ws, u64)>,
    errors: Vec<String>,
    /// The server's per-client queue limit, from the welcome (for the verdict's hint).
    queue_events: Option<usize>,
}

/// Connects `opts.len()` slow clients.
pub(crate) async fn connect_slow(target: Arc<Target>, opts: Vec<ConnectOptions>) -> SlowClients {
    let attempts = opts.into_iter().map(|opts| {
        let target = target.clone();
        async move {
            let mut conn = connect(&target, &opts).await?;
            join_bench(&mut conn.ws, &conn.welcome, false).await?;
            let base = conn.welcome.seq;
            Ok::<_, anyhow::Error>((conn.ws, base, conn.welcome.limits.queue_events))
        }
    });
    let mut slow = SlowClients::default();
    for result in join_all(attempts).await {
        match result {
            Ok((ws, base, queue)) => {
                slow.sockets.push((ws, base));
                slow.queue_events = Some(queue);
            }
            Err(e) => slow.errors.push(format!("{e:#}")),
        }
    }
    slow
}

/// Starts reading the slow clients, for at most `limit`.
///
/// Called as soon as the burst is published rather than at the very end: a client that
/// never reads has a full socket, so the server can only write its 4008 close frame once
/// the client finally drains, and the server gives up on a stalled socket after its write
/// timeout (10 s by default). Draining later would only ever see the connection vanish.
pub(crate) fn spawn_drain(slow: SlowClients, run: u64, limit: Duration) -> JoinHandle<DrainedClients> {
    tokio::spawn(async move {
        let deadline = Instant::now() + limit;
        let drained = join_all(
            slow.sockets
                .into_iter()
                .map(|(ws, base)| drain(ws, base, run, deadline)),
        )
        .await;
        DrainedClients {
            drained,
            errors: slow.errors,
            queue_events: slow.queue_events,
            limit,
        }
    })
}

/// What [`spawn_drain`] found.
pub(crate) struct DrainedClients {
    drained: Vec<Drained>,
    errors: Vec<String>,
    queue_events: Option<usize>,
    limit: Duration,
}

/// How one slow client's connection ended.
#[derive(Debug)]
struct Drained {
    end: End,
    base: u64,
    frames: u64,
    last_seq: Option<u64>,
}

#[derive(Debug)]
enum End {
    Closed(CloseInfo),
    NoCloseFrame,
    Error(String),
    StillOpen,
}

/// Reads whatever the kernel buffered, up to the close (or `deadline`).
async fn drain(mut ws: Ws, base: u64, run: u64, deadline: Instant) -> Drained {
    let mut frames = 0;
    let mut last_seq = None;
    let end = loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => break End::StillOpen,
            Ok(None) => break End::NoCloseFrame,
            Ok(Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)))) => {
                break End::NoCloseFrame;
            }
            Ok(Some(Err(e))) => break End::Error(e.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                break End::Closed(CloseInfo::from_frame(frame.as_ref()));
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                frames += 1;
                if let Some(f) = scan(text.as_str()).filter(|f| f.run == run) {
                    last_seq = Some(f.seq);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    Drained {
        end,
        base,
        frames,
        last_seq,
    }
}

/// The verdict on the slow clients.
#[derive(Debug, Serialize)]
pub(crate) struct SlowReport {
    pub(crate) requested: usize,
    pub(crate) connected: usize,
    /// Closed with 4008 as they should be.
    pub(crate) closed_slow_consumer: usize,
    /// How each connection ended, e.g. `"4008 slow_consumer": 5`, `"still open": 1`.
    pub(crate) outcomes: BTreeMap<String, usize>,
    /// 4008 closes whose `last_seq=` equals the last event read before the close frame.
    pub(crate) reason_seq_matches: usize,
    /// 4008 closes whose `last_seq=` differs from (or lacks) the last event read.
    pub(crate) reason_seq_mismatches: usize,
    /// Bench events read back from the kernel buffers at the end, over all slow clients.
    pub(crate) frames_drained: u64,
    /// One 4008 close reason as received, e.g. `slow_consumer last_seq=123`.
    pub(crate) example_reason: Option<String>,
    /// The first surprising detail, for the human report.
    pub(crate) first_problem: Option<String>,
}

impl SlowReport {
    /// Every requested slow client connected and was closed with 4008.
    pub(crate) fn ok(&self) -> bool {
        self.connected == self.requested && self.closed_slow_consumer == self.requested
    }
}

/// Judges how the slow clients ended.
pub(crate) fn verify(result: DrainedClients, requested: usize) -> SlowReport {
    let DrainedClients {
        drained,
        errors,
        queue_events,
        limit,
    } = result;
    let mut report = SlowReport {
        requested,
        connected: drained.len(),
        closed_slow_consumer: 0,
        outcomes: BTreeMap::new(),
        reason_seq_matches: 0,
        reason_seq_mismatches: 0,
        frames_drained: 0,
        example_reason: None,
        first_problem: errors.first().map(|e| format!("connect failed: {e}")),
    };
    for d in drained {
        report.frames_drained += d.frames;
        let key = match &d.end {
            End::Closed(info) => match info.code {
                Some(code) => format!("{code} {}", code_name(code)),
                None => "no close frame".into(),
            },
            End::NoCloseFrame => "no close frame".into(),
            End::Error(_) => "read error".into(),
            End::StillOpen => "still open".into(),
        };
        *report.outcomes.entry(key).or_default() += 1;
        match &d.end {
            End::Closed(info) if info.code == Some(SLOW_CONSUMER) => {
                report.closed_slow_consumer += 1;
                report.example_reason.get_or_insert_with(|| info.reason.clone());
                // Nothing read means nothing delivered: any claim at/below the start agrees.
                let agrees = info.last_seq().is_some_and(|claimed| match d.last_seq {
                    Some(read) => claimed == read,
                    None => claimed <= d.base,
                });
                if agrees {
                    report.reason_seq_matches += 1;
                } else {
                    report.reason_seq_mismatches += 1;
                    report.first_problem.get_or_insert_with(|| {
                        format!(
                            "close reason {:?} but the last event read before it had seq {:?}",
                            info.reason, d.last_seq
                        )
                    });
                }
            }
            End::Closed(info) => {
                report
                    .first_problem
                    .get_or_insert_with(|| format!("expected 4008, got {info}"));
            }
            End::Error(e) => {
                report
                    .first_problem
                    .get_or_insert_with(|| format!("read error instead of a 4008 close: {e}"));
            }
            End::NoCloseFrame => {
                report.first_problem.get_or_insert_with(|| {
                    format!(
                        "connection ended without a close frame after {} events (last seq {:?}); \
                         the server probably gave up writing its close to the full socket",
                        d.frames, d.last_seq
                    )
                });
            }
            End::StillOpen => {
                report.first_problem.get_or_insert_with(|| {
                    let queue = queue_events.map_or_else(|| "?".to_owned(), |q| q.to_string());
                    format!(
                        "still open after {limit:?} with {} events read: the backlog fit in the \
                         socket buffers plus the server queue ({queue} events); publish more \
                         (--burst, --rounds, --size)",
                        d.frames
                    )
                });
            }
        }
    }
    report
}

fn code_name(code: u16) -> &'static str {
    sigmavault_proto::CloseCode::from_code(code).map_or("unknown", sigmavault_proto::CloseCode::name)
}
