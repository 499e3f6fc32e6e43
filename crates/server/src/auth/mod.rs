//! Who may do what: users, login sessions, access tokens, API keys, roles,
//! and the limits on the doors (login attempts, REST requests, sockets).
//!
//! The store holds the truth; [`Auth`] keeps an in-memory index of the users,
//! live sessions and valid keys (loaded at start, updated after every committed
//! change) so that checking a token on every request or socket is a signature
//! check plus a hash-map lookup, never a database read. The CLI changes
//! accounts only while the server is stopped (the data-dir lock), so the index
//! cannot go stale behind the server's back.

pub mod bootstrap;
pub mod jwt;
pub mod limits;
pub mod password;
pub mod secrets;
pub mod service;
pub mod sockets;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::config::SecurityConfig;
use crate::hub::Hub;
use crate::store::accounts::{self, Role};
use crate::store::audit::Actor;
use crate::store::{Store, StoreError};

pub use service::{KeyCreated, TokenPair};
pub use sockets::{SocketCaps, SocketSlot};

/// API keys start with this, so a token is recognised as a key without a lookup.
pub const KEY_PREFIX: &str = "svk_";
/// Refresh tokens start with this.
pub const REFRESH_PREFIX: &str = "svr_";
/// The file the generated first admin password is written to (in the data dir).
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
/// The signing-key file (in the data dir, unless configured elsewhere).
pub const SIGNING_KEY_FILE: &str = "jwt-secret";

/// Why a request or socket is not let in (or an account change is refused).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent.
    #[error("authentication required: send Authorization: Bearer <token> or X-API-Key")]
    Missing,
    /// A token or key that is malformed, forged or unknown.
    #[error("invalid token")]
    InvalidToken,
    /// A well-formed token past its expiry.
    #[error("token expired; refresh it")]
    Expired,
    /// The token's session or key was revoked, or its user disabled.
    #[error("token revoked")]
    Revoked,
    /// Wrong username or password (one message for both).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; retry after this long.
    #[error("too many requests; retry in {} s", limits::retry_after_secs(*.0))]
    RateLimited(Duration),
    /// A request field is unacceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The signing key cannot be used.
    #[error("token signing key: {0}")]
    Secret(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an unexpected failure (details logged, not sent).
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// A stable code for error bodies and frames.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthorized",
            AuthError::InvalidToken => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "token_revoked",
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::RateLimited(_) => "rate_limited",
            AuthError::Invalid { .. } => "validation_failed",
            AuthError::Secret(_) | AuthError::Internal(_) => "internal",
            AuthError::Store(e) => e.code(),
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An access token of this login session.
    Session(Arc<str>),
    /// This API key.
    Key(i64),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: i64,
    /// User name.
    pub username: Arc<str>,
    /// Effective role (a key's role capped by its user's).
    pub role: Role,
    /// Session or key.
    pub credential: Credential,
    /// When the credential stops working (Unix seconds); `None` for keys.
    pub expires_at: Option<i64>,
}

