//! Differential test against `rmqtt-codec =0.3.1` (dev-dependency only): random valid client
//! packets of both versions are decoded by both codecs and their fields compared; the
//! server packets this codec encodes are decoded by rmqtt and compared with what was written.

use std::num::NonZeroU16;

use bytes::BytesMut;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder;

use super::header::{write_bytes, write_varint};
use super::props::{id, PropWriter};
use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn u16nz(&mut self) -> u16 {
        (self.below(65_535) + 1) as u16
    }
    fn text(&mut self, max: u64) -> String {
        const ALPHA: &[&str] = &["a", "b", "Z", "0", "_", "-", "é", "€", "😀", " ", "."];
        (0..self.below(max + 1))
            .map(|_| ALPHA[self.below(ALPHA.len() as u64) as usize])
            .collect()
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }
    fn topic(&mut self) -> String {
        let levels = 1 + self.below(4);
        let mut t: Vec<String> = (0..levels).map(|_| self.text(6)).collect();
        if t.iter().all(String::is_empty) {
            t[0] = "x".into();
        }
        t.join("/")
    }
    fn filter(&mut self) -> String {
        let levels = 1 + self.below(4);
        let mut t: Vec<String> = (0..levels)
            .map(|_| match self.below(5) {
                0 => "+".to_string(),
                _ => self.text(5),
            })
            .collect();
        if self.below(3) == 0 {
            t.push("#".into());
        }
        let f = t.join("/");
        if f.is_empty() {
            "f".into()
        } else {
            f
        }
    }
    fn user_props(&mut self, w: &mut PropWriter) -> Vec<(String, String)> {
        let n = self.below(3);
        let v: Vec<_> = (0..n).map(|_| (self.text(4), self.text(6))).collect();
        for (k, val) in &v {
            w.pair(k, val);
        }
        v
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![first];
    write_varint(&mut b, body.len());
    b.extend_from_slice(body);
    b
}

fn rm_v3(b: &[u8]) -> v3::Packet {
    let mut buf = BytesMut::from(b);
    let (p, _) = v3::Codec::new(0)
        .decode(&mut buf)
        .expect("rmqtt v3 decodes")
        .expect("complete");
    assert!(buf.is_empty());
    p
}

fn rm_v5(b: &[u8]) -> v5::Packet {
    let mut buf = BytesMut::from(b);
    let (p, _) = v5::Codec::new(0, 0)
        .decode(&mut buf)
        .expect("rmqtt v5 decodes")
        .expect("complete");
    assert!(buf.is_empty());
    p
}

