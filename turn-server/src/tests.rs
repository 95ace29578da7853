//! Protocol tests for the sans-IO TURN core: requests go in as bytes, responses come out as
//! bytes, relay sockets are a fake [`RelayIo`] and time is synthetic (no sockets, no sleeps).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{self, Credentials, FailureLimiter, Nonces};
use crate::core::{
    AllocId, BindError, ClientAction, Core, Family, FiveTuple, Quotas, RelayIo, RelayRequest,
    Shared, Transport,
};
use crate::policy::PeerPolicy;
use crate::stun::{self, attr, method, Class, Message, MessageWriter, DATA_INDICATION_HEADROOM};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const REALM: &str = "ember.test";
const SOFTWARE: &str = "ember-test";
const SECRET_OLD: &str = "rest-secret-old";
const SECRET_NEW: &str = "rest-secret-new";
/// The synthetic wall clock the tests start at.
const T0_UNIX: u64 = 1_700_000_000;
const SERVER: &str = "203.0.113.1:3478";
const RELAY_V4: &str = "203.0.113.1";
const RELAY_V6: &str = "2001:db8::1";
/// Public peers (allowed by the default policy).
const PEER: &str = "93.184.216.34:5000";
const PEER2: &str = "93.184.216.35:5001";
const PEER_V6: &str = "[2606:2800:220:1::7]:6000";
const UDP: [u8; 4] = [17, 0, 0, 0];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tuple(client: &str, transport: Transport) -> FiveTuple {
    FiveTuple {
        client: sa(client),
        server: sa(SERVER),
        transport,
    }
}

/// Knobs of the [`Shared`] state a test runs against.
struct Opts {
    allow_loopback: bool,
    v6: bool,
    user_quota: u32,
    total_quota: u32,
    failures_per_minute: u32,
    nonce_lifetime: u64,
    max_lifetime: u32,
    bandwidth_limit: u64,
    external: Vec<(Option<IpAddr>, IpAddr)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            allow_loopback: false,
            v6: false,
            user_quota: 0,
            total_quota: 0,
            failures_per_minute: 100,
            nonce_lifetime: 600,
            max_lifetime: 3600,
            bandwidth_limit: 0,
            external: Vec::new(),
        }
    }
}

fn shared(o: Opts) -> Arc<Shared> {
    let mut users = BTreeMap::new();
    users.insert("alice".to_string(), "alice-pw".to_string());
    users.insert("bob".to_string(), "bob-pw".to_string());
    let allowed = if o.allow_loopback {
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    } else {
        Vec::new()
    };
    Arc::new(Shared {
        credentials: Credentials::new(
            REALM,
            &users,
            &[SECRET_NEW.to_string(), SECRET_OLD.to_string()],
        ),
        nonces: Nonces::new(o.nonce_lifetime),
        limiter: FailureLimiter::new(o.failures_per_minute),
        policy: PeerPolicy::new(allowed, Vec::new(), vec![sa(SERVER)]),
        quotas: Quotas::new(o.user_quota, o.total_quota),
        software: SOFTWARE.to_string(),
        max_lifetime: o.max_lifetime,
        bandwidth_limit: o.bandwidth_limit,
        families: [true, o.v6],
        external: o.external,
    })
}

/// Fake relay sockets: addresses come from a port counter; can be told to fail; honours
/// EVEN-PORT, reservation tokens and the IPv6 family; records every bind and release.
struct FakeRelay {
    next_port: u16,
    v6: bool,
    fail: Option<BindError>,
    reservations: HashMap<u64, SocketAddr>,
    next_token: u64,
    binds: Vec<(AllocId, RelayRequest, SocketAddr)>,
    released: Vec<AllocId>,
}

impl FakeRelay {
    fn new(v6: bool) -> Self {
        FakeRelay {
            // Odd on purpose, so EVEN-PORT has to skip one.
            next_port: 50_001,
            v6,
            fail: None,
            reservations: HashMap::new(),
            next_token: 0x1122_3344_5566_7700,
            binds: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl RelayIo for FakeRelay {
    fn bind(
        &mut self,
        id: AllocId,
        req: &RelayRequest,
    ) -> Result<(SocketAddr, Option<u64>), BindError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if let Some(t) = req.token {
            let a = self.reservations.remove(&t).ok_or(BindError::BadToken)?;
            self.binds.push((id, *req, a));
            return Ok((a, None));
        }
        let ip: IpAddr = match req.family {
            Family::V4 => RELAY_V4.parse().unwrap(),
            Family::V6 if self.v6 => RELAY_V6.parse().unwrap(),
            Family::V6 => return Err(BindError::Family),
        };
        if req.even_port && self.next_port % 2 == 1 {
            self.next_port += 1;
        }
        let a = SocketAddr::new(ip, self.next_port);
        self.next_port += 1;
        let token = req.reserve_next.then(|| {
            let t = self.next_token;
            self.next_token += 1;
            self.reservations
                .insert(t, SocketAddr::new(ip, self.next_port));
            self.next_port += 1;
            t
        });
        self.binds.push((id, *req, a));
        Ok((a, token))
    }

    fn release(&mut self, id: AllocId) {
        self.released.push(id);
    }
}

/// A TURN client: builds requests and answers the long-term credential challenge.
struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    sha256: bool,
    tid_seed: u64,
    tid_counter: u32,
}

impl Client {
    fn new(client: &str, transport: Transport, username: &str, password: &str) -> Self {
        // Distinct clients on one 5-tuple must not reuse each other's transaction ids.
        let seed = client
            .bytes()
            .chain(username.bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |a, b| {
                (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        Client {
            tuple: tuple(client, transport),
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            sha256: false,
            tid_seed: seed,
            tid_counter: 0,
        }
    }

    fn udp(client: &str, username: &str, password: &str) -> Self {
        Self::new(client, Transport::Udp, username, password)
    }

    fn alice() -> Self {
        Self::udp("198.51.100.10:40000", "alice", "alice-pw")
    }

    /// A REST client whose username expires at `expiry`, signed with `secret`.
    fn rest(client: &str, expiry: u64, user: &str, secret: &str) -> Self {
        let username = format!("{expiry}:{user}");
        let password = auth::rest_password(secret.as_bytes(), &username);
        Self::udp(client, &username, &password)
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid_counter += 1;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.tid_seed.to_be_bytes());
        t[8..].copy_from_slice(&self.tid_counter.to_be_bytes());
        t
    }

    fn key(&self) -> [u8; 16] {
        auth::long_term_key(
            &self.username,
            self.realm.as_deref().unwrap_or(REALM),
            &self.password,
        )
    }

    /// Builds a request; once a nonce is known it carries the credentials and integrity.
    fn build(&self, m: u16, tid: &[u8; 12], attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, m, Class::Request, tid);
        attrs(&mut w);
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            w.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
            if self.sha256 {
                w.integrity_sha256(&self.key());
            } else {
                w.integrity_sha1(&self.key());
            }
        }
        w.fingerprint();
        buf
    }

    /// Takes REALM and NONCE from a 401/438 challenge; true if there was one.
    fn learn(&mut self, resp: &[u8]) -> bool {
        let m = parse(resp);
        match (m.get_str(attr::REALM), m.get_str(attr::NONCE)) {
            (Some(r), Some(n)) if matches!(error_code(resp), Some(401 | 438)) => {
                self.realm = Some(r.to_string());
                self.nonce = Some(n.to_string());
                true
            }
            _ => false,
        }
    }
}

/// A core, its fake relay sockets and a synthetic clock.
struct Harness {
    core: Core,
    io: FakeRelay,
    now: Instant,
    unix: u64,
    out: Vec<u8>,
}

impl Harness {
    fn new(o: Opts) -> Self {
        let v6 = o.v6;
        Harness {
            core: Core::new(shared(o)),
            io: FakeRelay::new(v6),
            now: Instant::now(),
            unix: T0_UNIX,
            out: Vec::new(),
        }
    }

    fn default() -> Self {
        Self::new(Opts::default())
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.unix += secs;
    }

    /// One packet from a client.
    fn packet(&mut self, t: &FiveTuple, pkt: &[u8]) -> ClientAction {
        self.core
            .handle_client(self.now, self.unix, t, pkt, &mut self.out, &mut self.io)
    }

    /// One packet; the reply, if the core gave one.
    fn exchange(&mut self, t: &FiveTuple, pkt: &[u8]) -> Option<Vec<u8>> {
        match self.packet(t, pkt) {
            ClientAction::Reply => {
                let r = self.out.clone();
                check_response(pkt, &r);
                Some(r)
            }
            ClientAction::None => None,
            other => panic!("unexpected action for a request: {other:?}"),
        }
    }

