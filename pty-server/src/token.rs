//! Workspace access tokens (protocol.md §2.2): `base64url(claims) "."
//! base64url(HMAC-SHA256(secret, first segment))`, no padding. The controller
//! signs them; cove-pty verifies them at the WebSocket upgrade.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const AUDIENCE: &str = "cove-pty";
pub const MAX_TOKEN_BYTES: usize = 2048;
/// Clock skew tolerated between the controller and the workspace.
pub const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub v: u32,
    pub aud: String,
    pub prj: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token invalid: {0}")]
    Invalid(&'static str),
    #[error("token expired at {0}")]
    Expired(u64),
    #[error("token is for project {0}")]
    WrongProject(String),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Invalid(_) => "token_invalid",
            TokenError::Expired(_) => "token_expired",
            TokenError::WrongProject(_) => "wrong_project",
        }
    }
}

fn mac(secret: &[u8], msg: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(msg);
    m
}

/// Signs claims for a project, valid for `ttl_secs` from `now`.
pub fn sign(secret: &[u8], project: &str, now: u64, ttl_secs: u64, sub: Option<&str>) -> String {
    let claims = Claims {
        v: 1,
        aud: AUDIENCE.into(),
        prj: project.into(),
        iat: now,
        exp: now + ttl_secs,
        sub: sub.map(str::to_string),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, body.as_bytes()).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Verifies a token against any of `secrets` (rotation) for `project`.
pub fn verify(
    token: &str,
    secrets: &[Vec<u8>],
    project: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Invalid("longer than 2048 bytes"));
    }
    let (body, sig) = token
        .split_once('.')
        .ok_or(TokenError::Invalid("not two segments"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Invalid("signature is not base64url"))?;
    // verify_slice compares in constant time.
    if !secrets
        .iter()
        .any(|s| mac(s, body.as_bytes()).verify_slice(&sig).is_ok())
    {
        return Err(TokenError::Invalid("bad signature"));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Invalid("claims are not base64url"))?;
    let c: Claims = serde_json::from_slice(&raw)
        .map_err(|_| TokenError::Invalid("claims are not valid JSON"))?;
    if c.v != 1 {
        return Err(TokenError::Invalid("unknown token version"));
    }
    if c.aud != AUDIENCE {
        return Err(TokenError::Invalid("wrong audience"));
    }
    if c.iat > now + LEEWAY_SECS {
        return Err(TokenError::Invalid("issued in the future"));
    }
    if c.exp + LEEWAY_SECS <= now {
        return Err(TokenError::Expired(c.exp));
    }
    if c.prj != project {
        return Err(TokenError::WrongProject(c.prj));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"example-secret-0123456789abcdef0123";

    #[test]
    fn the_documented_test_vector_verifies() {
        let t = "eyJ2IjoxLCJhdWQiOiJjb3ZlLXB0eSIsInByaiI6ImRlbW8iLCJpYXQiOjE3MTgwMDAwMDAsImV4cCI6MTcxODAwMDMwMH0.M3Ip8-JQfskj4TbAnuvKc5-n4vSZAGNK3rdSe54Fk00";
        let c = verify(t, &[SECRET.to_vec()], "demo", 1_718_000_100).unwrap();
        assert_eq!((c.prj.as_str(), c.exp), ("demo", 1_718_000_300));
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let s = vec![SECRET.to_vec()];
        let t = sign(SECRET, "demo", 1000, 300, None);
        assert!(verify(&t, &s, "demo", 1100).is_ok());
        assert_eq!(
            verify(&t, &s, "other", 1100).unwrap_err().code(),
            "wrong_project"
        );
        assert_eq!(
            verify(&t, &s, "demo", 1331).unwrap_err().code(),
            "token_expired"
        );
        assert!(verify(&t, &s, "demo", 1320).is_ok(), "inside the leeway");
        let forged = sign(
            b"another-secret-that-is-long-enough!",
            "demo",
            1000,
            300,
            None,
        );
        assert_eq!(
            verify(&forged, &s, "demo", 1100).unwrap_err().code(),
            "token_invalid"
        );
        // Tampered claims with the original signature.
        let (_, sig) = t.split_once('.').unwrap();
        let body = URL_SAFE_NO_PAD
            .encode(br#"{"v":1,"aud":"cove-pty","prj":"demo","iat":1000,"exp":99999}"#);
        assert_eq!(
            verify(&format!("{body}.{sig}"), &s, "demo", 1100)
                .unwrap_err()
                .code(),
            "token_invalid"
        );
        for junk in ["", "abc", "a.b.c", &"x".repeat(3000)] {
            assert_eq!(
                verify(junk, &s, "demo", 1100).unwrap_err().code(),
                "token_invalid",
                "{junk}"
            );
        }
        // Rotation: a token signed with the old secret still verifies.
        let both = vec![
            b"new-secret-new-secret-new-secret-1".to_vec(),
            SECRET.to_vec(),
        ];
        assert!(verify(&t, &both, "demo", 1100).is_ok());
        // Future iat.
        let fut = sign(SECRET, "demo", 2000, 300, None);
        assert_eq!(
            verify(&fut, &s, "demo", 1000).unwrap_err().code(),
            "token_invalid"
        );
    }
}
