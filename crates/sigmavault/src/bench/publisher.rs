//! Publishing bench events through `POST /api/v1/events`, and the other REST calls.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sigmavault_proto::server::encode;
use url::Url;

use super::scan::Phase;
use super::stats::wall_ns;

/// The type every bench event has; clients subscribe to exactly this.
pub(crate) const EVENT_TYPE: &str = "custom.bench";

/// The server accepts at most this many events per POST.
pub(crate) const MAX_BATCH: usize = 1000;

/// A publisher bound to one server and one run.
pub(crate) struct Publisher {
    http: reqwest::Client,
    events: Url,
    health: Url,
    hub: Url,
    token: Option<String>,
    run: u64,
    pad: String,
}

/// What one POST published.
#[derive(Debug)]
pub(crate) struct Published {
    /// The `sent_ns` stamped into every event of the batch.
    pub(crate) sent_ns: u64,
    /// The seqs the server assigned, in order.
    pub(crate) seqs: Vec<u64>,
}

#[derive(Deserialize)]
struct Accepted {
    seqs: Vec<u64>,
}

impl Publisher {
    /// A publisher whose events encode to about `size` bytes on the WebSocket.
    pub(crate) fn new(ws_url: &Url, token: Option<String>, run: u64, size: usize) -> Result<Publisher> {
        let base = http_base(ws_url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // The target is a local server; an inherited HTTP_PROXY would skew every number.
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        Ok(Publisher {
            http,
            events: base.join("api/v1/events")?,
            health: base.join("api/v1/health")?,
            hub: base.join("api/v1/hub")?,
            token,
            run,
            pad: "x".repeat(pad_len(size)),
        })
    }

    /// Fails when the server cannot be reached at all; a non-2xx health is only a warning.
    pub(crate) async fn check_health(&self) -> Result<Option<String>> {
        let response = self
            .with_auth(self.http.get(self.health.clone()))
            .send()
            .await
            .with_context(|| format!("GET {}", self.health))?;
        let status = response.status();
        Ok((!status.is_success()).then(|| format!("GET {} answered {status}", self.health)))
    }

    /// `GET /api/v1/hub`, included verbatim in the report when available.
    pub(crate) async fn hub_stats(&self) -> Option<serde_json::Value> {
        let response = self.with_auth(self.http.get(self.hub.clone())).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Publishes `count` events numbered from `first_index` as one batch.
    pub(crate) async fn publish(&self, phase: Phase, first_index: u64, count: usize) -> Result<Published> {
        let sent_ns = wall_ns();
        let body = batch_body(self.run, phase, first_index, count, sent_ns, &self.pad);
        let response = self
            .with_auth(self.http.post(self.events.clone()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {}", self.events))?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the publish response")?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            bail!("POST {} answered {status}: {text}", self.events);
        }
        let accepted: Accepted = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("POST {}: expected {{\"seqs\": [...]}}: {e}", self.events))?;
        if accepted.seqs.len() != count {
            bail!(
                "published {count} events but the server returned {} seqs",
                accepted.seqs.len()
            );
        }
        Ok(Published {
            sent_ns,
            seqs: accepted.seqs,
        })
    }

    fn with_auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// The REST base for a hub URL: same host, `http`, and the path without its final `/ws`
/// (so a server mounted under a prefix, `ws://h/nas/ws`, maps to `http://h/nas/`).
pub(crate) fn http_base(ws_url: &Url) -> Result<Url> {
    let mut base = ws_url.clone();
    let scheme = match ws_url.scheme() {
        "ws" => "http",
        "wss" => "https",
        other => bail!("unsupported scheme {other:?}; expected ws://"),
    };
    base.set_scheme(scheme)
        .map_err(|()| anyhow!("cannot derive an http URL from {ws_url}"))?;
    let path = ws_url.path();
    let prefix = path.strip_suffix("/ws").unwrap_or(path).trim_end_matches('/');
    base.set_path(&format!("{prefix}/"));
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// Filler length so an event frame (envelope included) is about `size` bytes.
pub(crate) fn pad_len(size: usize) -> usize {
    // Representative widths: a 7-digit seq, a 19-digit clock, a 6-digit index.
    let mut data = String::new();
    push_data(
        &mut data,
        u64::MAX >> 11,
        Phase::Steady,
        100_000,
        1_700_000_000_000_000_000,
        "",
    );
    let frame = encode(EVENT_TYPE, "2026-01-01T00:00:00.000Z", Some(1_000_000), None, &data);
    size.saturating_sub(frame.len())
}

fn push_data(out: &mut String, run: u64, phase: Phase, index: u64, sent_ns: u64, pad: &str) {
    let _ = write!(
        out,
        r#"{{"bench_run":{run},"i":{index},"phase":"{}","sent_ns":{sent_ns},"pad":"{pad}"}}"#,
        phase.as_str()
    );
}

/// `{"events":[{"type":"custom.bench","data":{...}}, ...]}`
fn batch_body(run: u64, phase: Phase, first_index: u64, count: usize, sent_ns: u64, pad: &str) -> String {
    let mut body = String::with_capacity(count * (pad.len() + 120) + 16);
    body.push_str(r#"{"events":["#);
    for k in 0..count as u64 {
        if k > 0 {
            body.push(',');
        }
        body.push_str(r#"{"type":""#);
        body.push_str(EVENT_TYPE);
        body.push_str(r#"","data":"#);
        push_data(&mut body, run, phase, first_index + k, sent_ns, pad);
        body.push('}');
    }
    body.push_str("]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scan::scan;

    #[test]
    fn http_base_from_ws_url() {
        let base = |s: &str| http_base(&Url::parse(s).expect("url")).expect("base").to_string();
        assert_eq!(base("ws://127.0.0.1:12080/ws"), "http://127.0.0.1:12080/");
        assert_eq!(base("ws://h/nas/ws?x=1"), "http://h/nas/");
        assert_eq!(base("ws://h:1/"), "http://h:1/");
        let b = http_base(&Url::parse("ws://h/nas/ws").expect("url")).expect("base");
        assert_eq!(
            b.join("api/v1/events").expect("join").as_str(),
            "http://h/nas/api/v1/events"
        );
    }

    #[test]
    fn body_is_valid_and_frames_have_the_requested_size() {
        let pad = "x".repeat(pad_len(300));
        let run = 4_000_000_000_000_000; // ~2^52, as drawn by the bench
        let body = batch_body(run, Phase::Burst, 10_000, 3, 1_700_000_000_000_000_000, &pad);
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        let events = v["events"].as_array().expect("events array");
        assert_eq!(events.len(), 3);
        assert_eq!(events[2]["type"], EVENT_TYPE);
        assert_eq!(events[2]["data"]["i"], 10_002);
        let data = events[0]["data"].to_string();
        let frame = encode(EVENT_TYPE, "2026-01-01T00:00:00.000Z", Some(1_000_000), None, &data);
        assert!((frame.len() as i64 - 300).abs() < 16, "{}", frame.len());
        let scanned = scan(&frame).expect("scannable");
        assert_eq!((scanned.run, scanned.index, scanned.phase), (run, 10_000, Phase::Burst));
        assert_eq!(pad_len(10), 0);
    }
}
