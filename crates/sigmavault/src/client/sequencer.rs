//! The pure part of a session: which frames to hand out, in what order, and where to
//! resume from. No sockets here, so the resume rules are tested on plain strings.

use std::collections::VecDeque;
use std::time::Duration;

use sigmavault_proto::server::{ErrorFrame, Reset, Resumed, ServerMessage, Welcome};

use super::CloseInfo;

/// A point in the event stream: the last seq processed within one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The history the seq belongs to.
    pub(crate) epoch: String,
    /// The last seq processed.
    pub(crate) seq: u64,
}

/// One server frame: the text as received (for `--json`) and its decoded envelope.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Exactly what the server sent.
    pub(crate) text: String,
    /// The decoded envelope.
    pub(crate) msg: ServerMessage,
}

/// What a session reports to its user.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection is up; `resume_from` is the position we asked to continue from.
    Connected {
        welcome: Welcome,
        resume_from: Option<Position>,
    },
    /// A frame to show, already de-duplicated and in seq order.
    Frame(Frame),
    /// A replay finished.
    Resumed(Resumed),
    /// The server could not honour our position; events in between are gone.
    Reset(Reset),
    /// The server refused one of our commands (`subscribe`, `resume`).
    Refused { request: String, error: ErrorFrame },
    /// A text frame that is not a server message.
    Unparsed { text: String, error: String },
    /// The connection dropped; the session will reconnect after `retry_in`.
    Disconnected {
        cause: String,
        retry_in: Duration,
        attempt: u32,
    },
    /// The server closed normally; the session is over.
    Closed(CloseInfo),
}

/// Tracks the position across connections and merges replays.
///
/// While a `resume` is in flight, sequenced frames are held back: live events published
/// between the welcome and the resume arrive first and reappear in the replay, so handing
/// them out at once would either duplicate them or (if we advanced our position) hide the
/// older replayed ones. On `resumed` the held frames are sorted, de-duplicated and released.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    position: Option<Position>,
    /// The connection's own view from its welcome, used when a resume is refused.
    welcome_position: Option<Position>,
    /// `Some(since)` while a resume is in flight.
    resuming: Option<u64>,
    held: Vec<Frame>,
    duplicates: u64,
}

impl Sequencer {
    /// Handles a welcome; returns the position to resume from, if any.
    /// `start` is the user's `(epoch, since)`, honoured on the first connection only.
    pub(crate) fn on_welcome(&mut self, welcome: &Welcome, start: Option<(Option<String>, u64)>) -> Option<Position> {
        let current = Position {
            epoch: welcome.epoch.clone(),
            seq: welcome.seq,
        };
        self.welcome_position = Some(current.clone());
        self.held.clear();
        let resume = match (&self.position, start) {
            (Some(pos), _) => Some(pos.clone()),
            (None, Some((epoch, since))) => Some(Position {
                epoch: epoch.unwrap_or_else(|| welcome.epoch.clone()),
                seq: since,
            }),
            (None, None) => None,
        };
        self.resuming = resume.as_ref().map(|p| p.seq);
        self.position = Some(resume.clone().unwrap_or(current));
        resume
    }

    /// The connection dropped: whatever was held will be replayed on the next one.
    pub(crate) fn on_disconnect(&mut self) {
        self.resuming = None;
        self.held.clear();
    }

