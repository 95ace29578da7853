//! The client side of STUN/TURN, free of sockets (used by `ember selftest`): builds
//! requests, carries the long-term credential state (realm, nonce, key) across the
//! 401/438 challenges of RFC 8489 §9.2, and tells what an answer means.
//!
//! A caller sends [`ClientAuth::request`]'s bytes, feeds the matching response to
//! [`ClientAuth::on_response`], and resends a freshly built request while it says
//! [`Answer::Retry`].

use std::net::SocketAddr;

use crate::auth::long_term_key;
use crate::stun::{attr, Class, Message, MessageWriter};

/// Long-term credentials as the client knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub username: String,
    pub password: String,
}

/// What a response means for the request that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A success response (its integrity, when present, checked).
    Success,
    /// A challenge was answered with new realm/nonce: build and send the request again.
    Retry,
    /// An error response the caller has to act on (or a repeated challenge).
    Error { code: u16, reason: String },
    /// A success response whose MESSAGE-INTEGRITY does not verify with our key: the server
    /// (or something in between) does not know our password, yet claims success.
    BadIntegrity,
}

/// Realm, nonce and key of one client's conversation with one server.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    creds: Option<ClientCredentials>,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    /// Challenges answered since the last success: a second 401 after answering one means
    /// the credentials are refused, not that a retry would help.
    challenges: u8,
}

/// Challenges followed for one request before giving up (a 401, then a 438 at most).
const MAX_CHALLENGES: u8 = 2;

impl ClientAuth {
    /// `None`: send requests without credentials (STUN Binding, or probing whether a
    /// server demands authentication at all).
    pub fn new(creds: Option<ClientCredentials>) -> Self {
        ClientAuth {
            creds,
            realm: None,
            nonce: None,
            key: None,
            challenges: 0,
        }
    }

    /// The realm the server announced, once known.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Builds a request: `attrs` writes the method's attributes, then USERNAME, REALM,
    /// NONCE and MESSAGE-INTEGRITY are added once a challenge supplied realm and nonce,
    /// and FINGERPRINT last.
    pub fn request(
        &self,
        method: u16,
        tid: &[u8; 12],
        attrs: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = Vec::with_capacity(160);
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid);
        attrs(&mut w);
        if let (Some(c), Some(realm), Some(nonce), Some(key)) =
            (&self.creds, &self.realm, &self.nonce, &self.key)
        {
            w.attr(attr::USERNAME, c.username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity_sha1(key);
        }
        w.fingerprint();
        buf
    }

    /// Interprets the response to a request built by [`request`](Self::request).
    pub fn on_response(&mut self, msg: &Message<'_>) -> Answer {
        match msg.class() {
            Class::Success => {
                self.challenges = 0;
                match (&self.key, msg.integrity()) {
                    (Some(key), Some(_)) if !msg.verify_integrity(key) => Answer::BadIntegrity,
                    _ => Answer::Success,
                }
            }
            Class::Error => {
                let (code, reason) = error_code(msg).unwrap_or((0, String::new()));
                let challenge = code == 401 || code == 438;
                if challenge && self.creds.is_some() && self.challenges < MAX_CHALLENGES {
                    let realm = msg.get_str(attr::REALM);
                    let nonce = msg.get_str(attr::NONCE);
                    if let Some(nonce) = nonce {
                        // A 401 to a request that carried our credentials with a nonce the
                        // server still accepts is a refusal; a 438 (or a first 401) is not.
                        let refused = code == 401 && self.key.is_some() && self.challenges > 0;
                        if !refused {
                            if let Some(r) = realm {
                                self.realm = Some(r.to_owned());
                            }
                            self.nonce = Some(nonce.to_owned());
                            if let (Some(c), Some(r)) = (&self.creds, &self.realm) {
                                self.key = Some(long_term_key(&c.username, r, &c.password));
                                self.challenges += 1;
                                return Answer::Retry;
                            }
                        }
                    }
                }
                self.challenges = 0;
                Answer::Error { code, reason }
            }
            _ => Answer::Error {
                code: 0,
                reason: "not a response".into(),
            },
        }
    }

    /// Forgets the challenge count (call before each new request).
    pub fn start_request(&mut self) {
        self.challenges = 0;
    }
}

/// ERROR-CODE: the number and its reason phrase.
pub fn error_code(msg: &Message<'_>) -> Option<(u16, String)> {
    let v = msg.get(attr::ERROR_CODE)?;
    if v.len() < 4 {
        return None;
    }
    let code = u16::from(v[2] & 0x7) * 100 + u16::from(v[3]);
    Some((code, String::from_utf8_lossy(&v[4..]).into_owned()))
}

/// The addresses an Allocate success carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// XOR-RELAYED-ADDRESS (an IPv4 and an IPv6 one when both were asked for).
    pub relayed: Vec<SocketAddr>,
    /// XOR-MAPPED-ADDRESS: the client as the server sees it.
    pub mapped: Option<SocketAddr>,
    /// LIFETIME, seconds.
    pub lifetime: Option<u32>,
}

