//! SigmaVault server: everything that runs inside `sigmavault serve`.
//!
//! [`run`] serves on a bound listener until a shutdown token fires; tests bind
//! `127.0.0.1:0` and call [`start`]. The hub (`hub/`) is the heart: see its
//! module docs and `docs/architecture.md`.

pub mod alerts;
pub mod auth;
pub mod breaker;
pub mod cli;
pub mod collect;
pub mod config;
pub mod http;
pub mod hub;
pub mod net;
pub mod shares;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use hub::{Hub, HubConfig};

/// The server's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory cannot be created or secured.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database cannot be opened, is too new, or is damaged.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The bound listener has no address.
    #[error("listener has no local address: {0}")]
    LocalAddr(std::io::Error),
    /// Accounts could not start (signing key, first admin).
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] net::TlsError),
}

/// Serves until `shutdown` is cancelled, then shuts down in order: stop
/// accepting → close every WebSocket with 1001 → let in-flight HTTP requests
/// finish → wait for every task, at most `shutdown_grace`, then abort the rest.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ServerError> {
    let opened = open_store(&config).await?;
    run_opened(config, opened, listener, shutdown).await
}

/// [`run`] with the store already opened by [`open_store`] (so a damaged
/// database is reported before the server announces its address).
pub async fn run_opened(
    config: Config,
    opened: OpenedStore,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let OpenedStore {
        store,
        hub,
        tracker,
        abort_all,
        auth,
        tls,
        lock: _lock,
    } = opened;
    tracker.spawn(forget_idle_limits(auth.clone(), shutdown.clone()));
    hub.start_background(shutdown.clone());
    tracker.spawn(store::retention::task(
        store.clone(),
        config.retention_interval,
        shutdown.clone(),
    ));
    let alerts = alerts::Alerts::start(store.clone(), alerts::Rules::from(&config), &tracker).await?;
    let sources = collect::sources(&config);
    alerts.retain_sources(&sources.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>());
    let collectors = collect::scheduler::spawn(
        hub.clone(),
        sources,
        collect::scheduler::ScheduleConfig::from(&config),
        Some(alerts.clone()),
        &tracker,
        shutdown.clone(),
    );
    let config = Arc::new(config);
    let app = http::AppState {
        auth,
        alerts,
        collectors,
        store: store.clone(),
        hub: hub.clone(),
        config: config.clone(),
        started_at: chrono::Utc::now(),
        started: Instant::now(),
    };
    let router = http::router(app);
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        max_connections = config.max_connections,
        epoch = hub.epoch(),
        seq = hub.head(),
        durable_history = store.durable(),
        "serving"
    );

    net::serve(
        listener,
        router,
        &config,
        shutdown.clone(),
        abort_all.clone(),
        &tracker,
        tls,
    )
    .await;

    tracing::info!(
        clients = hub.client_count(),
        "shutting down: closing websockets with 1001"
    );
    hub.close_all();
    tracker.close();
    let drained = tokio::time::timeout(config.shutdown_grace, tracker.wait()).await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = config.shutdown_grace.as_millis() as u64,
            remaining_tasks = tracker.len(),
            "shutdown grace period expired; aborting what is left"
        );
        abort_all.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
    }
    // Last: everything that could still write has stopped.
    store.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The open database and the hub that continues its history, ready for [`run_opened`].
pub struct OpenedStore {
    store: store::Store,
    hub: Hub,
    tracker: TaskTracker,
    abort_all: CancellationToken,
    auth: auth::Auth,
    tls: Option<tokio_rustls::TlsAcceptor>,
    lock: store::backup::DataDirLock,
}

impl OpenedStore {
    /// The hub (not serving yet).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Whether connections are served over TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Stops the store without serving (start-up failed after it was opened).
    pub async fn close(self) {
        self.store.close().await;
    }
}

/// Prepares the data directory, takes its lock, and opens (and migrates) the
/// database off the async threads.
pub async fn open_store(config: &Config) -> Result<OpenedStore, ServerError> {
    let tls = match (&config.security.tls_cert, &config.security.tls_key) {
        (Some(cert), Some(key)) => Some(net::load_acceptor(cert, key)?),
        _ => None,
    };
    prepare_data_dir(&config.data_dir)?;
    let cfg = store::StoreConfig::from(config);
    let dir = config.data_dir.clone();
    let (store, history, lock) = tokio::task::spawn_blocking(move || {
        let lock = store::backup::lock_data_dir(&dir)?;
        let (store, history) = store::Store::open(cfg)?;
        Ok::<_, store::StoreError>((store, history, lock))
    })
    .await
    .map_err(|e| store::StoreError::Sqlite(format!("opening the store failed: {e}")))??;
    let tracker = TaskTracker::new();
    let abort_all = CancellationToken::new();
    let hub = Hub::with_store(
        HubConfig::from(config),
        Some(store.clone()),
        history,
        tracker.clone(),
        abort_all.clone(),
    );
    store.attach(hub.clone());
    let auth = match auth::Auth::start(config.security.clone(), &config.data_dir, store.clone(), hub.clone()).await {
        Ok(a) => a,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    Ok(OpenedStore {
        store,
        hub,
        tracker,
        abort_all,
        auth,
        tls,
        lock,
    })
}

/// Forgets idle rate-limit buckets now and then, so a spray of addresses
/// cannot grow them without bound.
async fn forget_idle_limits(auth: auth::Auth, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    for round in 1.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        auth.forget_idle();
        auth.prune_sessions(round).await;
    }
}

/// A server running in this process (tests, embedding).
pub struct RunningServer {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Cancel to begin a graceful shutdown.
    pub shutdown: CancellationToken,
    /// The hub (to publish server-internal events from tests and embedders).
    pub hub: Hub,
    handle: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Shuts down gracefully and waits for the end.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the server to end (after `shutdown` was cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Creates the data directory if needed and makes it private (0700): it will
/// hold the database and secrets.
pub fn prepare_data_dir(path: &std::path::Path) -> Result<(), ServerError> {
    let err = |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path).map_err(err)?;
    Ok(())
}

/// Prepares the data directory, binds `config.listen_addr()` and runs the server
/// on a new task.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let opened = open_store(&config).await?;
    let hub = opened.hub.clone();
    let want = config.listen_addr();
    let bound = net::bind(want)
        .map_err(|source| ServerError::Bind { addr: want, source })
        .and_then(|l| l.local_addr().map(|a| (l, a)).map_err(ServerError::LocalAddr));
    let (listener, addr) = match bound {
        Ok(b) => b,
        Err(e) => {
            // Stop the writer thread (it holds the hub) and release the data dir.
            opened.close().await;
            return Err(e);
        }
    };
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run_opened(config, opened, listener, shutdown.clone()));
    Ok(RunningServer {
        addr,
        shutdown,
        hub,
        handle,
    })
}
