//! Admin request signatures: Wildfire's `sha1(nonce|secret|timestamp)` and Ember's
//! HMAC-SHA256 over method, path, timestamp, nonce and body; time window and nonce cache.
//!
//! Both schemes send the headers `nonce` and `timestamp` (Unix milliseconds). Wildfire adds
//! `sign` = lowercase hex SHA-1 of `nonce|admin_secret|timestamp` (it signs neither the
//! request nor the body, so a captured request can be replayed with another body inside
//! the window: the nonce cache stops exact replays only). Ember adds
//! `authorization: Ember-HMAC-SHA256 <hex>`, the HMAC-SHA256 keyed with the secret of
//!
//! ```text
//! EMBER-HMAC-SHA256\n<METHOD>\n<path?raw-query>\n<timestamp>\n<nonce>\n<hex sha256(body)>
//! ```
//!
//! Checks run in the order parse → time window → signature (constant time) → nonce cache,
//! so only correctly signed requests can fill the cache. The cache is keyed by
//! (nonce, timestamp): Wildfire's SDKs draw small random integers as nonces, which collide
//! between honest calls, but a replay repeats both values.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_common::config::{AdminSignature, ImConfig};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most (nonce, timestamp) pairs remembered; a full cache refuses requests (503).
pub const NONCE_CACHE_MAX: usize = 1_000_000;
/// Largest admin request body; bigger is refused with 413 before any check.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Shortest nonce of the HMAC scheme.
pub const MIN_HMAC_NONCE_LEN: usize = 16;
/// Longest nonce of either scheme (bounds the cache's memory).
pub const MAX_NONCE_LEN: usize = 128;
/// The `authorization` scheme name of Ember's signature.
pub const HMAC_SCHEME: &str = "Ember-HMAC-SHA256";
/// First line of the string Ember's signature covers.
pub const HMAC_ALGORITHM_LINE: &str = "EMBER-HMAC-SHA256";
/// The unsigned path: the OpenAPI document.
pub const UNSIGNED_PATH: &str = "/openapi.json";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable signature: headers missing or malformed, or the scheme is disabled.
    #[error("{0}")]
    MissingSignature(String),
    /// The signature is not the one the admin secret gives.
    #[error("the signature does not match (check admin_secret and the string to sign)")]
    SignatureDoesNotMatch,
    /// `timestamp` is further from the server clock than the window.
    #[error(
        "timestamp {timestamp} ms is {skew_ms} ms from the server clock (window {window_ms} ms)"
    )]
    RequestTimeTooSkewed {
        timestamp: i64,
        skew_ms: i64,
        window_ms: i64,
    },
    /// The same (nonce, timestamp) was already used.
    #[error("this nonce and timestamp were already used")]
    NonceReused,
    /// The nonce cache is full (a flood of signed requests); try again later.
    #[error("too many recent requests, try again later")]
    Busy,
}

impl AuthError {
    /// The `"error"` value of the JSON answer, also the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingSignature(_) => "MissingSignature",
            AuthError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            AuthError::RequestTimeTooSkewed { .. } => "RequestTimeTooSkewed",
            AuthError::NonceReused => "NonceReused",
            AuthError::Busy => "Busy",
        }
    }

    /// 401, or 503 for [`AuthError::Busy`].
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        json_error(self.status(), self.code(), &self.to_string())
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Remembered (timestamp, nonce) pairs.
enum NonceCache {
    /// With the time window: ordered by timestamp, pruned once outside the window (a replay
    /// of a pruned pair fails the time check anyway).
    Windowed(BTreeSet<(i64, String)>),
    /// `no_check_time`: the most recent [`NONCE_CACHE_MAX`] pairs, oldest evicted first.
    Recent {
        set: HashSet<(i64, String)>,
        order: VecDeque<(i64, String)>,
    },
}

/// The admin API's request check: secret, accepted schemes, time window, nonce cache.
pub struct AdminAuth {
    secret: Vec<u8>,
    hmac: bool,
    wildfire: bool,
    window_ms: i64,
    no_check_time: bool,
    capacity: usize,
    nonces: Mutex<NonceCache>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("hmac", &self.hmac)
            .field("wildfire", &self.wildfire)
            .field("window_ms", &self.window_ms)
            .field("no_check_time", &self.no_check_time)
            .finish_non_exhaustive()
    }
}

