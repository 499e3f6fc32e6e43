//! Access tokens: HS256 JWTs with the algorithm pinned.
//!
//! The header's `alg` is never trusted: validation accepts HS256 only, so
//! `alg: none`, RS/HS confusion and friends are refused before the signature is
//! looked at. Role and enabled state are *not* taken from the token but from the
//! user record at each use, so a demotion or a disable bites at once; the token
//! carries who (`sub`), which login session (`sid`) and when.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id, as text (RFC 7519 makes `sub` a string).
    pub sub: String,
    /// Login session id: a revoked session's tokens are refused.
    pub sid: String,
    /// Token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Always `access`, so no other kind of token can be replayed as one.
    pub typ: String,
}

/// Signs and checks access tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    leeway: i64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    /// A signer over `key` with `leeway_secs` of clock tolerance.
    pub fn new(key: &[u8], leeway_secs: u64) -> Signer {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Signer {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            leeway: leeway_secs as i64,
        }
    }

    /// Signs claims.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing failed: {e}")))
    }

    /// Checks signature, algorithm, expiry and issue time; returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                _ => AuthError::InvalidToken,
            }
        })?;
        let c = data.claims;
        if c.typ != "access" || c.jti.is_empty() || c.sid.is_empty() || c.iat > now + self.leeway || c.exp <= c.iat {
            return Err(AuthError::InvalidToken);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn claims(now: i64) -> Claims {
        Claims {
            sub: "1".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: now,
            exp: now + 60,
            typ: "access".into(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let now = chrono::Utc::now().timestamp();
        let s = Signer::new(&[7u8; 32], 0);
        let t = s.sign(&claims(now)).unwrap();
        assert_eq!(s.verify(&t, now).unwrap(), claims(now));
        // Another key.
        assert!(matches!(
            Signer::new(&[8u8; 32], 0).verify(&t, now),
            Err(AuthError::InvalidToken)
        ));
        // Expired.
        let mut old = claims(now - 120);
        old.exp = now - 60;
        assert!(matches!(s.verify(&s.sign(&old).unwrap(), now), Err(AuthError::Expired)));
        // alg none with the same claims.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now)).unwrap());
        assert!(s.verify(&format!("{header}.{body}."), now).is_err());
        // Tampered claims, original signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut admin = claims(now);
        admin.sub = "2".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap()),
            parts[2]
        );
        assert!(s.verify(&forged, now).is_err());
        // Issued in the future.
        let mut future = claims(now + 600);
        future.exp = now + 900;
        assert!(s.verify(&s.sign(&future).unwrap(), now).is_err());
    }
}
