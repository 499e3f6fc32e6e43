//! The writer thread: group commit and event sequencing.
//!
//! It takes every job queued at the moment (up to a bound), runs each in its
//! own savepoint inside one `BEGIN IMMEDIATE` transaction, commits once (one
//! fsync for the group), and only then replies and delivers the group's events
//! to the hub, in order. A job that fails rolls back its savepoint alone; a
//! commit that fails fails the whole group and rewinds the seq counter, so a
//! failed write never consumes a seq and never delivers an event that is not
//! on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use sigmavault_proto::{DeliveryClass, topic_info};

use super::{Store, StoreError, events, notifications};
use crate::hub::{Hub, NewEvent, Sequenced};

/// Jobs in one group at most; keeps one transaction (and the hub lock after it) short.
const GROUP_MAX_JOBS: usize = 512;
/// Events in one group at most (checked between jobs).
const GROUP_MAX_EVENTS: usize = 20_000;

pub(super) enum Msg {
    Attach(Hub),
    Work(Job),
    Close(oneshot::Sender<()>),
}

type Reply<T> = oneshot::Sender<Result<(T, Vec<Option<u64>>), StoreError>>;

/// One unit of work: SQL run in a savepoint, plus the messages it publishes.
pub(super) struct Job {
    work: Box<dyn Work>,
    /// A request write's place in the bounded queue, released when the job is done.
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

trait Work: Send {
    /// Runs the job's SQL; may publish through `tx`.
    fn run(&mut self, tx: &mut WriteTx<'_>) -> Result<(), StoreError>;
    /// Reports the outcome after the commit (or the failure).
    fn done(self: Box<Self>, result: Result<Vec<Option<u64>>, StoreError>);
    /// Events to deliver even though they could not be persisted.
    fn fallback(&mut self) -> Option<Vec<NewEvent>> {
        None
    }
}

struct Typed<F, T> {
    f: Option<F>,
    out: Option<T>,
    reply: Reply<T>,
}

impl<F, T> Work for Typed<F, T>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
        let f = self.f.take().ok_or(StoreError::Closed)?;
        self.out = Some(f(tx)?);
        Ok(())
    }

    fn done(self: Box<Self>, result: Result<Vec<Option<u64>>, StoreError>) {
        let this = *self;
        let result = result.and_then(|seqs| this.out.map(|o| (o, seqs)).ok_or(StoreError::Closed));
        let _ = this.reply.send(result);
    }
}

/// Server-internal events: nobody waits; if they cannot be persisted they are
/// delivered live anyway, marked non-durable.
struct Internal {
    events: Option<Vec<NewEvent>>,
}

impl Work for Internal {
    fn run(&mut self, tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
        for e in self.events.clone().unwrap_or_default() {
            tx.publish(e.kind, e.data)?;
        }
        Ok(())
    }

    fn done(self: Box<Self>, result: Result<Vec<Option<u64>>, StoreError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "internal events could not be persisted; delivered live only");
        }
    }

    fn fallback(&mut self) -> Option<Vec<NewEvent>> {
        self.events.take()
    }
}

impl Job {
    pub(super) fn typed<T, F>(f: F, reply: Reply<T>, room: Option<tokio::sync::OwnedSemaphorePermit>) -> Job
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        Job {
            work: Box::new(Typed {
                f: Some(f),
                out: None,
                reply,
            }),
            _room: room,
        }
    }

    pub(super) fn internal(events: Vec<NewEvent>) -> Job {
        Job {
            work: Box::new(Internal { events: Some(events) }),
            _room: None,
        }
    }

    pub(super) fn into_events(mut self) -> Vec<NewEvent> {
        self.work.fallback().unwrap_or_default()
    }
}

/// The transaction a job runs in, and what it publishes.
pub struct WriteTx<'a> {
    conn: &'a Connection,
    events: Vec<NewEvent>,
    live: Vec<NewEvent>,
}

impl WriteTx<'_> {
    /// The connection, inside the job's savepoint.
    pub fn conn(&self) -> &Connection {
        self.conn
    }

    /// Publishes a message once this transaction commits. A `notification` is
    /// stored as a notification record first and published as that record.
    pub fn publish(&mut self, kind: impl Into<String>, data: Value) -> Result<(), StoreError> {
        let kind = kind.into();
        let data = if kind == "notification" {
            notifications::insert_from_event(self.conn, &data)?
        } else {
            data
        };
        self.events.push(NewEvent { kind, data });
        Ok(())
    }

    /// Delivers a message live once this transaction commits, outside the
    /// resumable sequence (no seq, not in the event history): for streams with
    /// their own durable record and cursor, such as the audit log.
    pub fn publish_live(&mut self, kind: impl Into<String>, data: Value) {
        self.live.push(NewEvent {
            kind: kind.into(),
            data,
        });
    }
}

/// Writer counters (read by the stats endpoint and the store benchmark).
#[derive(Default)]
pub(super) struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    events: AtomicU64,
    failed_commits: AtomicU64,
    commit_us_total: AtomicU64,
    last_commit_us: AtomicU64,
}

