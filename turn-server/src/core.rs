//! The TURN server state machine (RFC 8656 with RFC 6156 address families), free of sockets.
//!
//! One [`Core`] per worker thread owns the allocations whose client 5-tuples the kernel
//! steers to that worker (`SO_REUSEPORT` hashing), so the data path takes no lock. The I/O
//! shell feeds it datagrams and stream frames and gets back what to send where; relay sockets
//! are opened and closed through the [`RelayIo`] trait, which tests implement with a fake.
//! Things shared between workers (quotas, the auth-failure limiter, nonce key, credentials)
//! live in [`Shared`] and are touched only on control messages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{
    self, CredentialKind, Credentials, FailureLimiter, NonceCheck, Nonces, Throttle,
};
use crate::policy::PeerPolicy;
use crate::stun::{
    self, attr, method, ChannelData, Class, Message, MessageWriter, DATA_INDICATION_HEADROOM,
};

pub const DEFAULT_LIFETIME: u32 = 600;
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A channel number or peer stays reserved this long after its binding expires (§12).
const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
const UDP_PROTOCOL: u8 = 17;

/// Transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// The client side of an allocation: who sent it, to which of our sockets, over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Handle of an allocation: slab index plus generation, so a late packet from a closed relay
/// socket never reaches the allocation that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocId {
    pub index: u32,
    pub gen: u32,
}

/// Relay address family: index 0 is IPv4, 1 is IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4 = 0,
    V6 = 1,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the core asks of the I/O shell when it creates an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRequest {
    pub family: Family,
    /// EVEN-PORT: the relay port must be even.
    pub even_port: bool,
    /// EVEN-PORT with R: also reserve the next port and return a token for it.
    pub reserve_next: bool,
    /// RESERVATION-TOKEN: use the port reserved under this token.
    pub token: Option<u64>,
    /// DONT-FRAGMENT: send relayed datagrams with DF set.
    pub dont_fragment: bool,
}

/// Why the shell could not open a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("no relay port free in the range")]
    Exhausted,
    #[error("reservation token unknown or expired")]
    BadToken,
    #[error("no relay address of that family")]
    Family,
}

/// Relay sockets, as the shell provides them.
pub trait RelayIo {
    /// Opens a relay socket for allocation `id`; returns its local address and, with
    /// `reserve_next`, the token of the reserved neighbour port.
    fn bind(
        &mut self,
        id: AllocId,
        req: &RelayRequest,
    ) -> Result<(SocketAddr, Option<u64>), BindError>;
    /// Closes every relay socket of `id`.
    fn release(&mut self, id: AllocId);
}

/// Counters the shell exports as Prometheus metrics (taken and zeroed at each flush).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub allocations_created: [u64; 3],
    pub allocations_expired: [u64; 3],
    pub allocations_deleted: [u64; 3],
    pub allocations_failed: [u64; 3],
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    pub auth_failures: u64,
    /// Requests answered 401 unchecked because their user kept failing from that address.
    pub auth_throttled: u64,
    pub quota_rejections: u64,
    pub denied_peers: u64,
    /// The last peer address denied since the previous flush (for the log line).
    pub last_denied_peer: Option<std::net::IpAddr>,
    pub permissions_created: u64,
    pub channels_bound: u64,
    pub dropped_no_permission: u64,
    pub dropped_bandwidth: u64,
    pub stun_errors_sent: u64,
    pub malformed: u64,
}

/// Counts of live state, for gauges.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub allocations: [u64; 3],
    pub permissions: u64,
    pub channels: u64,
}

/// Allocation quotas shared by all workers.
pub struct Quotas {
    user_quota: u32,
    total_quota: u32,
    total: AtomicU32,
    per_user: Mutex<HashMap<String, u32>>,
}