    /// One request/response round trip, no retry.
    fn call(
        &mut self,
        c: &mut Client,
        m: u16,
        attrs: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Option<Vec<u8>> {
        let tid = c.next_tid();
        let pkt = c.build(m, &tid, attrs);
        let t = c.tuple;
        self.exchange(&t, &pkt)
    }

    /// A request that answers one 401/438 challenge, as a real client does.
    fn request(
        &mut self,
        c: &mut Client,
        m: u16,
        attrs: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let r = self.call(c, m, attrs).expect("a reply");
        if c.learn(&r) {
            return self.call(c, m, attrs).expect("a reply");
        }
        r
    }

    fn allocate(&mut self, c: &mut Client, extra: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        self.request(c, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &UDP);
            extra(w);
        })
    }

    fn allocate_ok(&mut self, c: &mut Client) -> Vec<u8> {
        let r = self.allocate(c, &|_| {});
        assert_success(&r, method::ALLOCATE);
        r
    }

    fn create_permission(&mut self, c: &mut Client, peer: SocketAddr) -> Vec<u8> {
        self.request(c, method::CREATE_PERMISSION, &|w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn channel_bind(&mut self, c: &mut Client, number: u16, peer: SocketAddr) -> Vec<u8> {
        self.request(c, method::CHANNEL_BIND, &|w| {
            w.u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn refresh(&mut self, c: &mut Client, lifetime: Option<u32>) -> Vec<u8> {
        self.request(c, method::REFRESH, &|w| {
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, l);
            }
        })
    }

    fn alloc_id(&self, c: &Client) -> AllocId {
        self.core
            .allocation_of(&c.tuple)
            .expect("allocation exists")
    }

    /// A datagram from `peer` arriving on the allocation's relay socket.
    fn peer_sends(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let at = DATA_INDICATION_HEADROOM;
        let mut buf = vec![0xEEu8; at + payload.len() + 3];
        buf[at..at + payload.len()].copy_from_slice(payload);
        let (t, r) = self
            .core
            .handle_peer(self.now, id, peer, &mut buf, at, payload.len())?;
        Some((t, buf[r].to_vec()))
    }
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::SEND, Class::Indication, &[9u8; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data);
    buf
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut b = channel.to_be_bytes().to_vec();
    b.extend_from_slice(&(data.len() as u16).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn parse(b: &[u8]) -> Message<'_> {
    Message::parse(b).expect("a well-formed STUN message")
}

/// Every response: well-formed, same transaction id, answers the request's method, ends with
/// a valid FINGERPRINT (checked by `Message::parse`).
fn check_response(req: &[u8], resp: &[u8]) {
    let m = parse(resp);
    assert!(matches!(m.class(), Class::Success | Class::Error), "{m:?}");
    assert_eq!(m.transaction_id(), req[8..20]);
    assert_eq!(m.method(), parse(req).method());
    assert_eq!(
        m.attributes().last().map(|(t, _)| t),
        Some(attr::FINGERPRINT)
    );
}

fn error_code(b: &[u8]) -> Option<u16> {
    let m = parse(b);
    if m.class() != Class::Error {
        return None;
    }
    let v = m
        .get(attr::ERROR_CODE)
        .expect("ERROR-CODE in an error response");
    Some(u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
}

#[track_caller]
fn assert_error(b: &[u8], code: u16) {
    let m = parse(b);
    assert_eq!(error_code(b), Some(code), "{m:?}");
}

#[track_caller]
fn assert_success(b: &[u8], m: u16) {
    let msg = parse(b);
    assert_eq!(
        (msg.method(), msg.class()),
        (m, Class::Success),
        "error {:?}",
        error_code(b)
    );
}

/// Every XOR-RELAYED-ADDRESS of a response, decoded independently of the codec.
fn relayed(b: &[u8]) -> Vec<SocketAddr> {
    let m = parse(b);
    let tid = m.transaction_id();
    m.attributes()
        .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
        .map(|(_, v)| {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(&tid);
            let ip: IpAddr = match v[1] {
                1 => {
                    let o: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    o.into()
                }
                2 => {
                    let o: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    o.into()
                }
                f => panic!("bad family {f}"),
            };
            SocketAddr::new(ip, port)
        })
        .collect()
}

fn lifetime_of(b: &[u8]) -> Option<u32> {
    parse(b).get_u32(attr::LIFETIME)
}

/// Deterministic xorshift64* for the no-panic loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binding
// ---------------------------------------------------------------------------------------------

#[test]
fn binding_returns_xor_mapped_address_with_valid_fingerprint() {
    let mut h = Harness::default();
    let t = tuple("198.51.100.10:40000", Transport::Udp);
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::BINDING, Class::Request, &[1; 12]).fingerprint();
    let r = h.exchange(&t, &req).expect("binding answered");
    let m = parse(&r);
    assert_eq!((m.method(), m.class()), (method::BINDING, Class::Success));
    assert_eq!(m.get_xor_addr(attr::XOR_MAPPED_ADDRESS), Some(t.client));
    assert_eq!(m.get_str(attr::SOFTWARE), Some(SOFTWARE));
    assert!(m.has(attr::FINGERPRINT));
    // A corrupted response (one bit of the transaction id) no longer parses: the FINGERPRINT
    // really covers the message.
    let mut bad = r.clone();
    bad[10] ^= 0x01;
    assert!(Message::parse(&bad).is_err());

    // IPv6 client, over TCP, without FINGERPRINT in the request.
    let t6 = tuple("[2001:db8:1::5]:40001", Transport::Tcp);
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::BINDING, Class::Request, &[2; 12]);
    let r = h.exchange(&t6, &req).expect("binding answered");
    assert_eq!(
        parse(&r).get_xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(t6.client)
    );
}

// ---------------------------------------------------------------------------------------------
// Allocate: authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn allocate_without_credentials_is_challenged_with_realm_and_nonce() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h
        .call(&mut c, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .unwrap();
    assert_error(&r, 401);
    let m = parse(&r);
    assert_eq!(m.get_str(attr::REALM), Some(REALM));
    assert_eq!(m.get_str(attr::NONCE).map(str::len), Some(32));
    assert!(m.integrity().is_none(), "a challenge cannot be signed");
    assert_eq!(h.core.allocation_count(), 0);
    // The challenge itself is not an authentication failure.
    assert_eq!(h.core.stats.auth_failures, 0);
}

#[test]
fn allocate_succeeds_for_static_user() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate_ok(&mut c);
    let m = parse(&r);
    assert!(m.verify_integrity(&c.key()));
    assert!(!m.integrity().unwrap().is_sha256());
    assert_eq!(relayed(&r), vec![sa("203.0.113.1:50001")]);
    assert_eq!(
        m.get_xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(c.tuple.client)
    );
    assert_eq!(lifetime_of(&r), Some(crate::core::DEFAULT_LIFETIME));
    assert_eq!(h.core.allocation_count(), 1);
    assert_eq!(h.core.stats.allocations_created, [1, 0, 0]);
    assert_eq!(h.core.shared().quotas.total(), 1);
    let id = h.alloc_id(&c);
    assert_eq!(
        h.core.relay_addrs(id),
        [Some(sa("203.0.113.1:50001")), None]
    );
}

#[test]
fn allocate_succeeds_with_rest_credentials_under_either_rotated_secret() {
    let mut h = Harness::default();
    let expiry = T0_UNIX + 3600;
    for (i, secret) in [SECRET_NEW, SECRET_OLD].into_iter().enumerate() {
        let mut c = Client::rest(
            &format!("198.51.100.20:{}", 40000 + i),
            expiry,
            "alice",
            secret,
        );
        let r = h.allocate_ok(&mut c);
        assert!(parse(&r).verify_integrity(&c.key()));
    }
    assert_eq!(h.core.allocation_count(), 2);
    // A secret the server does not know is refused.
    let mut c = Client::rest("198.51.100.20:41000", expiry, "alice", "not-the-secret");
    let r = h.allocate(&mut c, &|_| {});
    assert_error(&r, 401);
    assert_eq!(h.core.stats.auth_failures, 1);
}

#[test]
fn allocate_with_expired_rest_username_is_unauthorized() {
    let mut h = Harness::default();
    let mut c = Client::rest("198.51.100.21:40000", T0_UNIX - 10, "alice", SECRET_NEW);
    let r = h.allocate(&mut c, &|_| {});
    assert_error(&r, 401);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.stats.auth_failures, 1);
    // Valid until exactly its expiry second.
    let mut c = Client::rest("198.51.100.21:40001", T0_UNIX + 1, "alice", SECRET_NEW);
    h.allocate_ok(&mut c);
    let mut c = Client::rest("198.51.100.21:40002", T0_UNIX, "alice", SECRET_NEW);
    assert_error(&h.allocate(&mut c, &|_| {}), 401);
}

#[test]
fn allocate_with_wrong_password_is_unauthorized_and_counted() {
    let mut h = Harness::default();
    let mut c = Client::udp("198.51.100.11:40000", "alice", "wrong");
    let r = h.allocate(&mut c, &|_| {});
    assert_error(&r, 401);
    // The new challenge lets the client retry with other credentials.
    assert_eq!(parse(&r).get_str(attr::REALM), Some(REALM));
    assert!(parse(&r).has(attr::NONCE));
    assert_eq!(h.core.stats.auth_failures, 1);
    assert_eq!(h.core.allocation_count(), 0);
    // Unknown user: same answer.
    let mut c = Client::udp("198.51.100.11:40001", "mallory", "x");
    assert_error(&h.allocate(&mut c, &|_| {}), 401);
    assert_eq!(h.core.stats.auth_failures, 2);
}

#[test]
fn auth_failure_limiter_rejects_that_user_from_that_address() {
    let mut h = Harness::new(Opts {
        failures_per_minute: 3,
        ..Opts::default()
    });
    let mut bad = Client::udp("198.51.100.12:40000", "alice", "wrong");
    let alloc = |w: &mut MessageWriter<'_>| {
        w.attr(attr::REQUESTED_TRANSPORT, &UDP);
    };
    // Challenge, then three wrong answers.
    assert_error(&h.call(&mut bad, method::ALLOCATE, &alloc).unwrap(), 401);
    assert!(bad.learn(&h.out.clone()));
    for _ in 0..3 {
        assert_error(&h.call(&mut bad, method::ALLOCATE, &alloc).unwrap(), 401);
    }
    assert_eq!(h.core.stats.auth_failures, 3);
    // Now alice from that address gets 401 without a credential check, even with the right
    // password (from another port), so a guesser learns nothing and clients give up.
    assert_error(&h.call(&mut bad, method::ALLOCATE, &alloc).unwrap(), 401);
    let mut good = Client::udp("198.51.100.12:40001", "alice", "alice-pw");
    good.realm = bad.realm.clone();
    good.nonce = bad.nonce.clone();
    assert_error(&h.call(&mut good, method::ALLOCATE, &alloc).unwrap(), 401);
    assert_eq!(h.core.stats.auth_failures, 3);
    assert_eq!(h.core.stats.auth_throttled, 2);
    // Another user behind the same address, and alice from elsewhere, are unaffected.
    let mut bob = Client::udp("198.51.100.12:40002", "bob", "bob-pw");
    h.allocate_ok(&mut bob);
    h.allocate_ok(&mut Client::alice());
    // Binding requests are not authenticated, so they still work.
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::BINDING, Class::Request, &[3; 12]);
    assert!(h.exchange(&good.tuple, &req).is_some());
    // The window ends after a minute.
    h.advance(61);
    good.nonce = None;
    good.realm = None;
    h.allocate_ok(&mut good);
}

