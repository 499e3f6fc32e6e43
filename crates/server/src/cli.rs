//! `sigmavault serve`: configuration, logging, signals, the listening line.

use std::io::Write;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, ServeArgs};

/// Exit status for an unusable configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

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
    runtime.block_on(async move {
        let want = config.listen_addr();
        let listener = match crate::net::bind(want) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sigmavault: cannot listen on {want}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("sigmavault: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match crate::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "signal received; shutting down"),
        _ = terminate => tracing::info!(signal = "SIGTERM", "signal received; shutting down"),
    }
    shutdown.cancel();
}

/// Logs go to stderr; stdout carries only the `listening on` line.
fn init_tracing(config: &Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).map_err(|e| e.to_string())?;
    // No colour codes when stderr is a file or a pipe (journald, log shippers).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
