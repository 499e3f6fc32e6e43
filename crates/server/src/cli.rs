//! `sigmavault serve`: configuration, logging, signals, the listening line.

use std::io::Write;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, ServeArgs};

/// Exit status for an unusable configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status when the database cannot be opened, is damaged or is too new (EX_DATAERR
/// would hide I/O problems; 74 is EX_IOERR, which covers both).
pub const EXIT_STORE: u8 = 74;

/// Runs the server until SIGINT/SIGTERM. Exit 0 after a graceful shutdown,
/// 64 on bad configuration, 1 when the server cannot start.
pub fn serve_main(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sigmavault: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = init_tracing(&config) {
        eprintln!("sigmavault: invalid configuration: log-level: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sigmavault: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::prepare_data_dir(&config.data_dir) {
        eprintln!("sigmavault: {e}");
        return ExitCode::FAILURE;
    }
    let code = runtime.block_on(async move {
        // The database before the socket: a damaged or too-new database stops the
        // start-up with one clear line, before anything is announced.
        let opened = match crate::open_store(&config).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("sigmavault: {e}");
                // A certificate or signing key that cannot be used is a configuration problem.
                return match e {
                    crate::ServerError::Auth(crate::auth::AuthError::Store(_)) => ExitCode::from(EXIT_STORE),
                    crate::ServerError::Tls(_) | crate::ServerError::Auth(_) => ExitCode::from(EXIT_CONFIG),
                    _ => ExitCode::from(EXIT_STORE),
                };
            }
        };
        let want = config.listen_addr();
        // Every early exit below stops the store first, so its writer finishes cleanly.
        let bound = crate::net::bind(want)
            .map_err(|e| format!("cannot listen on {want}: {e}"))
            .and_then(|l| l.local_addr().map(|a| (l, a)).map_err(|e| e.to_string()))
            // Handlers first: a supervisor may send SIGTERM the moment it reads the line.
            .and_then(|(l, a)| {
                Signals::install()
                    .map(|s| (l, a, s))
                    .map_err(|e| format!("cannot install signal handlers: {e}"))
            });
        let (listener, addr, signals) = match bound {
            Ok(b) => b,
            Err(e) => {
                eprintln!("sigmavault: {e}");
                opened.close().await;
                return ExitCode::FAILURE;
            }
        };
        let mut stdout = std::io::stdout();
        let scheme = if opened.tls() { "https" } else { "http" };
        let _ = writeln!(stdout, "listening on {scheme}://{addr}");
        let _ = stdout.flush();
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.wait_then_cancel(shutdown.clone()));
        match crate::run_opened(config, opened, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    });
    // A blocking call that never returns (statvfs on a hung NFS mount, a smartctl
    // stuck in the kernel) must not hold the exit: everything that matters is
    // flushed and closed by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// SIGINT and SIGTERM, registered with the runtime before the server announces itself.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn wait_then_cancel(mut self, shutdown: CancellationToken) {
        // Cancel first, log second: nothing may stand between a signal and the shutdown.
        #[cfg(unix)]
        let signal = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        #[cfg(not(unix))]
        let signal = {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        };
        shutdown.cancel();
        tracing::info!(signal, "signal received; shutting down");
    }
}

/// Logs go to stderr; stdout carries only the `listening on` line.
/// Libraries that log message or header contents at TRACE (tungstenite logs every
/// frame it receives, `auth` messages with their tokens included): capped at
/// INFO whatever the configured level, so no log level ever prints a credential.
const CAPPED_LIBRARIES: &[&str] = &["tungstenite", "tokio_tungstenite", "hyper", "hyper_util"];

/// The log filter for `--log-level`, with [`CAPPED_LIBRARIES`] capped.
pub fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    for lib in CAPPED_LIBRARIES {
        let directive = format!("{lib}=info").parse().map_err(|e| format!("{e}"))?;
        filter = filter.add_directive(directive);
    }
    Ok(filter)
}

fn init_tracing(config: &Config) -> Result<(), String> {
    let filter = log_filter(&config.log_level)?;
    // No colour codes when stderr is a file or a pipe (journald, log shippers).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // If whoever reads stderr goes away, logging must not panic the server
        // (tracing reports its own write errors with `eprintln!`, which panics).
        .log_internal_errors(false)
        .with_ansi(ansi);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
