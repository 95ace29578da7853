//! Client-side MQTT 3.1.1 framing, just what the generator needs: encode CONNECT, SUBSCRIBE,
//! PUBLISH, PUBACK and PINGREQ into a caller's buffer; decode CONNACK, SUBACK, PUBACK,
//! PUBLISH and PINGRESP from the front of a receive buffer without copying.

/// Largest packet accepted from a server (remaining length); above it the input is refused.
const MAX_REMAINING: usize = 4 << 20;

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, clean session, protocol level 4.
pub fn connect(
    out: &mut Vec<u8>,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
    keep_alive: u16,
) {
    let mut flags = 0x02u8;
    let mut len = 10 + 2 + client_id.len();
    if let Some(u) = user {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    out.push(0x10);
    put_len(out, len);
    put_str(out, b"MQTT");
    out.push(4);
    out.push(flags);
    out.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(out, client_id.as_bytes());
    if let Some(u) = user {
        put_str(out, u.as_bytes());
    }
    if let Some(p) = password {
        put_str(out, p.as_bytes());
    }
}

/// SUBSCRIBE to one filter.
pub fn subscribe(out: &mut Vec<u8>, pid: u16, filter: &str, qos: u8) {
    out.push(0x82);
    put_len(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&pid.to_be_bytes());
    put_str(out, filter.as_bytes());
    out.push(qos & 3);
}

/// PUBLISH with QoS 0 (`pid` ignored) or 1.
pub fn publish(out: &mut Vec<u8>, topic: &[u8], qos: u8, pid: u16, payload: &[u8]) {
    out.push(0x30 | ((qos & 3) << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_len(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback(out: &mut Vec<u8>, pid: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&pid.to_be_bytes());
}

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xC0, 0]);
}

/// A packet from the server, borrowing the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        code: u8,
    },
    SubAck {
        pid: u16,
        codes: &'a [u8],
    },
    PubAck {
        pid: u16,
    },
    Publish {
        qos: u8,
        pid: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PingResp,
    /// Any other packet type (first byte), skipped.
    Other(u8),
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, &'static str> {
    b.get(i..i + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or("packet too short")
}

/// Parses one packet from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and the bytes it took. Malformed input is an error (the caller drops the connection).
pub fn parse(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, &'static str> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len += (b & 0x7f) as usize * mult;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        mult *= 128;
        if i > 4 {
            return Err("remaining length over 4 bytes");
        }
    }
    if len > MAX_REMAINING {
        return Err("packet larger than 4 MiB");
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let body = &buf[i..i + len];
    let p = match first >> 4 {
        2 => Packet::ConnAck {
            code: *body.get(1).ok_or("short CONNACK")?,
        },
        9 => Packet::SubAck {
            pid: u16_at(body, 0)?,
            codes: &body[2..],
        },
        4 => Packet::PubAck {
            pid: u16_at(body, 0)?,
        },
        3 => {
            let qos = (first >> 1) & 3;
            let tl = u16_at(body, 0)? as usize;
            let topic = body.get(2..2 + tl).ok_or("PUBLISH topic past the end")?;
            let mut at = 2 + tl;
            let mut pid = 0;
            if qos > 0 {
                pid = u16_at(body, at)?;
                at += 2;
            }
            Packet::Publish {
                qos,
                pid,
                topic,
                payload: &body[at..],
            }
        }
        13 => Packet::PingResp,
        _ => Packet::Other(first),
    };
    Ok(Some((p, i + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_bytes() {
        let mut b = Vec::new();
        connect(&mut b, "d1", Some("u1"), Some("pw"), 300);
        assert_eq!(
            b,
            [
                0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0x01, 0x2C, 0, 2, b'd', b'1', 0,
                2, b'u', b'1', 0, 2, b'p', b'w'
            ]
        );
    }

    #[test]
    fn publish_round_trip_and_partial() {
        let mut b = Vec::new();
        let payload = vec![7u8; 300];
        publish(&mut b, b"u/a/m", 1, 513, &payload);
        puback(&mut b, 9);
        assert_eq!(parse(&b[..3]).unwrap(), None);
        let (p, n) = parse(&b).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::Publish {
                qos: 1,
                pid: 513,
                topic: b"u/a/m",
                payload: &payload
            }
        );
        assert_eq!(
            parse(&b[n..]).unwrap().unwrap(),
            (Packet::PubAck { pid: 9 }, 4)
        );
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert!(parse(&[0x30, 1, 0]).is_err());
        assert!(parse(&[0x90, 1, 0]).is_err());
        assert!(parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(parse(&[0x20, 0]).is_err());
        let (p, _) = parse(&[0x90, 3, 0, 1, 0x80]).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::SubAck {
                pid: 1,
                codes: &[0x80]
            }
        );
    }
}
