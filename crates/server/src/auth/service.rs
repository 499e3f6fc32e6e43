//! The account operations behind the REST endpoints and the CLI: log in,
//! refresh, log out, manage users and API keys.
//!
//! Each change is one store transaction that also writes its audit record (and
//! so its `audit.*` event). Only after the commit does the in-memory index
//! change and do the affected sockets close, so a refused write changes nothing.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::store::accounts::{self, ApiKey, Role, User};
use crate::store::audit::{self, Actor};
use crate::store::{StoreError, WriteTx};

use super::{Auth, AuthError, Credential, KEY_PREFIX, KeyEntry, Principal, REFRESH_PREFIX, jwt, password, secrets};

/// What a login or refresh returns.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    /// The JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Single-use; exchange at `/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    /// The login session (what logout revokes).
    pub session_id: String,
}

/// A new key: the record and, this once, the secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCreated {
    /// The stored record.
    #[serde(flatten)]
    pub record: ApiKey,
    /// The key itself; not retrievable later.
    pub key: String,
}

use super::users::{MAX_USER_AGENT, MAX_USERNAME};
pub use super::users::{
    check_password, check_username, create_user_tx, forget_initial_password, set_password_tx, update_user_tx,
};

/// Longest key name.
const MAX_KEY_NAME: usize = 100;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Auth {
    /// Takes a login attempt from the per-IP and per-(user, IP) buckets.
    pub fn check_login_rate(&self, username: &str, ip: IpAddr) -> Result<(), AuthError> {
        self.inner.login_ip_limit.check(&ip).map_err(AuthError::RateLimited)?;
        self.inner
            .login_user_limit
            .check(&(
                accounts::username_key(&username.chars().take(MAX_USERNAME).collect::<String>()),
                ip,
            ))
            .map_err(AuthError::RateLimited)
    }

    pub(super) fn issue(&self, user_id: i64, sid: &str, refresh_token: String) -> Result<TokenPair, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let ttl = self.inner.cfg.access_token_ttl.as_secs().max(1);
        let claims = jwt::Claims {
            sub: user_id.to_string(),
            sid: sid.to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now + ttl as i64,
            typ: "access".into(),
        };
        Ok(TokenPair {
            access_token: self.inner.signer.sign(&claims)?,
            refresh_token,
            token_type: "Bearer",
            expires_in: ttl,
            session_id: sid.to_owned(),
        })
    }

    /// Opens a session for a verified user inside `tx`; returns its id and refresh token.
    pub(super) fn open_session_tx(
        tx: &mut WriteTx<'_>,
        user_id: i64,
        session_ttl_ms: i64,
        ip: &str,
        user_agent: &str,
    ) -> Result<(String, String), StoreError> {
        let sid = uuid::Uuid::new_v4().to_string();
        let refresh = secrets::random_token(REFRESH_PREFIX, 32);
        let now = now_ms();
        accounts::insert_session(tx.conn(), &sid, user_id, now + session_ttl_ms, ip, user_agent)?;
        accounts::insert_refresh(tx.conn(), &secrets::digest(&refresh), &sid, now)?;
        Ok((sid, refresh))
    }

    pub(super) fn session_ttl_ms(&self) -> i64 {
        self.inner.cfg.refresh_token_ttl.as_millis() as i64
    }

    /// Checks a username and password; on success opens a session.
    pub async fn login(
        &self,
        username: &str,
        pw: String,
        ip: IpAddr,
        user_agent: &str,
    ) -> Result<(TokenPair, User), AuthError> {
        let name = username.to_owned();
        let found = self.inner.store.read(move |c| accounts::find_login(c, &name)).await?;
        let stored = found.as_ref().map(|(_, h)| h.clone());
        let needs_rehash = stored.as_deref().is_some_and(password::needs_rehash);
        let ok = self.inner.hasher.verify(pw.clone(), stored).await?;
        let attempted: String = username.chars().take(MAX_USERNAME).collect();
        let actor = Actor {
            name: attempted.clone(),
            ip: ip.to_string(),
        };
        let user = match found {
            Some((user, _)) if ok && !user.disabled => user,
            other => {
                let why = match other {
                    None => "no such user",
                    Some((u, _)) if u.disabled && ok => "account disabled",
                    Some(_) => "wrong password",
                };
                tracing::info!(username = %attempted, client_ip = %ip, "login failed");
                let detail = json!({"reason": why});
                let _ = self
                    .inner
                    .store
                    .write(move |tx| {
                        audit::record(tx, &actor, "auth.login_failed", &format!("user:{attempted}"), detail)
                    })
                    .await;
                return Err(AuthError::InvalidCredentials);
            }
        };
        let rehash = if needs_rehash {
            Some(self.inner.hasher.hash(pw).await?)
        } else {
            None
        };
        let ttl = self.session_ttl_ms();
        let ua: String = user_agent.chars().take(MAX_USER_AGENT).collect();
        let user_id = user.id;
        let ip_text = ip.to_string();
        let (((sid, refresh), user), _) = self
            .inner
            .store
            .write(move |tx| {
                if let Some(h) = &rehash {
                    accounts::set_password_hash(tx.conn(), user_id, h, false)?;
                }
                accounts::touch_login(tx.conn(), user_id)?;
                let opened = Self::open_session_tx(tx, user_id, ttl, &ip_text, &ua)?;
                audit::record(
                    tx,
                    &actor,
                    "auth.login",
                    &format!("user/{user_id}"),
                    json!({"session_id": opened.0, "rehashed": rehash.is_some()}),
                )?;
                Ok((opened, accounts::get_user(tx.conn(), user_id)?))
            })
            .await?;
        self.index_session(&sid, user_id, ttl);
        tracing::info!(user_id, username = %user.username, client_ip = %ip, "login");
        let pair = self.issue(user_id, &sid, refresh)?;
        Ok((pair, user))
    }

    /// Exchanges a refresh token for a new pair. A token used twice revokes its
    /// whole session (someone else has a copy) and closes its sockets.
    pub async fn refresh(&self, token: &str, ip: IpAddr) -> Result<TokenPair, AuthError> {
        if !token.starts_with(REFRESH_PREFIX) {
            return Err(AuthError::InvalidToken);
        }
        let hash = secrets::digest(token);
        let next = secrets::random_token(REFRESH_PREFIX, 32);
        let next_hash = secrets::digest(&next);
        let ip_text = ip.to_string();
        enum Outcome {
            Rotated(String, i64),
            Reused(String),
            Refused(AuthError),
        }
        let disabled: std::collections::HashSet<i64> = self
            .inner
            .index
            .read()
            .users
            .iter()
            .filter(|(_, u)| u.disabled)
            .map(|(id, _)| *id)
            .collect();
        let (outcome, _) = self
            .inner
            .store
            .write(move |tx| {
                let now = now_ms();
                let Some(found) = accounts::find_refresh(tx.conn(), &hash)? else {
                    return Ok(Outcome::Refused(AuthError::InvalidToken));
                };
                if found.session_revoked || found.expires_ms <= now || disabled.contains(&found.user_id) {
                    return Ok(Outcome::Refused(AuthError::Revoked));
                }
                if found.used {
                    accounts::revoke_session(tx.conn(), &found.session_id, "refresh token reused")?;
                    audit::record(
                        tx,
                        &Actor {
                            name: format!("user/{}", found.user_id),
                            ip: ip_text,
                        },
                        "auth.refresh_reused",
                        &format!("session/{}", found.session_id),
                        json!({"action": "session revoked"}),
                    )?;
                    return Ok(Outcome::Reused(found.session_id));
                }
                accounts::use_refresh(tx.conn(), &hash, &found.session_id, now)?;
                accounts::insert_refresh(tx.conn(), &next_hash, &found.session_id, now)?;
                Ok(Outcome::Rotated(found.session_id, found.user_id))
            })
            .await?;
        match outcome {
            Outcome::Rotated(sid, user_id) => self.issue(user_id, &sid, next),
            Outcome::Reused(sid) => {
                tracing::warn!(session_id = %sid, client_ip = %ip, "refresh token reused; session revoked");
                self.inner.index.write().sessions.remove(sid.as_str());
                self.close_credential(&Credential::Session(Arc::from(sid)), "session revoked");
                Err(AuthError::Revoked)
            }
            Outcome::Refused(e) => Err(e),
        }
    }

    /// Revokes the caller's session and closes its sockets.
    pub async fn logout(&self, p: &Principal, ip: IpAddr) -> Result<(), AuthError> {
        let Credential::Session(sid) = p.credential.clone() else {
            return Err(AuthError::Forbidden(
                "an API key has no session to log out of; revoke it with DELETE /api/v1/auth/keys/{id}".into(),
            ));
        };
        let actor = p.actor(ip);
        let s = sid.to_string();
        self.inner
            .store
            .write(move |tx| {
                accounts::revoke_session(tx.conn(), &s, "logout")?;
                audit::record(tx, &actor, "auth.logout", &format!("session/{s}"), json!({}))
            })
            .await?;
        self.inner.index.write().sessions.remove(&*sid);
        self.close_credential(&Credential::Session(sid), "logged out");
        Ok(())
    }

    /// Creates an API key owned by the caller, with a role no higher than theirs.
    pub async fn create_key(
        &self,
        p: &Principal,
        ip: IpAddr,
        name: String,
        role: Option<Role>,
    ) -> Result<KeyCreated, AuthError> {
        if !matches!(p.credential, Credential::Session(_)) {
            return Err(AuthError::Forbidden(
                "API keys are created by a logged-in user, not by another key".into(),
            ));
        }
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_KEY_NAME || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid {
                field: "name",
                message: format!("must be 1 to {MAX_KEY_NAME} characters without control characters"),
            });
        }
        let role = role.unwrap_or(p.role);
        if role > p.role {
            return Err(AuthError::Forbidden(format!(
                "a key's role cannot exceed its creator's ({})",
                p.role.as_str()
            )));
        }
        let secret = secrets::random_token(KEY_PREFIX, 32);
        let digest = secrets::digest(&secret);
        // Enough to recognise a key in a list, far too little to guess the rest.
        let prefix: String = secret.chars().take(KEY_PREFIX.len() + 6).collect();
        let actor = p.actor(ip);
        let user_id = p.user_id;
        let d = digest.clone();
        let (record, _) = self
            .inner
            .store
            .write(move |tx| {
                let key = accounts::insert_key(tx.conn(), user_id, &name, role, &prefix, &d)?;
                audit::record(
                    tx,
                    &actor,
                    "key.create",
                    &format!("key/{}", key.id),
                    json!({"name": key.name, "role": key.role, "prefix": key.prefix}),
                )?;
                Ok(key)
            })
            .await?;
        self.inner.index.write().keys.insert(
            digest,
            KeyEntry {
                id: record.id,
                user_id,
                role,
            },
        );
        Ok(KeyCreated { record, key: secret })
    }

    /// Keys the caller may see: all for admins, their own otherwise.
    pub async fn list_keys(&self, p: &Principal) -> Result<Vec<ApiKey>, AuthError> {
        let owner = (!p.is_admin()).then_some(p.user_id);
        Ok(self.inner.store.read(move |c| accounts::list_keys(c, owner)).await?)
    }

    /// Revokes a key (its owner or an admin) and closes the sockets using it.
    pub async fn revoke_key(&self, p: &Principal, ip: IpAddr, id: i64) -> Result<ApiKey, AuthError> {
        let key = self.inner.store.read(move |c| accounts::get_key(c, id)).await?;
        if key.user_id != p.user_id && !p.is_admin() {
            // Not the caller's: answer as if it did not exist.
            return Err(AuthError::Store(StoreError::NotFound(format!("API key {id}"))));
        }
        let actor = p.actor(ip);
        let (record, _) = self
            .inner
            .store
            .write(move |tx| {
                let was_valid = accounts::get_key(tx.conn(), id)?.revoked_at.is_none();
                let key = accounts::revoke_key(tx.conn(), id)?;
                if was_valid {
                    audit::record(
                        tx,
                        &actor,
                        "key.revoke",
                        &format!("key/{id}"),
                        json!({"name": key.name, "prefix": key.prefix}),
                    )?;
                }
                Ok(key)
            })
            .await?;
        {
            let mut index = self.inner.index.write();
            let digests: Vec<String> = index
                .keys
                .iter()
                .filter(|(_, k)| k.id == id)
                .map(|(d, _)| d.clone())
                .collect();
            for d in digests {
                index.keys.remove(&d);
                index.revoked_keys.insert(d);
            }
        }
        self.close_credential(&Credential::Key(id), "API key revoked");
        Ok(record)
    }
}