#[test]
fn auth_failure_limiter_ignores_an_address_spraying_user_names() {
    let mut h = Harness::new(Opts {
        failures_per_minute: 1,
        ..Opts::default()
    });
    let alloc = |w: &mut MessageWriter<'_>| {
        w.attr(attr::REQUESTED_TRANSPORT, &UDP);
    };
    // Ten failures (ten times the budget) under ten user names.
    for i in 0..10 {
        let mut c = Client::udp("198.51.100.13:40000", &format!("user{i}"), "x");
        assert_error(&h.call(&mut c, method::ALLOCATE, &alloc).unwrap(), 401);
        assert!(c.learn(&h.out.clone()));
        assert_error(&h.call(&mut c, method::ALLOCATE, &alloc).unwrap(), 401);
    }
    assert_eq!(h.core.stats.auth_failures, 10);
    let mut c = Client::udp("198.51.100.13:40001", "alice", "alice-pw");
    assert_eq!(h.call(&mut c, method::ALLOCATE, &alloc), None);
    h.advance(61);
    h.allocate_ok(&mut c);
}

#[test]
fn sha256_integrity_request_gets_sha256_signed_response() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    c.sha256 = true;
    let r = h.allocate_ok(&mut c);
    let m = parse(&r);
    assert!(m.integrity().unwrap().is_sha256());
    assert!(m.verify_integrity(&c.key()));
    assert!(!m.has(attr::MESSAGE_INTEGRITY));
    // Errors after authentication are signed the same way.
    let r = h.allocate(&mut c, &|_| {});
    assert_error(&r, 437);
    let m = parse(&r);
    assert!(m.integrity().unwrap().is_sha256());
    assert!(m.verify_integrity(&c.key()));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new(Opts {
        nonce_lifetime: 30,
        ..Opts::default()
    });
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let old = c.nonce.clone().unwrap();
    h.advance(31);
    let r = h.call(&mut c, method::REFRESH, &|_| {}).unwrap();
    assert_error(&r, 438);
    let m = parse(&r);
    assert_eq!(m.get_str(attr::REALM), Some(REALM));
    let fresh = m.get_str(attr::NONCE).unwrap();
    assert_ne!(fresh, old);
    // A stale nonce is not a failed password.
    assert_eq!(h.core.stats.auth_failures, 0);
    // With the new nonce the request goes through.
    assert!(c.learn(&r));
    let r = h.call(&mut c, method::REFRESH, &|_| {}).unwrap();
    assert_success(&r, method::REFRESH);
}

#[test]
fn nonce_from_another_address_is_rejected_as_stale() {
    let mut h = Harness::default();
    let mut a = Client::alice();
    h.allocate_ok(&mut a);
    let mut b = Client::udp("198.51.100.99:40000", "bob", "bob-pw");
    b.realm = a.realm.clone();
    b.nonce = a.nonce.clone();
    let r = h
        .call(&mut b, method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .unwrap();
    assert_error(&r, 438);
}

#[test]
fn integrity_without_username_realm_nonce_is_bad_request() {
    let mut h = Harness::default();
    let t = tuple("198.51.100.10:40000", Transport::Udp);
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::ALLOCATE, Class::Request, &[4; 12])
        .attr(attr::REQUESTED_TRANSPORT, &UDP)
        .attr(attr::USERNAME, b"alice")
        .integrity_sha1(b"whatever")
        .fingerprint();
    let r = h.exchange(&t, &req).unwrap();
    assert_error(&r, 400);
    assert!(!parse(&r).has(attr::NONCE));
}

// ---------------------------------------------------------------------------------------------
// Allocate: request validation
// ---------------------------------------------------------------------------------------------

#[test]
fn allocate_without_requested_transport_is_bad_request() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.request(&mut c, method::ALLOCATE, &|_| {});
    assert_error(&r, 400);
    assert!(parse(&r).verify_integrity(&c.key()));
    assert_eq!(h.core.stats.allocations_failed, [1, 0, 0]);
    let r = h.request(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0]);
    });
    assert_error(&r, 400);
}

#[test]
fn allocate_with_tcp_transport_is_unsupported() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.request(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_error(&r, 442);
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn second_allocate_on_same_tuple_is_mismatch_but_retransmission_gets_original_response() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    // Get a nonce first, then keep the exact request bytes.
    let r = h.call(&mut c, method::ALLOCATE, &|_| {}).unwrap();
    assert!(c.learn(&r));
    let tid = c.next_tid();
    let req = c.build(method::ALLOCATE, &tid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &UDP);
    });
    let first = h.exchange(&c.tuple, &req).unwrap();
    assert_success(&first, method::ALLOCATE);
    let again = h.exchange(&c.tuple, &req).unwrap();
    assert_eq!(
        again, first,
        "a retransmission gets the byte-identical response"
    );
    assert_eq!(h.io.binds.len(), 1, "and no second relay socket");
    assert_eq!(h.core.stats.allocations_created, [1, 0, 0]);
    // A new transaction is a second allocation on the same 5-tuple.
    let r = h.allocate(&mut c, &|_| {});
    assert_error(&r, 437);
    assert_eq!(h.core.allocation_count(), 1);
    // The original is still what a late retransmission gets.
    assert_eq!(h.exchange(&c.tuple, &req).unwrap(), first);
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_listing_it() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(0x0033, b"x").attr(0x0034, b"");
    });
    assert_error(&r, 420);
    let m = parse(&r);
    assert_eq!(
        m.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x33, 0x00, 0x34][..])
    );
    assert_eq!(h.core.allocation_count(), 0);
    // Also for a request that is otherwise authenticated.
    let r = h.allocate(&mut c, &|w| {
        w.attr(0x0033, b"x");
    });
    assert_error(&r, 420);
    assert_eq!(
        parse(&r).get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x33][..])
    );
}

#[test]
fn unknown_comprehension_optional_attribute_is_ignored() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(0x8033, b"ignored");
    });
    assert_success(&r, method::ALLOCATE);
}