/// A parsed signature, before it is verified.
struct Parsed<'a> {
    nonce: &'a str,
    timestamp_text: &'a str,
    timestamp: i64,
    sig: Sig<'a>,
}

enum Sig<'a> {
    Hmac(&'a str),
    Wildfire(&'a str),
}

impl AdminAuth {
    /// `schemes` lists the accepted signatures; `window` the largest clock difference;
    /// `no_check_time` disables the window (the nonce cache then keeps the most recent
    /// pairs).
    pub fn new(
        secret: &[u8],
        schemes: &[AdminSignature],
        window: Duration,
        no_check_time: bool,
    ) -> AdminAuth {
        Self::with_capacity(secret, schemes, window, no_check_time, NONCE_CACHE_MAX)
    }

    /// From `[im]`: `admin_secret`, `admin_signatures`, `admin_time_window_secs`,
    /// `no_check_time`.
    pub fn from_config(cfg: &ImConfig) -> AdminAuth {
        Self::new(
            cfg.admin_secret.as_bytes(),
            &cfg.admin_signatures,
            Duration::from_secs(cfg.admin_time_window_secs.into()),
            cfg.no_check_time,
        )
    }

    fn with_capacity(
        secret: &[u8],
        schemes: &[AdminSignature],
        window: Duration,
        no_check_time: bool,
        capacity: usize,
    ) -> AdminAuth {
        let nonces = if no_check_time {
            NonceCache::Recent {
                set: HashSet::new(),
                order: VecDeque::new(),
            }
        } else {
            NonceCache::Windowed(BTreeSet::new())
        };
        AdminAuth {
            secret: secret.to_vec(),
            hmac: schemes.contains(&AdminSignature::HmacSha256),
            wildfire: schemes.contains(&AdminSignature::WildfireSha1),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            no_check_time,
            capacity,
            nonces: Mutex::new(nonces),
        }
    }

    /// Checks one request. `path_and_query` is the request target as sent (path plus the raw
    /// query string, if any); `now_ms` the server clock in Unix milliseconds.
    pub fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), AuthError> {
        let p = self.parse(headers)?;
        if !self.no_check_time {
            let skew_ms = now_ms.saturating_sub(p.timestamp).saturating_abs();
            if skew_ms > self.window_ms {
                return Err(AuthError::RequestTimeTooSkewed {
                    timestamp: p.timestamp,
                    skew_ms,
                    window_ms: self.window_ms,
                });
            }
        }
        let ok = match p.sig {
            Sig::Wildfire(given) => {
                let expected = wildfire_sign(p.nonce, &self.secret, p.timestamp_text);
                hex_eq(given, &expected)
            }
            Sig::Hmac(given) => {
                let expected = hmac_sign(
                    &self.secret,
                    method,
                    path_and_query,
                    p.timestamp_text,
                    p.nonce,
                    body,
                );
                hex_eq(given, &expected)
            }
        };
        if !ok {
            return Err(AuthError::SignatureDoesNotMatch);
        }
        self.remember(p.timestamp, p.nonce, now_ms)
    }

    fn parse<'a>(&self, headers: &'a HeaderMap) -> Result<Parsed<'a>, AuthError> {
        let missing = |m: &str| AuthError::MissingSignature(m.to_owned());
        let header = |name: &str| -> Result<Option<&'a str>, AuthError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| missing(&format!("header {name} is not visible ASCII"))),
            }
        };
        let authorization = header("authorization")?;
        let sig = match (authorization, header("sign")?) {
            (Some(a), _)
                if a.len() > HMAC_SCHEME.len()
                    && a.is_char_boundary(HMAC_SCHEME.len())
                    && a[..HMAC_SCHEME.len()].eq_ignore_ascii_case(HMAC_SCHEME)
                    && a.as_bytes()[HMAC_SCHEME.len()] == b' ' =>
            {
                if !self.hmac {
                    return Err(missing(
                        "hmac-sha256 signatures are disabled (im.admin_signatures)",
                    ));
                }
                Sig::Hmac(a[HMAC_SCHEME.len() + 1..].trim())
            }
            (_, Some(sign)) => {
                if !self.wildfire {
                    return Err(missing(
                        "wildfire-sha1 signatures are disabled (im.admin_signatures)",
                    ));
                }
                Sig::Wildfire(sign)
            }
            (Some(_), None) => {
                return Err(missing(&format!(
                    "authorization must be \"{HMAC_SCHEME} <hex>\""
                )))
            }
            (None, None) => {
                return Err(missing(&format!(
                    "no signature: send nonce, timestamp and authorization: {HMAC_SCHEME} \
                     <hex> (or Wildfire's sign)"
                )))
            }
        };
        let nonce = header("nonce")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("header nonce is missing"))?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(missing(&format!(
                "nonce is longer than {MAX_NONCE_LEN} characters"
            )));
        }
        if matches!(sig, Sig::Hmac(_)) && nonce.len() < MIN_HMAC_NONCE_LEN {
            return Err(missing(&format!(
                "nonce must be at least {MIN_HMAC_NONCE_LEN} characters"
            )));
        }
        let timestamp_text = header("timestamp")?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("header timestamp is missing"))?;
        let timestamp = timestamp_text
            .parse::<i64>()
            .ok()
            .filter(|_| timestamp_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| missing("timestamp must be Unix milliseconds (digits only)"))?;
        Ok(Parsed {
            nonce,
            timestamp_text,
            timestamp,
            sig,
        })
    }

    fn remember(&self, timestamp: i64, nonce: &str, now_ms: i64) -> Result<(), AuthError> {
        let key = (timestamp, nonce.to_owned());
        let mut cache = self.nonces.lock();
        match &mut *cache {
            NonceCache::Windowed(set) => {
                let oldest = now_ms.saturating_sub(self.window_ms);
                while set.first().is_some_and(|(ts, _)| *ts < oldest) {
                    set.pop_first();
                }
                if set.contains(&key) {
                    return Err(AuthError::NonceReused);
                }
                if set.len() >= self.capacity {
                    tracing::warn!(
                        entries = set.len(),
                        "admin nonce cache full: refusing signed requests until entries expire"
                    );
                    return Err(AuthError::Busy);
                }
                set.insert(key);
            }
            NonceCache::Recent { set, order } => {
                if set.contains(&key) {
                    return Err(AuthError::NonceReused);
                }
                while order.len() >= self.capacity {
                    if let Some(old) = order.pop_front() {
                        set.remove(&old);
                    }
                }
                set.insert(key.clone());
                order.push_back(key);
            }
        }
        Ok(())
    }

    /// (nonce, timestamp) pairs remembered now.
    pub fn cached_nonces(&self) -> usize {
        match &*self.nonces.lock() {
            NonceCache::Windowed(set) => set.len(),
            NonceCache::Recent { set, .. } => set.len(),
        }
    }
}

