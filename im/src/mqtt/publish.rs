//! PUBLISH (§3.3) and its acknowledgements PUBACK / PUBREC / PUBREL / PUBCOMP (§3.4–3.7):
//! decoding what a client sends, encoding what the server sends.
//!
//! [`write_publish`] frames a QoS 0 PUBLISH straight into the output buffer: header, topic,
//! properties, then the payload bytes, with no intermediate copy, so one serialized event is
//! framed per recipient.

use super::header::{varint_len, write_bytes, write_varint, Reader};
use super::props::{id, Ctx, Props};
use super::reason;
use super::{DecodeError, Version};

/// A decoded PUBLISH, borrowing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// May be empty only in v5 with a Topic Alias (which the session then refuses).
    pub topic: &'a str,
    /// Present iff QoS > 0.
    pub packet_id: Option<u16>,
    pub props: Props<'a>,
    pub payload: &'a [u8],
}

/// Decodes a PUBLISH body; `flags` is the low nibble of the fixed header.
pub(super) fn decode(flags: u8, body: &[u8], version: Version) -> Result<Publish<'_>, DecodeError> {
    let qos = (flags >> 1) & 3;
    let dup = flags & 8 != 0;
    if qos == 3 {
        return Err(DecodeError::Malformed("MQTT-3.3.1-4: PUBLISH with QoS 3"));
    }
    if dup && qos == 0 {
        return Err(DecodeError::Malformed(
            "MQTT-3.3.1-2: DUP set on a QoS 0 PUBLISH",
        ));
    }
    let mut r = Reader::new(body);
    let topic = r.str()?;
    if topic.contains(['+', '#']) {
        return Err(DecodeError::Malformed(
            "MQTT-3.3.2-2: wildcard in a PUBLISH topic name",
        ));
    }
    let packet_id = if qos > 0 { Some(r.packet_id()?) } else { None };
    let props = match version {
        Version::V5 => Props::read(&mut r, Ctx::Publish)?,
        Version::V311 => Props::default(),
    };
    if topic.is_empty() {
        match version {
            Version::V311 => {
                return Err(DecodeError::Malformed("MQTT-4.7.3-1: empty topic name"));
            }
            Version::V5 if props.topic_alias.is_none() => {
                return Err(DecodeError::Protocol(
                    "MQTT-3.3.2-8: empty topic name without a topic alias",
                ));
            }
            Version::V5 => {}
        }
    }
    if props.subscription_id.is_some() {
        return Err(DecodeError::Protocol(
            "MQTT-3.3.4-6: subscription identifier in a PUBLISH from a client",
        ));
    }
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        props,
        payload: r.rest(),
    })
}

/// Which acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    fn first_byte(self) -> u8 {
        match self {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        }
    }
}

/// A decoded PUBACK / PUBREC / PUBREL / PUBCOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    pub packet_id: u16,
    /// v5 reason code; 0 (success) when absent and always for 3.1.1.
    pub reason: u8,
    pub props: Props<'a>,
}

pub(super) fn decode_ack(
    body: &[u8],
    version: Version,
    kind: AckKind,
) -> Result<Ack<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let mut ack = Ack {
        packet_id,
        reason: 0,
        props: Props::default(),
    };
    match version {
        Version::V311 => {}
        Version::V5 => {
            if !r.is_empty() {
                ack.reason = r.u8()?;
                let valid = match kind {
                    AckKind::PubAck | AckKind::PubRec => reason::PUBACK_CODES,
                    AckKind::PubRel | AckKind::PubComp => reason::PUBREL_CODES,
                };
                if !valid.contains(&ack.reason) {
                    return Err(DecodeError::Malformed(
                        "MQTT-3.4.2-1: reason code not valid for this acknowledgement",
                    ));
                }
            }
            if !r.is_empty() {
                ack.props = Props::read(&mut r, Ctx::Ack)?;
            }
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the acknowledgement"));
    }
    Ok(ack)
}