#[test]
fn requested_ipv6_family_is_440_when_disabled() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_error(&r, 440);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.shared().quotas.total(), 0);
    // An unknown family value is also 440.
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x03, 0, 0, 0]);
    });
    assert_error(&r, 440);
}

#[test]
fn requested_ipv6_family_gets_ipv6_relayed_address_when_enabled() {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_success(&r, method::ALLOCATE);
    let rel = relayed(&r);
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].ip(), RELAY_V6.parse::<IpAddr>().unwrap());
    assert_eq!(h.io.binds[0].1.family, Family::V6);
    // The client itself is on IPv4: XOR-MAPPED-ADDRESS still reports it.
    assert_eq!(
        parse(&r).get_xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(c.tuple.client)
    );
    let id = h.alloc_id(&c);
    assert_eq!(h.core.relay_addrs(id)[0], None);
}

#[test]
fn additional_address_family_gets_two_relayed_addresses() {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_success(&r, method::ALLOCATE);
    let rel = relayed(&r);
    assert_eq!(rel.len(), 2);
    assert!(rel[0].is_ipv4() && rel[1].is_ipv6(), "{rel:?}");
    assert!(!parse(&r).has(attr::ADDRESS_ERROR_CODE));
    // Both sockets go away together.
    assert_success(&h.refresh(&mut c, Some(0)), method::REFRESH);
    assert_eq!(h.io.released.len(), 1);
}

#[test]
fn additional_address_family_without_ipv6_gets_address_error_code() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_success(&r, method::ALLOCATE);
    assert_eq!(relayed(&r).len(), 1);
    let v = parse(&r).get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!((v[0], v[2], v[3]), (0x02, 4, 40));
}

#[test]
fn additional_address_family_ipv4_or_with_requested_family_is_bad_request() {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x01, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_error(&r, 400);
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[0x01, 0, 0, 0]);
    });
    assert_error(&r, 400);
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn reservation_token_with_even_port_is_bad_request() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::EVEN_PORT, &[0x00])
            .attr(attr::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_error(&r, 400);
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x01, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_error(&r, 400);
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &[1; 7]);
    });
    assert_error(&r, 400);
    assert!(h.io.binds.is_empty());
}

#[test]
fn even_port_with_r_bit_gets_even_port_and_a_usable_reservation_token() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_success(&r, method::ALLOCATE);
    let port = relayed(&r)[0].port();
    assert_eq!(port % 2, 0, "EVEN-PORT: {port}");
    let req = h.io.binds[0].1;
    assert!(req.even_port && req.reserve_next && req.token.is_none());
    let token = parse(&r)
        .get(attr::RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN")
        .to_vec();
    assert_eq!(token.len(), 8);

    // Another client claims the reserved port with the token.
    let mut c2 = Client::udp("198.51.100.30:40000", "bob", "bob-pw");
    let r2 = h.allocate(&mut c2, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_success(&r2, method::ALLOCATE);
    assert_eq!(relayed(&r2)[0].port(), port + 1);
    assert_eq!(
        h.io.binds[1].1.token,
        Some(u64::from_be_bytes(token.clone().try_into().unwrap()))
    );
    // The token is single-use: now the relay reports it unknown, which is 508.
    let mut c3 = Client::udp("198.51.100.31:40000", "bob", "bob-pw");
    let r3 = h.allocate(&mut c3, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_error(&r3, 508);

    // EVEN-PORT without R: even port, no token.
    let mut c4 = Client::udp("198.51.100.32:40000", "bob", "bob-pw");
    let r4 = h.allocate(&mut c4, &|w| {
        w.attr(attr::EVEN_PORT, &[0x00]);
    });
    assert_success(&r4, method::ALLOCATE);
    assert_eq!(relayed(&r4)[0].port() % 2, 0);
    assert!(!parse(&r4).has(attr::RESERVATION_TOKEN));
}

#[test]
fn user_quota_is_enforced_and_counted() {
    let mut h = Harness::new(Opts {
        user_quota: 1,
        ..Opts::default()
    });
    let mut a1 = Client::alice();
    h.allocate_ok(&mut a1);
    let mut a2 = Client::udp("198.51.100.10:40001", "alice", "alice-pw");
    assert_error(&h.allocate(&mut a2, &|_| {}), 486);
    assert_eq!(h.core.stats.quota_rejections, 1);
    // REST usernames count against the user part: "<expiry>:alice" is alice.
    let mut a3 = Client::rest("198.51.100.10:40002", T0_UNIX + 100, "alice", SECRET_NEW);
    assert_error(&h.allocate(&mut a3, &|_| {}), 486);
    assert_eq!(h.core.stats.quota_rejections, 2);
    // Other users are not affected.
    h.allocate_ok(&mut Client::udp("198.51.100.40:40000", "bob", "bob-pw"));
    // Releasing the allocation frees the quota.
    assert_success(&h.refresh(&mut a1, Some(0)), method::REFRESH);
    h.allocate_ok(&mut a2);
}

#[test]
fn total_quota_is_enforced_and_counted() {
    let mut h = Harness::new(Opts {
        total_quota: 2,
        ..Opts::default()
    });
    h.allocate_ok(&mut Client::udp("198.51.100.50:40000", "alice", "alice-pw"));
    h.allocate_ok(&mut Client::udp("198.51.100.51:40000", "bob", "bob-pw"));
    let mut c = Client::udp("198.51.100.52:40000", "bob", "bob-pw");
    assert_error(&h.allocate(&mut c, &|_| {}), 486);
    assert_eq!(h.core.stats.quota_rejections, 1);
    assert_eq!(h.core.shared().quotas.total(), 2);
    assert_eq!(h.core.allocation_count(), 2);
}

#[test]
fn relay_port_exhaustion_is_508_and_releases_the_quota() {
    let mut h = Harness::new(Opts {
        total_quota: 1,
        ..Opts::default()
    });
    h.io.fail = Some(BindError::Exhausted);
    let mut c = Client::alice();
    assert_error(&h.allocate(&mut c, &|_| {}), 508);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.shared().quotas.total(), 0);
    assert_eq!(h.core.stats.allocations_failed, [1, 0, 0]);
    // Once ports free up, the same client (same 5-tuple) gets its allocation.
    h.io.fail = None;
    h.allocate_ok(&mut c);
}

#[test]
fn lifetime_is_clamped_to_max_and_floored_at_default() {
    let mut h = Harness::new(Opts {
        max_lifetime: 3600,
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.u32(attr::LIFETIME, 100_000);
    });
    assert_eq!(lifetime_of(&r), Some(3600));
    assert_eq!(lifetime_of(&h.refresh(&mut c, Some(u32::MAX))), Some(3600));
    assert_eq!(lifetime_of(&h.refresh(&mut c, Some(1200))), Some(1200));
    // RFC 8656 §7.2/§7.3: less than the default lifetime means the default lifetime.
    assert_eq!(lifetime_of(&h.refresh(&mut c, Some(60))), Some(600));
    assert_eq!(lifetime_of(&h.refresh(&mut c, None)), Some(600));
    let mut c2 = Client::udp("198.51.100.60:40000", "bob", "bob-pw");
    let r = h.allocate(&mut c2, &|w| {
        w.u32(attr::LIFETIME, 30);
    });
    assert_eq!(lifetime_of(&r), Some(600));

    // A server maximum below the default lifetime wins.
    let mut h = Harness::new(Opts {
        max_lifetime: 300,
        ..Opts::default()
    });
    let mut c = Client::alice();
    assert_eq!(lifetime_of(&h.allocate(&mut c, &|_| {})), Some(300));
    assert_eq!(lifetime_of(&h.refresh(&mut c, Some(60))), Some(300));
}

#[test]
fn external_ip_is_advertised_in_relayed_address() {
    let mut h = Harness::new(Opts {
        external: vec![(None, "198.51.100.200".parse().unwrap())],
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate_ok(&mut c);
    assert_eq!(relayed(&r), vec![sa("198.51.100.200:50001")]);
    // The core still knows the bound address.
    let id = h.alloc_id(&c);
    assert_eq!(h.core.relay_addrs(id)[0], Some(sa("203.0.113.1:50001")));
}

#[test]
fn unsupported_request_method_is_bad_request() {
    let mut h = Harness::default();
    let t = tuple("198.51.100.10:40000", Transport::Udp);
    let mut req = Vec::new();
    MessageWriter::new(&mut req, 0x00A, Class::Request, &[5; 12]);
    assert_error(&h.exchange(&t, &req).unwrap(), 400);
    // Responses and unknown indications from clients are ignored.
    let mut resp = Vec::new();
    MessageWriter::new(&mut resp, method::BINDING, Class::Success, &[5; 12]);
    assert_eq!(h.packet(&t, &resp), ClientAction::None);
    let mut ind = Vec::new();
    MessageWriter::new(&mut ind, method::DATA, Class::Indication, &[5; 12]);
    assert_eq!(h.packet(&t, &ind), ClientAction::None);
}

// ---------------------------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------------------------

#[test]
fn refresh_without_allocation_is_mismatch() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    assert_error(&h.refresh(&mut c, Some(600)), 437);
    assert_error(&h.refresh(&mut c, Some(0)), 437);
}

#[test]
fn refresh_with_zero_lifetime_deletes_and_releases() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let id = h.alloc_id(&c);
    let r = h.refresh(&mut c, Some(0));
    assert_success(&r, method::REFRESH);
    assert_eq!(lifetime_of(&r), Some(0));
    assert!(parse(&r).verify_integrity(&c.key()));
    assert_eq!(h.io.released, vec![id]);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.stats.allocations_deleted, [1, 0, 0]);
    assert_eq!(h.core.shared().quotas.total(), 0);
    assert_eq!(h.core.relay_addrs(id), [None, None]);
    // A late packet for the old handle reaches nothing.
    assert!(h.peer_sends(id, sa(PEER), b"late").is_none());
    // The 5-tuple can allocate again; the reused slot has a new generation.
    h.allocate_ok(&mut c);
    let id2 = h.alloc_id(&c);
    assert_eq!(id2.index, id.index);
    assert_ne!(id2.gen, id.gen);
}

