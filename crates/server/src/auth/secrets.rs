//! Random secrets and their digests, and the token-signing key file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

/// `prefix` + `bytes` random bytes in base64url (32 bytes = 256 bits).
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&buf))
}

/// Hex SHA-256: how refresh tokens and API keys are stored and looked up.
pub fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Smallest accepted signing key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Reads the signing key from `path`, creating it (0600, 256 random bits) when
/// absent. A file that is too short, or readable by others, is refused with a
/// message saying how to fix it.
pub fn load_or_create_signing_key(path: &Path, create: bool) -> Result<Vec<u8>, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let meta = std::fs::metadata(path).map_err(|e| AuthError::Secret(format!("{}: {e}", path.display())))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(AuthError::Secret(format!(
                    "{} is readable by group or others; run chmod 600 on it",
                    path.display()
                )));
            }
            let key: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            if key.len() < MIN_SECRET_BYTES {
                return Err(AuthError::Secret(format!(
                    "{} holds {} bytes; a signing key needs at least {MIN_SECRET_BYTES}",
                    path.display(),
                    key.len()
                )));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = random_token("", 48);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| AuthError::Secret(format!("cannot create {}: {e}", path.display())))?;
            f.write_all(key.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| AuthError::Secret(format!("cannot write {}: {e}", path.display())))?;
            Ok(key.into_bytes())
        }
        Err(e) => Err(AuthError::Secret(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes `text` to a new 0600 file (replacing an older one).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_digests() {
        let t = random_token("svk_", 32);
        assert!(t.starts_with("svk_") && t.len() == 4 + 43, "{t}");
        assert_ne!(random_token("", 32), random_token("", 32));
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn signing_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwt-secret");
        assert!(load_or_create_signing_key(&p, false).is_err());
        let k = load_or_create_signing_key(&p, true).unwrap();
        assert!(k.len() >= MIN_SECRET_BYTES);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_signing_key(&p, true).unwrap(), k);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_signing_key(&p, true).is_err());
    }
}