impl Allocation {
    /// Reads an Allocate success response.
    pub fn from_response(msg: &Message<'_>) -> Allocation {
        let tid = msg.transaction_id();
        let relayed = msg
            .attributes()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .filter_map(|(_, v)| crate::stun::decode_xor_addr(v, &tid))
            .collect();
        Allocation {
            relayed,
            mapped: msg.get_xor_addr(attr::XOR_MAPPED_ADDRESS),
            lifetime: msg.get_u32(attr::LIFETIME),
        }
    }
}

/// The mapped address of a Binding success (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
pub fn mapped_address(msg: &Message<'_>) -> Option<SocketAddr> {
    msg.get_xor_addr(attr::XOR_MAPPED_ADDRESS).or_else(|| {
        let v = msg.get(attr::MAPPED_ADDRESS)?;
        let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
        match v.get(1)? {
            1 if v.len() >= 8 => Some(SocketAddr::from(([v[4], v[5], v[6], v[7]], port))),
            2 if v.len() >= 20 => {
                let b: [u8; 16] = v[4..20].try_into().ok()?;
                Some(SocketAddr::from((b, port)))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::method;

    const TID: [u8; 12] = [7; 12];

    fn response(class: Class, f: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method::ALLOCATE, class, &TID);
        f(&mut w);
        buf
    }

    fn challenge(code: u16, nonce: &str) -> Vec<u8> {
        response(Class::Error, |w| {
            w.error_code(code, "challenge")
                .attr(attr::REALM, b"example.org")
                .attr(attr::NONCE, nonce.as_bytes());
        })
    }

    fn creds() -> ClientAuth {
        ClientAuth::new(Some(ClientCredentials {
            username: "alice".into(),
            password: "pw".into(),
        }))
    }

    #[test]
    fn first_request_is_unauthenticated_then_signed_after_401() {
        let mut auth = creds();
        let req = auth.request(method::ALLOCATE, &TID, |w| {
            w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        let m = Message::parse(&req).unwrap();
        assert!(!m.has(attr::USERNAME) && !m.has(attr::MESSAGE_INTEGRITY));
        assert!(m.has(attr::FINGERPRINT));

        let c = challenge(401, "n1");
        assert_eq!(
            auth.on_response(&Message::parse(&c).unwrap()),
            Answer::Retry
        );
        assert_eq!(auth.realm(), Some("example.org"));
        let req = auth.request(method::ALLOCATE, &TID, |_| {});
        let m = Message::parse(&req).unwrap();
        assert_eq!(m.get_str(attr::USERNAME), Some("alice"));
        assert_eq!(m.get_str(attr::NONCE), Some("n1"));
        let key = long_term_key("alice", "example.org", "pw");
        assert!(m.verify_integrity(&key));

        // A second 401 to the signed request is a refusal, not another retry.
        let c = challenge(401, "n2");
        assert_eq!(
            auth.on_response(&Message::parse(&c).unwrap()),
            Answer::Error {
                code: 401,
                reason: "challenge".into()
            }
        );
    }

    #[test]
    fn stale_nonce_is_retried_once_with_the_new_nonce() {
        let mut auth = creds();
        auth.on_response(&Message::parse(&challenge(401, "n1")).unwrap());
        auth.start_request();
        assert_eq!(
            auth.on_response(&Message::parse(&challenge(438, "n2")).unwrap()),
            Answer::Retry
        );
        let req = auth.request(method::REFRESH, &TID, |_| {});
        assert_eq!(
            Message::parse(&req).unwrap().get_str(attr::NONCE),
            Some("n2")
        );
    }

    #[test]
    fn without_credentials_a_challenge_is_an_error() {
        let mut auth = ClientAuth::new(None);
        assert!(matches!(
            auth.on_response(&Message::parse(&challenge(401, "n")).unwrap()),
            Answer::Error { code: 401, .. }
        ));
    }

    #[test]
    fn success_integrity_is_checked() {
        let mut auth = creds();
        auth.on_response(&Message::parse(&challenge(401, "n1")).unwrap());
        let key = long_term_key("alice", "example.org", "pw");
        let good = response(Class::Success, |w| {
            w.xor_addr(
                attr::XOR_RELAYED_ADDRESS,
                "192.0.2.1:50000".parse().unwrap(),
            )
            .u32(attr::LIFETIME, 600)
            .integrity_sha1(&key);
        });
        let m = Message::parse(&good).unwrap();
        assert_eq!(auth.on_response(&m), Answer::Success);
        let a = Allocation::from_response(&m);
        assert_eq!(a.relayed, vec!["192.0.2.1:50000".parse().unwrap()]);
        assert_eq!(a.lifetime, Some(600));

        let forged = response(Class::Success, |w| {
            w.integrity_sha1(b"some other key");
        });
        assert_eq!(
            auth.on_response(&Message::parse(&forged).unwrap()),
            Answer::BadIntegrity
        );
    }

    #[test]
    fn mapped_address_falls_back_to_the_plain_attribute() {
        let b = response(Class::Success, |w| {
            w.attr(attr::MAPPED_ADDRESS, &[0, 1, 0x1f, 0x90, 198, 51, 100, 7]);
        });
        assert_eq!(
            mapped_address(&Message::parse(&b).unwrap()),
            Some("198.51.100.7:8080".parse().unwrap())
        );
    }
}