fn users(p: &Props<'_>) -> Vec<(String, String)> {
    p.user_properties()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn rm_users(u: &v5::UserProperties) -> Vec<(String, String)> {
    u.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn nz(x: Option<NonZeroU16>) -> Option<u16> {
    x.map(NonZeroU16::get)
}

/// A random CONNECT, both as bytes and the fields that went in.
fn gen_connect(rng: &mut Rng, level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    write_bytes(&mut body, b"MQTT");
    body.push(level);
    let will = rng.coin();
    let user = rng.coin();
    let pass = if level == 4 {
        user && rng.coin()
    } else {
        rng.coin()
    };
    let mut flags = 0u8;
    if rng.coin() {
        flags |= 0x02;
    }
    if will {
        flags |= 0x04 | ((rng.below(3) as u8) << 3);
        if rng.coin() {
            flags |= 0x20;
        }
    }
    if user {
        flags |= 0x80;
    }
    if pass {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&(rng.below(65_536) as u16).to_be_bytes());
    if level == 5 {
        let mut w = PropWriter::new();
        if rng.coin() {
            w.u32(id::SESSION_EXPIRY, rng.next() as u32);
        }
        if rng.coin() {
            w.u16(id::RECEIVE_MAXIMUM, rng.u16nz());
        }
        if rng.coin() {
            w.u32(id::MAXIMUM_PACKET_SIZE, (rng.below(1 << 20) + 1) as u32);
        }
        if rng.coin() {
            w.u16(id::TOPIC_ALIAS_MAXIMUM, rng.next() as u16);
        }
        if rng.coin() {
            w.u8(id::REQUEST_PROBLEM_INFO, rng.below(2) as u8);
        }
        if rng.coin() {
            w.u8(id::REQUEST_RESPONSE_INFO, rng.below(2) as u8);
        }
        rng.user_props(&mut w);
        if rng.coin() {
            let m = rng.text(5);
            w.bytes(id::AUTH_METHOD, m.as_bytes());
            if rng.coin() {
                let d = rng.bytes(8);
                w.bytes(id::AUTH_DATA, &d);
            }
        }
        w.write(&mut body);
    }
    // rmqtt refuses empty client ids (the session does too).
    let cid = format!("c{}", rng.text(10));
    write_bytes(&mut body, cid.as_bytes());
    if will {
        if level == 5 {
            let mut w = PropWriter::new();
            if rng.coin() {
                w.u32(id::WILL_DELAY, rng.next() as u32);
            }
            if rng.coin() {
                w.u8(id::PAYLOAD_FORMAT, rng.below(2) as u8);
            }
            if rng.coin() {
                w.u32(id::MESSAGE_EXPIRY, (rng.below(1000) + 1) as u32);
            }
            if rng.coin() {
                let c = rng.text(5);
                w.bytes(id::CONTENT_TYPE, c.as_bytes());
            }
            if rng.coin() {
                let t = rng.topic();
                w.bytes(id::RESPONSE_TOPIC, t.as_bytes());
            }
            if rng.coin() {
                let c = rng.bytes(6);
                w.bytes(id::CORRELATION_DATA, &c);
            }
            rng.user_props(&mut w);
            w.write(&mut body);
        }
        let t = rng.topic();
        write_bytes(&mut body, t.as_bytes());
        let m = rng.bytes(20);
        write_bytes(&mut body, &m);
    }
    if user {
        let u = rng.text(8);
        write_bytes(&mut body, u.as_bytes());
    }
    if pass {
        let p = rng.bytes(12);
        write_bytes(&mut body, &p);
    }
    frame(0x10, &body)
}

fn gen_publish(rng: &mut Rng, v5: bool) -> Vec<u8> {
    let qos = rng.below(3) as u8;
    let mut first = 0x30 | (qos << 1);
    if qos > 0 && rng.coin() {
        first |= 8;
    }
    if rng.coin() {
        first |= 1;
    }
    let mut body = Vec::new();
    let t = rng.topic();
    write_bytes(&mut body, t.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&rng.u16nz().to_be_bytes());
    }
    if v5 {
        let mut w = PropWriter::new();
        if rng.coin() {
            w.u8(id::PAYLOAD_FORMAT, rng.below(2) as u8);
        }
        if rng.coin() {
            w.u32(id::MESSAGE_EXPIRY, (rng.below(1000) + 1) as u32);
        }
        if rng.coin() {
            let c = rng.text(6);
            w.bytes(id::CONTENT_TYPE, c.as_bytes());
        }
        if rng.coin() {
            let t = rng.topic();
            w.bytes(id::RESPONSE_TOPIC, t.as_bytes());
        }
        if rng.coin() {
            let c = rng.bytes(16);
            w.bytes(id::CORRELATION_DATA, &c);
        }
        if rng.below(4) == 0 {
            w.u16(id::TOPIC_ALIAS, rng.u16nz());
        }
        rng.user_props(&mut w);
        w.write(&mut body);
    }
    let max = if rng.below(10) == 0 { 300 } else { 30 };
    let payload = rng.bytes(max);
    body.extend_from_slice(&payload);
    frame(first, &body)
}

fn gen_ack(rng: &mut Rng, v5: bool) -> Vec<u8> {
    let kind = rng.below(4) as u8;
    let first = [0x40, 0x50, 0x62, 0x70][kind as usize];
    let mut body = rng.u16nz().to_be_bytes().to_vec();
    if v5 && rng.coin() {
        let reasons: &[u8] = if kind < 2 {
            &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
        } else {
            &[0x00, 0x92]
        };
        body.push(reasons[rng.below(reasons.len() as u64) as usize]);
        if rng.coin() {
            let mut w = PropWriter::new();
            if rng.coin() {
                let s = rng.text(8);
                w.bytes(id::REASON_STRING, s.as_bytes());
            }
            rng.user_props(&mut w);
            w.write(&mut body);
        }
    }
    frame(first, &body)
}

fn gen_subscribe(rng: &mut Rng, v5: bool) -> Vec<u8> {
    let mut body = rng.u16nz().to_be_bytes().to_vec();
    if v5 {
        let mut w = PropWriter::new();
        if rng.coin() {
            w.varint(id::SUBSCRIPTION_ID, (rng.below(1 << 20) + 1) as usize);
        }
        rng.user_props(&mut w);
        w.write(&mut body);
    }
    for _ in 0..1 + rng.below(4) {
        let f = rng.filter();
        write_bytes(&mut body, f.as_bytes());
        let mut o = rng.below(3) as u8;
        if v5 {
            o |= (rng.below(4) as u8 & 3) << 2 | (rng.below(3) as u8) << 4;
        }
        body.push(o);
    }
    frame(0x82, &body)
}

fn gen_unsubscribe(rng: &mut Rng, v5: bool) -> Vec<u8> {
    let mut body = rng.u16nz().to_be_bytes().to_vec();
    if v5 {
        let mut w = PropWriter::new();
        rng.user_props(&mut w);
        w.write(&mut body);
    }
    for _ in 0..1 + rng.below(4) {
        let f = rng.filter();
        write_bytes(&mut body, f.as_bytes());
    }
    frame(0xA2, &body)
}

fn gen_disconnect(rng: &mut Rng, v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    if v5 && rng.coin() {
        body.push([0x00, 0x04, 0x80, 0x83, 0x90][rng.below(5) as usize]);
        if rng.coin() {
            let mut w = PropWriter::new();
            if rng.coin() {
                w.u32(id::SESSION_EXPIRY, rng.next() as u32);
            }
            if rng.coin() {
                let s = rng.text(8);
                w.bytes(id::REASON_STRING, s.as_bytes());
            }
            rng.user_props(&mut w);
            w.write(&mut body);
        }
    }
    frame(0xE0, &body)
}

fn gen_auth(rng: &mut Rng) -> Vec<u8> {
    let mut body = vec![[0x00, 0x18, 0x19][rng.below(3) as usize]];
    let mut w = PropWriter::new();
    let m = rng.text(5);
    w.bytes(id::AUTH_METHOD, m.as_bytes());
    if rng.coin() {
        let d = rng.bytes(8);
        w.bytes(id::AUTH_DATA, &d);
    }
    w.write(&mut body);
    frame(0xF0, &body)
}

fn compare_v3(b: &[u8]) {
    let ours = decode(b, Version::V311).unwrap_or_else(|e| panic!("{e}: {b:02x?}"));
    match (ours, rm_v3(b)) {
        (Packet::Connect(c), v3::Packet::Connect(r)) => {
            assert_eq!(r.protocol.0, 4);
            assert_eq!(c.clean_start, r.clean_session);
            assert_eq!(c.keep_alive, r.keep_alive);
            assert_eq!(c.client_id, &*r.client_id);
            assert_eq!(c.username, r.username.as_deref());
            assert_eq!(c.password, r.password.as_deref());
            match (c.will, &r.last_will) {
                (None, None) => {}
                (Some(w), Some(rw)) => {
                    assert_eq!(w.qos, rw.qos.value());
                    assert_eq!(w.retain, rw.retain);
                    assert_eq!(w.topic, &*rw.topic);
                    assert_eq!(w.payload, &rw.message[..]);
                }
                (w, rw) => panic!("will {w:?} vs {rw:?}"),
            }
        }
        (Packet::Publish(p), v3::Packet::Publish(r)) => {
            assert_eq!((p.dup, p.retain, p.qos), (r.dup, r.retain, r.qos.value()));
            assert_eq!(p.topic, &*r.topic);
            assert_eq!(p.packet_id, r.packet_id.map(|x| x.get()));
            assert_eq!(p.payload, &r.payload[..]);
        }
        (Packet::PubAck(a), v3::Packet::PublishAck { packet_id })
        | (Packet::PubRec(a), v3::Packet::PublishReceived { packet_id })
        | (Packet::PubRel(a), v3::Packet::PublishRelease { packet_id })
        | (Packet::PubComp(a), v3::Packet::PublishComplete { packet_id }) => {
            assert_eq!(a.packet_id, packet_id.get());
        }
        (
            Packet::Subscribe(s),
            v3::Packet::Subscribe {
                packet_id,
                topic_filters,
            },
        ) => {
            assert_eq!(s.packet_id, packet_id.get());
            let ours: Vec<_> = s.filters().map(|(f, o)| (f.to_owned(), o.qos)).collect();
            let theirs: Vec<_> = topic_filters
                .iter()
                .map(|(f, q)| (f.to_string(), q.value()))
                .collect();
            assert_eq!(ours, theirs);
        }
        (
            Packet::Unsubscribe(u),
            v3::Packet::Unsubscribe {
                packet_id,
                topic_filters,
            },
        ) => {
            assert_eq!(u.packet_id, packet_id.get());
            assert!(u.filters().eq(topic_filters.iter().map(|f| &**f)));
        }
        (Packet::PingReq, v3::Packet::PingRequest)
        | (Packet::Disconnect(_), v3::Packet::Disconnect) => {}
        (o, r) => panic!("{o:?} vs {r:?}"),
    }
}

fn compare_v5(b: &[u8]) {
    let ours = decode(b, Version::V5).unwrap_or_else(|e| panic!("{e}: {b:02x?}"));
    match (ours, rm_v5(b)) {
        (Packet::Connect(c), v5::Packet::Connect(r)) => {
            assert_eq!(c.version, Version::V5);
            assert_eq!(c.clean_start, r.clean_start);
            assert_eq!(c.keep_alive, r.keep_alive);
            assert_eq!(c.client_id, &*r.client_id);
            assert_eq!(c.username, r.username.as_deref());
            assert_eq!(c.password, r.password.as_deref());
            let p = c.props;
            assert_eq!(
                p.session_expiry.unwrap_or(0),
                r.session_expiry_interval_secs
            );
            assert_eq!(p.receive_maximum, r.receive_max.map(|x| x.get()));
            assert_eq!(p.maximum_packet_size, r.max_packet_size.map(|x| x.get()));
            assert_eq!(p.topic_alias_maximum.unwrap_or(0), r.topic_alias_max);
            assert_eq!(
                p.request_problem_info.unwrap_or(1) == 1,
                r.request_problem_info
            );
            assert_eq!(
                p.request_response_info.unwrap_or(0) == 1,
                r.request_response_info
            );
            assert_eq!(p.auth_method, r.auth_method.as_deref());
            assert_eq!(p.auth_data, r.auth_data.as_deref());
            assert_eq!(users(&p), rm_users(&r.user_properties));
            match (c.will, &r.last_will) {
                (None, None) => {}
                (Some(w), Some(rw)) => {
                    assert_eq!((w.qos, w.retain), (rw.qos.value(), rw.retain));
                    assert_eq!(w.topic, &*rw.topic);
                    assert_eq!(w.payload, &rw.message[..]);
                    assert_eq!(w.props.will_delay, rw.will_delay_interval_sec);
                    assert_eq!(w.props.correlation_data, rw.correlation_data.as_deref());
                    assert_eq!(
                        w.props.message_expiry,
                        rw.message_expiry_interval.map(|x| x.get())
                    );
                    assert_eq!(w.props.content_type, rw.content_type.as_deref());
                    assert_eq!(w.props.response_topic, rw.response_topic.as_deref());
                    assert_eq!(users(&w.props), rm_users(&rw.user_properties));
                }
                (w, rw) => panic!("will {w:?} vs {rw:?}"),
            }
        }
        (Packet::Publish(p), v5::Packet::Publish(r)) => {
            assert_eq!((p.dup, p.retain, p.qos), (r.dup, r.retain, r.qos.value()));
            assert_eq!(p.topic, &*r.topic);
            assert_eq!(p.packet_id, r.packet_id.map(|x| x.get()));
            assert_eq!(p.payload, &r.payload[..]);
            let rp = r.properties.clone().unwrap_or_default();
            assert_eq!(p.props.topic_alias, nz(rp.topic_alias));
            assert_eq!(p.props.correlation_data, rp.correlation_data.as_deref());
            assert_eq!(
                p.props.message_expiry,
                rp.message_expiry_interval.map(|x| x.get())
            );
            assert_eq!(p.props.content_type, rp.content_type.as_deref());
            assert_eq!(p.props.response_topic, rp.response_topic.as_deref());
            assert_eq!(p.props.payload_format == Some(1), rp.is_utf8_payload);
            assert_eq!(users(&p.props), rm_users(&rp.user_properties));
        }
        (Packet::PubAck(a), v5::Packet::PublishAck(r))
        | (Packet::PubRec(a), v5::Packet::PublishReceived(r)) => {
            assert_eq!(
                (a.packet_id, a.reason),
                (r.packet_id.get(), r.reason_code as u8)
            );
            assert_eq!(a.props.reason_string, r.reason_string.as_deref());
            assert_eq!(users(&a.props), rm_users(&r.properties));
        }
        (Packet::PubRel(a), v5::Packet::PublishRelease(r))
        | (Packet::PubComp(a), v5::Packet::PublishComplete(r)) => {
            assert_eq!(
                (a.packet_id, a.reason),
                (r.packet_id.get(), r.reason_code as u8)
            );
            assert_eq!(a.props.reason_string, r.reason_string.as_deref());
            assert_eq!(users(&a.props), rm_users(&r.properties));
        }
        (Packet::Subscribe(s), v5::Packet::Subscribe(r)) => {
            assert_eq!(s.packet_id, r.packet_id.get());
            assert_eq!(s.props.subscription_id, r.id.map(|x| x.get()));
            assert_eq!(users(&s.props), rm_users(&r.user_properties));
            let ours: Vec<_> = s
                .filters()
                .map(|(f, o)| {
                    (
                        f.to_owned(),
                        o.qos,
                        o.no_local,
                        o.retain_as_published,
                        o.retain_handling,
                    )
                })
                .collect();
            let theirs: Vec<_> = r
                .topic_filters
                .iter()
                .map(|(f, o)| {
                    (
                        f.to_string(),
                        o.qos.value(),
                        o.no_local,
                        o.retain_as_published,
                        o.retain_handling as u8,
                    )
                })
                .collect();
            assert_eq!(ours, theirs);
        }
        (Packet::Unsubscribe(u), v5::Packet::Unsubscribe(r)) => {
            assert_eq!(u.packet_id, r.packet_id.get());
            assert_eq!(users(&u.props), rm_users(&r.user_properties));
            assert!(u.filters().eq(r.topic_filters.iter().map(|f| &**f)));
        }
        (Packet::PingReq, v5::Packet::PingRequest) => {}
        (Packet::Disconnect(d), v5::Packet::Disconnect(r)) => {
            assert_eq!(d.reason, r.reason_code as u8);
            assert_eq!(d.props.session_expiry, r.session_expiry_interval_secs);
            assert_eq!(d.props.reason_string, r.reason_string.as_deref());
            assert_eq!(users(&d.props), rm_users(&r.user_properties));
        }
        (Packet::Auth(a), v5::Packet::Auth(r)) => {
            assert_eq!(a.reason, r.reason_code as u8);
            assert_eq!(a.props.auth_method, r.auth_method.as_deref());
            assert_eq!(a.props.auth_data, r.auth_data.as_deref());
        }
        (o, r) => panic!("{o:?} vs {r:?}"),
    }
}

#[test]
fn client_packets_decode_like_rmqtt() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..400 {
        let v5 = rng.coin();
        let b = match rng.below(8) {
            0 => gen_connect(&mut rng, if v5 { 5 } else { 4 }),
            1 | 2 => gen_publish(&mut rng, v5),
            3 => gen_ack(&mut rng, v5),
            4 => gen_subscribe(&mut rng, v5),
            5 => gen_unsubscribe(&mut rng, v5),
            6 => frame(0xC0, &[]),
            _ if v5 && rng.coin() => gen_auth(&mut rng),
            _ => gen_disconnect(&mut rng, v5),
        };
        if v5 {
            compare_v5(&b);
        } else {
            compare_v3(&b);
        }
        // Framing agrees with the whole buffer.
        assert_eq!(frame_len(&b, usize::MAX), Ok(Some(b.len())));
    }
}

