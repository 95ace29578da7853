//! Fuzzes the STUN / ChannelData codec: parsing, every getter, integrity checks, stream
//! framing, re-encoding round trips and in-place Data indication / ChannelData framing.
//!
//! Inputs are also replayed with a large comprehension-optional filler attribute inserted after
//! the header (size taken from the input), so attribute offsets past 65,535 (possible in a
//! maximum-size message over TCP) are reached without a 64 KiB `-max_len`.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ember_turn::stun::{
    self, attr, frame_channel_data, frame_data_indication, ChannelData, Class, Message,
    MessageWriter, DATA_INDICATION_HEADROOM, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(big) = with_filler(data) {
        check(&big);
    }
    framing(data);
});

/// `data`'s header, then a SOFTWARE attribute of a size chosen by the input, then the rest of
/// `data`, with the header length fixed up.
fn with_filler(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_LEN + 2 {
        return None;
    }
    let filler =
        usize::from(u16::from_be_bytes([data[HEADER_LEN], data[HEADER_LEN + 1]]) & !3) | 0x8000;
    let rest = &data[HEADER_LEN + 2..];
    let total = HEADER_LEN + 4 + filler + rest.len();
    let body = total - HEADER_LEN;
    if body > usize::from(u16::MAX) {
        return None;
    }
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&data[..HEADER_LEN]);
    b[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    b.extend_from_slice(&attr::SOFTWARE.to_be_bytes());
    b.extend_from_slice(&(filler as u16).to_be_bytes());
    b.resize(HEADER_LEN + 4 + filler, b'f');
    b.extend_from_slice(rest);
    Some(b)
}

fn check(b: &[u8]) {
    let _ = stun::is_channel_data(b);
    if let Some(n) = stun::stun_frame_len(b) {
        assert!(n >= HEADER_LEN);
    }
    if let Ok(Some(n)) = stun::stream_frame_len(b) {
        assert!(n >= 4);
    }
    if let Ok(cd) = ChannelData::parse(b) {
        assert!(stun::is_valid_channel(cd.channel));
        assert!(4 + cd.data.len() <= b.len());
    }
    let Ok(m) = Message::parse(b) else { return };

    // Getters.
    let _ = (m.method(), m.class(), m.transaction_id());
    assert_eq!(m.as_bytes().len(), b.len());
    let attrs: Vec<(u16, &[u8])> = m.attributes().collect();
    let mut end = HEADER_LEN;
    for &(_, v) in &attrs {
        // Every value lies inside the message, after the previous one.
        let off = v.as_ptr() as usize - b.as_ptr() as usize;
        assert!(off >= end + 4 && off + v.len() <= b.len());
        end = off + v.len();
    }
    for t in [
        attr::USERNAME,
        attr::REALM,
        attr::NONCE,
        attr::SOFTWARE,
        attr::DATA,
        attr::LIFETIME,
        attr::CHANNEL_NUMBER,
        attr::REQUESTED_TRANSPORT,
        attr::FINGERPRINT,
        attr::MESSAGE_INTEGRITY,
        attr::MESSAGE_INTEGRITY_SHA256,
    ] {
        if let Some(v) = m.get(t) {
            assert!(attrs
                .iter()
                .any(|&(at, av)| at == t && av.as_ptr() == v.as_ptr()));
        }
        let _ = (m.has(t), m.get_str(t), m.get_u32(t));
    }
    for t in [
        attr::XOR_PEER_ADDRESS,
        attr::XOR_MAPPED_ADDRESS,
        attr::XOR_RELAYED_ADDRESS,
    ] {
        let _ = m.get_xor_addr(t);
    }
    let _ = m.xor_peer_addresses().count();
    let mut unknown = Vec::new();
    m.unknown_required(&mut unknown);
    assert!(unknown
        .iter()
        .all(|&t| t < 0x8000 && !attr::is_known_required(t)));
    let _ = m.integrity();
    let _ = m.verify_integrity(b"key");
    let _ = m.verify_integrity(&[]);
    let _ = format!("{m:?}");

    // Re-encoding every attribute before FINGERPRINT gives a message that parses to the same
    // attributes; signing it gives a message that verifies.
    let body: Vec<(u16, &[u8])> = attrs
        .iter()
        .copied()
        .filter(|&(t, _)| t != attr::FINGERPRINT)
        .collect();
    let size: usize = HEADER_LEN
        + body
            .iter()
            .map(|(_, v)| 4 + ((v.len() + 3) & !3))
            .sum::<usize>();
    if size + 36 + 8 > HEADER_LEN + usize::from(u16::MAX) || body.len() + 2 > stun::MAX_ATTRS {
        return;
    }
    let tid = m.transaction_id();
    let mut out = Vec::new();
    let mut w = MessageWriter::new(&mut out, m.method(), m.class(), &tid);
    for &(t, v) in &body {
        w.attr(t, v);
    }
    let m2 = Message::parse(&out).expect("re-encoded message parses");
    assert_eq!(m2.method(), m.method());
    assert_eq!(m2.class(), m.class());
    assert!(m2.attributes().eq(body.iter().copied()));
    let signed_ok = !body
        .iter()
        .any(|&(t, _)| t == attr::MESSAGE_INTEGRITY || t == attr::MESSAGE_INTEGRITY_SHA256);
    if signed_ok {
        let mut out = Vec::new();
        MessageWriter::new(&mut out, m.method(), m.class(), &tid)
            .attr(attr::SOFTWARE, b"x")
            .integrity_sha1(b"key")
            .fingerprint();
        let mut sha = Vec::new();
        let mut w = MessageWriter::new(&mut sha, m.method(), m.class(), &tid);
        for &(t, v) in &body {
            w.attr(t, v);
        }
        w.integrity_sha256(b"key").fingerprint();
        let m3 = Message::parse(&sha).expect("signed message parses");
        assert!(m3.verify_integrity(b"key"));
        assert!(!m3.verify_integrity(b"other"));
        assert!(Message::parse(&out).unwrap().verify_integrity(b"key"));
    }
}

/// Data indication and ChannelData framing of `data` as a payload round-trip.
fn framing(data: &[u8]) {
    if data.len() > 60_000 {
        return;
    }
    let peer = match data.first() {
        Some(&x) if x & 1 == 1 => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(x))),
            5000,
        ),
        Some(&x) => SocketAddr::new([192, 0, 2, x].into(), 5000),
        None => SocketAddr::new([192, 0, 2, 1].into(), 1),
    };
    let tid = [0x5a; 12];
    let at = DATA_INDICATION_HEADROOM;
    let mut buf = vec![0xEE; at + data.len() + 3];
    buf[at..at + data.len()].copy_from_slice(data);
    let r = frame_data_indication(&mut buf, at, data.len(), peer, &tid);
    let m = Message::parse(&buf[r]).expect("Data indication parses");
    assert_eq!(
        (m.method(), m.class()),
        (stun::method::DATA, Class::Indication)
    );
    assert_eq!(m.get(attr::DATA), Some(data));
    assert_eq!(m.get_xor_addr(attr::XOR_PEER_ADDRESS), Some(peer));

    for pad in [false, true] {
        let mut buf = vec![0xEE; 4 + data.len() + 3];
        buf[4..4 + data.len()].copy_from_slice(data);
        let r = frame_channel_data(&mut buf, 4, data.len(), 0x4abc, pad);
        let frame = &buf[r];
        if pad {
            assert_eq!(stun::stream_frame_len(frame), Ok(Some(frame.len())));
        }
        let cd = ChannelData::parse(frame).expect("ChannelData parses");
        assert_eq!((cd.channel, cd.data), (0x4abc, data));
    }
}
