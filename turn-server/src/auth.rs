//! Credentials and nonces: long-term users, TURN REST shared secrets (coturn's
//! `use-auth-secret`), stateless expiring nonces, and the per-address auth-failure limiter.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Where a user's key came from; REST credentials carry their expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Static,
    Rest { expiry: u64 },
}

/// Why a USERNAME has no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("unknown user")]
    UnknownUser,
    #[error("REST credential expired")]
    Expired,
}

/// Long-term credential store: static users plus REST shared secrets.
pub struct Credentials {
    realm: String,
    /// user -> MD5(user:realm:password), precomputed.
    users: HashMap<String, [u8; 16]>,
    secrets: Vec<Vec<u8>>,
}

impl Credentials {
    pub fn new(realm: &str, users: &BTreeMap<String, String>, secrets: &[String]) -> Self {
        Credentials {
            realm: realm.to_owned(),
            users: users
                .iter()
                .map(|(u, p)| (u.clone(), long_term_key(u, realm, p)))
                .collect(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
    }

    pub fn is_static(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Candidate keys for `username` (several when REST secrets are being rotated); the caller
    /// accepts the message if any verifies. `now_unix` is wall-clock seconds.
    pub fn keys(
        &self,
        username: &str,
        now_unix: u64,
        out: &mut Vec<[u8; 16]>,
    ) -> Result<CredentialKind, CredentialError> {
        out.clear();
        if let Some(k) = self.users.get(username) {
            out.push(*k);
            return Ok(CredentialKind::Static);
        }
        if self.secrets.is_empty() {
            return Err(CredentialError::UnknownUser);
        }
        let expiry = rest_expiry(username).ok_or(CredentialError::UnknownUser)?;
        if expiry <= now_unix {
            return Err(CredentialError::Expired);
        }
        for s in &self.secrets {
            let pw = rest_password(s, username);
            out.push(long_term_key(username, &self.realm, &pw));
        }
        Ok(CredentialKind::Rest { expiry })
    }
}

/// Expiry of a REST username `"<unix-expiry>:<user>"` (or a bare timestamp, as coturn allows).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let ts = username.split_once(':').map_or(username, |(t, _)| t);
    ts.parse().ok()
}

/// The user part of a REST username, used for per-user quotas.
pub fn quota_key(username: &str, kind: CredentialKind) -> &str {
    match kind {
        CredentialKind::Static => username,
        CredentialKind::Rest { .. } => username.split_once(':').map_or(username, |(_, u)| u),
    }
}

/// `base64(HMAC-SHA1(secret, username))`, the TURN REST password.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// MD5(username ":" realm ":" password), the long-term credential key (RFC 8489 §9.2.2).
pub fn long_term_key(user: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stateless nonces: `hex(expiry) || hex(HMAC(server key, expiry || client ip))[..16]`.
/// Any worker can check any nonce, and an old one is recognised as stale (438), not unknown.
pub struct Nonces {
    key: [u8; 32],
    lifetime: u64,
}

/// Result of checking a NONCE attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

impl Nonces {
    pub fn new(lifetime_secs: u64) -> Self {
        Nonces {
            key: rand::random(),
            lifetime: lifetime_secs.max(1),
        }
    }

    fn mac(&self, expiry: u64, ip: IpAddr) -> u64 {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(&expiry.to_be_bytes());
        match ip {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("20-byte mac"))
    }

    pub fn issue(&self, now_unix: u64, ip: IpAddr) -> String {
        let expiry = now_unix + self.lifetime;
        format!("{expiry:016x}{:016x}", self.mac(expiry, ip))
    }

    pub fn check(&self, nonce: &str, now_unix: u64, ip: IpAddr) -> NonceCheck {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (Ok(expiry), Ok(mac)) = (
            u64::from_str_radix(&nonce[..16], 16),
            u64::from_str_radix(&nonce[16..], 16),
        ) else {
            return NonceCheck::Invalid;
        };
        if mac != self.mac(expiry, ip) {
            NonceCheck::Invalid
        } else if expiry <= now_unix {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// What the limiter says about a request that is about to be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Check the credentials as usual.
    Allow,
    /// This user has failed too often from this address: answer 401 without checking.
    RejectUser,
    /// This address has failed too often across user names: do not answer at all.
    DropAddress,
}

/// Counts failed authentications in one-minute windows, per (source IP, user name) and per
/// source IP. A user who keeps failing from an address gets a plain 401 without a
/// credential check until the window ends (clients give up, as they do against coturn, and
/// guessing stops paying); other users behind the same NAT are unaffected. An address that
/// fails ten times the budget across many user names is ignored for the rest of the window.
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    per_user: Mutex<HashMap<(IpAddr, String), (Instant, u32)>>,
    per_ip: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Entries kept before expired ones are swept.
const LIMITER_SWEEP_AT: usize = 100_000;

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            limit: per_minute,
            window: Duration::from_secs(60),
            per_user: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    fn ip_limit(&self) -> u32 {
        self.limit.saturating_mul(10)
    }

    /// Whether `ip` is ignored altogether (checked before anything else).
    pub fn address_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        matches!(map.get(&ip), Some(&(start, n)) if now.duration_since(start) < self.window && n >= self.ip_limit())
    }

    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> Throttle {
        if self.limit == 0 {
            return Throttle::Allow;
        }
        if self.address_blocked(ip, now) {
            return Throttle::DropAddress;
        }
        let map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&(ip, user.to_owned())) {
            Some(&(start, n)) if now.duration_since(start) < self.window && n >= self.limit => {
                Throttle::RejectUser
            }
            _ => Throttle::Allow,
        }
    }

    pub fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let window = self.window;
        let bump = |e: &mut (Instant, u32)| {
            if now.duration_since(e.0) >= window {
                *e = (now, 0);
            }
            e.1 += 1;
        };
        {
            let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > LIMITER_SWEEP_AT {
                map.retain(|_, (start, _)| now.duration_since(*start) < window);
            }
            bump(map.entry((ip, user.to_owned())).or_insert((now, 0)));
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > LIMITER_SWEEP_AT {
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        bump(map.entry(ip).or_insert((now, 0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed independently with openssl.
        let pw = rest_password(b"secret", "1700000000:alice");
        assert_eq!(pw.len(), 28);
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(
            quota_key("1700000000:alice", CredentialKind::Rest { expiry: 1 }),
            "alice"
        );
    }

    #[test]
    fn keys_for_static_rest_and_expired() {
        let mut users = BTreeMap::new();
        users.insert("bob".to_string(), "pw".to_string());
        let c = Credentials::new("r", &users, &["s1".into(), "s2".into()]);
        let mut out = Vec::new();
        assert_eq!(c.keys("bob", 100, &mut out), Ok(CredentialKind::Static));
        assert_eq!(out, vec![long_term_key("bob", "r", "pw")]);
        assert_eq!(
            c.keys("200:alice", 100, &mut out),
            Ok(CredentialKind::Rest { expiry: 200 })
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            c.keys("50:alice", 100, &mut out),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            c.keys("carol", 100, &mut out),
            Err(CredentialError::UnknownUser)
        );
    }

    #[test]
    fn nonces_expire_and_bind_to_the_address() {
        let n = Nonces::new(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let nonce = n.issue(1000, ip);
        assert_eq!(n.check(&nonce, 1005, ip), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1010, ip), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, 1005, other), NonceCheck::Invalid);
        assert_eq!(n.check("zz", 1005, ip), NonceCheck::Invalid);
        assert_eq!(
            n.check("é234567890123456789012345678901", 0, ip),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn limiter_rejects_the_user_then_drops_the_address_and_resets() {
        let l = FailureLimiter::new(2);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t = Instant::now();
        l.record_failure(ip, "alice", t);
        assert_eq!(l.check(ip, "alice", t), Throttle::Allow);
        l.record_failure(ip, "alice", t);
        assert_eq!(l.check(ip, "alice", t), Throttle::RejectUser);
        assert_eq!(l.check(ip, "bob", t), Throttle::Allow);
        assert_eq!(
            l.check("192.0.2.10".parse().unwrap(), "alice", t),
            Throttle::Allow
        );
        for i in 0..18 {
            l.record_failure(ip, &format!("user{i}"), t);
        }
        assert!(l.address_blocked(ip, t));
        assert_eq!(l.check(ip, "bob", t), Throttle::DropAddress);
        let later = t + Duration::from_secs(61);
        assert_eq!(l.check(ip, "alice", later), Throttle::Allow);
        assert!(!l.address_blocked(ip, later));
    }
}