impl Quotas {
    pub fn new(user_quota: u32, total_quota: u32) -> Self {
        Quotas {
            user_quota,
            total_quota,
            total: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(&self, user: &str) -> bool {
        let prev = self.total.fetch_add(1, Ordering::Relaxed);
        if self.total_quota != 0 && prev >= self.total_quota {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_owned()).or_insert(0);
        if self.user_quota != 0 && *n >= self.user_quota {
            drop(m);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, user: &str) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                m.remove(user);
            }
        }
    }

    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Settings and state shared by every worker's [`Core`].
pub struct Shared {
    pub credentials: Credentials,
    pub nonces: Nonces,
    pub limiter: FailureLimiter,
    pub policy: PeerPolicy,
    pub quotas: Quotas,
    pub software: String,
    pub max_lifetime: u32,
    /// Bytes per second per allocation and direction (0 = unlimited).
    pub bandwidth_limit: u64,
    /// Relay families the shell can serve: [IPv4, IPv6].
    pub families: [bool; 2],
    /// Relay address -> address advertised to clients (NAT); empty means as bound.
    pub external: Vec<(Option<IpAddr>, IpAddr)>,
}

impl Shared {
    fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        let fam = Family::of(relay.ip());
        for (r, public) in &self.external {
            match r {
                Some(r) if *r == relay.ip() => return SocketAddr::new(*public, relay.port()),
                None if Family::of(*public) == fam => {
                    return SocketAddr::new(*public, relay.port())
                }
                _ => {}
            }
        }
        relay
    }
}

struct Permission {
    ip: IpAddr,
    expires: Instant,
}

struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// Token bucket for the optional bandwidth cap.
struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    fn allow(&mut self, rate: u64, now: Instant, bytes: usize) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(10) {
            let add = (rate as u128 * elapsed.as_micros() / 1_000_000) as u64;
            self.tokens = (self.tokens + add).min(rate);
            self.last = now;
        }
        if self.tokens >= bytes as u64 {
            self.tokens -= bytes as u64;
            true
        } else {
            false
        }
    }
}

struct Allocation {
    tuple: FiveTuple,
    username: String,
    quota_user: String,
    relays: [Option<SocketAddr>; 2],
    expires: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// Recent (transaction id, response) pairs, so retransmissions get the same answer.
    answered: [([u8; 12], Vec<u8>); 2],
    answered_next: usize,
    up: Bucket,
    down: Bucket,
    data_tid: u64,
}

impl Allocation {
    fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    fn remember(&mut self, tid: [u8; 12], response: &[u8]) {
        let slot = &mut self.answered[self.answered_next];
        slot.0 = tid;
        slot.1.clear();
        slot.1.extend_from_slice(response);
        self.answered_next = (self.answered_next + 1) % self.answered.len();
    }
}

/// An IPv4-mapped peer (`::ffff:a.b.c.d`) is the IPv4 peer: it is relayed through the IPv4
/// relay socket, and its permission is the IPv4 address's.
fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

struct Slot {
    gen: u32,
    alloc: Option<Allocation>,
}

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing to send.
    None,
    /// Send `out` back to the client.
    Reply,
    /// Send `packet[range]` from the allocation's relay socket of `family` to `peer`.
    Relay {
        id: AllocId,
        family: Family,
        peer: SocketAddr,
        range: Range<usize>,
    },
}

/// The per-worker TURN state machine.
pub struct Core {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, AllocId>,
    pub stats: Stats,
    keys: Vec<[u8; 16]>,
    unknown: Vec<u16>,
}

/// The authenticated sender of a request.
struct Authed {
    key: [u8; 16],
    sha256: bool,
}

/// Outcome of request handling before the response is written.
enum Outcome {
    Drop,
    Reply,
}

