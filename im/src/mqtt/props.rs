//! MQTT 5 properties (§2.2.2): decoding with the per-packet whitelist and the
//! single-instance rule, and the writer for the few properties the server sends.
//!
//! [`Props`] keeps the raw property block, so user properties are iterated lazily from the
//! input without allocating.

use super::header::{check_str, write_bytes, write_varint, Reader};
use super::DecodeError;

/// Property identifiers.
pub mod id {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDS_AVAILABLE: u8 = 0x29;
    pub const SHARED_AVAILABLE: u8 = 0x2A;
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

/// Which packet a property block belongs to (client → server direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Connect,
    Will,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Ctx {
    fn allowed(self) -> u64 {
        use id::*;
        match self {
            Ctx::Connect => mask(&[
                SESSION_EXPIRY,
                RECEIVE_MAXIMUM,
                MAXIMUM_PACKET_SIZE,
                TOPIC_ALIAS_MAXIMUM,
                REQUEST_RESPONSE_INFO,
                REQUEST_PROBLEM_INFO,
                USER_PROPERTY,
                AUTH_METHOD,
                AUTH_DATA,
            ]),
            Ctx::Will => mask(&[
                WILL_DELAY,
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                USER_PROPERTY,
            ]),
            Ctx::Publish => mask(&[
                PAYLOAD_FORMAT,
                MESSAGE_EXPIRY,
                TOPIC_ALIAS,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                USER_PROPERTY,
                SUBSCRIPTION_ID,
                CONTENT_TYPE,
            ]),
            Ctx::Ack => mask(&[REASON_STRING, USER_PROPERTY]),
            Ctx::Subscribe => mask(&[SUBSCRIPTION_ID, USER_PROPERTY]),
            Ctx::Unsubscribe => mask(&[USER_PROPERTY]),
            Ctx::Disconnect => mask(&[
                SESSION_EXPIRY,
                REASON_STRING,
                USER_PROPERTY,
                SERVER_REFERENCE,
            ]),
            Ctx::Auth => mask(&[AUTH_METHOD, AUTH_DATA, REASON_STRING, USER_PROPERTY]),
        }
    }
}

/// The decoded properties of one packet; absent ones are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Props<'a> {
    raw: &'a [u8],
    pub payload_format: Option<u8>,
    pub message_expiry: Option<u32>,
    pub content_type: Option<&'a str>,
    pub response_topic: Option<&'a str>,
    pub correlation_data: Option<&'a [u8]>,
    pub subscription_id: Option<u32>,
    pub session_expiry: Option<u32>,
    pub auth_method: Option<&'a str>,
    pub auth_data: Option<&'a [u8]>,
    pub request_problem_info: Option<u8>,
    pub will_delay: Option<u32>,
    pub request_response_info: Option<u8>,
    pub server_reference: Option<&'a str>,
    pub reason_string: Option<&'a str>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_packet_size: Option<u32>,
}

fn set<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(
            "MQTT-2.2.2: property included more than once",
        ));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

fn nonzero_u16(v: u16) -> Result<u16, DecodeError> {
    if v == 0 {
        return Err(DecodeError::Protocol("property value 0 is not allowed"));
    }
    Ok(v)
}

/// A topic name carried in a property: no wildcards (MQTT-3.3.2-14).
fn topic_prop(s: &str) -> Result<&str, DecodeError> {
    if s.is_empty() || s.contains(['+', '#']) {
        return Err(DecodeError::Protocol(
            "MQTT-3.3.2-14: Response Topic with wildcards or empty",
        ));
    }
    Ok(s)
}

