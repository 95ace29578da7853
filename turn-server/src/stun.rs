//! STUN message codec (RFC 8489) with the TURN attributes (RFC 8656, 6156) and ChannelData.
//!
//! Parsing borrows the datagram and never allocates: a [`Message`] is the buffer plus a small
//! fixed table of attribute offsets. Responses are written into a caller-owned `Vec<u8>` that
//! the I/O shell reuses, so steady-state control traffic does not allocate either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Most attributes a message may carry before it is rejected as malformed.
pub const MAX_ATTRS: usize = 32;

/// STUN methods used by a TURN server.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// STUN attribute types.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;

    /// Comprehension-required attributes (type < 0x8000) this server understands; any other
    /// one in a request earns a 420 listing it.
    pub fn is_known_required(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
        )
    }
}

/// STUN message classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// Encodes method and class into the 14-bit message type.
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 0b01) | ((t >> 7) & 0b10) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why a datagram is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    Short,
    #[error("not a STUN message (leading bits or magic cookie)")]
    NotStun,
    #[error("length field does not match the datagram")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    Truncated,
    #[error("more than {MAX_ATTRS} attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// The first two bits of a packet tell STUN (00) from ChannelData (01).
pub fn is_channel_data(b: &[u8]) -> bool {
    !b.is_empty() && (b[0] & 0xC0) == 0x40
}

/// A parsed STUN message borrowing its datagram.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    method: u16,
    class: Class,
    /// (type, value offset, value length) for each attribute, in order. The offset needs 32
    /// bits: a maximum-size message is 20 + 65,532 bytes, so values can start past 65,535.
    attrs: [(u16, u32, u16); MAX_ATTRS],
    n_attrs: usize,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("method", &self.method)
            .field("class", &self.class)
            .field("attrs", &&self.attrs[..self.n_attrs])
            .finish()
    }
}

/// Length of the STUN message starting at `b` according to its header, if a header is there.
pub fn stun_frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    Some(HEADER_LEN + u16::from_be_bytes([b[2], b[3]]) as usize)
}

