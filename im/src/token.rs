//! Login tokens: `EM1.<claims>.<mac>`, binding a user and a device until an expiry, signed
//! with `[im] token_key` (HMAC-SHA256). The MQTT password and the `/route` bearer token.
//!
//! `<claims>` is base64url (no padding) of the JSON `{"u","d","iat","exp"}`, `<mac>` is
//! base64url of HMAC-SHA256(key, everything before the last dot), compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::engine::UserState;
use crate::session::ConnectRefusal;

const PREFIX: &str = "EM1.";
/// Longest token accepted (ids are ≤ 64 bytes, so real tokens are ~250).
const MAX_TOKEN_LEN: usize = 1024;

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

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    u: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    d: std::borrow::Cow<'a, str>,
    iat: i64,
    exp: i64,
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
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(key: &[u8]) -> TokenKey {
        TokenKey {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    fn sign(&self, signed: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A token for `user` on `device`, valid from `iat` until `exp` (Unix seconds).
    pub fn mint(&self, user: &str, device: &str, iat: i64, exp: i64) -> String {
        let claims = Wire {
            u: user.into(),
            d: device.into(),
            iat,
            exp,
        };
        let json = serde_json::to_vec(&claims).expect("claims always serialize");
        let mut out = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
        out.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&json, &mut out);
        let mac = self.sign(&out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(mac, &mut out);
        out
    }

    /// Checks the MAC (constant time) and expiry.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let claims = signed.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        if mac.len() != 32 {
            return Err(TokenError::Malformed);
        }
        if !bool::from(self.sign(signed).ct_eq(&mac[..])) {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed)?;
        let w: Wire<'_> = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now >= w.exp {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            user: w.u.into_owned(),
            device: w.d.into_owned(),
            iat: w.iat,
            exp: w.exp,
        })
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
    let token = std::str::from_utf8(token).map_err(|_| ConnectRefusal::BadCredentials)?;
    let claims = key
        .verify(token, now)
        .map_err(|_| ConnectRefusal::BadCredentials)?;
    let state = state.ok_or(ConnectRefusal::NotAuthorized)?;
    if state.disabled {
        return Err(ConnectRefusal::NotAuthorized);
    }
    if claims.user != user {
        return Err(ConnectRefusal::BadCredentials);
    }
    if claims.device != device {
        return Err(ConnectRefusal::BadClientId);
    }
    if claims.iat < state.tokens_after {
        return Err(ConnectRefusal::BadCredentials);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Option<UserState> = Some(UserState {
        disabled: false,
        tokens_after: 0,
    });

    #[test]
    fn mint_verify_roundtrip() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let t = k.mint("alice", "phone", 100, 200);
        assert!(t.starts_with("EM1."));
        assert_eq!(t.matches('.').count(), 2);
        let c = k.verify(&t, 150).unwrap();
        assert_eq!(
            c,
            Claims {
                user: "alice".into(),
                device: "phone".into(),
                iat: 100,
                exp: 200
            }
        );
        assert_eq!(k.verify(&t, 200), Err(TokenError::Expired));
    }

    #[test]
    fn fixed_vector() {
        // Computed independently with Python's hmac, hashlib and base64 modules.
        let k = TokenKey::new(b"k");
        let t = k.mint("a", "b", 1, 2);
        assert_eq!(
            t,
            "EM1.eyJ1IjoiYSIsImQiOiJiIiwiaWF0IjoxLCJleHAiOjJ9.A2_WBnT_TWCHZamLf9Z2ruphlmC9sBhXG2XHOq09RJk"
        );
        let claims = t.split('.').nth(1).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(claims).unwrap(),
            br#"{"u":"a","d":"b","iat":1,"exp":2}"#
        );
        assert_eq!(k.verify(&t, 1).unwrap().user, "a");
    }

    #[test]
    fn tampering_is_refused() {
        let k = TokenKey::new(b"key-one");
        let t = k.mint("alice", "phone", 100, 200);
        assert_eq!(
            TokenKey::new(b"key-two").verify(&t, 150),
            Err(TokenError::BadSignature)
        );
        let forged_claims =
            URL_SAFE_NO_PAD.encode(br#"{"u":"bob","d":"phone","iat":100,"exp":200}"#);
        let mac = t.rsplit_once('.').unwrap().1;
        let forged = format!("EM1.{forged_claims}.{mac}");
        assert_eq!(k.verify(&forged, 150), Err(TokenError::BadSignature));
        for bad in [
            "",
            "EM1.",
            "EM1..",
            "EM2.a.b",
            "EM1.abc.!!!",
            "EM1.abc.AAAA",
        ] {
            assert_eq!(k.verify(bad, 150), Err(TokenError::Malformed), "{bad}");
        }
        // A correctly signed but non-JSON claims part.
        let signed = format!("EM1.{}", URL_SAFE_NO_PAD.encode(b"nope"));
        let mac = URL_SAFE_NO_PAD.encode(k.sign(&signed));
        assert_eq!(
            k.verify(&format!("{signed}.{mac}"), 150),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn login_check_maps_refusals() {
        let k = TokenKey::new(b"secret");
        let t = k.mint("alice", "phone", 100, 200);
        let tb = t.as_bytes();
        assert!(check_login(&k, LIVE, "alice", "phone", tb, 150).is_ok());
        use ConnectRefusal::*;
        assert_eq!(
            check_login(&k, LIVE, "alice", "phone", b"junk", 150),
            Err(BadCredentials)
        );
        assert_eq!(
            check_login(&k, LIVE, "alice", "phone", &[0xff, 0xfe], 150),
            Err(BadCredentials)
        );
        assert_eq!(
            check_login(&k, LIVE, "alice", "phone", tb, 250),
            Err(BadCredentials)
        );
        assert_eq!(
            check_login(&k, None, "alice", "phone", tb, 150),
            Err(NotAuthorized)
        );
        let disabled = Some(UserState {
            disabled: true,
            tokens_after: 0,
        });
        assert_eq!(
            check_login(&k, disabled, "alice", "phone", tb, 150),
            Err(NotAuthorized)
        );
        assert_eq!(
            check_login(&k, LIVE, "bob", "phone", tb, 150),
            Err(BadCredentials)
        );
        assert_eq!(
            check_login(&k, LIVE, "alice", "laptop", tb, 150),
            Err(BadClientId)
        );
        let revoked = Some(UserState {
            disabled: false,
            tokens_after: 101,
        });
        assert_eq!(
            check_login(&k, revoked, "alice", "phone", tb, 150),
            Err(BadCredentials)
        );
        let same_second = Some(UserState {
            disabled: false,
            tokens_after: 100,
        });
        assert!(check_login(&k, same_second, "alice", "phone", tb, 150).is_ok());
    }
}
