//! User accounts: the rules for names and passwords, the transactions shared
//! by the REST API and the `sigmavault user` CLI, and the [`Auth`] methods that
//! apply them and then revoke sessions and close sockets.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use crate::store::accounts::{self, Role, User};
use crate::store::audit::{self, Actor};
use crate::store::{StoreError, WriteTx};

use super::{Auth, AuthError, Credential, INITIAL_PASSWORD_FILE, Principal, TokenPair, UserEntry, bootstrap, password};

/// Longest username.
pub(super) const MAX_USERNAME: usize = 64;
/// Longest user agent kept with a session.
pub(super) const MAX_USER_AGENT: usize = 200;

/// Checks a new username: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_username(name: &str) -> Result<(), AuthError> {
    let invalid = |m: &str| AuthError::Invalid {
        field: "username",
        message: m.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_USERNAME {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid("may contain only letters, digits, '.', '_' and '-'"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    Ok(())
}

/// Checks a new password.
pub fn check_password(field: &'static str, pw: &str) -> Result<(), AuthError> {
    password::check_new(pw).map_err(|message| AuthError::Invalid { field, message })
}

/// Creates a user inside a transaction (with its audit record).
pub fn create_user_tx(
    tx: &mut WriteTx<'_>,
    actor: &Actor,
    username: &str,
    hash: &str,
    role: Role,
) -> Result<User, StoreError> {
    let user = accounts::insert_user(tx.conn(), username, hash, role)?;
    audit::record(
        tx,
        actor,
        "user.create",
        &format!("user/{}", user.id),
        json!({"username": user.username, "role": role}),
    )?;
    Ok(user)
}

/// Changes role and/or disabled flag, refusing to leave no enabled admin.
/// Returns the user and the sessions revoked (all of them when anything changed).
pub fn update_user_tx(
    tx: &mut WriteTx<'_>,
    actor: &Actor,
    id: i64,
    role: Option<Role>,
    disabled: Option<bool>,
) -> Result<(User, Vec<String>), StoreError> {
    let before = accounts::get_user(tx.conn(), id)?;
    let role = role.unwrap_or(before.role);
    let disabled = disabled.unwrap_or(before.disabled);
    if role == before.role && disabled == before.disabled {
        return Ok((before, Vec::new()));
    }
    let was_active_admin = before.role == Role::Admin && !before.disabled;
    let stays_active_admin = role == Role::Admin && !disabled;
    if was_active_admin && !stays_active_admin && accounts::other_enabled_admins(tx.conn(), id)? == 0 {
        return Err(StoreError::Conflict(format!(
            "{} is the last enabled admin; make another user admin first",
            before.username
        )));
    }
    let after = accounts::update_user(tx.conn(), id, role, disabled)?;
    let revoked = accounts::revoke_user_sessions(tx.conn(), id, "account changed")?;
    audit::record(
        tx,
        actor,
        "user.update",
        &format!("user/{id}"),
        json!({"username": after.username,
               "before": {"role": before.role, "disabled": before.disabled},
               "after": {"role": after.role, "disabled": after.disabled}}),
    )?;
    Ok((after, revoked))
}

/// Sets a new password hash and revokes every session of the user.
pub fn set_password_tx(
    tx: &mut WriteTx<'_>,
    actor: &Actor,
    id: i64,
    hash: &str,
    action: &str,
) -> Result<(User, Vec<String>), StoreError> {
    accounts::set_password_hash(tx.conn(), id, hash, true)?;
    let revoked = accounts::revoke_user_sessions(tx.conn(), id, "password changed")?;
    let user = accounts::get_user(tx.conn(), id)?;
    audit::record(
        tx,
        actor,
        action,
        &format!("user/{id}"),
        json!({"username": user.username, "sessions_revoked": revoked.len()}),
    )?;
    Ok((user, revoked))
}

/// Removes the generated first-admin password file once that account's
/// password has changed (it is stale, and it is a secret lying around).
pub fn forget_initial_password(data_dir: &std::path::Path, user: &User) {
    if accounts::username_key(&user.username) == bootstrap::ADMIN_USERNAME {
        let path = data_dir.join(INITIAL_PASSWORD_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(file = %path.display(), "removed the initial admin password file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not remove the initial admin password file")
            }
        }
    }
}

impl Auth {
    /// The caller's user record.
    pub async fn user(&self, id: i64) -> Result<User, AuthError> {
        Ok(self.inner.store.read(move |c| accounts::get_user(c, id)).await?)
    }

    /// Every user.
    pub async fn list_users(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.inner.store.read(accounts::list_users).await?)
    }

    fn index_user(&self, user: &User) {
        self.inner.index.write().users.insert(
            user.id,
            UserEntry {
                username: Arc::from(user.username.as_str()),
                role: user.role,
                disabled: user.disabled,
            },
        );
    }

    /// Drops revoked sessions from the index and closes the user's sockets.
    fn after_revocation(&self, user_id: i64, revoked: &[String], reason: &str) {
        {
            let mut index = self.inner.index.write();
            for sid in revoked {
                index.sessions.remove(sid.as_str());
            }
        }
        self.close_user(user_id, reason);
    }

    /// Creates a user.
    pub async fn create_user(&self, actor: Actor, username: String, pw: String, role: Role) -> Result<User, AuthError> {
        check_username(&username)?;
        check_password("password", &pw)?;
        let hash = self.inner.hasher.hash(pw).await?;
        let (user, _) = self
            .inner
            .store
            .write(move |tx| create_user_tx(tx, &actor, &username, &hash, role))
            .await?;
        self.index_user(&user);
        Ok(user)
    }

    /// Changes a user's role and/or disabled flag; revokes their sessions and
    /// closes their sockets when anything changed.
    pub async fn update_user(
        &self,
        actor: Actor,
        id: i64,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<User, AuthError> {
        let before = self.inner.index.read().users.get(&id).map(|u| (u.role, u.disabled));
        let ((user, revoked), _) = self
            .inner
            .store
            .write(move |tx| update_user_tx(tx, &actor, id, role, disabled))
            .await?;
        if before == Some((user.role, user.disabled)) {
            return Ok(user);
        }
        self.index_user(&user);
        if !revoked.is_empty() || user.disabled {
            self.after_revocation(id, &revoked, "account changed");
        } else {
            // A role change with no live session still ends key sockets.
            self.close_user(id, "account changed");
        }
        Ok(user)
    }

    /// An admin sets another user's password.
    pub async fn reset_password(&self, actor: Actor, id: i64, pw: String) -> Result<User, AuthError> {
        check_password("password", &pw)?;
        let hash = self.inner.hasher.hash(pw).await?;
        let ((user, revoked), _) = self
            .inner
            .store
            .write(move |tx| set_password_tx(tx, &actor, id, &hash, "user.password_reset"))
            .await?;
        self.after_revocation(id, &revoked, "password changed");
        forget_initial_password(&self.inner.data_dir, &user);
        Ok(user)
    }

    /// A user changes their own password: every session (this one included) is
    /// revoked and every socket closed; a fresh session is returned.
    pub async fn change_own_password(
        &self,
        p: &Principal,
        ip: IpAddr,
        current: String,
        new: String,
        user_agent: &str,
    ) -> Result<TokenPair, AuthError> {
        if !matches!(p.credential, Credential::Session(_)) {
            return Err(AuthError::Forbidden(
                "log in with a password to change it (not with an API key)".into(),
            ));
        }
        // Guessing the current password with a stolen token is a login attempt too.
        self.check_login_rate(&p.username, ip)?;
        check_password("new_password", &new)?;
        let id = p.user_id;
        let stored = self.inner.store.read(move |c| accounts::password_hash(c, id)).await?;
        if !self.inner.hasher.verify(current, Some(stored)).await? {
            return Err(AuthError::Invalid {
                field: "current_password",
                message: "is not the current password".into(),
            });
        }
        let hash = self.inner.hasher.hash(new).await?;
        let actor = p.actor(ip);
        let ttl = self.session_ttl_ms();
        let ua: String = user_agent.chars().take(MAX_USER_AGENT).collect();
        let ip_text = ip.to_string();
        let ((user, revoked, sid, refresh), _) = self
            .inner
            .store
            .write(move |tx| {
                let (user, revoked) = set_password_tx(tx, &actor, id, &hash, "user.password_change")?;
                let (sid, refresh) = Self::open_session_tx(tx, id, ttl, &ip_text, &ua)?;
                Ok((user, revoked, sid, refresh))
            })
            .await?;
        self.after_revocation(id, &revoked, "password changed");
        self.index_session(&sid, id, ttl);
        forget_initial_password(&self.inner.data_dir, &user);
        self.issue(id, &sid, refresh)
    }
}