impl<'a> Message<'a> {
    /// Parses one complete STUN message; `buf` must hold exactly the message.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::Short);
        }
        if buf[0] & 0xC0 != 0
            || u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
        {
            return Err(ParseError::NotStun);
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER_LEN + len != buf.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_type(u16::from_be_bytes([buf[0], buf[1]]));
        let mut m = Message {
            buf,
            method,
            class,
            attrs: [(0, 0, 0); MAX_ATTRS],
            n_attrs: 0,
        };
        let mut off = HEADER_LEN;
        while off < buf.len() {
            if off + 4 > buf.len() {
                return Err(ParseError::Truncated);
            }
            let t = u16::from_be_bytes([buf[off], buf[off + 1]]);
            let l = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
            let v = off + 4;
            if v + l > buf.len() {
                return Err(ParseError::Truncated);
            }
            if m.n_attrs == MAX_ATTRS {
                return Err(ParseError::TooManyAttributes);
            }
            m.attrs[m.n_attrs] = (t, v as u32, l as u16);
            m.n_attrs += 1;
            off = v + ((l + 3) & !3);
            if t == attr::FINGERPRINT {
                if l != 4 || off != buf.len() {
                    return Err(ParseError::BadFingerprint);
                }
                let want = u32::from_be_bytes([buf[v], buf[v + 1], buf[v + 2], buf[v + 3]]);
                if fingerprint_of(buf, v - 4) != want {
                    return Err(ParseError::BadFingerprint);
                }
            }
        }
        if off != buf.len() {
            return Err(ParseError::Truncated);
        }
        Ok(m)
    }

    pub fn method(&self) -> u16 {
        self.method
    }
    pub fn class(&self) -> Class {
        self.class
    }
    pub fn transaction_id(&self) -> [u8; 12] {
        self.buf[8..20].try_into().expect("header checked")
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Attributes in wire order as (type, value).
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        self.attrs[..self.n_attrs]
            .iter()
            .map(|&(t, o, l)| (t, &self.buf[o as usize..o as usize + l as usize]))
    }

    /// Value of the first attribute of type `t` that is covered by the integrity check
    /// (attributes after MESSAGE-INTEGRITY other than the integrity/fingerprint ones are
    /// ignored, RFC 8489 §14.5).
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        for &(at, o, l) in &self.attrs[..self.n_attrs] {
            if at == t {
                return Some(&self.buf[o as usize..o as usize + l as usize]);
            }
            if (at == attr::MESSAGE_INTEGRITY || at == attr::MESSAGE_INTEGRITY_SHA256)
                && t != attr::MESSAGE_INTEGRITY_SHA256
                && t != attr::FINGERPRINT
            {
                return None;
            }
        }
        None
    }

    pub fn has(&self, t: u16) -> bool {
        self.get(t).is_some()
    }

    /// Comprehension-required attributes this server does not understand (for 420).
    pub fn unknown_required(&self, out: &mut Vec<u16>) {
        for &(t, _, _) in &self.attrs[..self.n_attrs] {
            if t < 0x8000 && !attr::is_known_required(t) && !out.contains(&t) {
                out.push(t);
            }
        }
    }

    pub fn get_str(&self, t: u16) -> Option<&'a str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_u32(&self, t: u16) -> Option<u32> {
        let v = self.get(t)?;
        (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    /// Decodes an XOR-*-ADDRESS attribute.
    pub fn get_xor_addr(&self, t: u16) -> Option<SocketAddr> {
        decode_xor_addr(self.get(t)?, &self.buf[8..20])
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Option<SocketAddr>> + '_ {
        let tid = &self.buf[8..20];
        let mut seen_mi = false;
        self.attrs[..self.n_attrs]
            .iter()
            .filter_map(move |&(t, o, l)| {
                if t == attr::MESSAGE_INTEGRITY || t == attr::MESSAGE_INTEGRITY_SHA256 {
                    seen_mi = true;
                }
                (!seen_mi && t == attr::XOR_PEER_ADDRESS)
                    .then(|| decode_xor_addr(&self.buf[o as usize..o as usize + l as usize], tid))
            })
    }

    /// Which integrity attribute protects the message, if any.
    pub fn integrity(&self) -> Option<Integrity> {
        for &(t, o, l) in &self.attrs[..self.n_attrs] {
            if t == attr::MESSAGE_INTEGRITY {
                return Some(Integrity::Sha1 {
                    attr_off: o as usize - 4,
                    len: l as usize,
                });
            }
            if t == attr::MESSAGE_INTEGRITY_SHA256 {
                return Some(Integrity::Sha256 {
                    attr_off: o as usize - 4,
                    len: l as usize,
                });
            }
        }
        None
    }

    /// Checks the first integrity attribute against `key` (RFC 8489 §14.5/§14.6).
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        match self.integrity() {
            Some(Integrity::Sha1 { attr_off, len }) => {
                if len != 20 {
                    return false;
                }
                let mac = hmac_sha1_patched(key, self.buf, attr_off, attr_off + 24);
                constant_time_eq(&mac, &self.buf[attr_off + 4..attr_off + 24])
            }
            Some(Integrity::Sha256 { attr_off, len }) => {
                if !(16..=32).contains(&len) || !len.is_multiple_of(4) {
                    return false;
                }
                let mac = hmac_sha256_patched(key, self.buf, attr_off, attr_off + 4 + len);
                constant_time_eq(&mac[..len], &self.buf[attr_off + 4..attr_off + 4 + len])
            }
            None => false,
        }
    }
}

/// Which integrity attribute a message carries, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Sha1 { attr_off: usize, len: usize },
    Sha256 { attr_off: usize, len: usize },
}

