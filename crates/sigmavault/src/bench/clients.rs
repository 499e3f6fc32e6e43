//! The bench's subscribers: connect, subscribe to the bench type, then time and count
//! every delivery until told to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sigmavault_proto::client::MAX_TYPES_PER_REQUEST;
use sigmavault_proto::server::{ServerMessage, Welcome};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_util::sync::CancellationToken;

use super::publisher::EVENT_TYPE;
use super::scan::{Phase, scan};
use super::stats::{AtomicHistogram, wall_ns};
use super::tracker::{Seen, SeqTracker};
use crate::client::{CloseInfo, ConnectOptions, Target, Ws, command, connect};

/// Bound on the subscribe/unsubscribe round trip after the welcome.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// State every client task writes into while it runs; the bench reads it for progress
/// and results without waiting for the tasks to finish.
pub(crate) struct Shared {
    /// Frames of other runs (a concurrent bench) are ignored.
    pub(crate) run: u64,
    pub(crate) burst: AtomicHistogram,
    pub(crate) steady: AtomicHistogram,
    pub(crate) probes: Vec<ProbeSlot>,
    /// Clients subscribed and reading.
    pub(crate) ready: AtomicUsize,
    /// Clients that never got there.
    pub(crate) failed: AtomicUsize,
    /// The server's per-client queue limit from a welcome (0 until one arrives).
    pub(crate) queue_events: AtomicUsize,
    /// Clients whose connection ended before `stop` (closed by the server, reset, …).
    pub(crate) dropped: AtomicUsize,
    /// Cancelled when measuring is over: each client then closes normally and returns its
    /// outcome. A token rather than aborting tasks, so the per-client trackers come back.
    pub(crate) stop: CancellationToken,
    /// Keep the `heartbeat` subscription (`--heartbeat`).
    pub(crate) heartbeat: bool,
}

