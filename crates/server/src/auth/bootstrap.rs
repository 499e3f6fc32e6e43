//! The first admin: created on the first start with no users.
//!
//! With `SIGMAVAULT_ADMIN_PASSWORD` set, `admin` gets that password. Otherwise a
//! strong password is generated and written to `DATA_DIR/initial-admin-password`
//! (0600); only the file's path is logged. The file is removed when that
//! account's password is first changed.

use crate::store::accounts::{self, Role};
use crate::store::audit::{self, Actor};

use super::{Auth, AuthError, INITIAL_PASSWORD_FILE, password, secrets};

/// The first admin's name.
pub const ADMIN_USERNAME: &str = "admin";

/// The environment variable holding the first admin's password (read only from
/// the environment: a flag would show in `ps`).
pub const ADMIN_PASSWORD_ENV: &str = crate::config::security::ADMIN_PASSWORD_ENV;

/// Creates the first admin if the store has no users.
pub(super) async fn ensure_admin(auth: &Auth) -> Result<(), AuthError> {
    let store = &auth.inner.store;
    if store.read(accounts::count_users).await? > 0 {
        return Ok(());
    }
    let (pw, generated) = match auth.inner.cfg.admin_password.as_ref().map(|s| s.0.clone()) {
        Some(p) if !p.is_empty() => {
            password::check_new(&p).map_err(|m| AuthError::Invalid {
                field: "SIGMAVAULT_ADMIN_PASSWORD",
                message: m,
            })?;
            (p, false)
        }
        _ => (secrets::random_token("", 18), true),
    };
    let hash = auth.inner.hasher.hash(pw.clone()).await?;
    let file = auth.inner.data_dir.join(INITIAL_PASSWORD_FILE);
    if generated {
        let text = format!("{pw}\n");
        let path = file.clone();
        tokio::task::spawn_blocking(move || secrets::write_private(&path, &text))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(|e| AuthError::Secret(format!("cannot write {}: {e}", file.display())))?;
    }
    let created = store
        .write(move |tx| {
            // Another writer may have won the race (two starts are prevented by the lock,
            // but keep the check inside the transaction anyway).
            if accounts::count_users(tx.conn())? > 0 {
                return Ok(None);
            }
            let user = accounts::insert_user(tx.conn(), ADMIN_USERNAME, &hash, Role::Admin)?;
            audit::record(
                tx,
                &Actor::local("system"),
                "user.create",
                &format!("user/{}", user.id),
                serde_json::json!({"username": user.username, "role": "admin", "bootstrap": true}),
            )?;
            Ok(Some(user))
        })
        .await?
        .0;
    if created.is_some() {
        if generated {
            tracing::warn!(
                username = ADMIN_USERNAME,
                password_file = %auth.inner.data_dir.join(INITIAL_PASSWORD_FILE).display(),
                "created the first admin account; its generated password is in this file (0600), \
                 which is removed after the first password change"
            );
        } else {
            tracing::info!(
                username = ADMIN_USERNAME,
                "created the first admin account from {ADMIN_PASSWORD_ENV}"
            );
        }
    }
    Ok(())
}
