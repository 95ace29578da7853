//! A small blocking STUN/TURN client over raw sockets, for tests that need to send exactly
//! the bytes they choose: malformed datagrams, unknown attributes, denied peers, quotas.
//!
//! Messages are built with `ember_turn::stun::MessageWriter` and responses parsed with
//! `ember_turn::stun::Message`; the long-term key (MD5 of `user:realm:password`) is computed
//! here, independently of the server. [`RawClient::request`] does the long-term credential
//! dance: an unauthenticated first try, then USERNAME/REALM/NONCE/MESSAGE-INTEGRITY with the
//! realm and nonce from the 401 (and once more after a 438).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ember_turn::stun::{attr, method, Class, Message, MessageWriter};
use md5::{Digest, Md5};

/// How long [`RawClient::transact`] waits for the response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP retransmission interval of [`RawClient::transact`].
const RTO: Duration = Duration::from_millis(500);

/// A fresh random transaction id.
pub fn new_tid() -> [u8; 12] {
    rand::random()
}

/// MD5(user ":" realm ":" password): the long-term credential key (RFC 8489 §9.2.2).
pub fn long_term_key(user: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(format!("{user}:{realm}:{password}").as_bytes());
    h.finalize().into()
}

/// A received STUN message (owned).
#[derive(Clone)]
pub struct StunResponse {
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for StunResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Message::parse(&self.bytes) {
            Ok(m) => write!(
                f,
                "StunResponse {{ method: {:#x}, class: {:?}, error: {:?}, attrs: {:?} }}",
                m.method(),
                m.class(),
                self.error(),
                m.attributes()
                    .map(|(t, _)| format!("{t:#06x}"))
                    .collect::<Vec<_>>()
            ),
            Err(e) => write!(
                f,
                "StunResponse(unparsable: {e}, {} bytes)",
                self.bytes.len()
            ),
        }
    }
}

impl StunResponse {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("checked when received")
    }
    pub fn class(&self) -> Class {
        self.message().class()
    }
    pub fn method(&self) -> u16 {
        self.message().method()
    }
    pub fn is_success(&self) -> bool {
        self.class() == Class::Success
    }
    /// ERROR-CODE as a number and its reason phrase.
    pub fn error(&self) -> Option<(u16, String)> {
        let m = Message::parse(&self.bytes).ok()?;
        let v = m.get(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        Some((code, String::from_utf8_lossy(&v[4..]).into_owned()))
    }
    pub fn error_code(&self) -> Option<u16> {
        self.error().map(|(c, _)| c)
    }
    pub fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        self.message().get_xor_addr(t)
    }
    /// Every XOR-RELAYED-ADDRESS (two for a dual-stack allocation).
    pub fn relayed_addrs(&self) -> Vec<SocketAddr> {
        let m = self.message();
        let tid = m.transaction_id();
        m.attributes()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .filter_map(|(_, v)| decode_xor(v, &tid))
            .collect()
    }
    pub fn get_str(&self, t: u16) -> Option<String> {
        self.message().get_str(t).map(str::to_owned)
    }
}

fn decode_xor(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    // Reuse the codec through a throwaway message holding just this attribute.
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Success, tid)
        .attr(attr::XOR_MAPPED_ADDRESS, v);
    Message::parse(&buf)
        .ok()?
        .get_xor_addr(attr::XOR_MAPPED_ADDRESS)
}

/// Length of the frame at the start of a stream buffer once its header is there: STUN
/// (20 + length) or ChannelData (4 + length padded to 4). `Err` for anything else.
pub fn stream_frame_len(b: &[u8]) -> Result<Option<usize>, String> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    match b[0] >> 6 {
        0 => Ok(Some(20 + len)),
        1 => Ok(Some(4 + len.div_ceil(4) * 4)),
        _ => Err(format!("not STUN or ChannelData: first byte {:#04x}", b[0])),
    }
}

enum Link {
    Udp { sock: UdpSocket, server: SocketAddr },
    Tcp { sock: TcpStream, buf: Vec<u8> },
}

/// A blocking TURN client on one UDP socket or TCP connection.
pub struct RawClient {
    link: Link,
    server: SocketAddr,
    user: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
}

/// What [`RawClient::request_once`] got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: StunResponse,
    /// Whether the request carried MESSAGE-INTEGRITY.
    pub was_authenticated: bool,
}

impl Answer {
    pub fn error_code(&self) -> Option<u16> {
        self.response.error_code()
    }
}

/// One attribute of a request under construction.
#[derive(Debug, Clone)]
pub enum Attr {
    Raw(u16, Vec<u8>),
    U32(u16, u32),
    Xor(u16, SocketAddr),
}