impl Principal {
    /// Whether the principal may write.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuses non-admins.
    pub fn require_admin(&self) -> Result<(), AuthError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AuthError::Forbidden("this action needs the admin role".into()))
        }
    }

    /// The audit actor: the user name, with the key id for keys.
    pub fn actor(&self, ip: IpAddr) -> Actor {
        let name = match &self.credential {
            Credential::Session(_) => self.username.to_string(),
            Credential::Key(id) => format!("{} (key {id})", self.username),
        };
        Actor {
            name,
            ip: ip.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct UserEntry {
    username: Arc<str>,
    role: Role,
    disabled: bool,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    id: i64,
    user_id: i64,
    role: Role,
}

/// The in-memory index of what can authenticate.
#[derive(Default)]
struct Index {
    users: HashMap<i64, UserEntry>,
    /// Live login sessions: id → (user, end of the session in Unix ms).
    sessions: HashMap<Arc<str>, (i64, i64)>,
    /// Valid keys by digest.
    keys: HashMap<String, KeyEntry>,
    /// Digests of revoked keys: answered `token_revoked`, not `invalid_token`.
    revoked_keys: std::collections::HashSet<String>,
}

/// Handle to the auth service; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    cfg: SecurityConfig,
    store: Store,
    hub: Hub,
    signer: jwt::Signer,
    hasher: password::Hasher,
    index: RwLock<Index>,
    /// Last `last_used_at` write per key, so a busy script costs one write a minute.
    key_touched: Mutex<HashMap<i64, Instant>>,
    http_limit: limits::Limiter<IpAddr>,
    login_ip_limit: limits::Limiter<IpAddr>,
    login_user_limit: limits::Limiter<(String, IpAddr)>,
    sockets: SocketCaps,
    data_dir: std::path::PathBuf,
}

/// Ended sessions are deleted from the store every this many prune rounds (minutes).
const STORE_PRUNE_EVERY: u64 = 60;

/// How often a key's `last_used_at` is written at most.
const KEY_TOUCH_EVERY: Duration = Duration::from_secs(60);

impl Auth {
    /// Loads the signing key and the index; creates the first admin when there
    /// are no users (see [`bootstrap`]).
    pub async fn start(
        cfg: SecurityConfig,
        data_dir: &std::path::Path,
        store: Store,
        hub: Hub,
    ) -> Result<Auth, AuthError> {
        let key_path = cfg
            .jwt_secret_file
            .clone()
            .unwrap_or_else(|| data_dir.join(SIGNING_KEY_FILE));
        let create = cfg.jwt_secret_file.is_none();
        let key = tokio::task::spawn_blocking(move || secrets::load_or_create_signing_key(&key_path, create))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))??;
        let concurrency = cfg.password_hash_concurrency;
        let hasher = tokio::task::spawn_blocking(move || password::Hasher::new(concurrency))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))??;
        let auth = Auth {
            inner: Arc::new(AuthInner {
                signer: jwt::Signer::new(&key, cfg.token_leeway.as_secs()),
                hasher,
                http_limit: limits::Limiter::new(cfg.http_rate_limit),
                login_ip_limit: limits::Limiter::new(cfg.login_rate_limit),
                login_user_limit: limits::Limiter::new(cfg.login_user_rate_limit),
                sockets: SocketCaps::new(cfg.ws_max_per_ip, cfg.ws_max_per_user),
                cfg,
                store,
                hub,
                index: RwLock::new(Index::default()),
                key_touched: Mutex::new(HashMap::new()),
                data_dir: data_dir.to_path_buf(),
            }),
        };
        bootstrap::ensure_admin(&auth).await?;
        auth.reload().await?;
        Ok(auth)
    }

    /// Rebuilds the index from the store.
    async fn reload(&self) -> Result<(), AuthError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (users, sessions, keys) = self
            .inner
            .store
            .read(move |c| {
                Ok((
                    accounts::list_users(c)?,
                    accounts::active_sessions(c, now_ms)?,
                    accounts::key_hashes(c)?,
                ))
            })
            .await?;
        let mut index = Index::default();
        for u in users {
            index.users.insert(
                u.id,
                UserEntry {
                    username: Arc::from(u.username),
                    role: u.role,
                    disabled: u.disabled,
                },
            );
        }
        for s in sessions {
            index.sessions.insert(Arc::from(s.id), (s.user_id, s.expires_ms));
        }
        for (hash, k) in keys {
            if k.revoked_at.is_some() {
                index.revoked_keys.insert(hash);
                continue;
            }
            index.keys.insert(
                hash,
                KeyEntry {
                    id: k.id,
                    user_id: k.user_id,
                    role: k.role,
                },
            );
        }
        *self.inner.index.write() = index;
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &SecurityConfig {
        &self.inner.cfg
    }

    /// The per-IP and per-user socket counters.
    pub fn sockets(&self) -> &SocketCaps {
        &self.inner.sockets
    }

    /// Takes one REST request token for `ip`.
    pub fn check_http_rate(&self, ip: IpAddr) -> Result<(), AuthError> {
        self.inner.http_limit.check(&ip).map_err(AuthError::RateLimited)
    }

    /// Forgets idle limiter buckets (called periodically).
    pub fn forget_idle(&self) {
        self.inner.http_limit.forget_idle();
        self.inner.login_ip_limit.forget_idle();
        self.inner.login_user_limit.forget_idle();
    }

    /// Checks an access token or API key.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.starts_with(KEY_PREFIX) {
            return self.authenticate_key(token);
        }
        let now = chrono::Utc::now().timestamp();
        let claims = self.inner.signer.verify(token, now)?;
        let user_id: i64 = claims.sub.parse().map_err(|_| AuthError::InvalidToken)?;
        let index = self.inner.index.read();
        let (sid, owner) = index
            .sessions
            .get_key_value(claims.sid.as_str())
            .ok_or(AuthError::Revoked)?;
        if owner.0 != user_id {
            return Err(AuthError::InvalidToken);
        }
        let user = index.users.get(&user_id).ok_or(AuthError::Revoked)?;
        if user.disabled {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            user_id,
            username: user.username.clone(),
            role: user.role,
            credential: Credential::Session(sid.clone()),
            expires_at: Some(claims.exp),
        })
    }

    fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        let digest = secrets::digest(key);
        let principal = {
            let index = self.inner.index.read();
            let entry = match index.keys.get(&digest) {
                Some(e) => e,
                None if index.revoked_keys.contains(&digest) => return Err(AuthError::Revoked),
                None => return Err(AuthError::InvalidToken),
            };
            let user = index.users.get(&entry.user_id).ok_or(AuthError::Revoked)?;
            if user.disabled {
                return Err(AuthError::Revoked);
            }
            Principal {
                user_id: entry.user_id,
                username: user.username.clone(),
                role: entry.role.min(user.role),
                credential: Credential::Key(entry.id),
                expires_at: None,
            }
        };
        if let Credential::Key(id) = principal.credential {
            self.touch_key(id);
        }
        Ok(principal)
    }

    /// Records a key's use, at most once a minute per key, off the request path.
    fn touch_key(&self, id: i64) {
        {
            let mut touched = self.inner.key_touched.lock();
            if touched.get(&id).is_some_and(|t| t.elapsed() < KEY_TOUCH_EVERY) {
                return;
            }
            touched.insert(id, Instant::now());
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.write(move |tx| accounts::touch_key(tx.conn(), id)).await {
                tracing::debug!(key_id = id, error = %e, "could not record API key use");
            }
        });
    }

    /// Adds a session that ends `ttl_ms` from now to the index.
    fn index_session(&self, sid: &str, user_id: i64, ttl_ms: i64) {
        let ends = chrono::Utc::now().timestamp_millis() + ttl_ms;
        self.inner
            .index
            .write()
            .sessions
            .insert(Arc::from(sid), (user_id, ends));
    }

    /// Drops ended sessions from the index, and (every `STORE_PRUNE_EVERY`
    /// rounds) sessions that ended over a day ago from the store, so neither
    /// grows with every login for the life of the server.
    pub async fn prune_sessions(&self, round: u64) {
        let now = chrono::Utc::now().timestamp_millis();
        self.inner.index.write().sessions.retain(|_, (_, ends)| *ends > now);
        if round.is_multiple_of(STORE_PRUNE_EVERY) {
            let before = now - 24 * 3600 * 1000;
            match self
                .inner
                .store
                .write(move |tx| accounts::prune_sessions(tx.conn(), before))
                .await
            {
                Ok((n, _)) if n > 0 => tracing::info!(sessions = n, "pruned ended login sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune ended login sessions"),
            }
        }
    }

    /// Whether a socket's credential is still good. Checked once a socket is
    /// registered, so a revocation racing its upgrade cannot miss it: the
    /// revoker changes the index before it walks the registered sockets.
    pub fn still_valid(&self, a: &SocketAuth) -> bool {
        let index = self.inner.index.read();
        let Some(user) = index.users.get(&a.user_id) else {
            return false;
        };
        if user.disabled {
            return false;
        }
        match &a.credential {
            Credential::Session(sid) => {
                index.sessions.get(sid).is_some_and(|(u, _)| *u == a.user_id) && user.role == a.role
            }
            Credential::Key(id) => index
                .keys
                .values()
                .any(|k| k.id == *id && k.role.min(user.role) == a.role),
        }
    }

    /// Closes every socket authenticated by `credential` with 4401.
    fn close_credential(&self, credential: &Credential, reason: &str) {
        let n = self
            .inner
            .hub
            .close_authenticated(|a| a.credential == *credential, reason);
        if n > 0 {
            tracing::info!(sockets = n, reason, "closed sockets of a revoked credential");
        }
    }

    /// Closes every socket of a user with 4401.
    fn close_user(&self, user_id: i64, reason: &str) {
        let n = self.inner.hub.close_authenticated(|a| a.user_id == user_id, reason);
        if n > 0 {
            tracing::info!(user_id, sockets = n, reason, "closed a user's sockets");
        }
    }
}

/// What the hub keeps about a socket's authentication.
#[derive(Debug, Clone)]
pub struct SocketAuth {
    /// Whose socket.
    pub user_id: i64,
    /// Its credential (revoking it closes the socket).
    pub credential: Credential,
    /// Its role (fixed for the socket's life: a role change closes it).
    pub role: Role,
    /// Unix milliseconds after which the socket is closed with 4401; `None` for keys.
    pub expires_at_ms: Option<i64>,
    /// Whether `auth.expiring` was sent for the current token.
    pub warned: bool,
}

impl SocketAuth {
    /// From a principal.
    pub fn from_principal(p: &Principal) -> SocketAuth {
        SocketAuth {
            user_id: p.user_id,
            credential: p.credential.clone(),
            role: p.role,
            expires_at_ms: p.expires_at.map(|s| s * 1000),
            warned: false,
        }
    }
}