    /// Frames dropped because their seq was already handed out (a replay overlapping
    /// live delivery is normal; a duplicate on a steady connection is a server bug).
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Decodes one text frame and queues the resulting events.
    pub(crate) fn on_text(&mut self, text: String, out: &mut VecDeque<Event>) {
        let msg: ServerMessage = match serde_json::from_str(&text) {
            Ok(msg) => msg,
            Err(e) => {
                out.push_back(Event::Unparsed {
                    text,
                    error: e.to_string(),
                });
                return;
            }
        };
        let request = msg.id.as_ref().and_then(|id| id.as_str()).map(str::to_owned);
        match msg.kind.as_str() {
            "resumed" if self.resuming.is_some() => match serde_json::from_value::<Resumed>(msg.data.clone()) {
                Ok(resumed) => {
                    let since = self.resuming;
                    let top = self.release_held(since, out);
                    if let Some(pos) = &mut self.position {
                        pos.seq = pos.seq.max(resumed.through).max(top.unwrap_or(0));
                    }
                    out.push_back(Event::Frame(Frame { text, msg }));
                    out.push_back(Event::Resumed(resumed));
                }
                Err(e) => self.unparsed(text, e, out),
            },
            "reset" => match serde_json::from_value::<Reset>(msg.data.clone()) {
                Ok(reset) => {
                    // Held frames came live on this connection, in the reset's epoch: keep them all.
                    let top = self.release_held(None, out);
                    self.position = Some(Position {
                        epoch: reset.epoch.clone(),
                        seq: reset.seq.max(top.unwrap_or(0)),
                    });
                    out.push_back(Event::Frame(Frame { text, msg }));
                    out.push_back(Event::Reset(reset));
                }
                Err(e) => self.unparsed(text, e, out),
            },
            "error" => {
                let refused = serde_json::from_value::<ErrorFrame>(msg.data.clone());
                if request.as_deref() == Some("resume") && self.resuming.is_some() {
                    let top = self.release_held(None, out);
                    if let Some(mut pos) = self.welcome_position.clone() {
                        pos.seq = pos.seq.max(top.unwrap_or(0));
                        self.position = Some(pos);
                    }
                }
                out.push_back(Event::Frame(Frame { text, msg }));
                if let (Some(request), Ok(error)) = (request, refused) {
                    out.push_back(Event::Refused { request, error });
                }
            }
            _ => match msg.seq {
                Some(_) if self.resuming.is_some() => self.held.push(Frame { text, msg }),
                Some(seq) => {
                    if let Some(pos) = &mut self.position {
                        if seq <= pos.seq {
                            self.duplicates += 1;
                            return;
                        }
                        pos.seq = seq;
                    }
                    out.push_back(Event::Frame(Frame { text, msg }));
                }
                None => out.push_back(Event::Frame(Frame { text, msg })),
            },
        }
    }

    /// Ends the resume: releases held frames above `above` in seq order, once each.
    /// Returns the highest seq released.
    fn release_held(&mut self, above: Option<u64>, out: &mut VecDeque<Event>) -> Option<u64> {
        self.resuming = None;
        let mut frames = std::mem::take(&mut self.held);
        frames.sort_by_key(|f| f.msg.seq);
        frames.dedup_by_key(|f| f.msg.seq);
        let mut top = None;
        for frame in frames {
            let seq = frame.msg.seq.unwrap_or(0);
            if above.is_some_and(|a| seq <= a) {
                self.duplicates += 1;
                continue;
            }
            top = Some(seq);
            out.push_back(Event::Frame(frame));
        }
        top
    }

