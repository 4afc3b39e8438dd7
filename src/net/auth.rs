//! Client tokens: HS256 JWTs with `sub` = user id and `exp`, signed with `auth.token_secret`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Tokens last a day unless asked otherwise (CLI `--ttl`, HTTP `ttl_s`).
pub const DEFAULT_TTL_S: u64 = 86_400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid or expired token")]
    Invalid,
    #[error("token subject is not a valid user id")]
    BadSubject,
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs a token for `user` valid for `ttl_s` seconds.
pub fn mint(secret: &str, user: &UserId, ttl_s: u64) -> String {
    let now = now_s();
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp: now.saturating_add(ttl_s),
        iat: now,
    };
    // HS256 encoding of a plain struct cannot fail.
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Checks signature, algorithm and expiry (no leeway) and returns the user.
pub fn verify(secret: &str, token: &str) -> Result<UserId, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|_| AuthError::Invalid)?;
    UserId::parse(&data.claims.sub).map_err(|_| AuthError::BadSubject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let alice = UserId::parse("alice").expect("valid");
        let t = mint("s3cret", &alice, 60);
        assert_eq!(verify("s3cret", &t), Ok(alice.clone()));
        assert_eq!(verify("other", &t), Err(AuthError::Invalid));
        assert_eq!(verify("s3cret", "garbage"), Err(AuthError::Invalid));
        let expired = Claims {
            sub: "alice".into(),
            exp: now_s() - 10,
            iat: now_s() - 20,
        };
        let expired = encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert_eq!(
            verify("s3cret", &expired),
            Err(AuthError::Invalid),
            "expired"
        );
    }
}