#[test]
fn refresh_with_mismatched_address_family_is_443() {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let r = h.request(&mut c, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_error(&r, 443);
    let r = h.request(&mut c, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x01, 0, 0, 0]);
    });
    assert_success(&r, method::REFRESH);
}

#[test]
fn allocation_expires_through_handle_timeout() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let id = h.alloc_id(&c);
    let start = h.now;
    h.core
        .handle_timeout(start + Duration::from_secs(599), &mut h.io);
    assert_eq!(h.core.allocation_count(), 1);
    assert!(h.io.released.is_empty());
    h.core
        .handle_timeout(start + Duration::from_secs(600), &mut h.io);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.io.released, vec![id]);
    assert_eq!(h.core.stats.allocations_expired, [1, 0, 0]);
    assert_eq!(h.core.shared().quotas.total(), 0);
    // Running the timer again does nothing more.
    h.core
        .handle_timeout(start + Duration::from_secs(1200), &mut h.io);
    assert_eq!(h.io.released.len(), 1);
    assert_eq!(h.core.stats.allocations_expired, [1, 0, 0]);
}

#[test]
fn refresh_extends_the_lifetime() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    h.advance(500);
    assert_success(&h.refresh(&mut c, Some(600)), method::REFRESH);
    let now = h.now;
    h.core
        .handle_timeout(now + Duration::from_secs(599), &mut h.io);
    assert_eq!(h.core.allocation_count(), 1);
    h.core
        .handle_timeout(now + Duration::from_secs(600), &mut h.io);
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn different_username_on_same_tuple_is_wrong_credentials() {
    let mut h = Harness::default();
    let mut a = Client::alice();
    h.allocate_ok(&mut a);
    let mut b = Client::udp("198.51.100.10:40000", "bob", "bob-pw");
    let r = h.refresh(&mut b, Some(600));
    assert_error(&r, 441);
    assert!(parse(&r).verify_integrity(&b.key()));
    let r = h.create_permission(&mut b, sa(PEER));
    assert_error(&r, 441);
    assert_eq!(h.core.allocation_count(), 1);
    // Alice still owns it.
    assert_success(&h.refresh(&mut a, Some(600)), method::REFRESH);
}

#[test]
fn tcp_connection_close_drops_its_allocation() {
    let mut h = Harness::default();
    let mut c = Client::new("198.51.100.70:40000", Transport::Tcp, "alice", "alice-pw");
    h.allocate_ok(&mut c);
    assert_eq!(h.core.stats.allocations_created, [0, 1, 0]);
    let id = h.alloc_id(&c);
    h.core.connection_closed(&c.tuple, &mut h.io);
    assert_eq!(h.io.released, vec![id]);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.stats.allocations_deleted, [0, 1, 0]);
    h.core.connection_closed(&c.tuple, &mut h.io);
    assert_eq!(h.io.released.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// CreatePermission / ChannelBind
// ---------------------------------------------------------------------------------------------

/// Peers the default policy must refuse, in every spelling.
const DENIED_PEERS: &[&str] = &[
    "127.0.0.1:5000",
    "127.1.2.3:5000",
    "10.0.0.1:5000",
    "172.16.5.4:5000",
    "192.168.1.1:5000",
    "100.64.0.1:5000",
    "169.254.169.254:80",
    "224.0.0.1:5000",
    "255.255.255.255:5000",
    "0.0.0.0:5000",
    "[::1]:5000",
    "[::]:5000",
    "[fe80::1]:5000",
    "[fc00::1]:5000",
    "[fd12:3456::1]:5000",
    "[ff02::1]:5000",
    // IPv4-mapped
    "[::ffff:10.0.0.1]:5000",
    "[::ffff:127.0.0.1]:5000",
    "[::ffff:169.254.169.254]:80",
    // IPv4-compatible
    "[::10.0.0.1]:5000",
    "[::127.0.0.1]:5000",
    // 6to4
    "[2002:a00:1::1]:5000",
    "[2002:7f00:1::]:5000",
    "[2002:c0a8:101::1]:5000",
    // NAT64
    "[64:ff9b::a00:1]:5000",
    "[64:ff9b::7f00:1]:5000",
    "[64:ff9b:1::a00:1]:5000",
    // 64:ff9b:1::/48 is local-use (RFC 8215) and may embed the IPv4 address anywhere: here
    // 10.0.0.1 in the /48 layout of RFC 6052 with a public-looking tail.
    "[64:ff9b:1:a00:0:108:808:808]:5000",
];

fn dual_stack() -> (Harness, Client) {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_eq!(relayed(&r).len(), 2);
    (h, c)
}

#[test]
fn create_permission_is_forbidden_for_every_internal_peer() {
    let (mut h, mut c) = dual_stack();
    for (i, p) in DENIED_PEERS.iter().enumerate() {
        let r = h.create_permission(&mut c, sa(p));
        assert_error(&r, 403);
        assert_eq!(h.core.stats.denied_peers, i as u64 + 1);
    }
    assert_eq!(h.core.stats.permissions_created, 0);
    // Public addresses in the same spellings are fine.
    for p in [
        PEER,
        PEER_V6,
        "[::ffff:93.184.216.34]:1",
        "[2002:5db8:d822::1]:1",
        "[64:ff9b::5db8:d822]:1",
    ] {
        assert_success(
            &h.create_permission(&mut c, sa(p)),
            method::CREATE_PERMISSION,
        );
    }
}

#[test]
fn channel_bind_is_forbidden_for_every_internal_peer_and_own_sockets() {
    let (mut h, mut c) = dual_stack();
    for (i, p) in DENIED_PEERS.iter().enumerate() {
        let r = h.channel_bind(&mut c, 0x4000 + i as u16, sa(p));
        assert_error(&r, 403);
    }
    // Never to the server's own listening socket, in any spelling.
    assert_error(&h.channel_bind(&mut c, 0x4100, sa(SERVER)), 403);
    assert_error(
        &h.channel_bind(&mut c, 0x4101, sa("[::ffff:203.0.113.1]:3478")),
        403,
    );
    assert_eq!(h.core.stats.channels_bound, 0);
}

#[test]
fn one_denied_peer_fails_the_whole_create_permission() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let r = h.request(&mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER))
            .xor_addr(attr::XOR_PEER_ADDRESS, sa("10.0.0.1:1"));
    });
    assert_error(&r, 403);
    assert_eq!(h.core.stats.permissions_created, 0);
    // Several good peers in one request are all installed.
    let r = h.request(&mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER))
            .xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER2));
    });
    assert_success(&r, method::CREATE_PERMISSION);
    assert_eq!(h.core.stats.permissions_created, 2);
    // Without any XOR-PEER-ADDRESS: 400.
    assert_error(&h.request(&mut c, method::CREATE_PERMISSION, &|_| {}), 400);
}

#[test]
fn allowed_peers_open_loopback() {
    let mut h = Harness::new(Opts {
        allow_loopback: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    assert_success(
        &h.create_permission(&mut c, sa("127.0.0.1:9000")),
        method::CREATE_PERMISSION,
    );
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa("127.0.0.1:9000")),
        method::CHANNEL_BIND,
    );
    // ... but still not to the server's own socket, nor other internal ranges.
    assert_error(&h.channel_bind(&mut c, 0x4001, sa(SERVER)), 403);
    assert_error(&h.create_permission(&mut c, sa("10.0.0.1:9000")), 403);
}