impl Core {
    pub fn new(shared: Arc<Shared>) -> Self {
        Core {
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            stats: Stats::default(),
            keys: Vec::new(),
            unknown: Vec::new(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The allocation of a client 5-tuple, if any.
    pub fn allocation_of(&self, tuple: &FiveTuple) -> Option<AllocId> {
        self.by_tuple.get(tuple).copied()
    }

    /// Relay addresses (as bound) of an allocation.
    pub fn relay_addrs(&self, id: AllocId) -> [Option<SocketAddr>; 2] {
        self.get(id).map_or([None, None], |a| a.relays)
    }

    fn get(&self, id: AllocId) -> Option<&Allocation> {
        let s = self.slots.get(id.index as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.alloc.as_ref()
    }

    fn get_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.alloc.as_mut()
    }

    /// Handles one packet from a client: a STUN message or a ChannelData message. `out`
    /// receives the reply when the action is [`ClientAction::Reply`].
    pub fn handle_client(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: &FiveTuple,
        packet: &[u8],
        out: &mut Vec<u8>,
        io: &mut dyn RelayIo,
    ) -> ClientAction {
        if stun::is_channel_data(packet) {
            return self.handle_channel_data(now, tuple, packet);
        }
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return ClientAction::None;
            }
        };
        match msg.class() {
            Class::Request => match self.handle_request(now, unix_now, tuple, &msg, out, io) {
                Outcome::Drop => ClientAction::None,
                Outcome::Reply => ClientAction::Reply,
            },
            Class::Indication if msg.method() == method::SEND => self.handle_send(now, tuple, &msg),
            _ => ClientAction::None,
        }
    }

    fn handle_channel_data(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        packet: &[u8],
    ) -> ClientAction {
        let Ok(cd) = ChannelData::parse(packet) else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let Some(&id) = self.by_tuple.get(tuple) else {
            return ClientAction::None;
        };
        let rate = self.shared.bandwidth_limit;
        let a = self.get_mut(id).expect("indexed allocation exists");
        let Some(ch) = a
            .channels
            .iter()
            .find(|c| c.number == cd.channel && c.expires > now)
        else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        let peer = ch.peer;
        if !a.has_permission(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !a.up.allow(rate, now, cd.data.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += cd.data.len() as u64;
        ClientAction::Relay {
            id,
            family: Family::of(peer.ip()),
            peer,
            range: 4..4 + cd.data.len(),
        }
    }

    fn handle_send(&mut self, now: Instant, tuple: &FiveTuple, msg: &Message<'_>) -> ClientAction {
        let Some(&id) = self.by_tuple.get(tuple) else {
            return ClientAction::None;
        };
        let (Some(peer), Some(data)) = (
            msg.get_xor_addr(attr::XOR_PEER_ADDRESS),
            msg.get(attr::DATA),
        ) else {
            return ClientAction::None;
        };
        let peer = canonical_addr(peer);
        if !self.shared.policy.permits_addr(peer) {
            self.stats.denied_peers += 1;
            self.stats.last_denied_peer = Some(peer.ip());
            return ClientAction::None;
        }
        let rate = self.shared.bandwidth_limit;
        let a = self.get_mut(id).expect("indexed allocation exists");
        if a.relays[Family::of(peer.ip()).index()].is_none() || !a.has_permission(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !a.up.allow(rate, now, data.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        let start = data.as_ptr() as usize - msg.as_bytes().as_ptr() as usize;
        ClientAction::Relay {
            id,
            family: Family::of(peer.ip()),
            peer,
            range: start..start + data.len(),
        }
    }

    /// Handles a datagram that arrived on a relay socket from `peer`. The payload is at
    /// `buf[payload_at..payload_at + len]` with [`DATA_INDICATION_HEADROOM`] bytes free in
    /// front and 3 after. On success the frame for the client is framed in place and its range
    /// returned with the client's 5-tuple.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload_at: usize,
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
        debug_assert!(payload_at >= DATA_INDICATION_HEADROOM);
        let rate = self.shared.bandwidth_limit;
        let a = self.get_mut(id)?;
        if !a.has_permission(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if !a.down.allow(rate, now, len) {
            self.stats.dropped_bandwidth += 1;
            return None;
        }
        let tuple = a.tuple;
        let stream = tuple.transport.is_stream();
        let range = if let Some(ch) = a
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
        {
            stun::frame_channel_data(buf, payload_at, len, ch.number, stream)
        } else {
            // The indication's 16-bit length must hold XOR-PEER-ADDRESS, DATA and the padded
            // payload; a wrapped length would let the peer's bytes pass for frames of their
            // own on a stream transport. Only a channel can carry such a datagram.
            let alen = if peer.is_ipv4() { 8 } else { 20 };
            if 4 + alen + 4 + len.next_multiple_of(4) > usize::from(u16::MAX) {
                return None;
            }
            a.data_tid = a.data_tid.wrapping_add(1);
            let mut tid = [0u8; 12];
            tid[..4].copy_from_slice(&id.index.to_be_bytes());
            tid[4..].copy_from_slice(&a.data_tid.to_be_bytes());
            stun::frame_data_indication(buf, payload_at, len, peer, &tid)
        };
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        Some((tuple, range))
    }

    /// Expires allocations, permissions and channels. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn RelayIo) {
        let mut expired = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(a) = s.alloc.as_mut() else { continue };
            if a.expires <= now {
                expired.push(AllocId {
                    index: i as u32,
                    gen: s.gen,
                });
                continue;
            }
            a.permissions.retain(|p| p.expires > now);
            a.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        }
        for id in expired {
            if let Some(t) = self.remove(id, io) {
                self.stats.allocations_expired[t.index()] += 1;
            }
        }
    }

    /// Drops every allocation of a client connection that closed (TCP/TLS).
    pub fn connection_closed(&mut self, tuple: &FiveTuple, io: &mut dyn RelayIo) {
        if let Some(&id) = self.by_tuple.get(tuple) {
            if let Some(t) = self.remove(id, io) {
                self.stats.allocations_deleted[t.index()] += 1;
            }
        }
    }

    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut g = Gauges::default();
        for a in self.slots.iter().filter_map(|s| s.alloc.as_ref()) {
            g.allocations[a.tuple.transport.index()] += 1;
            g.permissions += a.permissions.iter().filter(|p| p.expires > now).count() as u64;
            g.channels += a.channels.iter().filter(|c| c.expires > now).count() as u64;
        }
        g
    }

    fn remove(&mut self, id: AllocId, io: &mut dyn RelayIo) -> Option<Transport> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let a = slot.alloc.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(id.index);
        self.by_tuple.remove(&a.tuple);
        self.shared.quotas.release(&a.quota_user);
        io.release(id);
        Some(a.tuple.transport)
    }

    fn handle_request(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
        io: &mut dyn RelayIo,
    ) -> Outcome {
        let tid = msg.transaction_id();
        out.clear();
        // A retransmission gets the response the original got.
        if let Some(&id) = self.by_tuple.get(tuple) {
            if let Some(a) = self.get(id) {
                if let Some((_, r)) = a.answered.iter().find(|(t, r)| *t == tid && !r.is_empty()) {
                    out.extend_from_slice(r);
                    return Outcome::Reply;
                }
            }
        }
        self.unknown.clear();
        msg.unknown_required(&mut self.unknown);
        if !self.unknown.is_empty() {
            let unknown = std::mem::take(&mut self.unknown);
            let m = msg.method();
            MessageWriter::new(out, m, Class::Error, &tid)
                .error_code(420, "Unknown Attribute")
                .unknown_attributes(&unknown)
                .attr(attr::SOFTWARE, self.shared.software.as_bytes())
                .fingerprint();
            self.unknown = unknown;
            self.stats.stun_errors_sent += 1;
            return Outcome::Reply;
        }
        match msg.method() {
            method::BINDING => {
                MessageWriter::new(out, method::BINDING, Class::Success, &tid)
                    .xor_addr(attr::XOR_MAPPED_ADDRESS, tuple.client)
                    .attr(attr::SOFTWARE, self.shared.software.as_bytes())
                    .fingerprint();
                Outcome::Reply
            }
            m @ (method::ALLOCATE
            | method::REFRESH
            | method::CREATE_PERMISSION
            | method::CHANNEL_BIND) => {
                let authed = match self.authenticate(now, unix_now, tuple, msg, out) {
                    Ok(a) => a,
                    Err(o) => return o,
                };
                let existing = self.by_tuple.get(tuple).copied();
                let result = match m {
                    method::ALLOCATE => self.allocate(now, tuple, msg, existing, io),
                    method::REFRESH => self.refresh(now, msg, existing, io),
                    method::CREATE_PERMISSION => self.create_permission(now, msg, existing),
                    _ => self.channel_bind(now, msg, existing),
                };
                match result {
                    Ok(attrs) => {
                        let mut w = MessageWriter::new(out, m, Class::Success, &tid);
                        attrs.write(&mut w);
                        w.attr(attr::SOFTWARE, self.shared.software.as_bytes());
                        sign(&mut w, &authed);
                    }
                    Err((code, reason)) => {
                        if m == method::ALLOCATE {
                            self.stats.allocations_failed[tuple.transport.index()] += 1;
                        }
                        self.stats.stun_errors_sent += 1;
                        let mut w = MessageWriter::new(out, m, Class::Error, &tid);
                        w.error_code(code, reason);
                        w.attr(attr::SOFTWARE, self.shared.software.as_bytes());
                        sign(&mut w, &authed);
                    }
                }
                if let Some(id) = self.by_tuple.get(tuple).copied() {
                    if let Some(a) = self.get_mut(id) {
                        a.remember(tid, out);
                    }
                }
                Outcome::Reply
            }
            _ => {
                MessageWriter::new(out, msg.method(), Class::Error, &tid)
                    .error_code(400, "Bad Request: unsupported method")
                    .attr(attr::SOFTWARE, self.shared.software.as_bytes())
                    .fingerprint();
                self.stats.stun_errors_sent += 1;
                Outcome::Reply
            }
        }
    }

    /// Long-term credential check (RFC 8489 §9.2). On failure the error response is in `out`.
    fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Authed, Outcome> {
        let ip = tuple.client.ip();
        let sh = Arc::clone(&self.shared);
        if sh.limiter.address_blocked(ip, now) {
            return Err(Outcome::Drop);
        }
        let tid = msg.transaction_id();
        let challenge = |out: &mut Vec<u8>, code: u16, reason: &str| {
            out.clear();
            MessageWriter::new(out, msg.method(), Class::Error, &tid)
                .error_code(code, reason)
                .attr(attr::REALM, sh.credentials.realm().as_bytes())
                .attr(attr::NONCE, sh.nonces.issue(unix_now, ip).as_bytes())
                .attr(attr::SOFTWARE, sh.software.as_bytes())
                .fingerprint();
            Outcome::Reply
        };
        let Some(integrity) = msg.integrity() else {
            return Err(challenge(out, 401, "Unauthorized"));
        };
        let (Some(username), Some(_realm), Some(nonce)) = (
            msg.get_str(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get_str(attr::NONCE),
        ) else {
            out.clear();
            MessageWriter::new(out, msg.method(), Class::Error, &tid)
                .error_code(400, "Bad Request: USERNAME, REALM and NONCE are required")
                .attr(attr::SOFTWARE, sh.software.as_bytes())
                .fingerprint();
            return Err(Outcome::Reply);
        };
        match sh.limiter.check(ip, username, now) {
            Throttle::Allow => {}
            Throttle::RejectUser => {
                self.stats.auth_throttled += 1;
                return Err(challenge(out, 401, "Unauthorized"));
            }
            Throttle::DropAddress => return Err(Outcome::Drop),
        }
        match sh.nonces.check(nonce, unix_now, ip) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Err(challenge(out, 438, "Stale Nonce"));
            }
        }
        let keys = &mut self.keys;
        let verified = match sh.credentials.keys(username, unix_now, keys) {
            Ok(_) => keys.iter().find(|k| msg.verify_integrity(&k[..])).copied(),
            Err(_) => None,
        };
        let Some(key) = verified else {
            self.stats.auth_failures += 1;
            sh.limiter.record_failure(ip, username, now);
            return Err(challenge(out, 401, "Unauthorized"));
        };
        let authed = Authed {
            key,
            sha256: integrity.is_sha256(),
        };
        if let Some(&id) = self.by_tuple.get(tuple) {
            if let Some(a) = self.get(id) {
                if a.username != username {
                    out.clear();
                    let mut w = MessageWriter::new(out, msg.method(), Class::Error, &tid);
                    w.error_code(441, "Wrong Credentials");
                    w.attr(attr::SOFTWARE, sh.software.as_bytes());
                    sign(&mut w, &authed);
                    return Err(Outcome::Reply);
                }
            }
        }
        Ok(authed)
    }

    fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        io: &mut dyn RelayIo,
    ) -> Result<SuccessAttrs, (u16, &'static str)> {
        if existing.is_some() {
            return Err((437, "Allocation Mismatch"));
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return Err((400, "Bad Request: REQUESTED-TRANSPORT missing")),
            Some(v) if v.len() != 4 => {
                return Err((400, "Bad Request: malformed REQUESTED-TRANSPORT"))
            }
            Some(v) if v[0] != UDP_PROTOCOL => return Err((442, "Unsupported Transport Protocol")),
            Some(_) => {}
        }
        let token = match msg.get(attr::RESERVATION_TOKEN) {
            None => None,
            Some(v) if v.len() == 8 => Some(u64::from_be_bytes(v.try_into().expect("8 bytes"))),
            Some(_) => return Err((400, "Bad Request: malformed RESERVATION-TOKEN")),
        };
        let requested_family = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let additional = msg.get(attr::ADDITIONAL_ADDRESS_FAMILY);
        let even = msg.get(attr::EVEN_PORT);
        if token.is_some() && (even.is_some() || requested_family.is_some() || additional.is_some())
        {
            return Err((
                400,
                "Bad Request: RESERVATION-TOKEN with EVEN-PORT or an address family",
            ));
        }
        if requested_family.is_some() && additional.is_some() {
            return Err((
                400,
                "Bad Request: both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
        let family = match requested_family {
            None => Family::V4,
            Some(v) if v.len() == 4 && v[0] == 0x01 => Family::V4,
            Some(v) if v.len() == 4 && v[0] == 0x02 => Family::V6,
            Some(v) if v.len() == 4 => return Err((440, "Address Family not Supported")),
            Some(_) => return Err((400, "Bad Request: malformed REQUESTED-ADDRESS-FAMILY")),
        };
        let also_v6 = match additional {
            None => false,
            Some(v) if v.len() == 4 && v[0] == 0x02 => true,
            Some(_) => return Err((400, "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6")),
        };
        let (even_port, reserve_next) = match even {
            None => (false, false),
            Some(v) if v.len() == 1 || v.len() == 4 => (true, v[0] & 0x80 != 0),
            Some(_) => return Err((400, "Bad Request: malformed EVEN-PORT")),
        };
        if token.is_none() && !self.shared.families[family.index()] {
            return Err((440, "Address Family not Supported"));
        }
        let username = msg.get_str(attr::USERNAME).unwrap_or_default().to_owned();
        let kind = if auth::rest_expiry(&username).is_some()
            && !self.shared.credentials.is_static(&username)
        {
            CredentialKind::Rest { expiry: 0 }
        } else {
            CredentialKind::Static
        };
        let quota_user = auth::quota_key(&username, kind).to_owned();
        if !self.shared.quotas.acquire(&quota_user) {
            self.stats.quota_rejections += 1;
            return Err((486, "Allocation Quota Reached"));
        }
        let lifetime = self.lifetime(msg);

        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    alloc: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = AllocId {
            index,
            gen: self.slots[index as usize].gen,
        };
        let req = RelayRequest {
            family,
            even_port,
            reserve_next,
            token,
            dont_fragment: msg.has(attr::DONT_FRAGMENT),
        };
        let (primary, reservation) = match io.bind(id, &req) {
            Ok(r) => r,
            Err(e) => {
                self.free.push(index);
                self.shared.quotas.release(&quota_user);
                return Err(match e {
                    BindError::Exhausted | BindError::BadToken => (508, "Insufficient Capacity"),
                    BindError::Family => (440, "Address Family not Supported"),
                });
            }
        };
        let mut relays = [None, None];
        relays[Family::of(primary.ip()).index()] = Some(primary);
        let mut address_error = None;
        if also_v6 {
            if !self.shared.families[Family::V6.index()] {
                address_error = Some(440);
            } else {
                let req6 = RelayRequest {
                    family: Family::V6,
                    even_port: false,
                    reserve_next: false,
                    token: None,
                    dont_fragment: req.dont_fragment,
                };
                match io.bind(id, &req6) {
                    Ok((a6, _)) => relays[1] = Some(a6),
                    Err(BindError::Family) => address_error = Some(440),
                    Err(_) => address_error = Some(508),
                }
            }
        }
        self.slots[index as usize].alloc = Some(Allocation {
            tuple: *tuple,
            username,
            quota_user,
            relays,
            expires: now + Duration::from_secs(u64::from(lifetime)),
            permissions: Vec::new(),
            channels: Vec::new(),
            answered: Default::default(),
            answered_next: 0,
            up: Bucket {
                tokens: self.shared.bandwidth_limit,
                last: now,
            },
            down: Bucket {
                tokens: self.shared.bandwidth_limit,
                last: now,
            },
            data_tid: rand::random(),
        });
        self.by_tuple.insert(*tuple, id);
        self.stats.allocations_created[tuple.transport.index()] += 1;
        Ok(SuccessAttrs::Allocate {
            relayed: [
                relays[0].map(|r| self.shared.advertised(r)),
                relays[1].map(|r| self.shared.advertised(r)),
            ],
            lifetime,
            reservation,
            mapped: tuple.client,
            address_error,
        })
    }

    /// RFC 8656 §7.2/§7.3: min(requested, maximum), but never less than the default lifetime
    /// (unless the configured maximum is itself below the default).
    fn lifetime(&self, msg: &Message<'_>) -> u32 {
        let max = self.shared.max_lifetime.max(1);
        msg.get_u32(attr::LIFETIME)
            .unwrap_or(DEFAULT_LIFETIME)
            .clamp(DEFAULT_LIFETIME.min(max), max)
    }

    fn refresh(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        io: &mut dyn RelayIo,
    ) -> Result<SuccessAttrs, (u16, &'static str)> {
        let Some(id) = existing else {
            return Err((437, "Allocation Mismatch"));
        };
        let a = self.get(id).expect("indexed allocation exists");
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let fam = match v.first() {
                Some(0x01) => Some(Family::V4),
                Some(0x02) => Some(Family::V6),
                _ => None,
            };
            if fam.is_none_or(|f| a.relays[f.index()].is_none()) {
                return Err((443, "Peer Address Family Mismatch"));
            }
        }
        let requested = msg.get_u32(attr::LIFETIME);
        if requested == Some(0) {
            let transport = a.tuple.transport;
            self.remove(id, io);
            self.stats.allocations_deleted[transport.index()] += 1;
            return Ok(SuccessAttrs::Lifetime(0));
        }
        let lifetime = self.lifetime(msg);
        let a = self.get_mut(id).expect("indexed allocation exists");
        a.expires = now + Duration::from_secs(u64::from(lifetime));
        Ok(SuccessAttrs::Lifetime(lifetime))
    }

    fn create_permission(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
    ) -> Result<SuccessAttrs, (u16, &'static str)> {
        let Some(id) = existing else {
            return Err((437, "Allocation Mismatch"));
        };
        let mut peers: [Option<IpAddr>; 8] = [None; 8];
        let mut n = 0;
        let relays = self.get(id).expect("indexed allocation exists").relays;
        for p in msg.xor_peer_addresses() {
            let Some(p) = p else {
                return Err((400, "Bad Request: malformed XOR-PEER-ADDRESS"));
            };
            let p = canonical_addr(p);
            if relays[Family::of(p.ip()).index()].is_none() {
                return Err((443, "Peer Address Family Mismatch"));
            }
            if !self.shared.policy.permits(p.ip()) {
                self.stats.denied_peers += 1;
                self.stats.last_denied_peer = Some(p.ip());
                return Err((403, "Forbidden: peer address not allowed"));
            }
            if n == peers.len() {
                return Err((400, "Bad Request: too many XOR-PEER-ADDRESS"));
            }
            peers[n] = Some(p.ip());
            n += 1;
        }
        if n == 0 {
            return Err((400, "Bad Request: XOR-PEER-ADDRESS missing"));
        }
        let a = self.get_mut(id).expect("indexed allocation exists");
        let mut created = 0;
        for ip in peers.iter().flatten() {
            created += install_permission(a, *ip, now);
        }
        self.stats.permissions_created += created;
        Ok(SuccessAttrs::Empty)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
    ) -> Result<SuccessAttrs, (u16, &'static str)> {
        let Some(id) = existing else {
            return Err((437, "Allocation Mismatch"));
        };
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return Err((400, "Bad Request: CHANNEL-NUMBER missing or malformed")),
        };
        if !stun::is_valid_channel(number) {
            return Err((400, "Bad Request: channel number out of range"));
        }
        let Some(Some(peer)) = msg.xor_peer_addresses().next() else {
            return Err((400, "Bad Request: XOR-PEER-ADDRESS missing or malformed"));
        };
        let peer = canonical_addr(peer);
        let a = self.get(id).expect("indexed allocation exists");
        if a.relays[Family::of(peer.ip()).index()].is_none() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        if !self.shared.policy.permits_addr(peer) {
            self.stats.denied_peers += 1;
            self.stats.last_denied_peer = Some(peer.ip());
            return Err((403, "Forbidden: peer address not allowed"));
        }
        // The channel must be free or bound to this peer, and the peer bound to no other
        // channel; both stay reserved for 5 minutes after the binding expires.
        for c in &a.channels {
            if (c.number == number) != (c.peer == peer) {
                return Err((400, "Bad Request: channel or peer already bound"));
            }
        }
        let a = self.get_mut(id).expect("indexed allocation exists");
        let mut bound = 0;
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = now + CHANNEL_LIFETIME,
            None => {
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME,
                });
                bound = 1;
            }
        }
        let created = install_permission(a, peer.ip(), now);
        self.stats.channels_bound += bound;
        self.stats.permissions_created += created;
        Ok(SuccessAttrs::Empty)
    }
}

