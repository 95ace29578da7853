//! CONNECT (MQTT 3.1.1 §3.1, MQTT 5 §3.1) decoding and CONNACK (§3.2) encoding.
//!
//! The CONNECT carries its own protocol level, so it is decoded the same way before the
//! connection's version is known; levels other than 4 and 5 come back as
//! [`DecodeError::UnsupportedLevel`] so the caller can answer with the right CONNACK.

use super::header::{write_varint, Reader};
use super::props::{Ctx, PropWriter, Props};
use super::{DecodeError, Version};

/// A will message: accepted and never published (IM-DESIGN §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    pub qos: u8,
    pub retain: bool,
    pub props: Props<'a>,
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// A decoded CONNECT, borrowing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: Version,
    /// 3.1.1 Clean Session / 5 Clean Start.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// v5 CONNECT properties (empty for 3.1.1).
    pub props: Props<'a>,
    pub client_id: &'a str,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS: u8 = 0x18;
const WILL: u8 = 0x04;
const CLEAN: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// Decodes the body (after the fixed header) of a CONNECT.
pub(super) fn decode(body: &[u8]) -> Result<Connect<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.binary()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQTT", 4) | (b"MQTT", 5) => {}
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedLevel(l)),
        _ => {
            return Err(DecodeError::Malformed(
                "MQTT-3.1.2-1: protocol name is not \"MQTT\"",
            ))
        }
    }
    let version = if level == 5 {
        Version::V5
    } else {
        Version::V311
    };
    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::Malformed(
            "MQTT-3.1.2-3: CONNECT reserved flag set",
        ));
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags & WILL_QOS) >> 3;
    let will_retain = flags & WILL_RETAIN != 0;
    if will_qos == 3 {
        return Err(DecodeError::Malformed("MQTT-3.1.2-14: will QoS 3"));
    }
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "MQTT-3.1.2-13/-15: will QoS or retain without will flag",
        ));
    }
    if version == Version::V311 && flags & USERNAME == 0 && flags & PASSWORD != 0 {
        return Err(DecodeError::Malformed(
            "MQTT-3.1.2-22: password flag without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let props = match version {
        Version::V5 => Props::read(&mut r, Ctx::Connect)?,
        Version::V311 => Props::default(),
    };
    let client_id = r.str()?;
    let will = if will_flag {
        let props = match version {
            Version::V5 => Props::read(&mut r, Ctx::Will)?,
            Version::V311 => Props::default(),
        };
        let topic = r.str()?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(DecodeError::Malformed(
                "MQTT-3.1.3-11: will topic empty or with wildcards",
            ));
        }
        let payload = r.binary()?;
        Some(Will {
            qos: will_qos,
            retain: will_retain,
            props,
            topic,
            payload,
        })
    } else {
        None
    };
    let username = if flags & USERNAME != 0 {
        Some(r.str()?)
    } else {
        None
    };
    let password = if flags & PASSWORD != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the CONNECT payload"));
    }
    Ok(Connect {
        version,
        clean_start: flags & CLEAN != 0,
        keep_alive,
        props,
        client_id,
        will,
        username,
        password,
    })
}