impl Integrity {
    pub fn is_sha256(&self) -> bool {
        matches!(self, Integrity::Sha256 { .. })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC over `buf[..upto]` with the header length patched to `covered_end - 20`.
fn hmac_sha1_patched(key: &[u8], buf: &[u8], upto: usize, covered_end: usize) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
    let len = ((covered_end - HEADER_LEN) as u16).to_be_bytes();
    mac.update(&buf[0..2]);
    mac.update(&len);
    mac.update(&buf[4..upto]);
    mac.finalize().into_bytes().into()
}

fn hmac_sha256_patched(key: &[u8], buf: &[u8], upto: usize, covered_end: usize) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    let len = ((covered_end - HEADER_LEN) as u16).to_be_bytes();
    mac.update(&buf[0..2]);
    mac.update(&len);
    mac.update(&buf[4..upto]);
    mac.finalize().into_bytes().into()
}

/// CRC-32 of `buf[..fp_off]` with the length patched to include the FINGERPRINT attribute.
fn fingerprint_of(buf: &[u8], fp_off: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let len = ((fp_off + 8 - HEADER_LEN) as u16).to_be_bytes();
    h.update(&buf[0..2]);
    h.update(&len);
    h.update(&buf[4..fp_off]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Decodes an XOR-*-ADDRESS value with the message's transaction id.
pub fn decode_xor_addr(v: &[u8], tid: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        0x02 if v.len() == 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut a = [0u8; 16];
            for i in 0..16 {
                a[i] = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// Writes a STUN message into a reusable buffer.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message at the end of `buf` (which is normally cleared first).
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: &[u8; 12]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(tid);
        MessageWriter { buf, start }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn tid(&self) -> [u8; 12] {
        self.buf[self.start + 8..self.start + 20]
            .try_into()
            .expect("header written")
    }

    pub fn attr(&mut self, t: u16, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    pub fn u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.attr(t, &v.to_be_bytes())
    }

    pub fn xor_addr(&mut self, t: u16, a: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = encode_xor_addr(&mut v, a, &self.tid());
        self.attr(t, &v[..n])
    }

    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.attr(attr::UNKNOWN_ATTRIBUTES, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1) over everything written so far.
    pub fn integrity_sha1(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        let mac = hmac_sha1_patched(
            key,
            &self.buf[self.start..],
            at - self.start,
            at - self.start + 24,
        );
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 over everything written so far.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        let mac = hmac_sha256_patched(
            key,
            &self.buf[self.start..],
            at - self.start,
            at - self.start + 36,
        );
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// Appends FINGERPRINT; must be last.
    pub fn fingerprint(&mut self) -> &mut Self {
        let at = self.buf.len() - self.start;
        let fp = fingerprint_of(&self.buf[self.start..], at);
        self.u32(attr::FINGERPRINT, fp)
    }
}

/// Writes an XOR-address value into `v`; returns its length (8 or 20).
pub fn encode_xor_addr(v: &mut [u8; 20], a: SocketAddr, tid: &[u8; 12]) -> usize {
    let port = a.port() ^ (MAGIC_COOKIE >> 16) as u16;
    v[0] = 0;
    v[2..4].copy_from_slice(&port.to_be_bytes());
    match a.ip() {
        IpAddr::V4(ip) => {
            v[1] = 0x01;
            v[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            v[1] = 0x02;
            let o = ip.octets();
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            for i in 0..16 {
                v[4 + i] = o[i] ^ key[i];
            }
            20
        }
    }
}

/// Room a Data indication header needs in front of the payload: STUN header (20) +
/// XOR-PEER-ADDRESS (4 + 20) + DATA attribute header (4).
pub const DATA_INDICATION_HEADROOM: usize = 48;

/// Frames `buf[payload_at..payload_at + len]` in place as a Data indication: the header is
/// written into the headroom in front of the payload, the padding after it. Returns the frame's
/// range in `buf`. `buf` must have `DATA_INDICATION_HEADROOM` bytes before the payload and 3
/// spare bytes after it.
pub fn frame_data_indication(
    buf: &mut [u8],
    payload_at: usize,
    len: usize,
    peer: SocketAddr,
    tid: &[u8; 12],
) -> std::ops::Range<usize> {
    let mut xa = [0u8; 20];
    let alen = encode_xor_addr(&mut xa, peer, tid);
    let start = payload_at - (HEADER_LEN + 4 + alen + 4);
    let pad = (4 - len % 4) % 4;
    let body_len = 4 + alen + 4 + len + pad;
    let h = &mut buf[start..payload_at];
    h[0..2].copy_from_slice(&message_type(method::DATA, Class::Indication).to_be_bytes());
    h[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(tid);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    h[24..24 + alen].copy_from_slice(&xa[..alen]);
    let d = 24 + alen;
    h[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    buf[payload_at + len..payload_at + len + pad].fill(0);
    start..payload_at + len + pad
}

/// Frames `buf[payload_at..payload_at + len]` in place as ChannelData (4-byte header in the
/// 4 bytes before the payload). `pad` adds the zero padding to a multiple of 4 that stream
/// transports require (RFC 8656 §12.5); over UDP it is optional and left off.
pub fn frame_channel_data(
    buf: &mut [u8],
    payload_at: usize,
    len: usize,
    channel: u16,
    pad: bool,
) -> std::ops::Range<usize> {
    let start = payload_at - 4;
    buf[start..start + 2].copy_from_slice(&channel.to_be_bytes());
    buf[start + 2..payload_at].copy_from_slice(&(len as u16).to_be_bytes());
    let p = if pad { (4 - len % 4) % 4 } else { 0 };
    buf[payload_at + len..payload_at + len + p].fill(0);
    start..payload_at + len + p
}

/// A ChannelData message: channel number and the application data it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

/// Valid TURN channel numbers. RFC 8656 §12 narrowed the range to 0x4000–0x4FFF, but RFC
/// 5766 allowed up to 0x7FFF and deployed clients still use it (coturn's `turnutils_uclient`
/// picks channels across the whole old range, and coturn's server accepts them), so Ember
/// accepts every number whose first two bits mark ChannelData.
pub fn is_valid_channel(n: u16) -> bool {
    (0x4000..=0x7FFF).contains(&n)
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message. Over UDP the datagram may carry padding after the data;
    /// a length running past the buffer is an error.
    pub fn parse(b: &'a [u8]) -> Result<ChannelData<'a>, ParseError> {
        if b.len() < 4 {
            return Err(ParseError::Short);
        }
        let channel = u16::from_be_bytes([b[0], b[1]]);
        if !is_valid_channel(channel) {
            return Err(ParseError::NotStun);
        }
        let len = u16::from_be_bytes([b[2], b[3]]) as usize;
        if 4 + len > b.len() {
            return Err(ParseError::BadLength);
        }
        Ok(ChannelData {
            channel,
            data: &b[4..4 + len],
        })
    }
}

/// Length of the next frame (STUN message or padded ChannelData) at the start of a stream
/// buffer, once its 4-byte header is there. `Err` when the bytes are neither.
pub fn stream_frame_len(b: &[u8]) -> Result<Option<usize>, ParseError> {
    if b.len() < 4 {
        return Ok(None);
    }
    match b[0] >> 6 {
        0 => Ok(stun_frame_len(b)),
        1 => {
            let len = u16::from_be_bytes([b[2], b[3]]) as usize;
            Ok(Some(4 + ((len + 3) & !3)))
        }
        _ => Err(ParseError::NotStun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_round_trip() {
        for m in [1u16, 3, 4, 6, 7, 8, 9, 0xABC] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    }

    /// RFC 5769 §2.1 sample request, with long-term... short-term credentials "VOkJxbRl1RmTxUk/WvJxBt".
    #[test]
    fn rfc5769_sample_request() {
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.method(), method::BINDING);
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.get_str(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.verify_integrity(b"wrong"));
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert_eq!(
            Message::parse(&bad).unwrap_err(),
            ParseError::BadFingerprint
        );
    }

    /// RFC 5769 §2.2 sample IPv4 response: XOR-MAPPED-ADDRESS 192.0.2.1:32853.
    #[test]
    fn rfc5769_sample_response_ipv4() {
        let hex = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(
            m.get_xor_addr(attr::XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn writer_round_trip_with_integrity_and_fingerprint() {
        let tid = [7u8; 12];
        let mut buf = Vec::new();
        let peer: SocketAddr = "[2001:db8::1]:4242".parse().unwrap();
        MessageWriter::new(&mut buf, method::ALLOCATE, Class::Success, &tid)
            .xor_addr(attr::XOR_RELAYED_ADDRESS, peer)
            .u32(attr::LIFETIME, 600)
            .attr(attr::SOFTWARE, b"ember")
            .integrity_sha1(b"key")
            .fingerprint();
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.get_xor_addr(attr::XOR_RELAYED_ADDRESS), Some(peer));
        assert_eq!(m.get_u32(attr::LIFETIME), Some(600));
        assert!(m.verify_integrity(b"key"));

        let mut buf2 = Vec::new();
        MessageWriter::new(&mut buf2, method::REFRESH, Class::Request, &tid)
            .u32(attr::LIFETIME, 0)
            .integrity_sha256(b"key")
            .fingerprint();
        let m2 = Message::parse(&buf2).unwrap();
        assert!(m2.integrity().unwrap().is_sha256());
        assert!(m2.verify_integrity(b"key"));
        assert!(!m2.verify_integrity(b"other"));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let tid = [1u8; 12];
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, method::REFRESH, Class::Request, &tid)
            .integrity_sha1(b"k")
            .u32(attr::LIFETIME, 0);
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.get_u32(attr::LIFETIME), None);
    }

    #[test]
    fn data_indication_and_channel_data_framed_in_place() {
        let peer: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let tid = [3u8; 12];
        let mut buf = vec![0u8; DATA_INDICATION_HEADROOM + 5 + 3];
        buf[DATA_INDICATION_HEADROOM..DATA_INDICATION_HEADROOM + 5].copy_from_slice(b"hello");
        let r = frame_data_indication(&mut buf, DATA_INDICATION_HEADROOM, 5, peer, &tid);
        let m = Message::parse(&buf[r]).unwrap();
        assert_eq!(m.method(), method::DATA);
        assert_eq!(m.class(), Class::Indication);
        assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));
        assert_eq!(m.get_xor_addr(attr::XOR_PEER_ADDRESS), Some(peer));

        let mut buf = vec![0u8; 4 + 5 + 3];
        buf[4..9].copy_from_slice(b"hello");
        let r = frame_channel_data(&mut buf, 4, 5, 0x4001, true);
        assert_eq!(r.len(), 12);
        assert_eq!(stream_frame_len(&buf[r.clone()]), Ok(Some(12)));
        let cd = ChannelData::parse(&buf[r]).unwrap();
        assert_eq!((cd.channel, cd.data), (0x4001, &b"hello"[..]));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert_eq!(Message::parse(&[]).unwrap_err(), ParseError::Short);
        let mut b = vec![0u8; 20];
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
        b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b[3] = 4; // claims an attribute that is not there
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
        b.extend_from_slice(&[0, 6, 0, 9]); // USERNAME of length 9 in a 4-byte body
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Truncated);
        assert!(ChannelData::parse(&[0x40, 0, 0, 9, 1]).is_err());
        assert!(ChannelData::parse(&[0x80, 0, 0, 0]).is_err());
        assert_eq!(decode_xor_addr(&[0, 1, 0, 0, 1], &[0; 12]), None);
    }
}
