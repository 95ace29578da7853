//! Sans-IO MQTT 3.1.1 and 5 codec: decodes the packets a client sends, encodes the packets a
//! server sends. Validates what both specifications require (fixed-header flags, lengths,
//! UTF-8, packet ids, v5 property rules); `session` builds on it.
//!
//! Framing is split from decoding: [`frame_len`] reads only the fixed header, so a packet
//! over the size limit is refused before its body is buffered; [`decode`] then takes exactly
//! one complete packet and returns a [`Packet`] borrowing it (topics, payloads and property
//! values are `&str` / `&[u8]` views, nothing is copied).
//!
//! - [`header`]: fixed header, Variable Byte Integer, strings and binary data.
//! - [`props`]: v5 properties.
//! - [`connect`]: CONNECT and CONNACK.
//! - [`publish`]: PUBLISH and the four acknowledgements.
//! - [`subscribe`]: SUBSCRIBE, UNSUBSCRIBE, their acks, the topic filter grammar.
//! - [`reason`]: reason and return codes.

pub mod connect;
pub mod header;
pub mod props;
pub mod publish;
pub mod reason;
pub mod subscribe;

#[cfg(test)]
mod differential;

pub use connect::{write_connack, Connect, Will};
pub use props::{PropWriter, Props};
pub use publish::{publish_len, write_ack, write_publish, Ack, AckKind, Publish};
pub use subscribe::{
    valid_filter, write_suback, write_unsuback, SubOptions, Subscribe, Unsubscribe,
};

use header::{read_varint, MAX_REMAINING};
use props::Ctx;

/// MQTT protocol level of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5, protocol level 5.
    V5,
}

/// Why bytes could not be decoded. `Malformed` and `Protocol` map to the v5 reason codes
/// 0x81 and 0x82.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A CONNECT with protocol name "MQTT"/"MQIsdp" but a level other than 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

/// Control packet types (high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// A DISCONNECT from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// v5 reason code (0 when absent, always 0 for 3.1.1).
    pub reason: u8,
    pub props: Props<'a>,
}

/// A v5 AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    pub reason: u8,
    pub props: Props<'a>,
}