impl Shared {
    /// State for one run with `probes` probe events.
    pub(crate) fn new(run: u64, probes: usize, heartbeat: bool) -> Self {
        Shared {
            run,
            burst: AtomicHistogram::default(),
            steady: AtomicHistogram::default(),
            probes: (0..probes).map(|_| ProbeSlot::default()).collect(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            queue_events: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            heartbeat,
        }
    }
}

/// Who received one probe event, and when the last of them did.
#[derive(Default)]
pub(crate) struct ProbeSlot {
    pub(crate) received: AtomicUsize,
    pub(crate) last_ns: AtomicU64,
}

/// What one client saw, returned when it stops.
#[derive(Debug, Default)]
pub(crate) struct ClientOutcome {
    /// TCP connect + handshake + welcome, when it connected.
    pub(crate) connect_ns: Option<u64>,
    /// Why it failed to connect or stopped early.
    pub(crate) error: Option<String>,
    /// The server's close, if it closed this client before the end.
    pub(crate) close: Option<CloseInfo>,
    pub(crate) tracker: Option<SeqTracker>,
    /// Frames that were not events of this run.
    pub(crate) other_frames: u64,
    /// Wall clock of the last burst delivery (0 if none).
    pub(crate) last_burst_ns: u64,
}

/// Connects (at most `gate` at a time), subscribes, then receives until `shared.stop`.
pub(crate) async fn run_client(
    shared: Arc<Shared>,
    target: Arc<Target>,
    opts: ConnectOptions,
    gate: Arc<Semaphore>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome::default();
    let permit = gate.acquire_owned().await;
    let started = Instant::now();
    let setup = async {
        let mut conn = connect(&target, &opts).await?;
        join_bench(&mut conn.ws, &conn.welcome, shared.heartbeat).await?;
        Ok::<_, anyhow::Error>(conn)
    };
    let conn = match setup.await {
        Ok(conn) => conn,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            outcome.error = Some(format!("{e:#}"));
            return outcome;
        }
    };
    drop(permit);
    outcome.connect_ns = Some(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    shared.ready.fetch_add(1, Ordering::Relaxed);
    shared
        .queue_events
        .store(conn.welcome.limits.queue_events, Ordering::Relaxed);
    let mut ws = conn.ws;
    let mut tracker = SeqTracker::new(conn.welcome.seq);
    receive(&shared, &mut ws, &mut tracker, &mut outcome).await;
    outcome.tracker = Some(tracker);
    outcome
}

/// Subscribes to the bench type and drops the default subscriptions (all but
/// `heartbeat` when `keep_heartbeat`), so the only traffic is the bench's own (state
/// topics to 19k clients would be noise and load).
pub(crate) async fn join_bench(ws: &mut Ws, welcome: &Welcome, keep_heartbeat: bool) -> Result<()> {
    ws.feed(command("subscribe", "bench-sub", json!({ "types": [EVENT_TYPE] })))
        .await?;
    let defaults: Vec<&String> = welcome
        .subscriptions
        .iter()
        .filter(|s| *s != EVENT_TYPE && !(keep_heartbeat && *s == "heartbeat"))
        .take(MAX_TYPES_PER_REQUEST)
        .collect();
    let mut pending = 1;
    if !defaults.is_empty() {
        ws.feed(command("unsubscribe", "bench-unsub", json!({ "types": defaults })))
            .await?;
        pending += 1;
    }
    ws.flush().await?;
    let replies = async {
        while pending > 0 {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                        continue;
                    };
                    match (msg.kind.as_str(), msg.id.as_ref().and_then(Value::as_str)) {
                        ("subscribed", Some("bench-sub")) | ("unsubscribed", Some("bench-unsub")) => pending -= 1,
                        ("error", Some(id)) if id.starts_with("bench-") => {
                            bail!("server refused {id}: {}", msg.data)
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    bail!("closed during setup: {}", CloseInfo::from_frame(frame.as_ref()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!(e).context("during setup")),
                None => bail!("connection ended during setup"),
            }
        }
        Ok(())
    };
    timeout(SETUP_TIMEOUT, replies)
        .await
        .map_err(|_| anyhow!("no subscribe reply within {SETUP_TIMEOUT:?}"))?
}

async fn receive(shared: &Shared, ws: &mut Ws, tracker: &mut SeqTracker, outcome: &mut ClientOutcome) {
    // Pinned once: re-creating the future per frame would re-register with the token.
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        let received = tokio::select! {
            biased;
            () = &mut stop => break,
            received = ws.next() => received,
        };
        match received {
            Some(Ok(Message::Text(text))) => on_text(shared, text.as_str(), tracker, outcome),
            Some(Ok(Message::Close(frame))) => {
                outcome.close = Some(CloseInfo::from_frame(frame.as_ref()));
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => {
                outcome.error = Some("connection ended without a close frame".into());
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Err(e)) => {
                outcome.error = Some(e.to_string());
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // Measuring is over: close politely and wait briefly for the server's reply.
    let _ = timeout(Duration::from_secs(3), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The per-delivery hot path: one clock read, a scan, a bit set, one histogram add.
fn on_text(shared: &Shared, text: &str, tracker: &mut SeqTracker, outcome: &mut ClientOutcome) {
    let now = wall_ns();
    let Some(frame) = scan(text).filter(|f| f.run == shared.run) else {
        outcome.other_frames += 1;
        return;
    };
    if tracker.record(frame.seq) == Seen::Duplicate {
        return;
    }
    let latency = now.saturating_sub(frame.sent_ns);
    match frame.phase {
        Phase::Burst => {
            shared.burst.record(latency);
            outcome.last_burst_ns = now;
        }
        Phase::Steady => shared.steady.record(latency),
        Phase::Probe => {
            let slot = usize::try_from(frame.index).ok().and_then(|i| shared.probes.get(i));
            if let Some(slot) = slot {
                slot.received.fetch_add(1, Ordering::Relaxed);
                slot.last_ns.fetch_max(now, Ordering::Relaxed);
            }
        }
    }
}