impl RawClient {
    /// A UDP client on an ephemeral loopback port of the server's family.
    pub fn udp(server: SocketAddr) -> RawClient {
        let local: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0".parse().expect("addr")
        } else {
            "[::1]:0".parse().expect("addr")
        };
        let sock = UdpSocket::bind(local).expect("bind client UDP socket");
        RawClient::with_link(Link::Udp { sock, server }, server)
    }

    /// A TCP client connected to `server`.
    pub fn tcp(server: SocketAddr) -> RawClient {
        let sock = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        sock.set_nodelay(true).expect("nodelay");
        RawClient::with_link(
            Link::Tcp {
                sock,
                buf: Vec::new(),
            },
            server,
        )
    }

    fn with_link(link: Link, server: SocketAddr) -> RawClient {
        RawClient {
            link,
            server,
            user: String::new(),
            password: String::new(),
            realm: None,
            nonce: None,
        }
    }

    /// Sets the long-term credentials used by [`RawClient::request`].
    pub fn credentials(mut self, user: &str, password: &str) -> RawClient {
        self.user = user.to_string();
        self.password = password.to_string();
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp { sock, .. } => sock.local_addr(),
            Link::Tcp { sock, .. } => sock.local_addr(),
        }
        .expect("local addr")
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends bytes as they are (one datagram, or written to the stream).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.link {
            Link::Udp { sock, server } => sock.send_to(bytes, *server).map(|_| ()),
            Link::Tcp { sock, .. } => sock.write_all(bytes),
        }
    }

    /// The next datagram from the server, or the next frame on the stream; `Ok(None)` when
    /// nothing arrives within `timeout`. On TCP, `UnexpectedEof` when the server closed.
    pub fn recv_raw(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        match &mut self.link {
            Link::Udp { sock, server } => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    sock.set_read_timeout(Some(left))?;
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) if from == *server => return Ok(Some(buf[..n].to_vec())),
                        Ok(_) => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Ok(None)
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Link::Tcp { sock, buf } => loop {
                if let Some(n) = stream_frame_len(buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                {
                    if buf.len() >= n {
                        return Ok(Some(buf.drain(..n).collect()));
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                sock.set_read_timeout(Some(left))?;
                let mut chunk = [0u8; 16384];
                match sock.read(&mut chunk) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(None)
                    }
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// Sends a request and returns the response with the same transaction id, skipping
    /// other messages (Data indications, ChannelData). Retransmits over UDP. Panics after
    /// [`RESPONSE_TIMEOUT`].
    pub fn transact(&mut self, request: &[u8]) -> StunResponse {
        self.try_transact(request, RESPONSE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no response from {}: {e}", self.server))
    }

    /// [`RawClient::transact`] returning errors instead of panicking.
    pub fn try_transact(
        &mut self,
        request: &[u8],
        timeout: Duration,
    ) -> Result<StunResponse, String> {
        let tid: [u8; 12] = request[8..20].try_into().expect("STUN header");
        let udp = matches!(self.link, Link::Udp { .. });
        let deadline = Instant::now() + timeout;
        self.send_raw(request).map_err(|e| format!("send: {e}"))?;
        let mut next_rtx = Instant::now() + RTO;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no response within {timeout:?}"));
            }
            let wait = if udp {
                next_rtx.min(deadline)
            } else {
                deadline
            } - now;
            match self.recv_raw(wait).map_err(|e| format!("recv: {e}"))? {
                Some(b) => {
                    if let Ok(m) = Message::parse(&b) {
                        if m.transaction_id() == tid
                            && matches!(m.class(), Class::Success | Class::Error)
                        {
                            return Ok(StunResponse { bytes: b });
                        }
                    }
                }
                None if udp && Instant::now() >= next_rtx => {
                    self.send_raw(request).map_err(|e| format!("send: {e}"))?;
                    next_rtx = Instant::now() + RTO;
                }
                None => {}
            }
        }
    }

    /// A Binding request; returns the response.
    pub fn binding(&mut self) -> StunResponse {
        let req = build(method::BINDING, Class::Request, &new_tid(), &[], None);
        self.transact(&req)
    }

    /// An authenticated request (see the module docs). Returns the final response.
    pub fn request(&mut self, m: u16, attrs: &[Attr]) -> StunResponse {
        let mut r = self.request_once(m, attrs);
        for _ in 0..2 {
            // Retry after the first challenge and after a stale nonce, not after a 401 to
            // an authenticated request (wrong credentials).
            let first_challenge = r.error_code() == Some(401) && !r.was_authenticated;
            if !(first_challenge || r.error_code() == Some(438)) || self.nonce.is_none() {
                break;
            }
            r = self.request_once(m, attrs);
        }
        r.response
    }

    /// One try of a request: authenticated with the realm and nonce learnt so far (if any),
    /// which it updates from a 401 or 438 answer.
    pub fn request_once(&mut self, m: u16, attrs: &[Attr]) -> Answer {
        let tid = new_tid();
        let (req, was_authenticated) = match (&self.realm, &self.nonce) {
            (Some(realm), Some(nonce)) => {
                let key = long_term_key(&self.user, realm, &self.password);
                let auth = Auth {
                    user: &self.user,
                    realm,
                    nonce,
                    key: &key,
                };
                (build(m, Class::Request, &tid, attrs, Some(auth)), true)
            }
            _ => (build(m, Class::Request, &tid, attrs, None), false),
        };
        let response = self.transact(&req);
        if matches!(response.error_code(), Some(401 | 438)) {
            if let Some(nonce) = response.get_str(attr::NONCE) {
                self.realm = response.get_str(attr::REALM).or(self.realm.take());
                self.nonce = Some(nonce);
            }
        }
        Answer {
            response,
            was_authenticated,
        }
    }

    /// Allocate (UDP relay) with extra attributes; the final response.
    pub fn allocate(&mut self, extra: &[Attr]) -> StunResponse {
        let mut attrs = vec![Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        attrs.extend_from_slice(extra);
        self.request(method::ALLOCATE, &attrs)
    }

    /// Allocate that must succeed; returns the relayed addresses.
    pub fn must_allocate(&mut self, extra: &[Attr]) -> Vec<SocketAddr> {
        let r = self.allocate(extra);
        assert!(
            r.is_success(),
            "Allocate from {} failed: {r:?}",
            self.local_addr()
        );
        let relays = r.relayed_addrs();
        assert!(
            !relays.is_empty(),
            "Allocate success without XOR-RELAYED-ADDRESS: {r:?}"
        );
        relays
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> StunResponse {
        let attrs: Vec<Attr> = peers
            .iter()
            .map(|p| Attr::Xor(attr::XOR_PEER_ADDRESS, *p))
            .collect();
        self.request(method::CREATE_PERMISSION, &attrs)
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> StunResponse {
        self.request(
            method::CHANNEL_BIND,
            &[
                Attr::U32(attr::CHANNEL_NUMBER, u32::from(channel) << 16),
                Attr::Xor(attr::XOR_PEER_ADDRESS, peer),
            ],
        )
    }

    /// Refresh with LIFETIME 0: deletes the allocation.
    pub fn delete_allocation(&mut self) -> StunResponse {
        self.request(method::REFRESH, &[Attr::U32(attr::LIFETIME, 0)])
    }

    /// A Send indication carrying `data` to `peer`.
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let msg = build(
            method::SEND,
            Class::Indication,
            &new_tid(),
            &[
                Attr::Xor(attr::XOR_PEER_ADDRESS, peer),
                Attr::Raw(attr::DATA, data.to_vec()),
            ],
            None,
        );
        self.send_raw(&msg).expect("send indication");
    }

    /// ChannelData (padded to 4 bytes, as streams require).
    pub fn channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut b = Vec::with_capacity(data.len() + 7);
        b.extend_from_slice(&channel.to_be_bytes());
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(data);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        self.send_raw(&b).expect("send channel data");
    }
}

/// Long-term credential attributes for [`build`].
pub struct Auth<'a> {
    pub user: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    pub key: &'a [u8],
}

/// A STUN message with `attrs`, then (with `auth`) USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY, then FINGERPRINT.
pub fn build(
    m: u16,
    class: Class,
    tid: &[u8; 12],
    attrs: &[Attr],
    auth: Option<Auth<'_>>,
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, m, class, tid);
    for a in attrs {
        match a {
            Attr::Raw(t, v) => w.attr(*t, v),
            Attr::U32(t, v) => w.u32(*t, *v),
            Attr::Xor(t, addr) => w.xor_addr(*t, *addr),
        };
    }
    if let Some(a) = auth {
        w.attr(attr::USERNAME, a.user.as_bytes());
        w.attr(attr::REALM, a.realm.as_bytes());
        w.attr(attr::NONCE, a.nonce.as_bytes());
        w.integrity_sha1(a.key);
    }
    w.fingerprint();
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_keys() {
        assert_eq!(stream_frame_len(&[0, 1, 0, 8]), Ok(Some(28)));
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 5]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0]), Ok(None));
        assert!(stream_frame_len(&[0xff, 0, 0, 0]).is_err());
        // printf 'user:realm:pass' | md5sum
        let k = long_term_key("user", "realm", "pass");
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8493fbc53ba582fb4c044c456bdc40eb");
        let tid = [9u8; 12];
        let b = build(
            method::BINDING,
            Class::Request,
            &tid,
            &[Attr::U32(attr::LIFETIME, 5)],
            None,
        );
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.get_u32(attr::LIFETIME), Some(5));
        let peer: SocketAddr = "[2001:db8::5]:77".parse().unwrap();
        assert_eq!(
            decode_xor(
                &{
                    let mut v = [0u8; 20];
                    let n = ember_turn::stun::encode_xor_addr(&mut v, peer, &tid);
                    v[..n].to_vec()
                },
                &tid
            ),
            Some(peer)
        );
    }
}
