//! The fixed header, the Variable Byte Integer and the string / binary primitives every
//! packet is built from (MQTT 3.1.1 §1.5, §2.2; MQTT 5 §1.5, §2.1).
//!
//! [`Reader`] walks a borrowed packet body and hands out `&str` / `&[u8]` views into it;
//! the `write_*` helpers append to a caller-owned `Vec<u8>`.

use super::DecodeError;

/// Largest remaining length a Variable Byte Integer of four bytes can carry.
pub const MAX_REMAINING: usize = 268_435_455;

/// Decodes a Variable Byte Integer at the start of `b`: `Ok(None)` while it is incomplete,
/// otherwise the value and how many bytes it took. Rejects a fifth byte and non-minimal
/// encodings (MQTT-1.5.5-1).
pub fn read_varint(b: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed(
                    "MQTT-1.5.5-1: variable byte integer not minimal",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Bytes `v` takes as a Variable Byte Integer.
pub fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `v` (at most [`MAX_REMAINING`]) as a Variable Byte Integer.
pub fn write_varint(out: &mut Vec<u8>, mut v: usize) {
    debug_assert!(v <= MAX_REMAINING);
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed UTF-8 string or binary field (at most 65,535 bytes).
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Checks an MQTT UTF-8 string: well-formed (MQTT-1.5.3-1) and without U+0000 (MQTT-1.5.3-2).
pub fn check_str(b: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(b)
        .map_err(|_| DecodeError::Malformed("MQTT-1.5.3-1: ill-formed UTF-8 string"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed(
            "MQTT-1.5.3-2: string contains U+0000",
        ));
    }
    Ok(s)
}

/// A cursor over one packet's variable header and payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.b.len()
    }

    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed(
                "field runs past the end of the packet",
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.b[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(DecodeError::Malformed(
                "variable byte integer runs past the end of the packet",
            )),
        }
    }

    /// A two-byte-length-prefixed binary field.
    pub fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A two-byte-length-prefixed UTF-8 string, checked.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.binary()?;
        check_str(b)
    }

    /// A packet identifier, which must not be 0 (MQTT-2.3.1-1).
    pub fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Malformed("MQTT-2.3.1-1: packet identifier 0")),
            id => Ok(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(read_varint(&out), Ok(Some((v as u32, out.len()))));
            assert_eq!(read_varint(&out[..out.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn varint_at_most_four_bytes() {
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert_eq!(read_varint(&[0xff, 0xff, 0xff]), Ok(None));
    }

    #[test]
    fn mqtt_1_5_5_1_varint_minimal() {
        assert!(read_varint(&[0x80, 0x00]).is_err());
        assert!(read_varint(&[0xff, 0x80, 0x00]).is_err());
    }

    #[test]
    fn mqtt_1_5_3_1_and_2_strings() {
        assert_eq!(check_str(b"a/b"), Ok("a/b"));
        assert!(check_str(&[0xc0, 0x80]).is_err()); // overlong NUL
        assert!(check_str(&[0xed, 0xa0, 0x80]).is_err()); // surrogate D800
        assert!(check_str(b"a\0b").is_err());
        let mut r = Reader::new(&[0, 3, b'a', b'b']);
        assert!(r.str().is_err());
    }

    #[test]
    fn mqtt_2_3_1_1_packet_id_zero() {
        assert!(Reader::new(&[0, 0]).packet_id().is_err());
        assert_eq!(Reader::new(&[0, 7]).packet_id(), Ok(7));
    }
}
