//! SUBSCRIBE / UNSUBSCRIBE (§3.8, §3.10) decoding, SUBACK / UNSUBACK (§3.9, §3.11)
//! encoding, and the topic filter grammar (§4.7).
//!
//! The filter lists are validated once when decoded and then iterated lazily from the
//! borrowed packet.

use super::header::{write_varint, Reader};
use super::props::{Ctx, Props};
use super::{DecodeError, Version};

/// Subscription options (the byte after each filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: u8,
    /// v5 only (0 / false for 3.1.1).
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

/// A decoded SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub props: Props<'a>,
    list: &'a [u8],
    count: usize,
}

/// A decoded UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub props: Props<'a>,
    list: &'a [u8],
    count: usize,
}

fn options(b: u8, version: Version) -> Result<SubOptions, DecodeError> {
    let qos = b & 3;
    if qos == 3 {
        return Err(DecodeError::Malformed("MQTT-3.8.3-4: subscription QoS 3"));
    }
    match version {
        Version::V311 if b & !3 != 0 => Err(DecodeError::Malformed(
            "MQTT-3.8.3-4: reserved bits of the requested QoS byte set",
        )),
        Version::V5 if b & 0xC0 != 0 => Err(DecodeError::Malformed(
            "MQTT-3.8.3-5: reserved bits of the subscription options set",
        )),
        Version::V5 if (b >> 4) & 3 == 3 => Err(DecodeError::Protocol(
            "retain handling 3 in subscription options",
        )),
        _ => Ok(SubOptions {
            qos,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling: (b >> 4) & 3,
        }),
    }
}

/// A topic filter string: at least one character (MQTT-4.7.3-1); the grammar is checked by
/// the session with [`valid_filter`], so a bad filter gets a failure code, not a close.
fn filter<'a>(r: &mut Reader<'a>) -> Result<&'a str, DecodeError> {
    let f = r.str()?;
    if f.is_empty() {
        return Err(DecodeError::Malformed("MQTT-4.7.3-1: empty topic filter"));
    }
    Ok(f)
}

pub(super) fn decode_subscribe(
    body: &[u8],
    version: Version,
) -> Result<Subscribe<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let props = match version {
        Version::V5 => Props::read(&mut r, Ctx::Subscribe)?,
        Version::V311 => Props::default(),
    };
    let list = r.rest();
    let mut lr = Reader::new(list);
    let mut count = 0;
    while !lr.is_empty() {
        filter(&mut lr)?;
        options(lr.u8()?, version)?;
        count += 1;
    }
    if count == 0 {
        return Err(DecodeError::Protocol(
            "MQTT-3.8.3-3: SUBSCRIBE without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        props,
        list,
        count,
    })
}

pub(super) fn decode_unsubscribe(
    body: &[u8],
    version: Version,
) -> Result<Unsubscribe<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let props = match version {
        Version::V5 => Props::read(&mut r, Ctx::Unsubscribe)?,
        Version::V311 => Props::default(),
    };
    let list = r.rest();
    let mut lr = Reader::new(list);
    let mut count = 0;
    while !lr.is_empty() {
        filter(&mut lr)?;
        count += 1;
    }
    if count == 0 {
        return Err(DecodeError::Protocol(
            "MQTT-3.10.3-2: UNSUBSCRIBE without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        props,
        list,
        count,
    })
}