/// Wildfire's `sign`: lowercase hex SHA-1 of `nonce|secret|timestamp`.
pub fn wildfire_sign(nonce: &str, secret: &[u8], timestamp: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce.as_bytes());
    h.update(b"|");
    h.update(secret);
    h.update(b"|");
    h.update(timestamp.as_bytes());
    hex(&h.finalize())
}

/// The string Ember's signature covers (lines joined by `\n`, no trailing newline).
pub fn hmac_string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "{HMAC_ALGORITHM_LINE}\n{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}",
        hex(&Sha256::digest(body))
    )
}

/// Ember's signature: lowercase hex HMAC-SHA256 of [`hmac_string_to_sign`].
pub fn hmac_sign(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(hmac_string_to_sign(method, path_and_query, timestamp, nonce, body).as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Constant-time comparison of a client's hex (either case) with the expected lowercase hex.
fn hex_eq(given: &str, expected: &str) -> bool {
    let given = given.to_ascii_lowercase();
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The server clock, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// axum middleware: buffers the body (at most [`MAX_BODY_BYTES`], else 413), checks the
/// signature, and runs the request with the same body; [`UNSIGNED_PATH`] passes unchecked.
/// Install it with `axum::middleware::from_fn_with_state` on the outermost admin router,
/// not inside a `nest` (which strips the prefix from the URI the signature covers).
pub async fn require_signature(
    State(auth): State<Arc<AdminAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let uri = req.uri().clone();
    if uri.path() == UNSIGNED_PATH {
        return next.run(req).await;
    }
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BodyTooLarge",
            &format!("admin request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        // Over the limit without a Content-Length (chunked), or the body could not be read.
        return too_large();
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    match auth.check(
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        &bytes,
        now_ms(),
    ) {
        Ok(()) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            tracing::debug!(reason = e.code(), "admin request refused: {e}");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    const SECRET: &[u8] = b"s";
    const NOW: i64 = 1_700_000_000_000;
    const BOTH: &[AdminSignature] = &[AdminSignature::HmacSha256, AdminSignature::WildfireSha1];

    fn auth() -> AdminAuth {
        AdminAuth::new(SECRET, BOTH, Duration::from_secs(300), false)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn wildfire(nonce: &str, ts: i64) -> HeaderMap {
        let ts = ts.to_string();
        let sign = wildfire_sign(nonce, SECRET, &ts);
        headers(&[("nonce", nonce), ("timestamp", &ts), ("sign", &sign)])
    }

    fn ember(method: &str, path: &str, body: &[u8], nonce: &str, ts: i64) -> HeaderMap {
        let ts = ts.to_string();
        let sig = hmac_sign(SECRET, method, path, &ts, nonce, body);
        headers(&[
            ("nonce", nonce),
            ("timestamp", &ts),
            ("authorization", &format!("{HMAC_SCHEME} {sig}")),
        ])
    }

    /// Vectors computed independently with Python's hashlib/hmac (not with this code):
    /// `python3 -c "import hashlib;print(hashlib.sha1(b'n|s|1').hexdigest())"` and
    /// `hmac.new(b's', b'EMBER-HMAC-SHA256\nPOST\n/v1/users?x=1\n1700000000000\n
    /// 0123456789abcdef\n' + hashlib.sha256(b'{"a":1}').hexdigest().encode(), 'sha256')`.
    #[test]
    fn fixed_vectors() {
        assert_eq!(
            wildfire_sign("n", b"s", "1"),
            "69800e9006d2e28ecbe8cbba76a6b878d484961d"
        );
        assert_eq!(
            hmac_sign(
                b"s",
                "POST",
                "/v1/users?x=1",
                "1700000000000",
                "0123456789abcdef",
                br#"{"a":1}"#
            ),
            "f44421625c44247d2513b89bea5438a2ef6ca8a640738f4fb6a5ce1dcb624fb8"
        );
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// The worked example of docs/PROTOCOL.md §11 (also computed with Python and openssl).
    #[test]
    fn protocol_doc_example() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let body = br#"{"device":"phone","ttl_secs":86400}"#;
        assert_eq!(
            hex(&Sha256::digest(body)),
            "f32de0f843dc550536d1e8063a75bf3014123b6301ec2bba184251b09c6a48cf"
        );
        let sig = hmac_sign(
            secret,
            "POST",
            "/v1/users/alice/tokens",
            "1700000000000",
            "4f1c2a9e7b3d8c60a5e2f1d4",
            body,
        );
        assert_eq!(
            sig,
            "d223324dadcabc6db5b0dedd98e8fc4508f50566e5137bd518ff7f8833775111"
        );
        assert_eq!(
            wildfire_sign("76616", secret, "1700000000000"),
            "497001b13c79b21f1bd24018e230a2fead347c9b"
        );
        let a = AdminAuth::new(secret, BOTH, Duration::from_secs(300), false);
        let h = headers(&[
            ("nonce", "4f1c2a9e7b3d8c60a5e2f1d4"),
            ("timestamp", "1700000000000"),
            ("authorization", &format!("Ember-HMAC-SHA256 {sig}")),
        ]);
        assert_eq!(
            a.check("POST", "/v1/users/alice/tokens", &h, body, NOW + 1),
            Ok(())
        );
    }

    #[test]
    fn wildfire_accepted_once() {
        let a = auth();
        let h = wildfire("42", NOW);
        assert_eq!(a.check("POST", "/v1/users", &h, b"{}", NOW), Ok(()));
        assert_eq!(
            a.check("POST", "/v1/users", &h, b"{}", NOW + 1),
            Err(AuthError::NonceReused)
        );
        // Wildfire SDKs reuse small nonces: another timestamp is another request.
        let h2 = wildfire("42", NOW + 1);
        assert_eq!(a.check("POST", "/v1/users", &h2, b"{}", NOW + 1), Ok(()));
        // Upper-case hex is accepted too.
        let mut up = wildfire("43", NOW);
        let s = up["sign"].to_str().unwrap().to_ascii_uppercase();
        up.insert("sign", HeaderValue::from_str(&s).unwrap());
        assert_eq!(a.check("GET", "/", &up, b"", NOW), Ok(()));
        // Wrong secret.
        let other = AdminAuth::new(b"t", BOTH, Duration::from_secs(300), false);
        assert_eq!(
            other.check("POST", "/v1/users", &wildfire("44", NOW), b"", NOW),
            Err(AuthError::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn hmac_covers_method_path_body() {
        let a = auth();
        let n = "0123456789abcdef";
        let h = ember("POST", "/v1/users?x=1", b"{}", n, NOW);
        for (m, p, b) in [
            ("PUT", "/v1/users?x=1", &b"{}"[..]),
            ("POST", "/v1/users?x=2", b"{}"),
            ("POST", "/v1/users", b"{}"),
            ("POST", "/v1/users?x=1", b"{ }"),
        ] {
            assert_eq!(
                a.check(m, p, &h, b, NOW),
                Err(AuthError::SignatureDoesNotMatch),
                "{m} {p}"
            );
        }
        assert_eq!(a.check("POST", "/v1/users?x=1", &h, b"{}", NOW), Ok(()));
        assert_eq!(
            a.check("POST", "/v1/users?x=1", &h, b"{}", NOW),
            Err(AuthError::NonceReused)
        );
        // Failed checks left nothing in the cache.
        assert_eq!(a.cached_nonces(), 1);
    }

    #[test]
    fn hmac_nonce_length_and_parse_errors() {
        let a = auth();
        let h = ember("GET", "/", b"", "short", NOW);
        assert!(matches!(
            a.check("GET", "/", &h, b"", NOW),
            Err(AuthError::MissingSignature(m)) if m.contains("at least 16")
        ));
        let long = "x".repeat(MAX_NONCE_LEN + 1);
        assert!(matches!(
            a.check("GET", "/", &wildfire(&long, NOW), b"", NOW),
            Err(AuthError::MissingSignature(_))
        ));
        for h in [
            headers(&[]),
            headers(&[("nonce", "1"), ("timestamp", "1")]),
            headers(&[
                ("authorization", "Bearer abc"),
                ("nonce", "1"),
                ("timestamp", "1"),
            ]),
            headers(&[("sign", "ab"), ("timestamp", "1")]),
            headers(&[("sign", "ab"), ("nonce", "1")]),
            headers(&[("sign", "ab"), ("nonce", "1"), ("timestamp", "-5")]),
            headers(&[("sign", "ab"), ("nonce", "1"), ("timestamp", "1.5e12")]),
        ] {
            let r = a.check("GET", "/", &h, b"", NOW);
            assert!(
                matches!(r, Err(AuthError::MissingSignature(_))),
                "{h:?}: {r:?}"
            );
        }
        // Malformed hex is a mismatch, not a crash.
        let h = headers(&[
            ("nonce", "0123456789abcdef"),
            ("timestamp", &NOW.to_string()),
            ("authorization", "Ember-HMAC-SHA256 zz"),
        ]);
        assert_eq!(
            a.check("GET", "/", &h, b"", NOW),
            Err(AuthError::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn time_window_both_directions() {
        let a = auth();
        let win = 300_000;
        for ts in [NOW - win - 1, NOW + win + 1, NOW / 1000] {
            let r = a.check("GET", "/", &wildfire("1", ts), b"", NOW);
            assert!(
                matches!(r, Err(AuthError::RequestTimeTooSkewed { .. })),
                "{ts}: {r:?}"
            );
        }
        assert_eq!(
            a.check("GET", "/", &wildfire("1", NOW - win), b"", NOW),
            Ok(())
        );
        assert_eq!(
            a.check("GET", "/", &wildfire("1", NOW + win), b"", NOW),
            Ok(())
        );
        // The skew is checked before the signature: a forged stale request says stale.
        let mut forged = wildfire("2", NOW - win - 1);
        forged.insert("sign", HeaderValue::from_static("00"));
        assert!(matches!(
            a.check("GET", "/", &forged, b"", NOW),
            Err(AuthError::RequestTimeTooSkewed { .. })
        ));
    }

    #[test]
    fn cache_is_pruned_by_time_and_capped() {
        let a = AdminAuth::with_capacity(SECRET, BOTH, Duration::from_secs(300), false, 2);
        assert_eq!(a.check("GET", "/", &wildfire("1", NOW), b"", NOW), Ok(()));
        assert_eq!(a.check("GET", "/", &wildfire("2", NOW), b"", NOW), Ok(()));
        assert_eq!(
            a.check("GET", "/", &wildfire("3", NOW), b"", NOW),
            Err(AuthError::Busy)
        );
        assert_eq!(AuthError::Busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Once the first two are outside the window they are dropped.
        let later = NOW + 300_001;
        assert_eq!(
            a.check("GET", "/", &wildfire("3", later), b"", later),
            Ok(())
        );
        assert_eq!(a.cached_nonces(), 1);
    }

    #[test]
    fn no_check_time_keeps_recent_nonces() {
        let a = AdminAuth::with_capacity(SECRET, BOTH, Duration::from_secs(300), true, 2);
        let old = NOW - 86_400_000;
        assert_eq!(a.check("GET", "/", &wildfire("1", old), b"", NOW), Ok(()));
        assert_eq!(
            a.check("GET", "/", &wildfire("1", old), b"", NOW),
            Err(AuthError::NonceReused)
        );
        assert_eq!(a.check("GET", "/", &wildfire("2", old), b"", NOW), Ok(()));
        assert_eq!(a.check("GET", "/", &wildfire("3", old), b"", NOW), Ok(()));
        assert_eq!(a.cached_nonces(), 2);
        // "1" was evicted (oldest first); "3" is still known.
        assert_eq!(
            a.check("GET", "/", &wildfire("3", old), b"", NOW),
            Err(AuthError::NonceReused)
        );
    }

    #[test]
    fn disabled_schemes() {
        let only_hmac = AdminAuth::new(
            SECRET,
            &[AdminSignature::HmacSha256],
            Duration::from_secs(300),
            false,
        );
        assert!(matches!(
            only_hmac.check("GET", "/", &wildfire("1", NOW), b"", NOW),
            Err(AuthError::MissingSignature(m)) if m.contains("wildfire-sha1")
        ));
        let only_wf = AdminAuth::new(
            SECRET,
            &[AdminSignature::WildfireSha1],
            Duration::from_secs(300),
            false,
        );
        let h = ember("GET", "/", b"", "0123456789abcdef", NOW);
        assert!(matches!(
            only_wf.check("GET", "/", &h, b"", NOW),
            Err(AuthError::MissingSignature(m)) if m.contains("hmac-sha256")
        ));
    }

    fn app(auth: AdminAuth) -> Router {
        Router::new()
            .route("/v1/echo", post(|body: String| async move { body }))
            .route("/openapi.json", get(|| async { "{}" }))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(auth),
                require_signature,
            ))
    }

    async fn send(app: &Router, req: Request) -> (StatusCode, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn middleware_passes_body_and_refuses_with_json() {
        let app = app(AdminAuth::new(
            SECRET,
            BOTH,
            Duration::from_secs(300),
            false,
        ));
        let body = r#"{"uid":"alice"}"#;
        let ts = now_ms().to_string();
        let nonce = "abcdefghijklmnop";
        let sig = hmac_sign(SECRET, "POST", "/v1/echo?a=b", &ts, nonce, body.as_bytes());
        let signed = || {
            Request::builder()
                .method("POST")
                .uri("/v1/echo?a=b")
                .header("nonce", nonce)
                .header("timestamp", &ts)
                .header("authorization", format!("Ember-HMAC-SHA256 {sig}"))
                .body(Body::from(body))
                .unwrap()
        };
        assert_eq!(
            send(&app, signed()).await,
            (StatusCode::OK, body.to_owned())
        );
        let (status, text) = send(&app, signed()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "NonceReused");
        assert!(v["message"].is_string());

        let unsigned = Request::post("/v1/echo").body(Body::from("x")).unwrap();
        let (status, text) = send(&app, unsigned).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("\"MissingSignature\""), "{text}");

        let doc = Request::get("/openapi.json").body(Body::empty()).unwrap();
        assert_eq!(send(&app, doc).await, (StatusCode::OK, "{}".to_owned()));

        let big = Request::post("/v1/echo")
            .body(Body::from(vec![b'x'; MAX_BODY_BYTES + 1]))
            .unwrap();
        let (status, text) = send(&app, big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("BodyTooLarge"), "{text}");
    }
}
