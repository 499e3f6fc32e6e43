//! `sigmavault watch`: print every hub message, surviving reconnects without gaps.
//!
//! stdout carries the messages only (one line each), so it can be piped into `jq` or a
//! file; connection notices (connected, reconnecting, resumed, reset) go to stderr.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, TimeZone};
use sigmavault_proto::Pattern;
use sigmavault_proto::client::MAX_TYPES_PER_REQUEST;
use sigmavault_proto::server::ServerMessage;
use url::Url;

use crate::client::ConnectOptions;
use crate::client::sequencer::Event;
use crate::client::session::Session;

/// Arguments of `sigmavault watch`.
#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {
    /// WebSocket URL of the hub.
    #[arg(long, env = "SIGMAVAULT_URL", default_value = "ws://127.0.0.1:12080/ws")]
    url: Url,
    /// Extra patterns to subscribe to, comma-separated (e.g. `custom.*,audit.*`). They are
    /// added to the server's default subscriptions, which stay in force; `custom.*` events
    /// are only delivered to clients that ask for them.
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Print each message as the raw JSON line the server sent.
    #[arg(long)]
    json: bool,
    /// First replay the events after this seq (from the server's history), then go live.
    #[arg(long)]
    since: Option<u64>,
    /// The epoch `--since` refers to (default: the server's current epoch). A stale epoch
    /// gets a `reset` notice and continues live.
    #[arg(long, requires = "since")]
    epoch: Option<String>,
    /// Bearer token for the upgrade request.
    #[arg(long, env = "SIGMAVAULT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For wss:// URLs: a PEM file of the CA (or the server's self-signed certificate)
    /// to trust. Without it the system's CA bundle is used ($SSL_CERT_FILE, else
    /// /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, env = "SIGMAVAULT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

/// Runs `watch` until Ctrl-C, a normal close from the server, or a close that forbids
/// reconnecting (then it fails).
pub(crate) fn run(args: WatchArgs) -> Result<()> {
    if args.types.len() > MAX_TYPES_PER_REQUEST {
        bail!("--types: at most {MAX_TYPES_PER_REQUEST} patterns");
    }
    for pattern in &args.types {
        Pattern::parse(pattern).map_err(|e| anyhow!("--types: {e}"))?;
    }
    crate::client::Target::check(&args.url)?;
    let tls = match args.url.scheme() {
        "wss" => Some(crate::client::tls::client_config(args.ca_cert.as_deref())?),
        _ => None,
    };
    // One connection and a printer: a single thread is plenty.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(watch(args, tls))
}

async fn watch(args: WatchArgs, tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>) -> Result<()> {
    let start = args.since.map(|since| (args.epoch.clone(), since));
    let mut opts = ConnectOptions::new(args.token.clone());
    opts.tls = tls;
    let mut session = Session::new(args.url.clone(), opts, args.types.clone(), start);
    // Ctrl-C, or SIGTERM from systemd or `timeout`: both end with a normal close.
    let ctrl_c = async {
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        #[cfg(unix)]
        let terminate = term.recv();
        #[cfg(not(unix))]
        let terminate = std::future::pending::<Option<()>>();
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = terminate => Ok(()),
        }
    };
    tokio::pin!(ctrl_c);
    let mut ctrl_c_armed = true;
    let mut stdout = std::io::stdout();
    let result = loop {
        let next = tokio::select! {
            signal = &mut ctrl_c, if ctrl_c_armed => {
                match signal {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        eprintln!("watch: cannot listen for Ctrl-C ({e}); stop with a signal instead");
                        ctrl_c_armed = false;
                        continue;
                    }
                }
            }
            next = session.next() => next,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Event::Frame(frame) = &event {
            let line = if args.json {
                frame.text.clone()
            } else {
                pretty_line(&frame.msg, &chrono::Local)
            };
            // A closed pipe (`watch | head`) is a normal way to stop.
            if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                break Ok(());
            }
        } else {
            notice(&args.url, &event);
        }
    };
    session.close().await;
    if session.duplicates() > 0 {
        eprintln!(
            "watch: skipped {} frames already shown (replay overlap)",
            session.duplicates()
        );
    }
    result
}

/// One stderr line for everything that is about the connection rather than a message.
fn notice(url: &Url, event: &Event) {
    match event {
        Event::Frame(_) => {}
        Event::Connected { welcome, resume_from } => {
            let resume = resume_from
                .as_ref()
                .map(|p| format!("; resuming after seq {} of epoch {}", p.seq, p.epoch))
                .unwrap_or_default();
            eprintln!(
                "watch: connected to {url} (client {}, epoch {}, latest seq {}){resume}",
                welcome.client_id, welcome.epoch, welcome.seq
            );
        }
        Event::Resumed(r) => eprintln!(
            "watch: resumed: replayed {} events after seq {} (through seq {}); now live",
            r.replayed, r.since, r.through
        ),
        Event::Reset(r) => eprintln!(
            "watch: RESET ({}): {}; events may have been missed; live again after seq {} of epoch {} \
             (oldest retained seq {})",
            r.reason, r.message, r.seq, r.epoch, r.oldest_seq
        ),
        Event::Refused { request, error } => {
            eprintln!("watch: server refused {request}: {} ({})", error.message, error.code)
        }
        Event::Unparsed { text, error } => {
            let head: String = text.chars().take(200).collect();
            eprintln!("watch: unreadable frame ({error}): {head}");
        }
        Event::Disconnected {
            cause,
            retry_in,
            attempt,
        } => eprintln!(
            "watch: {cause}; reconnecting in {:.1}s (attempt {attempt})",
            retry_in.as_secs_f64()
        ),
        Event::Closed(info) => eprintln!("watch: server closed the connection ({info}); exiting"),
    }
}

/// `12:00:01.234 custom.build        #15 {"ok":true}`: local time, type, seq (or `-` for
/// state messages), the request id for replies, then the data as compact JSON.
fn pretty_line<Tz: TimeZone>(msg: &ServerMessage, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let time = DateTime::parse_from_rfc3339(&msg.timestamp)
        .map(|t| t.with_timezone(tz).format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| msg.timestamp.clone());
    let seq = msg.seq.map_or_else(|| "-".to_owned(), |s| format!("#{s}"));
    let id = msg.id.as_ref().map(|id| format!(" id={id}")).unwrap_or_default();
    format!("{time} {:<20} {seq:>8}{id} {}", msg.kind, msg.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sigmavault_proto::server::encode;

    fn line(text: &str) -> String {
        let msg: ServerMessage = serde_json::from_str(text).expect("fixture parses");
        pretty_line(&msg, &Utc)
    }

    #[test]
    fn event_line() {
        let text = encode(
            "custom.x",
            "2026-03-01T12:00:01.234Z",
            Some(15),
            None,
            r#"{"a": [1, 2]}"#,
        );
        assert_eq!(line(&text), r#"12:00:01.234 custom.x                  #15 {"a":[1,2]}"#);
    }

    #[test]
    fn reply_line_shows_id_and_no_seq() {
        let id = serde_json::Value::from("r1");
        let text = encode("pong", "not a time", None, Some(&id), "{}");
        assert_eq!(line(&text), r#"not a time pong                        - id="r1" {}"#);
    }
}
