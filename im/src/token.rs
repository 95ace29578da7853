//! Login tokens: `EM1.<claims>.<mac>`, binding a user and a device until an expiry, signed
//! with `[im] token_key` (HMAC-SHA256). The MQTT password and the `/route` bearer token.
//!
//! CONTRACT (step 0 skeleton): signatures used by the connection layer, `/route` and the
//! admin API.

use crate::engine::UserState;
use crate::session::ConnectRefusal;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub device: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// The token key (`[im] token_key`).
#[derive(Clone)]
pub struct TokenKey {
    _private: (),
}

impl TokenKey {
    pub fn new(key: &[u8]) -> TokenKey {
        let _ = key;
        todo!("token")
    }

    /// A token for `user` on `device`, valid from `iat` until `exp` (Unix seconds).
    pub fn mint(&self, user: &str, device: &str, iat: i64, exp: i64) -> String {
        let _ = (user, device, iat, exp);
        todo!("token")
    }

    /// Checks the MAC (constant time) and expiry.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let _ = (token, now);
        todo!("token")
    }
}

/// The whole login check of a CONNECT (or `/route`): token valid for exactly this user and
/// device, user exists (`state`), is enabled, and the token is not revoked.
pub fn check_login(
    key: &TokenKey,
    state: Option<UserState>,
    user: &str,
    device: &str,
    token: &[u8],
    now: i64,
) -> Result<Claims, ConnectRefusal> {
    let _ = (key, state, user, device, token, now);
    todo!("token")
}
