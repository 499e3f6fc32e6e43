//! Password hashing: argon2id with OWASP's parameters, off the async threads,
//! and at most `--password-hash-concurrency` at once.
//!
//! Each hash costs ~19 MiB and tens of milliseconds of one core by design, so an
//! unbounded login flood would exhaust the box; the semaphore queues logins
//! instead. A login for an unknown user verifies against a dummy hash, so wrong
//! user and wrong password take the same time.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::AuthError;

/// OWASP (2023+) argon2id: m=19 MiB, t=2, p=1.
const M_COST: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest accepted password (argon2 takes any length; this bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;

fn argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST, T_COST, P_COST, None).map_err(|e| AuthError::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks a new password's length (the only rule: long passphrases are welcome).
pub fn check_new(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!("must be at least {MIN_PASSWORD_LEN} characters"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!("must be at most {MAX_PASSWORD_LEN} bytes"));
    }
    Ok(())
}

/// Hashes a password (blocking; use [`Hasher`] from async code).
pub fn hash_blocking(password: &str) -> Result<String, AuthError> {
    let hash = argon2()?
        .hash_password(password.as_bytes())
        .map_err(|e| AuthError::Internal(format!("hashing failed: {e}")))?;
    Ok(hash.to_string())
}

/// Verifies a password against a PHC string (blocking). A malformed stored hash
/// never matches.
pub fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // The stored hash's own parameters are used, whatever the current ones are.
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Whether a stored hash was made with other parameters (rehash on next login).
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => p.m_cost() != M_COST || p.t_cost() != T_COST || p.p_cost() != P_COST,
        Err(_) => true,
    }
}

/// Runs hashes on the blocking pool, a bounded number at once.
#[derive(Clone)]
pub struct Hasher {
    room: Arc<Semaphore>,
    /// A real hash of a random password: unknown users are verified against it.
    dummy: Arc<str>,
}

impl Hasher {
    /// `concurrency` hashes at once.
    pub fn new(concurrency: usize) -> Result<Hasher, AuthError> {
        let random: String = super::secrets::random_token("", 16);
        Ok(Hasher {
            room: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::from(hash_blocking(&random)?),
        })
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AuthError> {
        let _permit = self
            .room
            .acquire()
            .await
            .map_err(|_| AuthError::Internal("hasher closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AuthError::Internal(format!("hash task failed: {e}")))
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verifies; `None` (no such user) verifies against the dummy and fails.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, AuthError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let ok = self.run(move || verify_blocking(&password, &phc)).await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verify_and_rehash() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong horse", &h));
        assert!(!needs_rehash(&h));
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(needs_rehash(&weak));
        assert!(verify_blocking("pw", &weak));
        assert!(!verify_blocking("pw", "not a hash"));
        assert!(check_new("short").is_err());
        assert!(check_new("long enough").is_ok());
    }
}