/// A packet a client may send, borrowing the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Boxed: two property blocks make it the largest variant by far (once per connection).
    Connect(Box<Connect<'a>>),
    Publish(Publish<'a>),
    PubAck(Ack<'a>),
    PubRec(Ack<'a>),
    PubRel(Ack<'a>),
    PubComp(Ack<'a>),
    Subscribe(Subscribe<'a>),
    Unsubscribe(Unsubscribe<'a>),
    PingReq,
    Disconnect(Disconnect<'a>),
    Auth(Auth<'a>),
}

/// The size of the packet at the front of `buf` once its fixed header is complete
/// (`Ok(None)` before that). A packet larger than `max` bytes in total is refused here,
/// before its body is buffered.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((rl, n)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + n + rl as usize;
    if total > max {
        return Err(DecodeError::TooLarge(total));
    }
    Ok(Some(total))
}

/// The packet type of a frame (high nibble of its first byte), if any.
pub fn packet_kind(buf: &[u8]) -> Option<u8> {
    buf.first().map(|b| b >> 4)
}

fn no_body(body: &[u8]) -> Result<(), DecodeError> {
    if !body.is_empty() {
        return Err(DecodeError::Malformed("remaining length must be 0"));
    }
    Ok(())
}

/// Decodes one complete packet (`frame` is exactly what [`frame_len`] measured) sent by a
/// client on a connection of `version` (a CONNECT decodes its own version).
pub fn decode(frame: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    let Some(&first) = frame.first() else {
        return Err(DecodeError::Malformed("empty frame"));
    };
    let Some((rl, n)) = read_varint(&frame[1..])? else {
        return Err(DecodeError::Malformed("truncated fixed header"));
    };
    let body = &frame[1 + n..];
    if body.len() != rl as usize || rl as usize > MAX_REMAINING {
        return Err(DecodeError::Malformed(
            "remaining length does not match the frame",
        ));
    }
    let (ty, flags) = (first >> 4, first & 0x0f);
    let want_flags = match ty {
        kind::PUBLISH => flags,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != want_flags {
        return Err(DecodeError::Malformed(
            "MQTT-2.2.2-2: invalid fixed header flags",
        ));
    }
    Ok(match ty {
        kind::CONNECT => Packet::Connect(Box::new(connect::decode(body)?)),
        kind::PUBLISH => Packet::Publish(publish::decode(flags, body, version)?),
        kind::PUBACK => Packet::PubAck(publish::decode_ack(body, version, AckKind::PubAck)?),
        kind::PUBREC => Packet::PubRec(publish::decode_ack(body, version, AckKind::PubRec)?),
        kind::PUBREL => Packet::PubRel(publish::decode_ack(body, version, AckKind::PubRel)?),
        kind::PUBCOMP => Packet::PubComp(publish::decode_ack(body, version, AckKind::PubComp)?),
        kind::SUBSCRIBE => Packet::Subscribe(subscribe::decode_subscribe(body, version)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(subscribe::decode_unsubscribe(body, version)?),
        kind::PINGREQ => {
            no_body(body)?;
            Packet::PingReq
        }
        kind::DISCONNECT => {
            let (reason, props) =
                reason_and_props(body, version, Ctx::Disconnect, reason::DISCONNECT_CODES)?;
            Packet::Disconnect(Disconnect { reason, props })
        }
        kind::AUTH if version == Version::V5 => {
            let (reason, props) = reason_and_props(body, version, Ctx::Auth, reason::AUTH_CODES)?;
            Packet::Auth(Auth { reason, props })
        }
        kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP => {
            return Err(DecodeError::Protocol(
                "server-to-client packet sent by a client",
            ));
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    })
}

/// DISCONNECT / AUTH body: empty (3.1.1, or v5 success), reason, or reason + properties.
fn reason_and_props<'a>(
    body: &'a [u8],
    version: Version,
    ctx: Ctx,
    valid: &'static [u8],
) -> Result<(u8, Props<'a>), DecodeError> {
    if version == Version::V311 {
        no_body(body)?;
        return Ok((0, Props::default()));
    }
    let mut r = header::Reader::new(body);
    let mut reason = 0;
    let mut props = Props::default();
    if !r.is_empty() {
        reason = r.u8()?;
        if !valid.contains(&reason) {
            return Err(DecodeError::Malformed(
                "MQTT-3.14.2-1 / MQTT-3.15.2-1: reason code not valid for this packet",
            ));
        }
    }
    if !r.is_empty() {
        props = Props::read(&mut r, ctx)?;
    }
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the properties"));
    }
    Ok((reason, props))
}

/// Appends a PINGRESP.
pub fn write_pingresp(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xD0, 0]);
}

/// Appends a DISCONNECT: v5 with `reason` and no properties; 3.1.1 has no server
/// DISCONNECT, so nothing is written.
pub fn write_disconnect(out: &mut Vec<u8>, version: Version, reason: u8) {
    if version == Version::V5 {
        out.extend_from_slice(&[0xE0, 2, reason, 0]);
    }
}

/// Encoders of client packets, for tests here and in `session`.
#[cfg(test)]
pub(crate) mod test_util {
    use super::header::{write_bytes, write_varint};

    /// A CONNECT: `props` is a v5 property block including its length (ignored for level 4);
    /// v5 wills get an empty property block.
    #[allow(clippy::too_many_arguments)]
    pub fn connect_bytes(
        level: u8,
        flags: u8,
        keep_alive: u16,
        props: &[u8],
        client_id: &[u8],
        will: Option<(&[u8], &[u8])>,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        write_bytes(&mut body, b"MQTT");
        body.push(level);
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if level == 5 {
            body.extend_from_slice(props);
        }
        write_bytes(&mut body, client_id);
        if let Some((t, p)) = will {
            if level == 5 {
                body.push(0);
            }
            write_bytes(&mut body, t);
            write_bytes(&mut body, p);
        }
        if let Some(u) = username {
            write_bytes(&mut body, u.as_bytes());
        }
        if let Some(p) = password {
            write_bytes(&mut body, p);
        }
        frame(0x10, &body)
    }

    /// A fixed header with `first` and the body's length, then the body.
    pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![first];
        write_varint(&mut b, body.len());
        b.extend_from_slice(body);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_before_buffering() {
        assert_eq!(frame_len(&[], 100), Ok(None));
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 5], 100), Ok(Some(7)));
        // 1 + 3 + 2,097,151: refused with only the header buffered.
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0x7f], 1000),
            Err(DecodeError::TooLarge(2_097_155))
        );
        assert!(matches!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn mqtt_2_2_2_2_reserved_flags() {
        // PINGREQ, DISCONNECT, CONNECT with flags; PUBREL / SUBSCRIBE / UNSUBSCRIBE without.
        for b in [
            &[0xC1, 0][..],
            &[0xE8, 0],
            &[0x12, 0],
            &[0x60, 2, 0, 1],
            &[0x80, 0],
            &[0xA0, 0],
        ] {
            assert!(
                matches!(decode(b, Version::V5), Err(DecodeError::Malformed(_))),
                "{b:?}"
            );
        }
    }

    #[test]
    fn no_payload_packets_have_remaining_length_0() {
        assert_eq!(decode(&[0xC0, 0], Version::V311), Ok(Packet::PingReq));
        // C0 02 D0 00: the PINGREQ all probed crates accepted.
        assert!(decode(&[0xC0, 2, 0xD0, 0], Version::V311).is_err());
        assert!(decode(&[0xE0, 1, 0], Version::V311).is_err());
    }

    #[test]
    fn disconnect_and_auth_v5() {
        assert_eq!(
            decode(&[0xE0, 0], Version::V5),
            Ok(Packet::Disconnect(Disconnect {
                reason: 0,
                props: Props::default()
            }))
        );
        let Packet::Disconnect(d) = decode(&[0xE0, 1, 4], Version::V5).unwrap() else {
            panic!()
        };
        assert_eq!(d.reason, 4);
        let Packet::Disconnect(d) =
            decode(&[0xE0, 7, 0, 5, 0x11, 0, 0, 0, 9], Version::V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.props.session_expiry, Some(9));
        // AUTH: v5 only.
        let Packet::Auth(a) = decode(&[0xF0, 6, 0x18, 4, 0x15, 0, 1, b'x'], Version::V5).unwrap()
        else {
            panic!()
        };
        assert_eq!((a.reason, a.props.auth_method), (0x18, Some("x")));
        assert!(decode(&[0xF0, 0], Version::V311).is_err());
        // Properties not valid in a DISCONNECT.
        assert!(decode(&[0xE0, 4, 0, 2, 0x01, 1], Version::V5).is_err());
    }

    #[test]
    fn mqtt5_3_14_2_1_and_3_15_2_1_reason_codes() {
        assert!(decode(&[0xE0, 1, 0x8E], Version::V5).is_ok());
        assert!(matches!(
            decode(&[0xE0, 1, 0x01], Version::V5),
            Err(DecodeError::Malformed(_))
        ));
        assert!(decode(&[0xF0, 1, 0x19], Version::V5).is_ok());
        assert!(decode(&[0xF0, 1, 0x87], Version::V5).is_err());
    }

    #[test]
    fn server_packets_and_reserved_type_refused() {
        for b in [
            &[0x20, 2, 0, 0][..],
            &[0x90, 3, 0, 1, 0],
            &[0xB0, 2, 0, 1],
            &[0xD0, 0],
            &[0x00, 0],
        ] {
            assert!(decode(b, Version::V311).is_err(), "{b:?}");
        }
    }

    #[test]
    fn length_mismatch() {
        assert!(decode(&[0xC0, 1], Version::V311).is_err());
        assert!(decode(&[0xC0], Version::V311).is_err());
        assert!(decode(&[], Version::V311).is_err());
    }

    #[test]
    fn server_encoders() {
        let mut out = Vec::new();
        write_pingresp(&mut out);
        write_disconnect(&mut out, Version::V311, 0x8E);
        write_disconnect(&mut out, Version::V5, 0x8E);
        assert_eq!(out, [0xD0, 0, 0xE0, 2, 0x8E, 0]);
    }
}