#[test]
fn ipv6_peer_on_ipv4_only_allocation_is_443() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    assert_error(&h.create_permission(&mut c, sa(PEER_V6)), 443);
    assert_error(&h.channel_bind(&mut c, 0x4000, sa(PEER_V6)), 443);
    // Checked before the policy, so no denial is counted.
    assert_eq!(h.core.stats.denied_peers, 0);
}

#[test]
fn permission_requests_without_allocation_are_437() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    assert_error(&h.create_permission(&mut c, sa(PEER)), 437);
    assert_error(&h.channel_bind(&mut c, 0x4000, sa(PEER)), 437);
}

#[test]
fn channel_number_out_of_range_is_bad_request() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    // 0x4000..=0x7FFF is accepted (RFC 5766's range, still used by deployed clients).
    for n in [0x0000, 0x3FFF, 0x8000, 0xFFFF] {
        assert_error(&h.channel_bind(&mut c, n, sa(PEER)), 400);
    }
    assert_success(
        &h.channel_bind(&mut c, 0x4FFF, sa(PEER)),
        method::CHANNEL_BIND,
    );
    // Missing CHANNEL-NUMBER or XOR-PEER-ADDRESS.
    let r = h.request(&mut c, method::CHANNEL_BIND, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER));
    });
    assert_error(&r, 400);
    let r = h.request(&mut c, method::CHANNEL_BIND, &|w| {
        w.u32(attr::CHANNEL_NUMBER, 0x4001 << 16);
    });
    assert_error(&r, 400);
}

#[test]
fn channel_and_peer_can_each_be_bound_only_once() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    assert_eq!(h.core.stats.channels_bound, 1);
    // The same channel to another peer.
    assert_error(&h.channel_bind(&mut c, 0x4000, sa(PEER2)), 400);
    // The same peer (same IP, other port counts as another peer) on another channel.
    assert_error(&h.channel_bind(&mut c, 0x4001, sa(PEER)), 400);
    // Refreshing the same binding is fine and does not count as a new one.
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    assert_eq!(h.core.stats.channels_bound, 1);
    // The same IP with another port is a different peer transport address.
    assert_success(
        &h.channel_bind(&mut c, 0x4001, sa("93.184.216.34:5002")),
        method::CHANNEL_BIND,
    );
    assert_eq!(h.core.stats.channels_bound, 2);
    assert_eq!(h.core.gauges(h.now).channels, 2);
    assert_eq!(h.core.gauges(h.now).permissions, 1);
}

#[test]
fn expired_channel_stays_reserved_for_five_minutes() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    assert_success(
        &h.allocate(&mut c, &|w| {
            w.u32(attr::LIFETIME, 3600);
        }),
        method::ALLOCATE,
    );
    let id = h.alloc_id(&c);
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    h.advance(600);
    let now = h.now;
    h.core.handle_timeout(now, &mut h.io);
    assert_eq!(h.core.gauges(now).channels, 0);
    // Expired: ChannelData on it is dropped, and the peer's data comes as Data indications.
    assert_success(
        &h.create_permission(&mut c, sa(PEER)),
        method::CREATE_PERMISSION,
    );
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x4000, b"x")),
        ClientAction::None
    );
    let (_, frame) = h.peer_sends(id, sa(PEER), b"x").unwrap();
    assert_eq!(parse(&frame).method(), method::DATA);
    // Still reserved: neither the number nor the peer can be bound to something else.
    assert_error(&h.channel_bind(&mut c, 0x4000, sa(PEER2)), 400);
    assert_error(&h.channel_bind(&mut c, 0x4001, sa(PEER)), 400);
    // After the cool-down the timer frees both.
    h.advance(300);
    assert_success(
        &h.create_permission(&mut c, sa(PEER)),
        method::CREATE_PERMISSION,
    );
    let now = h.now;
    h.core.handle_timeout(now, &mut h.io);
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER2)),
        method::CHANNEL_BIND,
    );
    assert_success(
        &h.channel_bind(&mut c, 0x4001, sa(PEER)),
        method::CHANNEL_BIND,
    );
    let (_, frame) = h.peer_sends(id, sa(PEER), b"x").unwrap();
    assert_eq!(&frame[..2], &[0x40, 0x01]);
}

#[test]
fn rebinding_an_expired_channel_to_its_peer_revives_it() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    assert_success(
        &h.allocate(&mut c, &|w| {
            w.u32(attr::LIFETIME, 3600);
        }),
        method::ALLOCATE,
    );
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    h.advance(700);
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x4000, b"x")),
        ClientAction::None
    );
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    assert!(matches!(
        h.packet(&c.tuple, &channel_data(0x4000, b"x")),
        ClientAction::Relay { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Data path
// ---------------------------------------------------------------------------------------------

/// An allocation with a permission for PEER and, optionally, channel 0x4000 bound to it.
fn relaying(transport: Transport, channel: bool, o: Opts) -> (Harness, Client, AllocId) {
    let mut h = Harness::new(o);
    let mut c = Client::new("198.51.100.80:40000", transport, "alice", "alice-pw");
    h.allocate_ok(&mut c);
    if channel {
        assert_success(
            &h.channel_bind(&mut c, 0x4000, sa(PEER)),
            method::CHANNEL_BIND,
        );
    } else {
        assert_success(
            &h.create_permission(&mut c, sa(PEER)),
            method::CREATE_PERMISSION,
        );
    }
    let id = h.alloc_id(&c);
    (h, c, id)
}

#[test]
fn send_indication_to_permitted_peer_is_relayed() {
    let (mut h, c, id) = relaying(Transport::Udp, false, Opts::default());
    let pkt = send_indication(sa(PEER), b"hello peer");
    match h.packet(&c.tuple, &pkt) {
        ClientAction::Relay {
            id: rid,
            family,
            peer,
            range,
        } => {
            assert_eq!((rid, family, peer), (id, Family::V4, sa(PEER)));
            assert_eq!(&pkt[range], b"hello peer");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (h.core.stats.packets_to_peer, h.core.stats.bytes_to_peer),
        (1, 10)
    );
    // The permission is per IP: another port of the same host is fine.
    let pkt = send_indication(sa("93.184.216.34:7777"), b"x");
    assert!(matches!(
        h.packet(&c.tuple, &pkt),
        ClientAction::Relay { .. }
    ));
}

#[test]
fn send_indication_without_permission_is_dropped() {
    let (mut h, c, _) = relaying(Transport::Udp, false, Opts::default());
    let pkt = send_indication(sa(PEER2), b"nope");
    assert_eq!(h.packet(&c.tuple, &pkt), ClientAction::None);
    assert_eq!(h.core.stats.dropped_no_permission, 1);
    // To a denied address: dropped by policy even if asked.
    let pkt = send_indication(sa("10.0.0.1:5000"), b"nope");
    assert_eq!(h.packet(&c.tuple, &pkt), ClientAction::None);
    assert_eq!(h.core.stats.denied_peers, 1);
    // From a 5-tuple without an allocation.
    let t = tuple("198.51.100.81:40000", Transport::Udp);
    assert_eq!(
        h.packet(&t, &send_indication(sa(PEER), b"x")),
        ClientAction::None
    );
    // Without DATA.
    let mut pkt = Vec::new();
    MessageWriter::new(&mut pkt, method::SEND, Class::Indication, &[1; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER));
    assert_eq!(h.packet(&c.tuple, &pkt), ClientAction::None);
    assert_eq!(h.core.stats.packets_to_peer, 0);
}

#[test]
fn channel_data_on_bound_channel_is_relayed() {
    let (mut h, c, id) = relaying(Transport::Udp, true, Opts::default());
    let pkt = channel_data(0x4000, b"12345");
    match h.packet(&c.tuple, &pkt) {
        ClientAction::Relay {
            id: rid,
            peer,
            range,
            ..
        } => {
            assert_eq!((rid, peer), (id, sa(PEER)));
            assert_eq!(&pkt[range], b"12345");
        }
        other => panic!("{other:?}"),
    }
    // With UDP padding after the data.
    let mut padded = pkt.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    assert!(
        matches!(h.packet(&c.tuple, &padded), ClientAction::Relay { range, .. } if range == (4..9))
    );
    // Empty payload.
    let empty = h.packet(&c.tuple, &channel_data(0x4000, b""));
    assert!(matches!(empty, ClientAction::Relay { range, .. } if range.is_empty()));
}

#[test]
fn channel_data_on_unbound_channel_is_dropped() {
    let (mut h, c, _) = relaying(Transport::Udp, true, Opts::default());
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x4001, b"x")),
        ClientAction::None
    );
    assert_eq!(h.core.stats.dropped_no_permission, 1);
    // No allocation at all.
    let t = tuple("198.51.100.81:40000", Transport::Udp);
    assert_eq!(
        h.packet(&t, &channel_data(0x4000, b"x")),
        ClientAction::None
    );
    // An unbound channel in RFC 5766's upper range is dropped; a too-short header is malformed.
    let before = h.core.stats.malformed;
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x5000, b"x")),
        ClientAction::None
    );
    assert_eq!(h.packet(&c.tuple, &[0x40, 0x00]), ClientAction::None);
    assert_eq!(h.core.stats.malformed, before + 1);
    assert_eq!(h.core.stats.packets_to_peer, 0);
}

