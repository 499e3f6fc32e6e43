//! A WebSocket client for the SigmaVault hub, shared by `watch` and `bench`.
//!
//! Two layers. [`connect`] opens one connection and reads its `welcome`, with the knobs a
//! load generator needs (source address, kernel receive buffer, small read buffer).
//! [`session::Session`] wraps it for long-lived clients: it reconnects with jittered
//! backoff and resumes from the last seq it delivered, so a restart of the server or a
//! slow-consumer close costs the user nothing but a notice on stderr.

pub(crate) mod backoff;
pub(crate) mod sequencer;
pub(crate) mod session;
pub(crate) mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sigmavault_proto::CloseCode;
use sigmavault_proto::server::{ServerMessage, Welcome};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message, WebSocketConfig};
use url::{Host, Url};

use tls::ClientStream;

/// The socket type every client uses: plain TCP or TLS over TCP.
pub(crate) type Ws = WebSocketStream<ClientStream>;

/// Where to connect: the URL (sent in the upgrade request) and the address resolved once,
/// so thousands of bench clients do not each hit the resolver.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The `ws://` URL as given.
    pub(crate) url: Url,
    /// The server's socket address.
    pub(crate) addr: SocketAddr,
    /// For `wss://`: the TLS settings and the name the certificate must carry.
    pub(crate) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Target {
    /// Checks what can be checked without the network: the scheme and a host.
    /// A URL that fails here will never work, so callers check it once up front
    /// instead of retrying it.
    pub(crate) fn check(url: &Url) -> Result<()> {
        match url.scheme() {
            "ws" | "wss" => {}
            other => bail!("{url}: unsupported scheme {other:?}; expected ws:// or wss://"),
        }
        if url.host().is_none() {
            bail!("{url}: no host");
        }
        Ok(())
    }

    /// Checks the URL and resolves the host. `tls` is used for `wss://` URLs.
    pub(crate) async fn resolve(url: &Url, tls: Option<&Arc<ClientConfig>>) -> Result<Target> {
        Target::check(url)?;
        let tls = if url.scheme() == "wss" {
            let config = tls.ok_or_else(|| anyhow!("{url}: wss:// needs TLS settings"))?;
            let host = url
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name =
                ServerName::try_from(host.to_owned()).with_context(|| format!("{url}: not a valid TLS server name"))?;
            Some((config.clone(), name))
        } else {
            None
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = match url.host() {
            Some(Host::Ipv4(ip)) => SocketAddr::new(IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => SocketAddr::new(IpAddr::V6(ip), port),
            Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
                .await
                .with_context(|| format!("resolving {name}"))?
                .next()
                .ok_or_else(|| anyhow!("{name} resolved to no address"))?,
            None => bail!("{url}: no host"),
        };
        Ok(Target {
            url: url.clone(),
            addr,
            tls,
        })
    }
}

/// How to open one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    /// Sent as `Authorization: Bearer <token>` on the upgrade request.
    pub(crate) token: Option<String>,
    /// Source address to bind; spreading clients over 127.0.0.x lifts the ~28k
    /// ephemeral-port ceiling of a single source address.
    pub(crate) local_ip: Option<IpAddr>,
    /// SO_RCVBUF; a tiny one makes a non-reading client back up quickly (bench `--slow`).
    pub(crate) recv_buffer: Option<u32>,
    /// tungstenite settings (the bench shrinks the read buffer so 19k clients fit).
    pub(crate) ws_config: WebSocketConfig,
    /// Bound on TCP connect + handshake + welcome.
    pub(crate) timeout: Duration,
    /// TLS settings for `wss://` URLs.
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

impl ConnectOptions {
    /// Defaults for an interactive client.
    pub(crate) fn new(token: Option<String>) -> Self {
        ConnectOptions {
            token,
            local_ip: None,
            recv_buffer: None,
            ws_config: WebSocketConfig::default(),
            timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// An open connection whose `welcome` has been read.
pub(crate) struct Connection {
    /// The socket, positioned right after the welcome frame.
    pub(crate) ws: Ws,
    /// The parsed welcome.
    pub(crate) welcome: Welcome,
    /// The welcome exactly as received, for printing.
    pub(crate) welcome_text: String,
}

/// Opens a connection and waits for the `welcome` frame.
pub(crate) async fn connect(target: &Target, opts: &ConnectOptions) -> Result<Connection> {
    tokio::time::timeout(opts.timeout, connect_inner(target, opts))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out after {:?}", target.url, opts.timeout))?
}

async fn connect_inner(target: &Target, opts: &ConnectOptions) -> Result<Connection> {
    let mut request = target.url.as_str().into_client_request()?;
    if let Some(token) = &opts.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).context("token is not a valid header value")?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let stream = tcp_connect(target, opts).await?;
    let stream = match &target.tls {
        None => ClientStream::Plain(stream),
        Some((config, name)) => ClientStream::Tls(Box::new(
            TlsConnector::from(config.clone())
                .connect(name.clone(), stream)
                .await
                .context("TLS handshake")?,
        )),
    };
    let (mut ws, _response) = tokio_tungstenite::client_async_with_config(request, stream, Some(opts.ws_config))
        .await
        .context("WebSocket handshake")?;
    let text = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                bail!(
                    "server closed before welcome: {}",
                    CloseInfo::from_frame(frame.as_ref())
                )
            }
            Some(Ok(other)) => bail!("expected a welcome text frame, got {other:?}"),
            Some(Err(e)) => return Err(anyhow!(e).context("reading welcome")),
            None => bail!("connection ended before welcome"),
        }
    };
    let msg: ServerMessage = serde_json::from_str(&text).context("welcome is not a server message")?;
    if msg.kind != "welcome" {
        bail!("expected a welcome first, got {:?}", msg.kind);
    }
    let welcome: Welcome = serde_json::from_value(msg.data).context("malformed welcome data")?;
    Ok(Connection {
        ws,
        welcome,
        welcome_text: text.as_str().to_owned(),
    })
}

/// The TCP connection to `target` with the options' source address and receive
/// buffer, Nagle off.
pub(crate) async fn tcp_connect(target: &Target, opts: &ConnectOptions) -> Result<TcpStream> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = opts.local_ip {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    if let Some(size) = opts.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("TCP connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether a connect error is worth retrying: an HTTP refusal of the upgrade (404, 400, 401,
/// 403) will not go away by itself — a refused token stays refused, and these clients
/// cannot refresh one — whereas refused TCP, timeouts, 429 and 5xx may.
pub(crate) fn connect_error_is_permanent(err: &anyhow::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    err.chain().any(|cause| match cause.downcast_ref::<WsError>() {
        Some(WsError::Http(response)) => {
            let status = response.status().as_u16();
            (400..500).contains(&status) && !matches!(status, 408 | 429)
        }
        Some(WsError::Url(_)) => true,
        _ => tls::is_certificate_error(cause),
    })
}

/// A client → server command frame.
pub(crate) fn command(kind: &str, id: &str, data: Value) -> Message {
    Message::text(json!({"type": kind, "id": id, "data": data}).to_string())
}

/// What a close frame (or its absence) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseInfo {
    /// The code; `None` when the connection closed without a close frame.
    pub(crate) code: Option<u16>,
    /// The reason text.
    pub(crate) reason: String,
}

impl CloseInfo {
    /// From a received close frame.
    pub(crate) fn from_frame(frame: Option<&CloseFrame>) -> CloseInfo {
        match frame {
            Some(f) => CloseInfo {
                code: Some(u16::from(f.code)),
                reason: f.reason.as_str().to_owned(),
            },
            None => CloseInfo {
                code: None,
                reason: String::new(),
            },
        }
    }

    /// Whether to reconnect, per the protocol's close-code table. Codes outside the table
    /// follow RFC 6455: only "service restart" and "try again later" invite a retry.
    pub(crate) fn should_reconnect(&self) -> bool {
        match self.code {
            None => true,
            Some(code) => match CloseCode::from_code(code) {
                Some(known) => known.reconnect(),
                None => matches!(code, 1006 | 1012 | 1013),
            },
        }
    }

    /// The last seq the server says it delivered (`slow_consumer last_seq=123`).
    pub(crate) fn last_seq(&self) -> Option<u64> {
        let rest = &self.reason[self.reason.find("last_seq=")? + "last_seq=".len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    }
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            None => f.write_str("no close frame"),
            Some(code) => {
                let name = CloseCode::from_code(code).map_or("unknown", CloseCode::name);
                write!(f, "close {code} ({name})")?;
                if !self.reason.is_empty() {
                    write!(f, ": {}", self.reason)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(code: Option<u16>, reason: &str) -> CloseInfo {
        CloseInfo {
            code,
            reason: reason.into(),
        }
    }

    #[test]
    fn close_codes_decide_reconnect() {
        assert!(info(Some(1001), "shutdown").should_reconnect());
        assert!(info(Some(4008), "slow_consumer last_seq=5").should_reconnect());
        assert!(info(None, "").should_reconnect());
        assert!(!info(Some(1000), "").should_reconnect());
        assert!(!info(Some(1002), "").should_reconnect());
        assert!(!info(Some(4403), "").should_reconnect());
        assert!(!info(Some(4999), "").should_reconnect());
        assert!(info(Some(1012), "").should_reconnect());
    }

    #[test]
    fn last_seq_from_reason() {
        assert_eq!(info(Some(4008), "slow_consumer last_seq=123").last_seq(), Some(123));
        assert_eq!(
            info(Some(4008), "slow_consumer last_seq=7 queue=1024").last_seq(),
            Some(7)
        );
        assert_eq!(info(Some(4008), "slow_consumer").last_seq(), None);
        assert_eq!(info(Some(4008), "last_seq=").last_seq(), None);
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(info(Some(4008), "x").to_string(), "close 4008 (slow_consumer): x");
        assert_eq!(info(None, "").to_string(), "no close frame");
    }

    #[test]
    fn permanent_errors() {
        let not_found = tokio_tungstenite::tungstenite::Error::Http(Box::new(
            tokio_tungstenite::tungstenite::http::Response::builder()
                .status(404)
                .body(None)
                .expect("static response"),
        ));
        assert!(connect_error_is_permanent(&anyhow!(not_found).context("handshake")));
        assert!(!connect_error_is_permanent(&anyhow!("connection refused")));
        let status = |code: u16| {
            anyhow!(tokio_tungstenite::tungstenite::Error::Http(Box::new(
                tokio_tungstenite::tungstenite::http::Response::builder()
                    .status(code)
                    .body(None)
                    .expect("static response"),
            )))
        };
        assert!(
            connect_error_is_permanent(&status(401)),
            "a refused token stays refused"
        );
        assert!(!connect_error_is_permanent(&status(429)));
        assert!(!connect_error_is_permanent(&status(503)));
    }
}