fn install_permission(a: &mut Allocation, ip: IpAddr, now: Instant) -> u64 {
    let ip = canonical(ip);
    match a.permissions.iter_mut().find(|p| p.ip == ip) {
        Some(p) => {
            let fresh = p.expires <= now;
            p.expires = now + PERMISSION_LIFETIME;
            u64::from(fresh)
        }
        None => {
            a.permissions.push(Permission {
                ip,
                expires: now + PERMISSION_LIFETIME,
            });
            1
        }
    }
}

fn sign(w: &mut MessageWriter<'_>, authed: &Authed) {
    if authed.sha256 {
        w.integrity_sha256(&authed.key);
    } else {
        w.integrity_sha1(&authed.key);
    }
    w.fingerprint();
}

/// Attributes of a success response, written before SOFTWARE and the integrity attributes.
enum SuccessAttrs {
    Empty,
    Lifetime(u32),
    Allocate {
        relayed: [Option<SocketAddr>; 2],
        lifetime: u32,
        reservation: Option<u64>,
        mapped: SocketAddr,
        address_error: Option<u16>,
    },
}

impl SuccessAttrs {
    fn write(&self, w: &mut MessageWriter<'_>) {
        match self {
            SuccessAttrs::Empty => {}
            SuccessAttrs::Lifetime(l) => {
                w.u32(attr::LIFETIME, *l);
            }
            SuccessAttrs::Allocate {
                relayed,
                lifetime,
                reservation,
                mapped,
                address_error,
            } => {
                for r in relayed.iter().flatten() {
                    w.xor_addr(attr::XOR_RELAYED_ADDRESS, *r);
                }
                w.u32(attr::LIFETIME, *lifetime);
                if let Some(t) = reservation {
                    w.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
                }
                w.xor_addr(attr::XOR_MAPPED_ADDRESS, *mapped);
                if let Some(code) = address_error {
                    // ADDRESS-ERROR-CODE: family (IPv6), reserved, class, number, reason.
                    let mut v = vec![0x02, 0, (code / 100) as u8, (code % 100) as u8];
                    v.extend_from_slice(if *code == 440 {
                        b"Address Family not Supported"
                    } else {
                        b"Insufficient Capacity"
                    });
                    w.attr(attr::ADDRESS_ERROR_CODE, &v);
                }
            }
        }
    }
}