#[test]
fn server_packets_decode_in_rmqtt() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..200 {
        // CONNACK 3.1.1.
        let code = rng.below(6) as u8;
        let mut out = Vec::new();
        write_connack(&mut out, Version::V311, code, None);
        let v3::Packet::ConnectAck(a) = rm_v3(&out) else {
            panic!()
        };
        assert_eq!((a.return_code as u8, a.session_present), (code, false));

        // CONNACK 5 with the session's properties.
        let mut w = PropWriter::new();
        let (rm, mps, ka) = (rng.u16nz(), (rng.below(1 << 24) + 1) as u32, rng.u16nz());
        w.u16(id::RECEIVE_MAXIMUM, rm)
            .u8(id::MAXIMUM_QOS, 1)
            .u8(id::RETAIN_AVAILABLE, 0)
            .u32(id::MAXIMUM_PACKET_SIZE, mps)
            .u16(id::TOPIC_ALIAS_MAXIMUM, 0)
            .u8(id::SUBSCRIPTION_IDS_AVAILABLE, 0)
            .u8(id::SHARED_AVAILABLE, 0)
            .u16(id::SERVER_KEEP_ALIVE, ka)
            .u32(id::SESSION_EXPIRY, 0);
        let mut out = Vec::new();
        write_connack(&mut out, Version::V5, 0, Some(&w));
        let v5::Packet::ConnectAck(a) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!(a.receive_max.get(), rm);
        assert_eq!(a.max_qos.value(), 1);
        assert_eq!(a.max_packet_size, Some(mps));
        assert_eq!(a.server_keepalive_sec, Some(ka));
        assert_eq!(a.session_expiry_interval_secs, Some(0));
        assert!(!a.retain_available && !a.subscription_identifiers_available);
        assert!(!a.shared_subscription_available && a.wildcard_subscription_available);
        assert_eq!(a.topic_alias_max, 0);

        // PUBLISH, both versions.
        let topic = rng.topic();
        let payload = rng.bytes(200);
        let corr = rng.bytes(10);
        for version in [Version::V311, Version::V5] {
            let mut out = Vec::new();
            write_publish(&mut out, version, &topic, Some(&corr), &payload);
            let (t, p, c, q) = match version {
                Version::V311 => {
                    let v3::Packet::Publish(r) = rm_v3(&out) else {
                        panic!()
                    };
                    (r.topic.to_string(), r.payload.to_vec(), None, r.qos.value())
                }
                Version::V5 => {
                    let v5::Packet::Publish(r) = rm_v5(&out) else {
                        panic!()
                    };
                    let c = r
                        .properties
                        .and_then(|p| p.correlation_data)
                        .map(|c| c.to_vec());
                    (r.topic.to_string(), r.payload.to_vec(), c, r.qos.value())
                }
            };
            assert_eq!((t, p, q), (topic.clone(), payload.clone(), 0));
            if version == Version::V5 {
                assert_eq!(c, Some(corr.clone()));
            }
        }

        // Acks.
        let pid = rng.u16nz();
        let reason = [0x00, 0x87, 0x10][rng.below(3) as usize];
        let mut out = Vec::new();
        write_ack(&mut out, Version::V5, AckKind::PubAck, pid, reason);
        let v5::Packet::PublishAck(a) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!((a.packet_id.get(), a.reason_code as u8), (pid, reason));
        let mut out = Vec::new();
        write_ack(&mut out, Version::V311, AckKind::PubRec, pid, 0);
        write_ack(&mut out, Version::V311, AckKind::PubComp, pid, 0);
        let mut buf = BytesMut::from(&out[..]);
        let mut codec = v3::Codec::new(0);
        let (a, _) = codec.decode(&mut buf).unwrap().unwrap();
        let (b, _) = codec.decode(&mut buf).unwrap().unwrap();
        let p = NonZeroU16::new(pid).unwrap();
        assert_eq!(a, v3::Packet::PublishReceived { packet_id: p });
        assert_eq!(b, v3::Packet::PublishComplete { packet_id: p });
        let mut out = Vec::new();
        write_ack(&mut out, Version::V5, AckKind::PubComp, pid, 0x92);
        let v5::Packet::PublishComplete(a) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!(a.reason_code as u8, 0x92);

        // SUBACK / UNSUBACK.
        let codes: Vec<u8> = (0..1 + rng.below(4))
            .map(|_| [0, 1, 0x80][rng.below(3) as usize])
            .collect();
        let mut out = Vec::new();
        write_suback(&mut out, Version::V311, pid, &codes);
        let v3::Packet::SubscribeAck { packet_id, status } = rm_v3(&out) else {
            panic!()
        };
        assert_eq!(packet_id.get(), pid);
        let st: Vec<u8> = status
            .iter()
            .map(|s| match s {
                v3::SubscribeReturnCode::Success(q) => q.value(),
                v3::SubscribeReturnCode::Failure => 0x80,
            })
            .collect();
        assert_eq!(st, codes);
        let v5codes: Vec<u8> = codes
            .iter()
            .map(|&c| if c == 0x80 { 0x87 } else { c })
            .collect();
        let mut out = Vec::new();
        write_suback(&mut out, Version::V5, pid, &v5codes);
        let v5::Packet::SubscribeAck(a) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!(
            a.status.iter().map(|s| *s as u8).collect::<Vec<_>>(),
            v5codes
        );
        let mut out = Vec::new();
        write_unsuback(&mut out, Version::V311, pid, &[]);
        assert_eq!(rm_v3(&out), v3::Packet::UnsubscribeAck { packet_id: p });
        let ucodes = [0x00, 0x11];
        let mut out = Vec::new();
        write_unsuback(&mut out, Version::V5, pid, &ucodes);
        let v5::Packet::UnsubscribeAck(a) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!(
            a.status.iter().map(|s| *s as u8).collect::<Vec<_>>(),
            ucodes
        );

        // PINGRESP, DISCONNECT.
        let mut out = Vec::new();
        write_pingresp(&mut out);
        assert_eq!(rm_v3(&out), v3::Packet::PingResponse);
        let code = [0x8E, 0x97, 0x98, 0x8B, 0x8D, 0x95][rng.below(6) as usize];
        let mut out = Vec::new();
        write_disconnect(&mut out, Version::V5, code);
        let v5::Packet::Disconnect(d) = rm_v5(&out) else {
            panic!()
        };
        assert_eq!(d.reason_code as u8, code);
    }
}

