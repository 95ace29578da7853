//! Fuzzes the TURN state machine: the input is a script of operations on one `Core` with a
//! fake `RelayIo`: raw client packets over UDP and TCP 5-tuples, requests the harness signs
//! with valid long-term credentials (so Allocate/Refresh/CreatePermission/ChannelBind logic
//! past authentication is reached), ChannelData / Send indications, peer datagrams through
//! `handle_peer`, clock jumps with `handle_timeout`, TCP connection closes and relay bind
//! failures.
//!
//! Checked on every step, besides "no panic": replies are well-formed STUN answering the
//! request's transaction, relay ranges lie inside the packet, peer frames parse, relay sockets
//! are released once and only if bound, and allocations, quotas and open sockets agree.
#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_turn::auth::{self, Credentials, FailureLimiter, Nonces};
use ember_turn::core::{
    AllocId, BindError, ClientAction, Core, Family, FiveTuple, Quotas, RelayIo, RelayRequest,
    Shared, Transport,
};
use ember_turn::policy::PeerPolicy;
use ember_turn::stun::{
    self, attr, method, ChannelData, Class, Message, MessageWriter, DATA_INDICATION_HEADROOM,
};
use libfuzzer_sys::fuzz_target;

const REALM: &str = "fuzz.realm";
const SECRET: &str = "fuzz-secret";
const T0_UNIX: u64 = 1_700_000_000;
const SERVER: &str = "203.0.113.1:3478";

