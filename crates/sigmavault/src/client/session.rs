//! A long-lived client: reconnects with backoff and resumes where it left off.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};
use url::Url;

use super::backoff::Backoff;
use super::sequencer::{Event, Position, Sequencer};
use super::{CloseInfo, ConnectOptions, Target, Ws, command, connect, connect_error_is_permanent};

/// A connection that lasted this long was healthy: the next failure starts the backoff over
/// instead of waiting as if the server had been failing all along.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Slack on top of the server's announced keepalive before we declare the link dead; the
/// server pings every `ping_interval_ms`, so silence beyond interval + timeout + slack
/// means a half-open TCP connection that would otherwise hang forever.
const IDLE_SLACK: Duration = Duration::from_secs(5);

/// A reconnecting, resuming subscription. Drive it with [`Session::next`].
pub(crate) struct Session {
    url: Url,
    opts: ConnectOptions,
    subscribe: Vec<String>,
    /// Where the user asked to start (`--since`/`--epoch`); consumed by the first welcome.
    start: Option<(Option<String>, u64)>,
    ws: Option<Ws>,
    idle_limit: Option<Duration>,
    connected_at: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    rng: StdRng,
    sequencer: Sequencer,
    /// Events decoded but not yet handed out: one frame can produce several (a `resumed`
    /// releases the whole buffered replay).
    out: VecDeque<Event>,
    finished: bool,
}

impl Session {
    /// A session that subscribes to `subscribe` (on top of the defaults) on every connect
    /// and, if `start` is `(epoch, since)`, first replays events after `since`.
    pub(crate) fn new(
        url: Url,
        opts: ConnectOptions,
        subscribe: Vec<String>,
        start: Option<(Option<String>, u64)>,
    ) -> Self {
        Session {
            url,
            opts,
            subscribe,
            start,
            ws: None,
            idle_limit: None,
            connected_at: None,
            retry_at: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            rng: StdRng::from_os_rng(),
            sequencer: Sequencer::default(),
            out: VecDeque::new(),
            finished: false,
        }
    }

    /// The next event. `Ok(None)` after the server closed normally (1000); an error when
    /// it closed with a code that forbids reconnecting or refused the upgrade for good.
    pub(crate) async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.out.pop_front() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(None);
            }
            if self.ws.is_none() {
                self.connect().await?;
            } else {
                self.read().await?;
            }
        }
    }

    /// Frames dropped as already seen.
    pub(crate) fn duplicates(&self) -> u64 {
        self.sequencer.duplicates()
    }

    /// Sends a normal close and waits briefly for the server's reply.
    pub(crate) async fn close(&mut self) {
        let Some(mut ws) = self.ws.take() else { return };
        let frame = CloseFrame {
            code: WsCloseCode::Normal,
            reason: "client exiting".into(),
        };
        let _ = timeout(Duration::from_secs(2), async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }

    async fn connect(&mut self) -> Result<()> {
        if let Some(at) = self.retry_at.take() {
            tokio::time::sleep_until(at).await;
        }
        let attempt = async {
            let target = Target::resolve(&self.url, self.opts.tls.as_ref()).await?;
            connect(&target, &self.opts).await
        };
        let conn = match attempt.await {
            Ok(conn) => conn,
            Err(e) if connect_error_is_permanent(&e) => return Err(e),
            Err(e) => {
                self.schedule_retry(format!("connect failed ({e:#})"));
                return Ok(());
            }
        };
        let resume = self.sequencer.on_welcome(&conn.welcome, self.start.take());
        let mut ws = conn.ws;
        // Subscribe before resuming: the server filters the replay by the subscription
        // set in force when it runs, and commands on one connection run in order.
        let mut commands = Vec::new();
        if !self.subscribe.is_empty() {
            commands.push(command("subscribe", "subscribe", json!({ "types": self.subscribe })));
        }
        if let Some(Position { epoch, seq }) = &resume {
            commands.push(command("resume", "resume", json!({ "epoch": epoch, "since": seq })));
        }
        for cmd in commands {
            if let Err(e) = ws.feed(cmd).await {
                self.schedule_retry(format!("disconnected (sending commands: {e})"));
                return Ok(());
            }
        }
        if let Err(e) = ws.flush().await {
            self.schedule_retry(format!("disconnected (sending commands: {e})"));
            return Ok(());
        }
        let keepalive = conn
            .welcome
            .ping_interval_ms
            .saturating_add(conn.welcome.pong_timeout_ms);
        self.idle_limit = (conn.welcome.ping_interval_ms > 0).then(|| Duration::from_millis(keepalive) + IDLE_SLACK);
        self.connected_at = Some(Instant::now());
        self.out.push_back(Event::Connected {
            welcome: conn.welcome,
            resume_from: resume,
        });
        self.sequencer.on_text(conn.welcome_text, &mut self.out);
        self.ws = Some(ws);
        Ok(())
    }

    async fn read(&mut self) -> Result<()> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        let received = match self.idle_limit {
            Some(limit) => match timeout(limit, ws.next()).await {
                Ok(received) => received,
                Err(_) => {
                    self.schedule_retry(format!("no frame for {limit:?}; the connection looks dead"));
                    return Ok(());
                }
            },
            None => ws.next().await,
        };
        match received {
            None => self.schedule_retry("disconnected (connection ended without a close frame)".into()),
            Some(Err(e)) => self.schedule_retry(format!("disconnected (read error: {e})")),
            Some(Ok(Message::Text(text))) => self.sequencer.on_text(text.as_str().to_owned(), &mut self.out),
            Some(Ok(Message::Close(frame))) => {
                let info = CloseInfo::from_frame(frame.as_ref());
                // tungstenite queued the close reply; push it out before dropping the socket.
                let _ = timeout(Duration::from_secs(1), ws.flush()).await;
                if info.should_reconnect() {
                    self.schedule_retry(format!("disconnected ({info})"));
                } else if info.code == Some(1000) {
                    self.ws = None;
                    self.finished = true;
                    self.out.push_back(Event::Closed(info));
                } else {
                    self.ws = None;
                    return Err(anyhow!("server closed the connection: {info}"));
                }
            }
            Some(Ok(_)) => {}
        }
        Ok(())
    }

    fn schedule_retry(&mut self, cause: String) {
        self.ws = None;
        self.sequencer.on_disconnect();
        if self.connected_at.take().is_some_and(|at| at.elapsed() >= HEALTHY_AFTER) {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.retry_at = Some(Instant::now() + delay);
        self.out.push_back(Event::Disconnected {
            cause,
            retry_in: delay,
            attempt: self.backoff.attempt(),
        });
    }
}
