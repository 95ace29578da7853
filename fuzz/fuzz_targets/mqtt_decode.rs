//! Fuzzes the MQTT codec (`ember_im::mqtt`) on arbitrary bytes: `frame_len`, `decode` for
//! both versions on every frame of the input read as a stream, every getter of the decoded
//! packets, and re-encoding round trips of what the server writes.
//!
//! Checks: no panic; a frame is never shorter than its header; every borrowed view lies
//! inside the input; what `write_publish` / `write_ack` / `write_suback` produce frames to
//! its own length and decodes back to the same fields.
#![no_main]

use ember_im::mqtt::{
    self, decode, frame_len, publish_len, write_ack, write_publish, write_suback, AckKind, Packet,
    Props, Version,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [Version::V311, Version::V5] {
        let _ = decode(data, version).map(|p| check(data, &p));
        let mut rest = data;
        while let Ok(Some(n)) = frame_len(rest, usize::MAX) {
            assert!(n >= 2);
            if n > rest.len() {
                break;
            }
            if let Ok(p) = decode(&rest[..n], version) {
                check(&rest[..n], &p);
                round_trip(version, &p);
            }
            rest = &rest[n..];
        }
    }
    // A small limit is enforced from the header alone.
    if let Err(mqtt::DecodeError::TooLarge(n)) = frame_len(data, 64) {
        assert!(n > 64);
    }
});

fn inside(frame: &[u8], s: &[u8]) {
    let (a, b) = (frame.as_ptr() as usize, s.as_ptr() as usize);
    assert!(s.is_empty() || (b >= a && b + s.len() <= a + frame.len()));
}

fn props(frame: &[u8], p: &Props<'_>) {
    inside(frame, p.raw());
    for (k, v) in p.user_properties() {
        inside(frame, k.as_bytes());
        inside(frame, v.as_bytes());
    }
    for s in [
        p.content_type,
        p.response_topic,
        p.auth_method,
        p.reason_string,
        p.server_reference,
    ]
    .into_iter()
    .flatten()
    {
        inside(frame, s.as_bytes());
    }
    if let Some(t) = p.response_topic {
        assert!(!t.contains(['+', '#']));
    }
}

fn check(frame: &[u8], p: &Packet<'_>) {
    let _ = format!("{p:?}");
    match p {
        Packet::Connect(c) => {
            inside(frame, c.client_id.as_bytes());
            props(frame, &c.props);
            if let Some(w) = &c.will {
                assert!(w.qos < 3);
                inside(frame, w.payload);
                props(frame, &w.props);
            }
            if let Some(pw) = c.password {
                inside(frame, pw);
            }
        }
        Packet::Publish(p) => {
            assert!(p.qos < 3);
            assert_eq!(p.packet_id.is_some(), p.qos > 0);
            assert_ne!(p.packet_id, Some(0));
            assert!(!p.topic.contains(['+', '#', '\0']));
            inside(frame, p.payload);
            props(frame, &p.props);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            assert_ne!(a.packet_id, 0);
            props(frame, &a.props);
        }
        Packet::Subscribe(s) => {
            assert!(!s.is_empty());
            assert_eq!(s.filters().count(), s.len());
            for (f, o) in s.filters() {
                inside(frame, f.as_bytes());
                assert!(o.qos < 3 && o.retain_handling < 3);
                let _ = mqtt::valid_filter(f);
            }
            props(frame, &s.props);
        }
        Packet::Unsubscribe(u) => {
            assert!(!u.is_empty());
            assert_eq!(u.filters().count(), u.len());
            props(frame, &u.props);
        }
        Packet::PingReq => assert_eq!(frame.len(), 2),
        Packet::Disconnect(d) => props(frame, &d.props),
        Packet::Auth(a) => props(frame, &a.props),
    }
}

fn round_trip(version: Version, p: &Packet<'_>) {
    match p {
        Packet::Publish(p) if !p.topic.is_empty() && p.payload.len() < 100_000 => {
            let corr = p.props.correlation_data;
            let mut out = Vec::new();
            write_publish(&mut out, version, p.topic, corr, p.payload);
            assert_eq!(
                out.len(),
                publish_len(version, p.topic, corr, p.payload.len())
            );
            assert_eq!(frame_len(&out, usize::MAX), Ok(Some(out.len())));
            let Ok(Packet::Publish(q)) = decode(&out, version) else {
                panic!("re-encoded PUBLISH decodes")
            };
            assert_eq!((q.topic, q.payload, q.qos), (p.topic, p.payload, 0));
            if version == Version::V5 {
                assert_eq!(q.props.correlation_data, corr);
            }
        }
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
            // Reason codes are valid per acknowledgement type (MQTT-3.4.2-1 ..), so each
            // is re-encoded as its own type only.
            let (kind, a) = match p {
                Packet::PubAck(a) => (AckKind::PubAck, a),
                Packet::PubRec(a) => (AckKind::PubRec, a),
                Packet::PubRel(a) => (AckKind::PubRel, a),
                Packet::PubComp(a) => (AckKind::PubComp, a),
                _ => unreachable!(),
            };
            let mut out = Vec::new();
            write_ack(&mut out, version, kind, a.packet_id, a.reason);
            let back = match decode(&out, version) {
                Ok(
                    Packet::PubAck(b) | Packet::PubRec(b) | Packet::PubRel(b) | Packet::PubComp(b),
                ) => b,
                other => panic!("re-encoded ack: {other:?}"),
            };
            assert_eq!(back.packet_id, a.packet_id);
            if version == Version::V5 {
                assert_eq!(back.reason, a.reason);
            }
        }
        Packet::Subscribe(s) => {
            let codes: Vec<u8> = s.filters().map(|(_, o)| o.qos.min(1)).collect();
            let mut out = Vec::new();
            write_suback(&mut out, version, s.packet_id, &codes);
            assert_eq!(frame_len(&out, usize::MAX), Ok(Some(out.len())));
        }
        _ => {}
    }
}