/// A snapshot of the writer counters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStats {
    /// Transactions committed.
    pub groups: u64,
    /// Jobs run.
    pub jobs: u64,
    /// Events appended to the durable log.
    pub events_appended: u64,
    /// Commits that failed.
    pub failed_commits: u64,
    /// Mean commit time (including fsync), microseconds.
    pub mean_commit_us: u64,
    /// Last commit time, microseconds.
    pub last_commit_us: u64,
    /// Oldest seq in the durable log.
    pub oldest_seq: u64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> StoreStats {
        let groups = self.groups.load(Ordering::Relaxed);
        StoreStats {
            groups,
            jobs: self.jobs.load(Ordering::Relaxed),
            events_appended: self.events.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            mean_commit_us: self.commit_us_total.load(Ordering::Relaxed) / groups.max(1),
            last_commit_us: self.last_commit_us.load(Ordering::Relaxed),
            oldest_seq: 0,
        }
    }
}

impl Store {
    /// Statistics including the retained range.
    pub fn store_stats(&self) -> StoreStats {
        let mut s = self.inner.counters.snapshot();
        s.oldest_seq = self.oldest_seq();
        s
    }
}

pub(super) fn spawn(
    store: Store,
    conn: Connection,
    rx: mpsc::UnboundedReceiver<Msg>,
    next_seq: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sigmavault-store".into())
        .spawn(move || {
            Writer {
                store,
                conn,
                hub: None,
                next_seq,
            }
            .run(rx)
        })
}

struct Writer {
    store: Store,
    conn: Connection,
    hub: Option<Hub>,
    next_seq: u64,
}

/// A job after its savepoint: what to deliver once the group commits.
struct Staged {
    work: Box<dyn Work>,
    result: Result<(Delivery, Vec<NewEvent>), StoreError>,
}

enum Delivery {
    /// Durable history: sequenced frames and the seqs to report.
    Sequenced(Sequenced),
    /// Memory history: the hub sequences at delivery.
    Unsequenced(Vec<NewEvent>),
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            let mut group = Vec::new();
            let mut handle = |msg: Msg, group: &mut Vec<Job>, closing: &mut Option<oneshot::Sender<()>>| match msg {
                Msg::Attach(hub) => self.hub = Some(hub),
                Msg::Work(job) => group.push(job),
                Msg::Close(ack) => *closing = Some(ack),
            };
            handle(first, &mut group, &mut closing);
            while closing.is_none() && group.len() < GROUP_MAX_JOBS {
                match rx.try_recv() {
                    Ok(msg) => handle(msg, &mut group, &mut closing),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
        }
        // Refuse whatever raced with the close.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Work(job) = msg {
                job.work.done(Err(StoreError::Closed));
            }
        }
        // A clean stop leaves a self-contained database file: everything in the WAL
        // is copied back, so the next start (or a file copy) has nothing to replay.
        let _ = self.conn.execute_batch("PRAGMA optimize;");
        if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint at close failed; the WAL is replayed at the next start");
        }
        drop(self.hub.take());
        if let Some(ack) = closing {
            let _ = ack.send(());
        }
    }

    fn commit_group(&mut self, group: Vec<Job>) {
        let started = Instant::now();
        let durable = self.store.durable();
        let retention = CountRetention {
            max_events: self.store.inner.cfg.history_max_events,
            oldest: self.store.oldest_seq(),
        };
        let outcome = stage_and_commit(
            &mut self.conn,
            self.hub.as_ref(),
            &mut self.next_seq,
            durable,
            retention,
            group,
        );
        let c = &self.store.inner.counters;
        if outcome.committed {
            let us = started.elapsed().as_micros() as u64;
            c.groups.fetch_add(1, Ordering::Relaxed);
            c.jobs.fetch_add(outcome.staged.len() as u64, Ordering::Relaxed);
            c.events.fetch_add(outcome.appended, Ordering::Relaxed);
            c.commit_us_total.fetch_add(us, Ordering::Relaxed);
            c.last_commit_us.store(us, Ordering::Relaxed);
            if let Some(oldest) = outcome.new_oldest {
                self.store.set_oldest_seq(oldest);
            }
        } else {
            c.failed_commits.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(outcome.staged);
        if !outcome.overflow.is_empty() {
            self.commit_group(outcome.overflow);
        }
    }

    /// Replies and delivers in job order, so events reach the hub in seq order.
    fn finish(&mut self, staged: Vec<Staged>) {
        for Staged { mut work, result } in staged {
            match result {
                Ok((delivery, live)) => {
                    if let (false, Some(hub)) = (live.is_empty(), &self.hub) {
                        hub.deliver_unsequenced(live, false);
                    }
                    let seqs = match (delivery, &self.hub) {
                        (Delivery::Sequenced(s), Some(hub)) => hub.deliver(s),
                        (Delivery::Unsequenced(events), Some(hub)) if !events.is_empty() => {
                            hub.publish_committed(events)
                        }
                        _ => Vec::new(),
                    };
                    work.done(Ok(seqs));
                }
                Err(e) => {
                    // Only a storage failure: an invalid event is refused, not delivered.
                    if e.is_unavailable()
                        && let (Some(events), Some(hub)) = (work.fallback(), &self.hub)
                    {
                        hub.deliver_unsequenced(events, true);
                    }
                    work.done(Err(e));
                }
            }
        }
    }
}

