//! Client tokens: HS256 JWTs with `sub` = user id and `exp`, signed with `auth.token_secret`. Every token
//! also carries its issue time (`iat`, seconds, and `iat_ms`, milliseconds): a user's logout voids the
//! tokens issued before it (see [`crate::state::user`]), which needs a finer clock than seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    /// The issue time in milliseconds (absent from tokens minted before logout existed: `iat` then counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_ms: Option<u64>,
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

/// Checks a requested token validity against `auth.max_token_ttl_s`; the error names the key.
pub fn check_ttl(ttl_s: u64, max_ttl_s: u64) -> Result<(), String> {
    if ttl_s == 0 {
        return Err("the ttl must be at least 1 second".into());
    }
    if ttl_s > max_ttl_s {
        return Err(format!(
            "a ttl of {ttl_s} s is over auth.max_token_ttl_s ({max_ttl_s} s)"
        ));
    }
    Ok(())
}

/// The `exp` of a token minted at `now` for `ttl_s` seconds; `None` when it would not fit a u64.
pub fn expiry(now: u64, ttl_s: u64) -> Option<u64> {
    now.checked_add(ttl_s)
}

/// Signs a token for `user` valid for `ttl_s` seconds. Callers that take the TTL from outside check it with
/// [`check_ttl`] first; a TTL whose expiry would overflow yields a token that has already expired (fail
/// closed), never one with `exp` = u64::MAX.
pub fn mint(secret: &str, user: &UserId, ttl_s: u64) -> String {
    let now_ms = crate::actors::now_ms();
    let now = now_ms / 1000;
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp: expiry(now, ttl_s).unwrap_or(0),
        iat: now,
        iat_ms: Some(now_ms),
    };
    // HS256 encoding of a plain struct cannot fail.
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Checks signature, algorithm and expiry (no leeway) and returns the user. A token whose `exp` lies further
/// ahead than `max_ttl_s` is refused too: one minted before the limit existed (or under a larger one) does
/// not outlive it.
pub fn verify(secret: &str, max_ttl_s: u64, token: &str) -> Result<UserId, AuthError> {
    verify_issued(secret, max_ttl_s, token).map(|(user, _)| user)
}

/// [`verify`], and the token's issue time in milliseconds (what a logout compares against).
pub fn verify_issued(
    secret: &str,
    max_ttl_s: u64,
    token: &str,
) -> Result<(UserId, u64), AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|_| AuthError::Invalid)?;
    if data.claims.exp > now_s().saturating_add(max_ttl_s) {
        return Err(AuthError::Invalid);
    }
    let issued_ms = data
        .claims
        .iat_ms
        .unwrap_or_else(|| data.claims.iat.saturating_mul(1000));
    let user = UserId::parse(&data.claims.sub).map_err(|_| AuthError::BadSubject)?;
    Ok((user, issued_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn a_token_that_outlives_the_ttl_limit_is_refused() {
        let alice = UserId::parse("alice").expect("valid");
        let forever = Claims {
            sub: "alice".into(),
            exp: u64::MAX,
            iat: now_s(),
            iat_ms: None,
        };
        let forever = encode(
            &Header::default(),
            &forever,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert_eq!(verify("s3cret", DAY, &forever), Err(AuthError::Invalid));
        let week = mint("s3cret", &alice, 7 * DAY);
        assert_eq!(
            verify("s3cret", DAY, &week),
            Err(AuthError::Invalid),
            "limit lowered since"
        );
        assert_eq!(verify("s3cret", 7 * DAY, &week), Ok(alice));
    }

    #[test]
    fn mint_and_verify() {
        let alice = UserId::parse("alice").expect("valid");
        let t = mint("s3cret", &alice, 60);
        assert_eq!(verify("s3cret", DAY, &t), Ok(alice.clone()));
        assert_eq!(verify("other", DAY, &t), Err(AuthError::Invalid));
        assert_eq!(verify("s3cret", DAY, "garbage"), Err(AuthError::Invalid));
        let expired = Claims {
            sub: "alice".into(),
            exp: now_s() - 10,
            iat: now_s() - 20,
            iat_ms: None,
        };
        let expired = encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert_eq!(
            verify("s3cret", DAY, &expired),
            Err(AuthError::Invalid),
            "expired"
        );
    }

    #[test]
    fn tokens_carry_their_issue_time_in_milliseconds() {
        let alice = UserId::parse("alice").expect("valid");
        let before = crate::actors::now_ms();
        let t = mint("s3cret", &alice, 60);
        let after = crate::actors::now_ms();
        let (user, issued) = verify_issued("s3cret", DAY, &t).expect("valid");
        assert_eq!(user, alice);
        assert!(
            before <= issued && issued <= after,
            "{before} <= {issued} <= {after}"
        );
        let old = Claims {
            sub: "alice".into(),
            exp: now_s() + 60,
            iat: 1_000,
            iat_ms: None,
        };
        let old = encode(
            &Header::default(),
            &old,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert_eq!(
            verify_issued("s3cret", DAY, &old).map(|(_, at)| at),
            Ok(1_000_000),
            "a token without iat_ms counts from iat"
        );
    }

    #[test]
    fn ttls_are_bounded_and_expiry_never_overflows() {
        assert!(check_ttl(60, 60).is_ok());
        assert!(check_ttl(61, 60).is_err_and(|e| e.contains("auth.max_token_ttl_s")));
        assert!(check_ttl(0, 60).is_err());
        assert!(check_ttl(u64::MAX, 2_592_000).is_err());
        assert_eq!(expiry(10, u64::MAX), None);
        assert_eq!(expiry(10, 5), Some(15));
        let alice = UserId::parse("alice").expect("valid");
        let never = mint("s3cret", &alice, u64::MAX);
        assert_eq!(
            verify("s3cret", DAY, &never),
            Err(AuthError::Invalid),
            "an overflowing ttl mints an expired token"
        );
    }
}