impl<'a> Subscribe<'a> {
    /// The (filter, options) pairs, in order. The version only affects decoding, which was
    /// already checked, so the options are re-read leniently here.
    pub fn filters(&self) -> impl Iterator<Item = (&'a str, SubOptions)> + 'a {
        let mut r = Reader::new(self.list);
        std::iter::from_fn(move || {
            let f = r.str().ok()?;
            let b = r.u8().ok()?;
            Some((f, options(b, Version::V5).ok()?))
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> Unsubscribe<'a> {
    pub fn filters(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new(self.list);
        std::iter::from_fn(move || r.str().ok())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A topic filter per §4.7.1: non-empty, `#` only as the whole last level, `+` only as a
/// whole level.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Appends a SUBACK with one return / reason code per filter (v5: empty properties).
pub fn write_suback(out: &mut Vec<u8>, version: Version, packet_id: u16, codes: &[u8]) {
    write_list_ack(out, 0x90, version, packet_id, codes);
}

/// Appends an UNSUBACK (3.1.1: packet id only; v5: empty properties and the reason codes).
pub fn write_unsuback(out: &mut Vec<u8>, version: Version, packet_id: u16, codes: &[u8]) {
    match version {
        Version::V311 => {
            out.push(0xB0);
            out.push(2);
            out.extend_from_slice(&packet_id.to_be_bytes());
        }
        Version::V5 => write_list_ack(out, 0xB0, version, packet_id, codes),
    }
}

fn write_list_ack(out: &mut Vec<u8>, first: u8, version: Version, packet_id: u16, codes: &[u8]) {
    let props = usize::from(version == Version::V5);
    out.push(first);
    write_varint(out, 2 + props + codes.len());
    out.extend_from_slice(&packet_id.to_be_bytes());
    if props == 1 {
        out.push(0);
    }
    out.extend_from_slice(codes);
}

#[cfg(test)]
mod tests {
    use super::super::{decode as decode_packet, Packet};
    use super::*;

    #[test]
    fn subscribe_v311_and_v5() {
        let b = [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1];
        let Packet::Subscribe(s) = decode_packet(&b[..], Version::V311).unwrap() else {
            panic!()
        };
        assert_eq!(s.packet_id, 1);
        let f: Vec<_> = s.filters().map(|(f, o)| (f, o.qos)).collect();
        assert_eq!(f, vec![("a/#", 1)]);
        let mut b = vec![0x82, 11, 0, 2, 2, 0x0b, 7, 0, 1, b'x', 0x2e, 0, 1, b'y', 2];
        b[1] = (b.len() - 2) as u8;
        let Packet::Subscribe(s) = decode_packet(&b, Version::V5).unwrap() else {
            panic!()
        };
        assert_eq!(s.props.subscription_id, Some(7));
        let f: Vec<_> = s.filters().collect();
        assert_eq!(f[0].0, "x");
        assert_eq!(
            f[0].1,
            SubOptions {
                qos: 2,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        );
        assert_eq!(f[1].0, "y");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn mqtt_3_8_1_1_subscribe_flags() {
        assert!(decode_packet(&[0x80, 6, 0, 1, 0, 1, b'a', 0], Version::V311).is_err());
        assert!(decode_packet(&[0xA0, 5, 0, 1, 0, 1, b'a'], Version::V311).is_err());
    }

    #[test]
    fn mqtt_3_8_3_3_no_filters() {
        assert!(decode_packet(&[0x82, 2, 0, 1], Version::V311).is_err());
        assert!(decode_packet(&[0xA2, 3, 0, 1, 0], Version::V5).is_err());
    }

    #[test]
    fn mqtt_3_8_3_4_reserved_option_bits() {
        assert!(decode_packet(&[0x82, 6, 0, 1, 0, 1, b'a', 3], Version::V311).is_err());
        assert!(decode_packet(&[0x82, 6, 0, 1, 0, 1, b'a', 4], Version::V311).is_err());
        assert!(decode_packet(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40], Version::V5).is_err());
        assert!(decode_packet(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], Version::V5).is_err());
        assert!(decode_packet(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x04], Version::V5).is_ok());
    }

    #[test]
    fn mqtt_2_3_1_1_subscribe_packet_id_zero() {
        assert!(decode_packet(&[0x82, 6, 0, 0, 0, 1, b'a', 0], Version::V311).is_err());
        assert!(decode_packet(&[0xA2, 5, 0, 0, 0, 1, b'a'], Version::V311).is_err());
    }

    #[test]
    fn unsubscribe() {
        let Packet::Unsubscribe(u) = decode_packet(
            &[0xA2, 9, 0, 4, 0, 1, b'a', 0, 2, b'b', b'c'],
            Version::V311,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(u.filters().collect::<Vec<_>>(), vec!["a", "bc"]);
        assert!(decode_packet(&[0xA2, 2, 0, 4], Version::V311).is_err());
    }

    #[test]
    fn mqtt_4_7_3_1_empty_filter() {
        assert!(decode_packet(&[0x82, 5, 0, 1, 0, 0, 0], Version::V311).is_err());
        assert!(decode_packet(&[0xA2, 4, 0, 1, 0, 0], Version::V311).is_err());
    }

    #[test]
    fn filters_grammar() {
        for ok in ["a", "#", "+", "u/alice/#", "u/+/ev", "+/+", "/", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "#/", "a+/b", "a/b+", "##"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn encode() {
        let mut out = Vec::new();
        write_suback(&mut out, Version::V311, 3, &[1, 0x80]);
        assert_eq!(out, [0x90, 4, 0, 3, 1, 0x80]);
        out.clear();
        write_suback(&mut out, Version::V5, 3, &[0x87]);
        assert_eq!(out, [0x90, 4, 0, 3, 0, 0x87]);
        out.clear();
        write_unsuback(&mut out, Version::V311, 3, &[0]);
        assert_eq!(out, [0xB0, 2, 0, 3]);
        out.clear();
        write_unsuback(&mut out, Version::V5, 3, &[0, 0x11]);
        assert_eq!(out, [0xB0, 5, 0, 3, 0, 0, 0x11]);
    }
}
