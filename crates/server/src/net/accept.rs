//! The accept loop: one hyper HTTP/1.1 connection per socket, with upgrades.
//!
//! Our own loop rather than `axum::serve`, for three reasons: accept errors such
//! as EMFILE must back off and be logged once per interval (not every second
//! forever); every socket gets a bounded send buffer so a client that stops
//! reading is noticed; and hyper's header-size and idle limits must be set.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Largest request head (request line + headers) hyper buffers; larger → 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How often a persisting accept error is logged.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Errors that concern one connection only; the next accept may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn configure(stream: &TcpStream, config: &Config) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    if let Err(e) = sock.set_send_buffer_size(config.ws_send_buffer) {
        tracing::debug!(error = %e, "could not set SO_SNDBUF");
    }
}

/// Accepts until `shutdown`. Each connection task, on `shutdown`, lets its
/// in-flight request finish and then closes; the caller waits on `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tracker: &TaskTracker,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.http_idle_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let mut backoff = Duration::from_millis(5);
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: out of a resource. Back off, log now and then.
                failing_since.get_or_insert_with(Instant::now);
                if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                    tracing::error!(error = %e, suppressed, backoff_ms = backoff.as_millis() as u64,
                        "accept failed (out of descriptors?); backing off");
                    last_log = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if let Some(since) = failing_since.take() {
            tracing::warn!(
                failed_for_ms = since.elapsed().as_millis() as u64,
                "accepting connections again"
            );
            last_log = None;
        }
        backoff = Duration::from_millis(5);
        configure(&stream, config);
        let service = tower::ServiceExt::map_request(router.clone(), move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let shutdown = shutdown.clone();
        let abort = abort.clone();
        let http = http.clone();
        let handshake_timeout = config.http_idle_timeout;
        match tls.clone() {
            None => {
                tracker.spawn(serve_one(http, stream, service, peer, shutdown, abort));
            }
            Some(acceptor) => {
                tracker.spawn(async move {
                    // A client that never finishes the handshake holds a descriptor only this long.
                    let stream = tokio::select! {
                        r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    serve_one(http, stream, service, peer, shutdown, abort).await;
                });
            }
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one accepted stream until it closes or
/// the shutdown grace ends.
async fn serve_one<I, S>(
    http: hyper::server::conn::http1::Builder,
    stream: I,
    service: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
    abort: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    {
        {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close; at the end of the
                    // grace period, drop it.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = abort.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "http connection ended with an error");
            }
        }
    }
}