/// Appends a PUBACK / PUBREC / PUBREL / PUBCOMP. v5 with a non-zero `reason` carries it
/// (and an empty property block is omitted, §3.4.2.1); success uses the 2-byte form.
pub fn write_ack(out: &mut Vec<u8>, version: Version, kind: AckKind, packet_id: u16, reason: u8) {
    out.push(kind.first_byte());
    let [hi, lo] = packet_id.to_be_bytes();
    if version == Version::V5 && reason != 0 {
        out.extend_from_slice(&[3, hi, lo, reason]);
    } else {
        out.extend_from_slice(&[2, hi, lo]);
    }
}

fn publish_remaining(
    version: Version,
    topic: &str,
    correlation: Option<&[u8]>,
    payload: usize,
) -> (usize, usize) {
    let props = match (version, correlation) {
        (Version::V311, _) => 0,
        (Version::V5, None) => 0,
        (Version::V5, Some(c)) => 3 + c.len(),
    };
    let props_block = match version {
        Version::V311 => 0,
        Version::V5 => varint_len(props) + props,
    };
    (2 + topic.len() + props_block + payload, props)
}

/// Total bytes [`write_publish`] would append.
pub fn publish_len(
    version: Version,
    topic: &str,
    correlation: Option<&[u8]>,
    payload: usize,
) -> usize {
    let (rl, _) = publish_remaining(version, topic, correlation, payload);
    1 + varint_len(rl) + rl
}

