//! The bench's subscribers: connect, subscribe to the bench type, then time and count
//! every delivery until told to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sigmavault_proto::client::MAX_TYPES_PER_REQUEST;
use sigmavault_proto::server::{ServerMessage, Welcome};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::publisher::EVENT_TYPE;
use super::rawws::{Incoming, RawWs};
use super::scan::{Phase, scan};
use super::stats::{AtomicHistogram, wall_ns};
use super::tracker::{Seen, SeqTracker};
use crate::client::{CloseInfo, ConnectOptions, Target, Ws};

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
        let mut ws = RawWs::connect(&target, &opts).await?;
        let welcome = join_raw(&mut ws, shared.heartbeat).await?;
        Ok::<_, anyhow::Error>((ws, welcome))
    };
    let setup = async {
        timeout(opts.timeout, setup)
            .await
            .map_err(|_| anyhow!("connecting to {} timed out after {:?}", target.url, opts.timeout))?
    };
    let (mut ws, welcome) = match setup.await {
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
        .store(welcome.limits.queue_events, Ordering::Relaxed);
    let mut tracker = SeqTracker::new(welcome.seq);
    receive(&shared, &mut ws, &mut tracker, &mut outcome).await;
    outcome.tracker = Some(tracker);
    outcome
}

/// The commands that make a client a bench subscriber: subscribe to the bench type
/// and drop the default subscriptions (all but `heartbeat` when `keep_heartbeat`), so
/// the only traffic is the bench's own (state topics to 19k clients would be noise
/// and load).
fn join_commands(welcome: &Welcome, keep_heartbeat: bool) -> Vec<String> {
    let mut commands = vec![command_text("subscribe", "bench-sub", json!({ "types": [EVENT_TYPE] }))];
    let defaults: Vec<&String> = welcome
        .subscriptions
        .iter()
        .filter(|s| *s != EVENT_TYPE && !(keep_heartbeat && *s == "heartbeat"))
        .take(MAX_TYPES_PER_REQUEST)
        .collect();
    if !defaults.is_empty() {
        commands.push(command_text("unsubscribe", "bench-unsub", json!({ "types": defaults })));
    }
    commands
}

fn command_text(kind: &str, id: &str, data: Value) -> String {
    json!({"type": kind, "id": id, "data": data}).to_string()
}

/// Whether a text frame answers one of the join commands: `Ok(true)` for a reply,
/// `Ok(false)` for anything else, an error for a refusal.
fn join_reply(text: &str) -> Result<bool> {
    let Ok(msg) = serde_json::from_str::<ServerMessage>(text) else {
        return Ok(false);
    };
    match (msg.kind.as_str(), msg.id.as_ref().and_then(Value::as_str)) {
        ("subscribed", Some("bench-sub")) | ("unsubscribed", Some("bench-unsub")) => Ok(true),
        ("error", Some(id)) if id.starts_with("bench-") => bail!("server refused {id}: {}", msg.data),
        _ => Ok(false),
    }
}

/// [`join_commands`] over a tungstenite socket (the `--slow` clients).
pub(crate) async fn join_bench(ws: &mut Ws, welcome: &Welcome, keep_heartbeat: bool) -> Result<()> {
    let commands = join_commands(welcome, keep_heartbeat);
    let mut pending = commands.len();
    for c in commands {
        ws.feed(Message::text(c)).await?;
    }
    ws.flush().await?;
    let replies = async {
        while pending > 0 {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if join_reply(&text)? {
                        pending -= 1;
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

/// The reading clients' setup over [`RawWs`]: the welcome, then [`join_commands`].
async fn join_raw(ws: &mut RawWs, keep_heartbeat: bool) -> Result<Welcome> {
    let welcome = match ws.next().await.context("reading welcome")? {
        Some(incoming @ Incoming::Text(_)) => {
            let text = incoming.text().ok_or_else(|| anyhow!("welcome is not UTF-8"))?;
            let msg: ServerMessage = serde_json::from_str(text).context("welcome is not a server message")?;
            if msg.kind != "welcome" {
                bail!("expected a welcome first, got {:?}", msg.kind);
            }
            serde_json::from_value::<Welcome>(msg.data).context("malformed welcome data")?
        }
        Some(Incoming::Close(info)) => bail!("server closed before welcome: {info}"),
        None => bail!("connection ended before welcome"),
    };
    let commands = join_commands(&welcome, keep_heartbeat);
    let mut pending = commands.len();
    for c in commands {
        ws.send_text(&c).await?;
    }
    let replies = async {
        while pending > 0 {
            match ws.next().await.context("during setup")? {
                Some(incoming @ Incoming::Text(_)) => {
                    if join_reply(incoming.text().unwrap_or_default())? {
                        pending -= 1;
                    }
                }
                Some(Incoming::Close(info)) => bail!("closed during setup: {info}"),
                None => bail!("connection ended during setup"),
            }
        }
        Ok(())
    };
    timeout(SETUP_TIMEOUT, replies)
        .await
        .map_err(|_| anyhow!("no subscribe reply within {SETUP_TIMEOUT:?}"))??;
    Ok(welcome)
}

async fn receive(shared: &Shared, ws: &mut RawWs, tracker: &mut SeqTracker, outcome: &mut ClientOutcome) {
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
            Ok(Some(incoming @ Incoming::Text(_))) => match incoming.text() {
                Some(text) => on_text(shared, text, tracker, outcome),
                None => outcome.other_frames += 1,
            },
            Ok(Some(Incoming::Close(info))) => {
                outcome.close = Some(info);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(None) => {
                outcome.error = Some("connection ended without a close frame".into());
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                outcome.error = Some(format!("{e:#}"));
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // Measuring is over: close politely and wait briefly for the server's reply.
    ws.close().await;
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
