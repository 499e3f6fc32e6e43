//! One connection as the hub sees it: its outbox, subscriptions and liveness clocks.
//!
//! The socket itself is owned by the connection's reader and writer tasks
//! (`connection.rs`); everything here is what other parts of the server may
//! touch without awaiting that socket.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use uuid::Uuid;

use sigmavault_proto::SubscriptionSet;

use super::outbox::{CONTROL_MAX_BYTES, Outbox};
use crate::auth::{SocketAuth, SocketSlot};

/// Reply bound of the test-only echo endpoint: two of its largest messages.
const ECHO_CONTROL_MAX_BYTES: usize = 2 * super::ws::ECHO_MAX_MESSAGE + (1 << 20);

/// What kind of endpoint the connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// `/ws`: the event hub protocol.
    Events,
    /// `/ws/echo`: echoes every message (conformance testing only).
    Echo,
}

/// Ends both tasks of a connection at once, without a close handshake: for
/// writes that make no progress, and for what is left when the shutdown grace
/// period ends. A flag and two wakers, because the tasks poll it on every wake
/// and a cancellation-token tree (a mutex per poll) showed up in idle profiles.
#[derive(Default)]
pub(crate) struct Abort {
    flag: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Abort {
    pub(crate) fn abort(&self) {
        self.flag.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    async fn wait(&self, waker: &AtomicWaker) {
        poll_fn(|cx| {
            if self.is_aborted() {
                return Poll::Ready(());
            }
            waker.register(cx.waker());
            if self.is_aborted() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when aborted (for the reader task).
    pub(crate) async fn reader_aborted(&self) {
        self.wait(&self.reader).await
    }

    /// Resolves when aborted (for the writer task).
    pub(crate) async fn writer_aborted(&self) {
        self.wait(&self.writer).await
    }
}

/// The shared half of a connection.
pub(crate) struct Session {
    /// Registry key (dense, cheap to hash).
    pub(crate) id: u64,
    /// The id announced to the client in `welcome` and used in logs.
    pub(crate) client_id: Uuid,
    pub(crate) kind: SessionKind,
    /// Pending frames. A mutex (not a channel) because state frames are conflated in
    /// place and replay switches to live under it; held only for pushes and takes.
    pub(crate) outbox: Mutex<Outbox>,
    /// Patterns this client receives. Changed only under the hub's publish lock,
    /// so a publish sees either the old or the new set, never half of a change.
    /// Shared (copy-on-write) so the many clients on the default set hold one copy.
    pub(crate) subs: Mutex<Arc<SubscriptionSet>>,
    /// Hub-clock milliseconds of the last frame received (any frame counts as alive).
    pub(crate) last_seen_ms: AtomicU64,
    /// Hub-clock milliseconds of the last ping the sweeper asked for.
    pub(crate) last_ping_ms: AtomicU64,
    /// Wall-clock expiry of the socket's credential in ms since the epoch, `i64::MAX`
    /// for none (API keys, not yet authenticated). A copy of what `auth` holds, next
    /// to the other keep-alive fields, so the sweeper reads one cache line per
    /// session and locks `auth` only when a token is about to expire.
    pub(crate) expires_at_ms: AtomicI64,
    /// Hub-clock milliseconds when the current socket write began; 0 when idle.
    /// The sweeper aborts connections whose write makes no progress.
    pub(crate) write_started_ms: AtomicU64,
    /// The highest seq written to the socket (reported in the 4008 close reason).
    pub(crate) last_delivered_seq: AtomicU64,
    pub(crate) abort: Abort,
    /// Who is on the socket; `None` until a first-message `auth` succeeds.
    pub(crate) auth: Mutex<Option<SocketAuth>>,
    /// Whether admin-only types (`audit.*`) may be delivered. Fixed once
    /// authenticated: a role change closes the socket.
    pub(crate) admin: AtomicBool,
    /// Per-IP and per-user connection slots, given back when the session ends.
    pub(crate) slots: Mutex<Vec<SocketSlot>>,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        kind: SessionKind,
        subs: Arc<SubscriptionSet>,
        queue_limit: usize,
        now_ms: u64,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id: Uuid::new_v4(),
            kind,
            outbox: Mutex::new(Outbox::new(
                queue_limit,
                match kind {
                    SessionKind::Events => CONTROL_MAX_BYTES,
                    // Echo answers with whole messages (Autobahn sends up to 16 MiB).
                    SessionKind::Echo => ECHO_CONTROL_MAX_BYTES,
                },
            )),
            subs: Mutex::new(subs),
            last_seen_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            expires_at_ms: AtomicI64::new(i64::MAX),
            write_started_ms: AtomicU64::new(0),
            last_delivered_seq: AtomicU64::new(0),
            abort: Abort::default(),
            auth: Mutex::new(None),
            admin: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
        })
    }

    /// Whether a message of this type goes to this session: subscribed, and
    /// not admin-only unless the session is an admin's.
    pub(crate) fn receives(&self, kind: &str) -> bool {
        self.subs.lock().matches(kind) && self.may_see(kind)
    }

    /// The role filter alone.
    pub(crate) fn may_see(&self, kind: &str) -> bool {
        !sigmavault_proto::topics::admin_only(kind) || self.admin.load(Ordering::Relaxed)
    }

    /// Sets who is on the socket.
    pub(crate) fn set_auth(&self, auth: SocketAuth) {
        self.admin
            .store(auth.role == crate::store::accounts::Role::Admin, Ordering::Relaxed);
        let mut current = self.auth.lock();
        self.expires_at_ms
            .store(auth.expires_at_ms.unwrap_or(i64::MAX), Ordering::Relaxed);
        *current = Some(auth);
    }

    /// Runs `f` on the outbox and wakes the writer if it now has work.
    pub(crate) fn with_outbox<R>(&self, f: impl FnOnce(&mut Outbox) -> R) -> R {
        let (result, waker) = {
            let mut outbox = self.outbox.lock();
            let result = f(&mut outbox);
            (result, outbox.take_waker())
        };
        if let Some(w) = waker {
            w.wake();
        }
        result
    }

    /// Records that the peer is alive.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }
}