/// Appends a QoS 0 PUBLISH of `payload` on `topic` (v5: with the Correlation Data property
/// when given). `topic` must be a valid topic name and the packet at most 256 MiB; the
/// correlation data at most 65,535 bytes.
pub fn write_publish(
    out: &mut Vec<u8>,
    version: Version,
    topic: &str,
    correlation: Option<&[u8]>,
    payload: &[u8],
) {
    let (rl, props) = publish_remaining(version, topic, correlation, payload.len());
    out.reserve(1 + varint_len(rl) + rl);
    out.push(0x30);
    write_varint(out, rl);
    write_bytes(out, topic.as_bytes());
    if version == Version::V5 {
        write_varint(out, props);
        if let Some(c) = correlation {
            out.push(id::CORRELATION_DATA);
            write_bytes(out, c);
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::super::{decode as decode_packet, Packet};
    use super::*;

    fn publish(first: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![first];
        write_varint(&mut b, body.len());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn decode_qos1_v311() {
        let b = publish(0x32, b"\x00\x07rq/send\x00\x05{\"a\"}");
        let Packet::Publish(p) = decode_packet(&b, Version::V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.topic, p.qos, p.packet_id, p.payload),
            ("rq/send", 1, Some(5), &b"{\"a\"}"[..])
        );
        assert!(!p.retain && !p.dup);
    }

    #[test]
    fn decode_v5_props() {
        let b = publish(
            0x3B,
            b"\x00\x04rq/x\x00\x09\x09\x08\x00\x02r/\x09\x00\x01\xffhi",
        );
        let Packet::Publish(p) = decode_packet(&b, Version::V5).unwrap() else {
            panic!()
        };
        assert_eq!(p.props.response_topic, Some("r/"));
        assert_eq!(p.props.correlation_data, Some(&[0xff][..]));
        assert_eq!(p.payload, b"hi");
        assert!(p.retain && p.dup);
    }

    #[test]
    fn mqtt_3_3_1_4_qos3() {
        let b = publish(0x36, b"\x00\x01t\x00\x01");
        assert!(matches!(
            decode_packet(&b, Version::V311),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn mqtt_3_3_1_2_dup_on_qos0() {
        let b = publish(0x38, b"\x00\x01t");
        assert!(decode_packet(&b, Version::V311).is_err());
    }

    #[test]
    fn mqtt_2_3_1_1_publish_packet_id_zero() {
        let b = publish(0x32, b"\x00\x01t\x00\x00");
        assert!(decode_packet(&b, Version::V311).is_err());
    }

    #[test]
    fn mqtt_3_3_2_2_wildcards_in_topic() {
        for t in [&b"\x00\x03a/#"[..], b"\x00\x03+/a"] {
            assert!(decode_packet(&publish(0x30, t), Version::V311).is_err());
        }
    }

    #[test]
    fn mqtt_1_5_3_2_nul_in_topic() {
        assert!(decode_packet(&publish(0x30, b"\x00\x03a\x00b"), Version::V311).is_err());
    }

    #[test]
    fn mqtt_4_7_3_1_empty_topic() {
        assert!(decode_packet(&publish(0x30, b"\x00\x00"), Version::V311).is_err());
        assert!(matches!(
            decode_packet(&publish(0x30, b"\x00\x00\x00"), Version::V5),
            Err(DecodeError::Protocol(_))
        ));
        // v5 with a topic alias decodes (the session refuses the alias).
        let b = publish(0x30, b"\x00\x00\x03\x23\x00\x01");
        let Packet::Publish(p) = decode_packet(&b, Version::V5).unwrap() else {
            panic!()
        };
        assert_eq!(p.props.topic_alias, Some(1));
    }

    #[test]
    fn mqtt_3_3_4_6_subscription_id_from_client() {
        assert!(matches!(
            decode_packet(&publish(0x30, b"\x00\x01t\x02\x0b\x01"), Version::V5),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn acks() {
        let Packet::PubRel(a) = decode_packet(&[0x62, 2, 0, 9], Version::V311).unwrap() else {
            panic!()
        };
        assert_eq!((a.packet_id, a.reason), (9, 0));
        // MQTT-2.2.2-2: PUBREL flags must be 0010.
        assert!(decode_packet(&[0x60, 2, 0, 9], Version::V311).is_err());
        assert!(decode_packet(&[0x41, 2, 0, 9], Version::V311).is_err());
        // 3.1.1: exactly two bytes.
        assert!(decode_packet(&[0x40, 3, 0, 9, 0], Version::V311).is_err());
        let Packet::PubAck(a) = decode_packet(&[0x40, 3, 0, 9, 0x10], Version::V5).unwrap() else {
            panic!()
        };
        assert_eq!(a.reason, 0x10);
        let Packet::PubComp(a) =
            decode_packet(&[0x70, 7, 0, 9, 0x92, 3, 0x1f, 0, 0], Version::V5).unwrap()
        else {
            panic!()
        };
        assert_eq!((a.reason, a.props.reason_string), (0x92, Some("")));
        assert!(decode_packet(&[0x50, 2, 0, 0], Version::V5).is_err());
    }

    #[test]
    fn mqtt5_3_4_2_1_ack_reason_codes() {
        assert!(decode_packet(&[0x40, 3, 0, 1, 0x10], Version::V5).is_ok());
        assert!(decode_packet(&[0x40, 3, 0, 1, 0x92], Version::V5).is_err());
        assert!(decode_packet(&[0x70, 3, 0, 1, 0x92], Version::V5).is_ok());
        assert!(decode_packet(&[0x62, 3, 0, 1, 0x87], Version::V5).is_err());
    }

    #[test]
    fn encode_acks() {
        let mut out = Vec::new();
        write_ack(&mut out, Version::V5, AckKind::PubAck, 0x0102, 0);
        write_ack(&mut out, Version::V5, AckKind::PubAck, 0x0102, 0x87);
        write_ack(&mut out, Version::V311, AckKind::PubRec, 1, 0x87);
        write_ack(&mut out, Version::V311, AckKind::PubComp, 1, 0);
        assert_eq!(
            out,
            [0x40, 2, 1, 2, 0x40, 3, 1, 2, 0x87, 0x50, 2, 0, 1, 0x70, 2, 0, 1]
        );
    }

    #[test]
    fn encode_publish_round_trip() {
        for version in [Version::V311, Version::V5] {
            for corr in [None, Some(&b"c0rr"[..])] {
                for n in [0usize, 5, 200, 20_000] {
                    let payload = vec![7u8; n];
                    let mut out = vec![0xAA];
                    write_publish(&mut out, version, "u/a/d/rs", corr, &payload);
                    assert_eq!(out.len() - 1, publish_len(version, "u/a/d/rs", corr, n));
                    let Packet::Publish(p) = decode_packet(&out[1..], version).unwrap() else {
                        panic!()
                    };
                    assert_eq!((p.topic, p.qos, p.payload), ("u/a/d/rs", 0, &payload[..]));
                    let want = if version == Version::V5 { corr } else { None };
                    assert_eq!(p.props.correlation_data, want);
                }
            }
        }
    }
}