    fn unparsed(&self, text: String, e: serde_json::Error, out: &mut VecDeque<Event>) {
        out.push_back(Event::Unparsed {
            text,
            error: e.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigmavault_proto::server::{Limits, encode};

    fn welcome(epoch: &str, seq: u64) -> Welcome {
        Welcome {
            client_id: "c".into(),
            server_version: "0".into(),
            protocol_version: 1,
            epoch: epoch.into(),
            seq,
            subscriptions: vec![],
            ping_interval_ms: 0,
            pong_timeout_ms: 0,
            limits: Limits {
                max_message_bytes: 1,
                queue_events: 1,
                inbound_per_second: 1,
                inbound_burst: 1,
            },
        }
    }

    fn event(seq: u64) -> String {
        encode("custom.x", "2026-01-01T00:00:00.000Z", Some(seq), None, "{}")
    }

    fn frame_seqs(out: &mut VecDeque<Event>) -> Vec<u64> {
        out.drain(..)
            .filter_map(|e| match e {
                Event::Frame(f) => f.msg.seq,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn live_stream_drops_duplicates() {
        let mut s = Sequencer::default();
        assert_eq!(s.on_welcome(&welcome("e", 10), None), None);
        let mut out = VecDeque::new();
        for seq in [11, 12, 12, 9, 13] {
            s.on_text(event(seq), &mut out);
        }
        assert_eq!(frame_seqs(&mut out), vec![11, 12, 13]);
        assert_eq!(s.duplicates(), 2);
    }

    #[test]
    fn resume_merges_early_live_frames_with_the_replay() {
        let mut s = Sequencer::default();
        s.on_welcome(&welcome("e", 10), None);
        let mut out = VecDeque::new();
        s.on_text(event(11), &mut out);
        s.on_disconnect();
        let resume = s.on_welcome(&welcome("e", 20), None);
        assert_eq!(
            resume,
            Some(Position {
                epoch: "e".into(),
                seq: 11
            })
        );
        out.clear();
        // Live 21 arrives before the resume is processed; the replay brings 12..=21.
        for seq in [21, 12, 13, 20, 21] {
            s.on_text(event(seq), &mut out);
        }
        assert!(frame_seqs(&mut out).is_empty(), "held until resumed");
        let resumed = encode(
            "resumed",
            "t",
            None,
            None,
            r#"{"epoch":"e","since":11,"through":21,"replayed":4}"#,
        );
        s.on_text(resumed, &mut out);
        let kinds: Vec<String> = out
            .iter()
            .map(|e| match e {
                Event::Frame(f) => f.msg.kind.clone(),
                Event::Resumed(_) => "<resumed>".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds.last().map(String::as_str), Some("<resumed>"));
        assert_eq!(frame_seqs(&mut out), vec![12, 13, 20, 21]);
        s.on_text(event(21), &mut out);
        s.on_text(event(22), &mut out);
        assert_eq!(frame_seqs(&mut out), vec![22]);
    }

    #[test]
    fn start_position_and_reset() {
        let mut s = Sequencer::default();
        let resume = s.on_welcome(&welcome("new", 50), Some((Some("old".into()), 5)));
        assert_eq!(
            resume,
            Some(Position {
                epoch: "old".into(),
                seq: 5
            })
        );
        let mut out = VecDeque::new();
        s.on_text(event(51), &mut out);
        let reset = encode(
            "reset",
            "t",
            None,
            None,
            r#"{"reason":"epoch_mismatch","message":"m","epoch":"new","oldest_seq":1,"seq":50}"#,
        );
        s.on_text(reset, &mut out);
        assert!(matches!(out.back(), Some(Event::Reset(r)) if r.reason == "epoch_mismatch"));
        assert_eq!(frame_seqs(&mut out), vec![51]);
        s.on_text(event(51), &mut out);
        s.on_text(event(52), &mut out);
        assert_eq!(frame_seqs(&mut out), vec![52]);
    }

    #[test]
    fn since_without_epoch_uses_the_servers() {
        let mut s = Sequencer::default();
        let resume = s.on_welcome(&welcome("cur", 9), Some((None, 3)));
        assert_eq!(
            resume,
            Some(Position {
                epoch: "cur".into(),
                seq: 3
            })
        );
    }

    #[test]
    fn refused_resume_releases_held_frames() {
        let mut s = Sequencer::default();
        s.on_welcome(&welcome("e", 10), Some((None, 99)));
        let mut out = VecDeque::new();
        s.on_text(event(11), &mut out);
        let err = encode(
            "error",
            "t",
            None,
            Some(&serde_json::Value::from("resume")),
            r#"{"code":"since_ahead","message":"m"}"#,
        );
        s.on_text(err, &mut out);
        assert!(matches!(out.back(), Some(Event::Refused { request, .. }) if request == "resume"));
        assert_eq!(frame_seqs(&mut out), vec![11]);
        s.on_text(event(12), &mut out);
        assert_eq!(frame_seqs(&mut out), vec![12]);
    }

    #[test]
    fn garbage_is_reported() {
        let mut s = Sequencer::default();
        let mut out = VecDeque::new();
        s.on_text("nope".into(), &mut out);
        assert!(matches!(out.front(), Some(Event::Unparsed { .. })));
    }
}