fn gen_any(rng: &mut Rng, v5: bool) -> Vec<u8> {
    match rng.below(8) {
        0 => gen_connect(rng, if v5 { 5 } else { 4 }),
        1 | 2 => gen_publish(rng, v5),
        3 => gen_ack(rng, v5),
        4 => gen_subscribe(rng, v5),
        5 => gen_unsubscribe(rng, v5),
        6 => frame(0xC0, &[]),
        _ if v5 && rng.coin() => gen_auth(rng),
        _ => gen_disconnect(rng, v5),
    }
}

/// Flips, inserts, deletes or truncates a few bytes.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            return;
        }
        let i = rng.below(b.len() as u64) as usize;
        match rng.below(4) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b.insert(i, rng.next() as u8),
            2 => {
                b.remove(i);
            }
            _ => b.truncate(i),
        }
    }
}

/// Mutated valid packets: decoding never panics, whatever decodes here also decodes in
/// rmqtt (which is more lenient), and the session answers in whole packets.
#[test]
fn mutated_packets_never_panic() {
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    let mut disagree = Vec::new();
    for _ in 0..4000 {
        let v5 = rng.coin();
        let mut b = gen_any(&mut rng, v5);
        mutate(&mut rng, &mut b);
        for version in [Version::V311, Version::V5] {
            let Ok(Some(n)) = frame_len(&b, usize::MAX) else {
                continue;
            };
            if n > b.len() {
                continue;
            }
            let frame = &b[..n];
            let Ok(p) = decode(frame, version) else {
                continue;
            };
            let _ = format!("{p:?}");
            let mut buf = BytesMut::from(frame);
            let theirs_ok = match version {
                Version::V311 => v3::Codec::new(0)
                    .decode(&mut buf)
                    .is_ok_and(|p| p.is_some()),
                Version::V5 => v5::Codec::new(0, 0)
                    .decode(&mut buf)
                    .is_ok_and(|p| p.is_some()),
            };
            // rmqtt refuses empty client ids, and its v5 codec CONNECTs other than level 5.
            let connect_skip =
                matches!(&p, Packet::Connect(c) if c.client_id.is_empty() || c.version != version);
            if !theirs_ok && !connect_skip {
                disagree.push((version, frame.to_vec()));
            }
        }
        // The session too, after a valid CONNECT.
        for v in [Version::V311, Version::V5] {
            let now = std::time::Instant::now();
            let mut s = crate::session::Session::new(
                crate::session::SessionConfig {
                    max_packet_bytes: 1024,
                    keepalive_max_secs: 30,
                    receive_maximum: 2,
                },
                now,
            );
            let level = if v == Version::V5 { 5 } else { 4 };
            let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', level, 2, 0, 10];
            if level == 5 {
                connect.push(0);
            }
            connect.extend_from_slice(&[0, 1, b'd']);
            connect[1] = (connect.len() - 2) as u8;
            let mut buf = BytesMut::from(&connect[..]);
            s.handle_bytes(now, &mut buf).unwrap();
            s.accept_connect("alice", "d");
            buf.extend_from_slice(&b);
            let _ = s.handle_bytes(now, &mut buf);
            while let Some(e) = s.poll_event() {
                if let crate::session::SessionEvent::Request { ticket, .. } = e {
                    s.complete(ticket, b"{}");
                }
            }
            let mut out = Vec::new();
            s.poll_transmit(&mut out);
            let mut rest = &out[..];
            while !rest.is_empty() {
                let n = frame_len(rest, usize::MAX).unwrap().unwrap();
                rest = &rest[n..];
            }
        }
    }
    assert!(
        disagree.is_empty(),
        "{} accepted here, refused by rmqtt: {:02x?}",
        disagree.len(),
        &disagree[..disagree.len().min(5)]
    );
}