/// Appends a CONNACK. 3.1.1: `code` is a 3.1.1 return code and `props` is ignored; v5:
/// `code` is a reason code followed by `props` (an empty block when `None`). Session
/// present is always 0: Ember keeps no MQTT session state.
pub fn write_connack(out: &mut Vec<u8>, version: Version, code: u8, props: Option<&PropWriter>) {
    out.push(0x20);
    match version {
        Version::V311 => out.extend_from_slice(&[2, 0, code]),
        Version::V5 => {
            let empty = PropWriter::new();
            let props = props.unwrap_or(&empty);
            write_varint(out, 2 + props.encoded_len());
            out.extend_from_slice(&[0, code]);
            props.write(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode as decode_packet, test_util::connect_bytes, Packet};
    use super::*;

    fn dec(b: &[u8]) -> Result<Connect<'_>, DecodeError> {
        match decode_packet(b, Version::V311)? {
            Packet::Connect(c) => Ok(*c),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn v311_full() {
        let b = connect_bytes(
            4,
            0xEE,
            30,
            &[],
            b"dev1",
            Some((b"w/t", b"bye")),
            Some("alice"),
            Some(b"tok"),
        );
        let c = dec(&b).unwrap();
        assert_eq!(c.version, Version::V311);
        assert_eq!(c.keep_alive, 30);
        assert_eq!(c.client_id, "dev1");
        assert_eq!(c.username, Some("alice"));
        assert_eq!(c.password, Some(&b"tok"[..]));
        let w = c.will.unwrap();
        assert_eq!(
            (w.topic, w.payload, w.qos, w.retain),
            ("w/t", &b"bye"[..], 1, true)
        );
    }

    #[test]
    fn v5_props() {
        let mut p = PropWriter::new();
        p.u32(0x11, 3600)
            .u16(0x21, 10)
            .u32(0x27, 4096)
            .u16(0x22, 5)
            .pair("a", "b");
        let mut props = Vec::new();
        p.write(&mut props);
        let b = connect_bytes(5, 0xC2, 60, &props, b"d", None, Some("u"), Some(b"p"));
        let c = dec(&b).unwrap();
        assert_eq!(c.version, Version::V5);
        assert_eq!(c.props.session_expiry, Some(3600));
        assert_eq!(c.props.receive_maximum, Some(10));
        assert_eq!(c.props.maximum_packet_size, Some(4096));
        assert_eq!(c.props.topic_alias_maximum, Some(5));
        assert_eq!(
            c.props.user_properties().collect::<Vec<_>>(),
            vec![("a", "b")]
        );
    }

    #[test]
    fn mqtt_3_1_2_3_reserved_flag() {
        let b = connect_bytes(4, 0x03, 0, &[], b"d", None, None, None);
        assert!(matches!(dec(&b), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn mqtt_3_1_2_22_password_without_user() {
        let b = connect_bytes(4, 0x42, 0, &[], b"d", None, None, Some(b"p"));
        assert!(dec(&b).is_err());
        // v5 allows it.
        let b = connect_bytes(5, 0x42, 0, &[0], b"d", None, None, Some(b"p"));
        assert!(dec(&b).is_ok());
    }

    #[test]
    fn mqtt_3_1_2_13_14_15_will_flags() {
        assert!(dec(&connect_bytes(4, 0x08, 0, &[], b"d", None, None, None)).is_err());
        assert!(dec(&connect_bytes(4, 0x20, 0, &[], b"d", None, None, None)).is_err());
        assert!(dec(&connect_bytes(
            4,
            0x1C,
            0,
            &[],
            b"d",
            Some((b"t", b"")),
            None,
            None
        ))
        .is_err());
    }

    #[test]
    fn mqtt_3_1_2_1_and_2_protocol_name_and_level() {
        let mut b = connect_bytes(4, 0x02, 0, &[], b"d", None, None, None);
        b[4] = b'X';
        assert!(matches!(dec(&b), Err(DecodeError::Malformed(_))));
        let mut b = connect_bytes(4, 0x02, 0, &[], b"d", None, None, None);
        b[8] = 6;
        assert_eq!(dec(&b), Err(DecodeError::UnsupportedLevel(6)));
        // 3.1 "MQIsdp" level 3.
        let b = [
            0x10, 12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 0,
        ];
        assert_eq!(dec(&b), Err(DecodeError::UnsupportedLevel(3)));
    }

    #[test]
    fn trailing_bytes_and_truncation() {
        let mut b = connect_bytes(4, 0x02, 0, &[], b"d", None, None, None);
        b.push(0);
        b[1] += 1;
        assert!(dec(&b).is_err());
        let b = connect_bytes(4, 0x82, 0, &[], b"d", None, Some("u"), None);
        for cut in 2..b.len() {
            let mut t = b[..cut].to_vec();
            t[1] = (cut - 2) as u8;
            assert!(dec(&t).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn connack_encoding() {
        let mut out = Vec::new();
        write_connack(&mut out, Version::V311, 0x05, None);
        assert_eq!(out, [0x20, 2, 0, 5]);
        out.clear();
        write_connack(&mut out, Version::V5, 0x00, None);
        assert_eq!(out, [0x20, 3, 0, 0, 0]);
        out.clear();
        let mut p = PropWriter::new();
        p.u8(0x24, 1);
        write_connack(&mut out, Version::V5, 0x00, Some(&p));
        assert_eq!(out, [0x20, 5, 0, 0, 2, 0x24, 1]);
    }
}