#[test]
fn channel_data_is_dropped_once_the_permission_expires() {
    let (mut h, c, _) = relaying(Transport::Udp, true, Opts::default());
    h.advance(301);
    // The binding (10 min) is alive but its permission (5 min) is not.
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x4000, b"x")),
        ClientAction::None
    );
}

#[test]
fn peer_data_with_channel_is_channel_data_unpadded_over_udp() {
    let (mut h, c, id) = relaying(Transport::Udp, true, Opts::default());
    let (t, frame) = h
        .peer_sends(id, sa(PEER), b"hello")
        .expect("relayed to the client");
    assert_eq!(t, c.tuple);
    assert_eq!(frame, [&[0x40, 0x00, 0x00, 0x05][..], b"hello"].concat());
    assert_eq!(
        (h.core.stats.packets_to_client, h.core.stats.bytes_to_client),
        (1, 5)
    );
    // It is what the client-side parser expects.
    let cd = stun::ChannelData::parse(&frame).unwrap();
    assert_eq!((cd.channel, cd.data), (0x4000, &b"hello"[..]));
}

#[test]
fn peer_data_with_channel_is_padded_over_tcp() {
    let (mut h, c, id) = relaying(Transport::Tcp, true, Opts::default());
    let (t, frame) = h
        .peer_sends(id, sa(PEER), b"hello")
        .expect("relayed to the client");
    assert_eq!(t, c.tuple);
    assert_eq!(frame.len(), 12);
    assert_eq!(
        frame,
        [&[0x40, 0x00, 0x00, 0x05][..], b"hello", &[0, 0, 0]].concat()
    );
    assert_eq!(stun::stream_frame_len(&frame), Ok(Some(12)));
    // Already aligned payloads get no padding.
    let (_, frame) = h.peer_sends(id, sa(PEER), b"1234").unwrap();
    assert_eq!(frame.len(), 8);
}

#[test]
fn peer_data_without_channel_is_data_indication() {
    let (mut h, c, id) = relaying(Transport::Udp, false, Opts::default());
    let (t, frame) = h
        .peer_sends(id, sa(PEER), b"hello")
        .expect("relayed to the client");
    assert_eq!(t, c.tuple);
    let m = parse(&frame);
    assert_eq!((m.method(), m.class()), (method::DATA, Class::Indication));
    assert_eq!(m.get_xor_addr(attr::XOR_PEER_ADDRESS), Some(sa(PEER)));
    assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));
    // Each indication gets its own transaction id.
    let (_, frame2) = h
        .peer_sends(id, sa("93.184.216.34:9999"), b"again")
        .unwrap();
    let m2 = parse(&frame2);
    assert_ne!(m.transaction_id(), m2.transaction_id());
    assert_eq!(
        m2.get_xor_addr(attr::XOR_PEER_ADDRESS),
        Some(sa("93.184.216.34:9999"))
    );
}

#[test]
fn peer_data_from_other_port_of_a_channel_peer_is_data_indication() {
    let (mut h, _, id) = relaying(Transport::Udp, true, Opts::default());
    let (_, frame) = h.peer_sends(id, sa("93.184.216.34:5999"), b"x").unwrap();
    assert_eq!(parse(&frame).method(), method::DATA);
}

#[test]
fn peer_data_without_permission_is_dropped() {
    let (mut h, _, id) = relaying(Transport::Udp, false, Opts::default());
    assert!(h.peer_sends(id, sa(PEER2), b"x").is_none());
    assert_eq!(h.core.stats.dropped_no_permission, 1);
    assert_eq!(h.core.stats.packets_to_client, 0);
    // An unknown allocation handle.
    let bogus = AllocId {
        index: id.index + 7,
        gen: 0,
    };
    assert!(h.peer_sends(bogus, sa(PEER), b"x").is_none());
}

#[test]
fn peer_data_after_permission_expiry_is_dropped() {
    let (mut h, mut c, id) = relaying(Transport::Udp, true, Opts::default());
    h.advance(299);
    assert!(h.peer_sends(id, sa(PEER), b"x").is_some());
    h.advance(2);
    assert!(h.peer_sends(id, sa(PEER), b"x").is_none());
    // The timer sweeps the permission; the allocation itself lives on.
    let now = h.now;
    h.core.handle_timeout(now, &mut h.io);
    assert_eq!(h.core.gauges(now).permissions, 0);
    assert_eq!(h.core.allocation_count(), 1);
    // Refreshing the permission brings the path back.
    assert_success(
        &h.create_permission(&mut c, sa(PEER)),
        method::CREATE_PERMISSION,
    );
    assert!(h.peer_sends(id, sa(PEER), b"x").is_some());
}

#[test]
fn ipv4_mapped_permission_covers_the_ipv4_peer() {
    let (mut h, mut c) = dual_stack();
    assert_success(
        &h.create_permission(&mut c, sa("[::ffff:93.184.216.34]:1")),
        method::CREATE_PERMISSION,
    );
    let id = h.alloc_id(&c);
    assert!(h.peer_sends(id, sa(PEER), b"x").is_some());
}

/// A Data indication's length field is 16 bits: the largest IPv6 datagram a peer can send
/// (65,527 bytes) does not fit, and must not go out with a wrapped length (over TCP that would
/// let the peer inject frames of its choosing into the client's stream).
#[test]
fn peer_datagram_too_big_for_a_data_indication_is_dropped() {
    let (mut h, mut c) = dual_stack();
    assert_success(
        &h.create_permission(&mut c, sa(PEER_V6)),
        method::CREATE_PERMISSION,
    );
    assert_success(
        &h.create_permission(&mut c, sa(PEER)),
        method::CREATE_PERMISSION,
    );
    let id = h.alloc_id(&c);
    // The largest payloads that fit, per family.
    for (peer, max) in [(sa(PEER_V6), 65_504), (sa(PEER), 65_516)] {
        let payload = vec![0x41u8; max];
        let (_, frame) = h.peer_sends(id, peer, &payload).expect("fits");
        let m = parse(&frame);
        assert_eq!(m.get(attr::DATA).map(<[u8]>::len), Some(max));
        assert!(h.peer_sends(id, peer, &vec![0x41u8; max + 1]).is_none());
    }
    // A forged frame inside a maximum-size datagram never reaches the client.
    let mut payload = vec![0u8; 65_527];
    payload[..8].copy_from_slice(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    assert!(h.peer_sends(id, sa(PEER_V6), &payload).is_none());
    // A channel has room for any datagram.
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER_V6)),
        method::CHANNEL_BIND,
    );
    let (_, frame) = h.peer_sends(id, sa(PEER_V6), &payload).unwrap();
    assert_eq!(stun::ChannelData::parse(&frame).unwrap().data.len(), 65_527);
}

#[test]
fn bandwidth_limit_drops_excess_each_way() {
    let o = Opts {
        bandwidth_limit: 1000,
        ..Opts::default()
    };
    let (mut h, c, id) = relaying(Transport::Udp, true, o);
    let payload = [7u8; 600];
    assert!(matches!(
        h.packet(&c.tuple, &channel_data(0x4000, &payload)),
        ClientAction::Relay { .. }
    ));
    assert_eq!(
        h.packet(&c.tuple, &channel_data(0x4000, &payload)),
        ClientAction::None
    );
    assert_eq!(
        h.packet(&c.tuple, &send_indication(sa(PEER), &payload)),
        ClientAction::None
    );
    assert_eq!(h.core.stats.dropped_bandwidth, 2);
    // The other direction has its own budget.
    assert!(h.peer_sends(id, sa(PEER), &payload).is_some());
    assert!(h.peer_sends(id, sa(PEER), &payload).is_none());
    assert_eq!(h.core.stats.dropped_bandwidth, 3);
    // A second later the bucket has refilled.
    h.advance(1);
    assert!(matches!(
        h.packet(&c.tuple, &channel_data(0x4000, &payload)),
        ClientAction::Relay { .. }
    ));
    assert!(h.peer_sends(id, sa(PEER), &payload).is_some());
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_requests_are_dropped() {
    let mut h = Harness::default();
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    let tid = c.next_tid();
    let req = c.build(method::CREATE_PERMISSION, &tid, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER));
    });
    for n in 0..req.len() {
        assert_eq!(
            h.packet(&c.tuple, &req[..n]),
            ClientAction::None,
            "prefix of {n} bytes"
        );
    }
    assert_success(
        &h.exchange(&c.tuple, &req).unwrap(),
        method::CREATE_PERMISSION,
    );
    assert!(h.core.stats.malformed >= req.len() as u64 - 1);
}

