//! The receive hot path: pull seq, run id, index, phase and send time out of a bench
//! event without building a JSON tree.
//!
//! 19k clients share two cores with the server, so every delivery has to be cheap: a
//! handful of substring searches on the frame text cost far less than `serde_json::Value`
//! and work whatever key order the server re-encodes `data` in.

/// Which part of the run an event belongs to; travels in `data.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Back-to-back bursts.
    Burst,
    /// Constant rate.
    Steady,
    /// Single events on an idle hub, for fan-out completion.
    Probe,
}

impl Phase {
    /// The wire name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Burst => "burst",
            Phase::Steady => "steady",
            Phase::Probe => "probe",
        }
    }
}

/// The fields of a bench event the receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BenchFrame {
    pub(crate) seq: u64,
    pub(crate) run: u64,
    pub(crate) index: u64,
    pub(crate) sent_ns: u64,
    pub(crate) phase: Phase,
}

/// Scans one text frame; `None` for anything that is not a sequenced bench event.
pub(crate) fn scan(text: &str) -> Option<BenchFrame> {
    // Cheapest rejection first: control replies and state messages have no run id.
    let run = number_after(text, "\"bench_run\":")?;
    let seq = number_after(text, "\"seq\":")?;
    let index = number_after(text, "\"i\":")?;
    let sent_ns = number_after(text, "\"sent_ns\":")?;
    let phase = match value_after(text, "\"phase\":")?.strip_prefix('"')?.as_bytes().first()? {
        b'b' => Phase::Burst,
        b's' => Phase::Steady,
        b'p' => Phase::Probe,
        _ => return None,
    };
    Some(BenchFrame {
        seq,
        run,
        index,
        sent_ns,
        phase,
    })
}

/// The text right after `key`, past optional whitespace.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    Some(text[at..].trim_start())
}

/// The unsigned integer right after `key`.
pub(crate) fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = value_after(text, key)?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigmavault_proto::server::encode;

    #[test]
    fn scans_the_servers_encoding() {
        let data = r#"{"bench_run":77,"i":3,"phase":"steady","sent_ns":1700000000123456789,"pad":"xxxx"}"#;
        let text = encode("custom.bench", "2026-01-01T00:00:00.000Z", Some(42), None, data);
        assert_eq!(
            scan(&text),
            Some(BenchFrame {
                seq: 42,
                run: 77,
                index: 3,
                sent_ns: 1_700_000_000_123_456_789,
                phase: Phase::Steady,
            })
        );
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let text = r#"{"data": {"pad": "x", "phase": "probe", "sent_ns": 5, "i": 0, "bench_run": 1},
                       "seq": 9, "type": "custom.bench", "timestamp": "t"}"#;
        let f = scan(text).expect("bench frame");
        assert_eq!((f.seq, f.run, f.index, f.sent_ns, f.phase), (9, 1, 0, 5, Phase::Probe));
    }

    #[test]
    fn rejects_other_frames() {
        assert_eq!(
            scan(r#"{"type":"subscribed","timestamp":"t","data":{"subscriptions":[]}}"#),
            None
        );
        assert_eq!(
            scan(r#"{"type":"custom.bench","timestamp":"t","data":{"bench_run":1}}"#),
            None
        );
        assert_eq!(scan(""), None);
        assert_eq!(number_after(r#""seq":-1"#, "\"seq\":"), None);
    }
}