impl<'a> Props<'a> {
    /// Reads a property block (length, then properties) from `r`, checking that every id is
    /// valid for `ctx` (else malformed) and that single-instance properties appear once.
    pub fn read(r: &mut Reader<'a>, ctx: Ctx) -> Result<Props<'a>, DecodeError> {
        let len = r.varint()? as usize;
        let raw = r.take(len)?;
        let mut p = Props {
            raw,
            ..Props::default()
        };
        let allowed = ctx.allowed();
        let mut pr = Reader::new(raw);
        while !pr.is_empty() {
            let pid = pr.varint()?;
            if pid >= 64 || allowed & (1 << pid) == 0 {
                return Err(DecodeError::Malformed(
                    "property identifier not valid for this packet",
                ));
            }
            let pid = pid as u8;
            use id::*;
            match pid {
                PAYLOAD_FORMAT => set(&mut p.payload_format, flag(pr.u8()?)?)?,
                MESSAGE_EXPIRY => set(&mut p.message_expiry, pr.u32()?)?,
                CONTENT_TYPE => set(&mut p.content_type, pr.str()?)?,
                RESPONSE_TOPIC => set(&mut p.response_topic, topic_prop(pr.str()?)?)?,
                CORRELATION_DATA => set(&mut p.correlation_data, pr.binary()?)?,
                SUBSCRIPTION_ID => {
                    let v = pr.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    set(&mut p.subscription_id, v)?
                }
                SESSION_EXPIRY => set(&mut p.session_expiry, pr.u32()?)?,
                AUTH_METHOD => set(&mut p.auth_method, pr.str()?)?,
                AUTH_DATA => set(&mut p.auth_data, pr.binary()?)?,
                REQUEST_PROBLEM_INFO => set(&mut p.request_problem_info, flag(pr.u8()?)?)?,
                WILL_DELAY => set(&mut p.will_delay, pr.u32()?)?,
                REQUEST_RESPONSE_INFO => set(&mut p.request_response_info, flag(pr.u8()?)?)?,
                SERVER_REFERENCE => set(&mut p.server_reference, pr.str()?)?,
                REASON_STRING => set(&mut p.reason_string, pr.str()?)?,
                RECEIVE_MAXIMUM => set(&mut p.receive_maximum, nonzero_u16(pr.u16()?)?)?,
                TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, pr.u16()?)?,
                TOPIC_ALIAS => set(&mut p.topic_alias, nonzero_u16(pr.u16()?)?)?,
                MAXIMUM_PACKET_SIZE => {
                    let v = pr.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set(&mut p.maximum_packet_size, v)?
                }
                USER_PROPERTY => {
                    pr.str()?;
                    pr.str()?;
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        if p.auth_data.is_some() && p.auth_method.is_none() {
            return Err(DecodeError::Protocol(
                "MQTT-3.1.2: authentication data without authentication method",
            ));
        }
        Ok(p)
    }

    /// The user properties, in order (already validated by [`Props::read`]).
    pub fn user_properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = Reader::new(self.raw);
        std::iter::from_fn(move || loop {
            if r.is_empty() {
                return None;
            }
            let pid = r.varint().ok()? as u8;
            let skip = |r: &mut Reader<'a>, n: usize| r.take(n).map(|_| ());
            let res = match pid {
                id::USER_PROPERTY => {
                    let k = r.binary().ok()?;
                    let v = r.binary().ok()?;
                    return Some((check_str(k).ok()?, check_str(v).ok()?));
                }
                id::PAYLOAD_FORMAT | id::REQUEST_PROBLEM_INFO | id::REQUEST_RESPONSE_INFO => {
                    skip(&mut r, 1)
                }
                id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::TOPIC_ALIAS => skip(&mut r, 2),
                id::MESSAGE_EXPIRY
                | id::SESSION_EXPIRY
                | id::WILL_DELAY
                | id::MAXIMUM_PACKET_SIZE => skip(&mut r, 4),
                id::SUBSCRIPTION_ID => r.varint().map(|_| ()),
                _ => r.binary().map(|_| ()),
            };
            res.ok()?;
        })
    }

    /// Raw property block (without its length), for diagnostics.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

/// Builds a property block for a server → client packet.
#[derive(Debug, Default)]
pub struct PropWriter {
    buf: Vec<u8>,
}

impl PropWriter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, pid: u8, v: u8) -> &mut Self {
        self.buf.extend_from_slice(&[pid, v]);
        self
    }
    pub fn u16(&mut self, pid: u8, v: u16) -> &mut Self {
        self.buf.push(pid);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, pid: u8, v: u32) -> &mut Self {
        self.buf.push(pid);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn varint(&mut self, pid: u8, v: usize) -> &mut Self {
        self.buf.push(pid);
        write_varint(&mut self.buf, v);
        self
    }
    pub fn bytes(&mut self, pid: u8, v: &[u8]) -> &mut Self {
        self.buf.push(pid);
        write_bytes(&mut self.buf, v);
        self
    }
    pub fn pair(&mut self, k: &str, v: &str) -> &mut Self {
        self.buf.push(id::USER_PROPERTY);
        write_bytes(&mut self.buf, k.as_bytes());
        write_bytes(&mut self.buf, v.as_bytes());
        self
    }
    /// Length of the block including its length prefix.
    pub fn encoded_len(&self) -> usize {
        super::header::varint_len(self.buf.len()) + self.buf.len()
    }
    /// Appends the block with its length prefix.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_varint(out, self.buf.len());
        out.extend_from_slice(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &[u8], ctx: Ctx) -> Result<Props<'_>, DecodeError> {
        let mut r = Reader::new(b);
        let p = Props::read(&mut r, ctx)?;
        assert!(r.is_empty());
        Ok(p)
    }

    #[test]
    fn publish_props() {
        let mut w = PropWriter::new();
        w.u8(id::PAYLOAD_FORMAT, 1)
            .bytes(id::RESPONSE_TOPIC, b"u/a/b/rs")
            .bytes(id::CORRELATION_DATA, &[0, 1, 2])
            .pair("k", "v")
            .pair("k2", "v2")
            .u32(id::MESSAGE_EXPIRY, 9)
            .bytes(id::CONTENT_TYPE, b"json");
        let mut b = Vec::new();
        w.write(&mut b);
        assert_eq!(b.len(), w.encoded_len());
        let p = read(&b, Ctx::Publish).unwrap();
        assert_eq!(p.payload_format, Some(1));
        assert_eq!(p.response_topic, Some("u/a/b/rs"));
        assert_eq!(p.correlation_data, Some(&[0u8, 1, 2][..]));
        assert_eq!(p.message_expiry, Some(9));
        assert_eq!(p.content_type, Some("json"));
        let u: Vec<_> = p.user_properties().collect();
        assert_eq!(u, vec![("k", "v"), ("k2", "v2")]);
    }

    #[test]
    fn mqtt_2_2_2_2_single_instance_repeated() {
        let mut w = PropWriter::new();
        w.bytes(id::CONTENT_TYPE, b"a")
            .bytes(id::CONTENT_TYPE, b"b");
        let mut b = Vec::new();
        w.write(&mut b);
        assert!(matches!(
            read(&b, Ctx::Publish),
            Err(DecodeError::Protocol(_))
        ));
        // User properties may repeat.
        let mut w = PropWriter::new();
        w.pair("a", "1").pair("a", "2");
        let mut b = Vec::new();
        w.write(&mut b);
        assert_eq!(read(&b, Ctx::Ack).unwrap().user_properties().count(), 2);
    }

    #[test]
    fn property_not_valid_for_packet_is_malformed() {
        let mut w = PropWriter::new();
        w.u16(id::TOPIC_ALIAS, 1);
        let mut b = Vec::new();
        w.write(&mut b);
        assert!(matches!(
            read(&b, Ctx::Subscribe),
            Err(DecodeError::Malformed(_))
        ));
        assert!(read(&b, Ctx::Publish).is_ok());
        // Unknown id.
        assert!(matches!(
            read(&[2, 0x7f, 0], Ctx::Publish),
            Err(DecodeError::Malformed(_))
        ));
        // Truncated value.
        assert!(read(&[2, id::MESSAGE_EXPIRY, 0], Ctx::Publish).is_err());
    }

    #[test]
    fn value_rules() {
        assert!(read(&[2, id::PAYLOAD_FORMAT, 2], Ctx::Publish).is_err());
        assert!(read(&[3, id::RECEIVE_MAXIMUM, 0, 0], Ctx::Connect).is_err());
        assert!(read(&[5, id::MAXIMUM_PACKET_SIZE, 0, 0, 0, 0], Ctx::Connect).is_err());
        assert!(read(&[2, id::SUBSCRIPTION_ID, 0], Ctx::Subscribe).is_err());
        assert!(read(&[4, id::AUTH_DATA, 0, 1, 9], Ctx::Connect).is_err());
        let mut w = PropWriter::new();
        w.bytes(id::RESPONSE_TOPIC, b"u/#");
        let mut b = Vec::new();
        w.write(&mut b);
        assert!(read(&b, Ctx::Publish).is_err());
    }
}