/// What staging and committing one group produced.
struct Outcome {
    staged: Vec<Staged>,
    /// Jobs left for the next group (the event bound was reached).
    overflow: Vec<Job>,
    appended: u64,
    /// The log's new oldest seq, when count retention deleted events.
    new_oldest: Option<u64>,
    /// False when the transaction could not begin or commit.
    committed: bool,
}

/// The count bound of the durable log, kept exact by deleting the oldest events in
/// the same transaction that appends new ones (no extra flush).
#[derive(Clone, Copy)]
struct CountRetention {
    max_events: u64,
    oldest: u64,
}

/// Runs each job in its own savepoint inside one transaction and commits once.
fn stage_and_commit(
    conn: &mut Connection,
    hub: Option<&Hub>,
    next_seq: &mut u64,
    durable: bool,
    retention: CountRetention,
    group: Vec<Job>,
) -> Outcome {
    let first_seq = *next_seq;
    let mut staged: Vec<Staged> = Vec::with_capacity(group.len());
    let mut overflow: Vec<Job> = Vec::new();
    let mut appended = 0u64;
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            tracing::error!(error = %e, "cannot begin a store transaction");
            let staged = group
                .into_iter()
                .map(|job| Staged {
                    work: job.work,
                    result: Err(clone_err(&e)),
                })
                .collect();
            return Outcome {
                staged,
                overflow,
                appended,
                new_oldest: None,
                committed: false,
            };
        }
    };
    let mut events_in_group = 0usize;
    for job in group {
        if events_in_group >= GROUP_MAX_EVENTS {
            overflow.push(job);
            continue;
        }
        let mut work = job.work;
        let seq_before = *next_seq;
        let result = (|| -> Result<(Delivery, Vec<NewEvent>), StoreError> {
            let sp = tx.savepoint()?;
            let mut wtx = WriteTx {
                conn: &sp,
                events: Vec::new(),
                live: Vec::new(),
            };
            // A panic in a job must not take the writer (and every later write) down.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.run(&mut wtx))).unwrap_or_else(|_| {
                tracing::error!("a store job panicked; it is refused and the writer goes on");
                Err(StoreError::Sqlite("internal error in a store job".into()))
            })?;
            let events = wtx.events;
            let live = wtx.live;
            let delivery = if durable && events.iter().any(|e| topic_info(&e.kind).class == DeliveryClass::Event) {
                let hub = hub.ok_or(StoreError::Closed)?;
                let seqd = hub.sequence(events, next_seq);
                events::insert(&sp, seqd.rows())?;
                Delivery::Sequenced(seqd)
            } else {
                Delivery::Unsequenced(events)
            };
            sp.commit()?;
            Ok((delivery, live))
        })();
        match &result {
            Err(_) => *next_seq = seq_before,
            Ok((Delivery::Sequenced(s), _)) => {
                events_in_group += s.rows().len();
                appended += s.rows().len() as u64;
            }
            Ok(_) => {}
        }
        staged.push(Staged { work, result });
    }
    let mut new_oldest = None;
    if durable && *next_seq != first_seq {
        let last = *next_seq - 1;
        let keep_from = (last + 1).saturating_sub(retention.max_events).max(1);
        let result = events::set_last_seq(&tx, last)
            .map_err(StoreError::from)
            .and_then(|()| {
                if retention.oldest < keep_from {
                    events::delete_before(&tx, keep_from)?;
                    new_oldest = Some(keep_from);
                }
                Ok(())
            });
        if let Err(e) = result {
            new_oldest = None;
            fail_group(next_seq, &mut staged, e, first_seq);
        }
    }
    let committed = if staged.iter().any(|s| s.result.is_ok()) {
        tx.commit().map_err(StoreError::from)
    } else {
        drop(tx);
        Ok(())
    };
    if let Err(e) = committed {
        tracing::error!(error = %e, jobs = staged.len(), "store commit failed; the group is refused");
        fail_group(next_seq, &mut staged, e, first_seq);
        return Outcome {
            staged,
            overflow,
            appended: 0,
            new_oldest: None,
            committed: false,
        };
    }
    Outcome {
        staged,
        overflow,
        appended,
        new_oldest,
        committed: true,
    }
}

/// Fails every job of the group that had succeeded so far and rewinds the seq counter.
fn fail_group(next_seq: &mut u64, staged: &mut [Staged], e: StoreError, first_seq: u64) {
    *next_seq = first_seq;
    for s in staged.iter_mut() {
        if s.result.is_ok() {
            s.result = Err(clone_err(&e));
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(m) => StoreError::Full(m.clone()),
        StoreError::ReadOnly(m) => StoreError::ReadOnly(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Sqlite(other.to_string()),
    }
}