#[test]
fn garbage_and_oversized_packets_are_dropped() {
    let mut h = Harness::default();
    let t = tuple("198.51.100.10:40000", Transport::Tcp);
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        vec![0xFF; 100],
        vec![0; 20],
        vec![0x40; 3],
    ];
    // Oversized: a STUN header claiming the maximum length with more bytes than that.
    let mut big = Vec::new();
    MessageWriter::new(&mut big, method::BINDING, Class::Request, &[1; 12]);
    big[2..4].copy_from_slice(&0xFFFCu16.to_be_bytes());
    big.resize(70_000, 0);
    inputs.push(big.clone());
    big.truncate(65_535);
    inputs.push(big);
    // A 65,535-byte attribute cannot fit.
    let mut huge_attr = Vec::new();
    MessageWriter::new(&mut huge_attr, method::ALLOCATE, Class::Request, &[1; 12]);
    huge_attr.extend_from_slice(&[0x80, 0x22, 0xFF, 0xFF]);
    huge_attr.resize(20 + 4 + 65_532, 0);
    let body = (huge_attr.len() - 20) as u16;
    huge_attr[2..4].copy_from_slice(&body.to_be_bytes());
    inputs.push(huge_attr);
    // ChannelData longer than 64 KiB.
    let mut cd = vec![0x40, 0x00, 0xFF, 0xFF];
    cd.resize(70_000, 1);
    inputs.push(cd);
    for i in &inputs {
        for tr in [Transport::Udp, Transport::Tcp] {
            let t = FiveTuple { transport: tr, ..t };
            assert_eq!(h.packet(&t, i), ClientAction::None, "{} bytes", i.len());
        }
    }
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn channel_data_with_length_past_the_buffer_is_dropped() {
    let (mut h, c, _) = relaying(Transport::Udp, true, Opts::default());
    let before = h.core.stats.malformed;
    assert_eq!(
        h.packet(&c.tuple, &[0x40, 0x00, 0x00, 0x08, 1, 2, 3, 4]),
        ClientAction::None
    );
    assert_eq!(
        h.packet(&c.tuple, &[0x40, 0x00, 0xFF, 0xFF, 1]),
        ClientAction::None
    );
    assert_eq!(h.core.stats.malformed, before + 2);
    assert_eq!(h.core.stats.packets_to_peer, 0);
    // The stream framer asks for the whole padded frame.
    assert_eq!(
        stun::stream_frame_len(&[0x40, 0x00, 0x00, 0x05]),
        Ok(Some(12))
    );
    assert_eq!(stun::stream_frame_len(&[0x40, 0x00]), Ok(None));
    assert!(stun::stream_frame_len(&[0xC0, 0, 0, 0]).is_err());
}

/// A maximum-size (65,552-byte) request over TCP whose integrity attribute sits past offset
/// 65,535: attribute offsets must not be truncated to 16 bits.
#[test]
fn maximum_size_request_with_integrity_past_64k_is_handled() {
    let mut h = Harness::default();
    let mut c = Client::new("198.51.100.90:40000", Transport::Tcp, "alice", "alice-pw");
    let r = h.call(&mut c, method::ALLOCATE, &|_| {}).unwrap();
    assert!(c.learn(&r));
    let tid = c.next_tid();
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::ALLOCATE, Class::Request, &tid)
        .attr(attr::REQUESTED_TRANSPORT, &UDP)
        .attr(attr::USERNAME, c.username.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, c.nonce.clone().unwrap().as_bytes());
    // Filler (SOFTWARE, comprehension-optional) so that MESSAGE-INTEGRITY-SHA256's value starts
    // at offset 65,536, then a 16-byte (truncated, RFC 8489 §14.6) MAC.
    let filler = 65_532 - req.len() - 4;
    req.extend_from_slice(&attr::SOFTWARE.to_be_bytes());
    req.extend_from_slice(&(filler as u16).to_be_bytes());
    req.resize(req.len() + filler, b'x');
    assert_eq!(req.len(), 65_532);
    let total = req.len() + 4 + 16;
    req[2..4].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&c.key()).unwrap();
    mac.update(&req);
    let mac = mac.finalize().into_bytes();
    req.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
    req.extend_from_slice(&16u16.to_be_bytes());
    req.extend_from_slice(&mac[..16]);
    assert_eq!(req.len(), 65_552);
    assert_eq!(stun::stream_frame_len(&req), Ok(Some(65_552)));

    let m = Message::parse(&req).unwrap();
    assert!(m.verify_integrity(&c.key()));
    assert!(!m.verify_integrity(b"wrong key"));
    let r = h.exchange(&c.tuple, &req).expect("answered");
    assert_success(&r, method::ALLOCATE);
    assert!(parse(&r).integrity().unwrap().is_sha256());
    // With a wrong MAC (from another port of the same host, whose nonce is still good) it
    // is a plain 401, not a crash.
    let mut bad = req.clone();
    *bad.last_mut().unwrap() ^= 1;
    let other = tuple("198.51.100.90:40001", Transport::Tcp);
    assert_error(&h.exchange(&other, &bad).expect("answered"), 401);
    assert_eq!(h.core.stats.auth_failures, 1);
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let mut h = Harness::new(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut c = Client::alice();
    h.allocate_ok(&mut c);
    assert_success(
        &h.channel_bind(&mut c, 0x4000, sa(PEER)),
        method::CHANNEL_BIND,
    );
    let id = h.alloc_id(&c);
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..c.tuple
    };
    // Seeds to mutate: valid requests of every kind, and data packets.
    let mut seeds = Vec::new();
    for (m, f) in [
        (
            method::ALLOCATE,
            &(|w: &mut MessageWriter<'_>| {
                w.attr(attr::REQUESTED_TRANSPORT, &UDP)
                    .attr(attr::EVEN_PORT, &[0x80]);
            }) as &dyn Fn(&mut MessageWriter<'_>),
        ),
        (method::REFRESH, &|w: &mut MessageWriter<'_>| {
            w.u32(attr::LIFETIME, 600);
        }),
        (method::CREATE_PERMISSION, &|w: &mut MessageWriter<'_>| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER_V6));
        }),
        (method::CHANNEL_BIND, &|w: &mut MessageWriter<'_>| {
            w.u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, sa(PEER2));
        }),
    ] {
        let tid = c.next_tid();
        seeds.push(c.build(m, &tid, f));
    }
    seeds.push(send_indication(sa(PEER), b"payload"));
    seeds.push(channel_data(0x4000, b"payload"));

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    for i in 0..4000 {
        buf.clear();
        match i % 4 {
            // Pure noise.
            0 => {
                buf.resize(rng.below(120), 0);
                rng.fill(&mut buf);
            }
            // A STUN header with a consistent length and random attributes.
            1 => {
                let body = 4 * rng.below(24);
                buf.resize(20 + body, 0);
                rng.fill(&mut buf);
                buf[0] &= 0x3F;
                buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
                buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                // Small attribute lengths so the table walk goes deep.
                let mut off = 20;
                while off + 4 <= buf.len() {
                    let l = rng.below(24);
                    buf[off + 2..off + 4].copy_from_slice(&(l as u16).to_be_bytes());
                    off += 4 + ((l + 3) & !3);
                }
            }
            // Bit flips and truncation of valid packets.
            _ => {
                buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(buf.len());
                    buf[at] ^= 1 << rng.below(8);
                }
                if rng.below(4) == 0 {
                    let n = rng.below(buf.len() + 1);
                    buf.truncate(n);
                }
            }
        }
        let t = if i % 3 == 0 { &tcp } else { &c.tuple };
        let t = *t;
        if let ClientAction::Relay { range, .. } = h.packet(&t, &buf) {
            assert!(range.end <= buf.len());
        }
        if i % 16 == 0 {
            let len = rng.below(64);
            let mut b = vec![0u8; DATA_INDICATION_HEADROOM + len + 3];
            let peer = if rng.below(2) == 0 {
                sa(PEER)
            } else {
                sa(PEER_V6)
            };
            if let Some((_, r)) =
                h.core
                    .handle_peer(h.now, id, peer, &mut b, DATA_INDICATION_HEADROOM, len)
            {
                assert!(r.end <= b.len());
            }
        }
        if i % 500 == 0 {
            h.advance(7);
            let now = h.now;
            h.core.handle_timeout(now, &mut h.io);
        }
    }
}