struct FakeRelay {
    next_port: u16,
    fail: Option<BindError>,
    reservations: HashMap<u64, SocketAddr>,
    next_token: u64,
    live: HashSet<AllocId>,
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
        let addr = if let Some(t) = req.token {
            self.reservations.remove(&t).ok_or(BindError::BadToken)?
        } else {
            let ip: IpAddr = match req.family {
                Family::V4 => [203, 0, 113, 1].into(),
                Family::V6 => "2001:db8::1".parse().unwrap(),
            };
            if req.even_port && self.next_port % 2 == 1 {
                self.next_port = self.next_port.wrapping_add(1);
            }
            let a = SocketAddr::new(ip, self.next_port);
            self.next_port = self.next_port.wrapping_add(1);
            if req.reserve_next {
                let t = self.next_token;
                self.next_token += 1;
                self.reservations
                    .insert(t, SocketAddr::new(ip, self.next_port));
                self.next_port = self.next_port.wrapping_add(1);
                self.live.insert(id);
                return Ok((a, Some(t)));
            }
            a
        };
        self.live.insert(id);
        Ok((addr, None))
    }

    fn release(&mut self, id: AllocId) {
        assert!(
            self.live.remove(&id),
            "release of {id:?}, which holds no relay socket"
        );
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn byte(&mut self) -> u8 {
        self.u8().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn peers() -> [SocketAddr; 10] {
    [
        "93.184.216.34:5000",
        "93.184.216.35:5001",
        "[2606:2800:220:1::7]:6000",
        "[::ffff:93.184.216.34]:5000",
        "[64:ff9b::5db8:d822]:5000",
        "10.0.0.1:5000",
        "127.0.0.1:5000",
        "[::ffff:10.0.0.1]:5000",
        SERVER,
        "[2002:a00:1::1]:5000",
    ]
    .map(|s| s.parse().unwrap())
}

struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
}

struct World {
    core: Core,
    io: FakeRelay,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    peers: [SocketAddr; 10],
    start: Instant,
    elapsed: u64,
    out: Vec<u8>,
    tid: u32,
}

impl World {
    fn new(bandwidth: u64) -> World {
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), "alice-pw".to_string());
        users.insert("bob".to_string(), "bob-pw".to_string());
        let shared = Arc::new(Shared {
            credentials: Credentials::new(REALM, &users, &[SECRET.to_string()]),
            nonces: Nonces::new(120),
            limiter: FailureLimiter::new(8),
            policy: PeerPolicy::new(Vec::new(), Vec::new(), vec![SERVER.parse().unwrap()]),
            quotas: Quotas::new(3, 5),
            software: "fuzz".to_string(),
            max_lifetime: 3600,
            bandwidth_limit: bandwidth,
            families: [true, true],
            external: Vec::new(),
        });
        let rest_user = format!("{}:carol", T0_UNIX + 1000);
        let rest_pw = auth::rest_password(SECRET.as_bytes(), &rest_user);
        let server: SocketAddr = SERVER.parse().unwrap();
        let mk = |client: &str, transport, username: &str, password: &str| Client {
            tuple: FiveTuple {
                client: client.parse().unwrap(),
                server,
                transport,
            },
            username: username.to_string(),
            password: password.to_string(),
        };
        let clients = vec![
            mk("198.51.100.1:1000", Transport::Udp, "alice", "alice-pw"),
            mk("198.51.100.2:2000", Transport::Tcp, "bob", "bob-pw"),
            mk("[2001:db8:5::5]:3000", Transport::Udp, &rest_user, &rest_pw),
            mk("198.51.100.1:1001", Transport::Tls, "alice", "wrong"),
        ];
        World {
            core: Core::new(Arc::clone(&shared)),
            io: FakeRelay {
                next_port: 49_999,
                fail: None,
                reservations: HashMap::new(),
                next_token: 1,
                live: HashSet::new(),
            },
            shared,
            clients,
            peers: peers(),
            start: Instant::now(),
            elapsed: 0,
            out: Vec::new(),
            tid: 0,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_secs(self.elapsed)
    }

    fn unix(&self) -> u64 {
        T0_UNIX + self.elapsed
    }

    fn client_packet(&mut self, who: usize, pkt: &[u8]) -> bool {
        let t = self.clients[who].tuple;
        let (now, unix) = (self.now(), self.unix());
        let action = self
            .core
            .handle_client(now, unix, &t, pkt, &mut self.out, &mut self.io);
        let replied = action == ClientAction::Reply;
        match action {
            ClientAction::None => {}
            ClientAction::Reply => {
                let req = Message::parse(pkt).expect("only STUN requests are answered");
                assert_eq!(req.class(), Class::Request);
                let resp = Message::parse(&self.out).expect("replies are well-formed");
                assert!(matches!(resp.class(), Class::Success | Class::Error));
                assert_eq!(resp.transaction_id(), req.transaction_id());
                if resp.class() == Class::Error {
                    let v = resp.get(attr::ERROR_CODE).expect("ERROR-CODE");
                    assert!(v.len() >= 4 && (3..=6).contains(&v[2]));
                }
            }
            ClientAction::Relay {
                id, peer, range, ..
            } => {
                assert!(range.start <= range.end && range.end <= pkt.len());
                assert!(
                    self.io.live.contains(&id),
                    "relay through a closed allocation"
                );
                assert_eq!(self.core.allocation_of(&t), Some(id));
                assert!(self.shared.policy.permits(peer.ip()));
            }
        }
        replied
    }

    /// A request with attributes from the input, signed with the client's credentials.
    fn signed_request(&mut self, who: usize, c: &mut Cursor<'_>) {
        const METHODS: [u16; 6] = [
            method::ALLOCATE,
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
            method::BINDING,
            method::ALLOCATE,
        ];
        let m = METHODS[usize::from(c.byte()) % METHODS.len()];
        let flags = c.byte();
        self.tid += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        tid[4] = flags;
        let mut pkt = Vec::new();
        let mut w = MessageWriter::new(&mut pkt, m, Class::Request, &tid);
        let n_attrs = usize::from(c.byte() % 6);
        for _ in 0..n_attrs {
            let sel = c.byte();
            let arg = c.byte();
            match sel % 16 {
                0 | 1 => {
                    w.attr(
                        attr::REQUESTED_TRANSPORT,
                        &[if sel & 0x80 != 0 { arg } else { 17 }, 0, 0, 0],
                    );
                }
                2 => {
                    w.u32(attr::LIFETIME, u32::from(arg) * 30);
                }
                3 | 4 => {
                    let p = self.peers[usize::from(arg) % self.peers.len()];
                    w.xor_addr(attr::XOR_PEER_ADDRESS, p);
                }
                5 => {
                    w.u32(
                        attr::CHANNEL_NUMBER,
                        (0x4000 + u32::from(arg & 0x0f) + if sel & 0x80 != 0 { 0x1000 } else { 0 })
                            << 16,
                    );
                }
                6 => {
                    w.attr(attr::EVEN_PORT, &[arg & 0x80]);
                }
                7 => {
                    w.attr(attr::RESERVATION_TOKEN, &u64::from(arg % 4).to_be_bytes());
                }
                8 => {
                    w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[arg % 4, 0, 0, 0]);
                }
                9 => {
                    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[arg % 4, 0, 0, 0]);
                }
                10 => {
                    w.attr(attr::DONT_FRAGMENT, &[]);
                }
                _ => {
                    let t = u16::from_be_bytes([sel, arg]);
                    let len = usize::from(c.byte() % 24);
                    let v = c.take(len);
                    w.attr(t, v);
                }
            }
        }
        let cl = &self.clients[who];
        let username = if flags & 0x10 != 0 {
            "nobody"
        } else {
            cl.username.as_str()
        };
        if flags & 0x01 == 0 {
            let nonce = if flags & 0x02 != 0 {
                // Stale: issued long ago.
                self.shared
                    .nonces
                    .issue(self.unix().saturating_sub(1000), cl.tuple.client.ip())
            } else {
                self.shared.nonces.issue(self.unix(), cl.tuple.client.ip())
            };
            w.attr(attr::USERNAME, username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
            let key = auth::long_term_key(username, REALM, &cl.password);
            if flags & 0x04 != 0 {
                w.integrity_sha256(&key);
            } else {
                w.integrity_sha1(&key);
            }
        }
        if flags & 0x08 == 0 {
            w.fingerprint();
        }
        let replied = self.client_packet(who, &pkt);
        // Retransmission: once the 5-tuple has an allocation, a retransmitted request gets
        // the very same answer (unless the auth-failure limiter now drops it).
        if flags & 0x20 != 0 {
            let first = self.out.clone();
            let had = self.core.allocation_of(&self.clients[who].tuple).is_some();
            let again = self.client_packet(who, &pkt);
            if replied && again && had && m != method::BINDING {
                assert_eq!(self.out, first, "retransmission answered differently");
            }
        }
    }

    fn peer_packet(&mut self, who: usize, c: &mut Cursor<'_>) {
        let sel = c.byte();
        let peer = self.peers[usize::from(sel) % self.peers.len()];
        let len = usize::from(c.byte()) * 4 + usize::from(sel >> 6);
        let id = match self.core.allocation_of(&self.clients[who].tuple) {
            Some(id) => id,
            None => AllocId {
                index: u32::from(sel & 3),
                gen: u32::from(sel >> 2 & 3),
            },
        };
        let payload = c.take(len);
        let at = DATA_INDICATION_HEADROOM;
        let mut buf = vec![0xEE; at + payload.len() + 3];
        buf[at..at + payload.len()].copy_from_slice(payload);
        let now = self.now();
        if let Some((t, r)) = self
            .core
            .handle_peer(now, id, peer, &mut buf, at, payload.len())
        {
            assert!(r.end <= buf.len());
            assert_eq!(self.core.allocation_of(&t), Some(id));
            let frame = &buf[r];
            if stun::is_channel_data(frame) {
                let cd = ChannelData::parse(frame).expect("ChannelData to the client parses");
                assert_eq!(cd.data, payload);
                if t.transport.is_stream() {
                    assert_eq!(stun::stream_frame_len(frame), Ok(Some(frame.len())));
                }
            } else {
                let m = Message::parse(frame).expect("Data indication parses");
                assert_eq!(m.get(attr::DATA), Some(payload));
                assert_eq!(m.get_xor_addr(attr::XOR_PEER_ADDRESS), Some(peer));
            }
        }
    }

    fn check_invariants(&self) {
        let n = self.core.allocation_count();
        assert_eq!(n, self.io.live.len(), "allocations vs open relay sockets");
        assert_eq!(
            self.shared.quotas.total() as usize,
            n,
            "quota count vs allocations"
        );
        let g = self.core.gauges(self.now());
        assert_eq!(g.allocations.iter().sum::<u64>() as usize, n);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let bandwidth = match c.byte() % 4 {
        0 => 2000,
        _ => 0,
    };
    let mut w = World::new(bandwidth);
    let mut steps = 0;
    while let Some(op) = c.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        let who = usize::from(op >> 4) % w.clients.len();
        match op & 0x0f {
            0..=2 => {
                let len = usize::from(c.u16() % 1500);
                let pkt = c.take(len).to_vec();
                w.client_packet(who, &pkt);
            }
            3..=6 => w.signed_request(who, &mut c),
            7 => {
                let ch = 0x4000 + u16::from(c.byte() & 0x1f);
                let len = usize::from(c.byte());
                let mut pkt = ch.to_be_bytes().to_vec();
                pkt.extend_from_slice(&(len as u16).to_be_bytes());
                pkt.extend_from_slice(c.take(len));
                w.client_packet(who, &pkt);
            }
            8 => {
                let p = w.peers[usize::from(c.byte()) % w.peers.len()];
                let len = usize::from(c.byte());
                let mut pkt = Vec::new();
                MessageWriter::new(&mut pkt, method::SEND, Class::Indication, &[7; 12])
                    .xor_addr(attr::XOR_PEER_ADDRESS, p)
                    .attr(attr::DATA, c.take(len));
                w.client_packet(who, &pkt);
            }
            9 | 10 => w.peer_packet(who, &mut c),
            11 => {
                w.elapsed += u64::from(c.byte()) * 8;
                let now = w.now();
                w.core.handle_timeout(now, &mut w.io);
            }
            12 => {
                let t = w.clients[who].tuple;
                if t.transport.is_stream() {
                    w.core.connection_closed(&t, &mut w.io);
                    assert_eq!(w.core.allocation_of(&t), None);
                }
            }
            13 => {
                w.io.fail = match c.byte() % 5 {
                    0 => Some(BindError::Exhausted),
                    1 => Some(BindError::BadToken),
                    2 => Some(BindError::Family),
                    _ => None,
                };
            }
            _ => {
                w.elapsed += u64::from(c.byte() % 4);
            }
        }
        w.check_invariants();
    }
    // Everything expires eventually and every relay socket is closed.
    w.elapsed += 100_000;
    let now = w.now();
    w.core.handle_timeout(now, &mut w.io);
    assert_eq!(w.core.allocation_count(), 0);
    assert!(w.io.live.is_empty());
    assert_eq!(w.shared.quotas.total(), 0);
});
