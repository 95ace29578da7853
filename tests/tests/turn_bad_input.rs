//! `ember turn` under hostile or broken input, driven with raw sockets and messages built
//! with `ember_turn::stun` (see `ember_tests::stun_client`).
//!
//! - Garbage over UDP (empty, truncated, bad cookie/length/fingerprint, random bytes, a
//!   60 KB datagram, stray indications and responses) gets no
//!   reply, and the next Binding request on the same socket is the first thing answered.
//! - Bytes that are neither STUN nor ChannelData close a TCP (or TLS) connection, and only
//!   that one; a well-framed but invalid STUN message is skipped without closing.
//! - An unknown comprehension-required attribute earns 420 with UNKNOWN-ATTRIBUTES.
//! - Without `allowed_peers`, loopback, private, link-local and IPv4-mapped peers get 403 on
//!   CreatePermission and ChannelBind, Send indications to them are dropped, and the peer
//!   sockets never see a packet; the relay's own listeners are denied even when loopback
//!   is allowed.
//! - `user_quota = 1`: a second allocation of the same user (static or REST user part) gets
//!   486 until the first is deleted.
//! - `/metrics` follows allocations, relayed packets and bytes, and auth failures (workers
//!   publish once a second, so every check polls with a bound).
//! - The auth-failure limiter stops answering an address after its budget.
//! - SIGTERM with live allocations stops the process cleanly and frees its ports.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ember_tests::metrics::{self, Metrics};
use ember_tests::stun_client::{
    build, long_term_key, new_tid, Attr, Auth, RawClient, StunResponse,
};
use ember_tests::turn_client::{rest_credentials, unix_now};
use ember_tests::{Ember, TurnOptions};
use ember_turn::stun::{attr, method, Class, Message};
use rand::{Rng, SeedableRng};

const METRICS_WAIT: Duration = Duration::from_secs(10);
/// How long "no reply" is waited for.
const QUIET: Duration = Duration::from_millis(300);

/// A Binding request that must be the next thing the server answers on this client.
fn assert_next_reply_is_binding(c: &mut RawClient, what: &str) {
    let tid = new_tid();
    let req = build(method::BINDING, Class::Request, &tid, &[], None);
    c.send_raw(&req).expect("send binding");
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match c.recv_raw(Duration::from_millis(500)).expect("recv") {
            Some(b) => break b,
            // UDP: the request itself may be lost in theory; send it again.
            None if Instant::now() < deadline => c.send_raw(&req).expect("resend binding"),
            None => panic!("{what}: the server no longer answers Binding requests"),
        }
    };
    let m = Message::parse(&first)
        .unwrap_or_else(|e| panic!("{what}: first reply is not STUN ({e}): {first:02x?}"));
    assert_eq!(
        (m.method(), m.class(), m.transaction_id()),
        (method::BINDING, Class::Success, tid),
        "{what}: the first reply must be the Binding success (a reply to garbage came first?)"
    );
    assert_eq!(
        m.get_xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(c.local_addr()),
        "{what}: XOR-MAPPED-ADDRESS"
    );
}

fn assert_quiet(c: &mut RawClient, what: &str) {
    if let Some(b) = c.recv_raw(QUIET).expect("recv") {
        panic!("{what}: unexpected reply {:?}", StunResponse { bytes: b });
    }
}

/// Malformed or unsolicited datagrams, each of which must be dropped without a reply.
fn udp_garbage(client: SocketAddr) -> Vec<(String, Vec<u8>)> {
    let tid = new_tid();
    let binding = build(method::BINDING, Class::Request, &tid, &[], None);
    let mut g: Vec<(String, Vec<u8>)> = vec![
        ("empty datagram".into(), vec![]),
        ("one byte".into(), vec![0]),
        ("19 bytes".into(), vec![0; 19]),
        (
            "header only, no magic cookie".into(),
            vec![
                0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
            ],
        ),
        (
            "Binding cut short".into(),
            binding[..binding.len() - 4].to_vec(),
        ),
        (
            "Binding with trailing bytes".into(),
            [&binding[..], &[0, 0, 0, 0]].concat(),
        ),
        ("length not a multiple of 4".into(), {
            let mut b = build(
                method::BINDING,
                Class::Request,
                &tid,
                &[Attr::Raw(0x8022, b"abc".to_vec())],
                None,
            );
            b[3] -= 1; // claims 1 byte less than sent
            b.truncate(b.len() - 1);
            b
        }),
        ("bad FINGERPRINT".into(), {
            let mut b = binding.clone();
            let n = b.len();
            b[n - 1] ^= 0xFF;
            b
        }),
        ("attribute running past the end".into(), {
            let mut b = build(
                method::BINDING,
                Class::Request,
                &tid,
                &[Attr::Raw(0x8022, vec![7; 8])],
                None,
            );
            b[22..24].copy_from_slice(&200u16.to_be_bytes());
            b
        }),
        ("40 attributes".into(), {
            let attrs: Vec<Attr> = (0..40).map(|i| Attr::U32(0x8050 + i, 1)).collect();
            build(method::BINDING, Class::Request, &tid, &attrs, None)
        }),
        (
            "Binding success response".into(),
            build(method::BINDING, Class::Success, &tid, &[], None),
        ),
        (
            "Binding indication".into(),
            build(method::BINDING, Class::Indication, &tid, &[], None),
        ),
        (
            "Allocate error response".into(),
            build(method::ALLOCATE, Class::Error, &tid, &[], None),
        ),
        (
            "Send indication without allocation".into(),
            build(
                method::SEND,
                Class::Indication,
                &tid,
                &[
                    Attr::Xor(attr::XOR_PEER_ADDRESS, client),
                    Attr::Raw(attr::DATA, b"x".to_vec()),
                ],
                None,
            ),
        ),
        (
            "ChannelData without allocation".into(),
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        ),
        (
            "ChannelData longer than the datagram".into(),
            vec![0x40, 0x01, 0x01, 0x00, 1, 2, 3, 4],
        ),
        (
            "reserved channel 0x8000".into(),
            vec![0x80, 0x00, 0x00, 0x00],
        ),
        ("60 KB of random bytes".into(), {
            let mut r = rand::rngs::StdRng::seed_from_u64(60);
            (0..60_000).map(|_| r.gen()).collect()
        }),
    ];
    let mut r = rand::rngs::StdRng::seed_from_u64(0xE3B3);
    for i in 0..64 {
        let len = r.gen_range(1..1500);
        let mut b: Vec<u8> = (0..len).map(|_| r.gen()).collect();
        if i % 2 == 0 && b.len() >= 20 {
            // Half of them look like STUN at first sight: leading bits and magic cookie.
            b[0] &= 0x3F;
            b[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        }
        g.push((format!("random datagram #{i} ({len} bytes)"), b));
    }
    g
}

#[test]
fn udp_garbage_gets_no_reply_and_binding_still_works() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let mut c = RawClient::udp(ember.turn_udp());
    assert_next_reply_is_binding(&mut c, "before any garbage");
    let garbage = udp_garbage(c.local_addr());
    for (what, bytes) in &garbage {
        c.send_raw(bytes)
            .unwrap_or_else(|e| panic!("send {what}: {e}"));
    }
    // One worker owns this 5-tuple and handles its datagrams in order: a reply to any of
    // the garbage would arrive before the Binding response.
    assert_next_reply_is_binding(&mut c, "after all the garbage");
    assert_quiet(&mut c, "after the Binding response");

    // Each kind alone, each followed by a Binding request from the same socket.
    for (what, bytes) in garbage
        .iter()
        .filter(|(w, _)| !w.starts_with("random datagram"))
    {
        c.send_raw(bytes).expect("send");
        assert_next_reply_is_binding(&mut c, what);
    }
    // A fresh client is served too.
    assert_next_reply_is_binding(&mut RawClient::udp(ember.turn_udp()), "a new client");

    // Size alone is no fault: a well-formed 60 KB Binding request (UDP allows 65,507 bytes)
    // is answered like any other.
    let tid = new_tid();
    let big = build(
        method::BINDING,
        Class::Request,
        &tid,
        &[Attr::Raw(0x8022, vec![b'A'; 60_000])],
        None,
    );
    c.send_raw(&big).expect("send 60 KB binding");
    let reply = c
        .recv_raw(Duration::from_secs(5))
        .expect("recv")
        .expect("the 60 KB Binding request is answered");
    assert_eq!(Message::parse(&reply).expect("STUN").transaction_id(), tid);
    metrics::wait_for(
        ember.metrics_addr(),
        "malformed packets counted",
        METRICS_WAIT,
        |m| m.get("ember_turn_malformed_packets_total", &[]) >= 10.0,
    );
}

/// Reads until the server closes the connection; panics on any reply other than a TLS
/// alert record when `tls_alert_ok`, or when the connection stays open for 5 s.
fn assert_closed(s: &mut TcpStream, what: &str, tls_alert_ok: bool) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: connection not closed: {e} (received {got:02x?})"),
        }
    }
    let alert = got.len() == 7 && got[0] == 0x15;
    assert!(
        got.is_empty() || (tls_alert_ok && alert),
        "{what}: unexpected reply before the close: {got:02x?}"
    );
}

#[test]
fn tcp_garbage_closes_only_that_connection() {
    use std::io::Write;
    let ember = Ember::start_turn(&TurnOptions::default());
    let mut bystander = RawClient::tcp(ember.turn_tcp());
    assert_next_reply_is_binding(&mut bystander, "TCP bystander");

    // Not TURN framing, closed at once: neither STUN (leading bits 00 and the magic cookie)
    // nor ChannelData (01, meaningful only once the connection has an allocation). This also
    // catches other protocols: "GET " looks like a ChannelData header, a TLS ClientHello like
    // a STUN header without the cookie.
    let mut bad_cookie = build(method::BINDING, Class::Request, &new_tid(), &[], None);
    bad_cookie[4] ^= 0xFF;
    for (what, bytes) in [
        ("STUN header with a bad magic cookie", bad_cookie),
        (
            "ChannelData before any allocation",
            vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0],
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a TLS ClientHello",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0, 0, 0,
            ],
        ),
        ("0xFF bytes", vec![0xFF; 64]),
        ("leading bits 10", vec![0x80, 0x01, 0x00, 0x00]),
        (
            "leading bits 11",
            vec![0xC0, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42],
        ),
        ("random bytes", {
            let mut r = rand::rngs::StdRng::seed_from_u64(7);
            let mut b: Vec<u8> = (0..300).map(|_| r.gen()).collect();
            b[0] |= 0x80;
            b
        }),
        ("random bytes after a valid Binding", {
            let mut b = build(method::BINDING, Class::Request, &new_tid(), &[], None);
            b.extend_from_slice(&[0x80 | 0x3F, 1, 2, 3, 4, 5]);
            b
        }),
    ] {
        let mut s = TcpStream::connect(ember.turn_tcp()).expect("connect");
        s.write_all(&bytes).expect("write");
        if what.starts_with("random bytes after") {
            // The valid Binding in front is answered first, then the connection closes.
            let r = read_one_frame(&mut s);
            assert!(
                r.method() == method::BINDING && r.is_success(),
                "{what}: {r:?}"
            );
        }
        assert_closed(&mut s, what, false);
    }

    // Plain bytes to the TLS listener fail the handshake: a TLS alert, then the close.
    let mut s = TcpStream::connect(ember.turn_tls()).expect("connect TLS port");
    s.write_all(&[0xFF; 64]).expect("write");
    assert_closed(&mut s, "garbage to the TLS port", true);

    // Well framed STUN that fails its FINGERPRINT is skipped; the connection stays and keeps
    // answering.
    let mut c = RawClient::tcp(ember.turn_tcp());
    let mut bad_fp = build(method::BINDING, Class::Request, &new_tid(), &[], None);
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 0xFF;
    c.send_raw(&bad_fp).expect("send");
    assert_next_reply_is_binding(&mut c, "TCP after a malformed STUN frame");

    // A Binding split across writes is reassembled.
    let tid = new_tid();
    let req = build(method::BINDING, Class::Request, &tid, &[], None);
    for chunk in req.chunks(3) {
        c.send_raw(chunk).expect("send chunk");
        std::thread::sleep(Duration::from_millis(5));
    }
    let reply = c
        .recv_raw(Duration::from_secs(5))
        .expect("recv")
        .expect("a reply");
    assert_eq!(Message::parse(&reply).expect("STUN").transaction_id(), tid);

    assert_next_reply_is_binding(&mut bystander, "TCP bystander afterwards");
    assert_next_reply_is_binding(&mut RawClient::tcp(ember.turn_tcp()), "a new TCP client");
    assert_next_reply_is_binding(&mut RawClient::udp(ember.turn_udp()), "UDP afterwards");
}

fn read_one_frame(s: &mut TcpStream) -> StunResponse {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("STUN header");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("STUN body");
    StunResponse {
        bytes: [&head[..], &body].concat(),
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let ember = Ember::start_turn(&TurnOptions::default());
    for mut c in [
        RawClient::udp(ember.turn_udp()),
        RawClient::tcp(ember.turn_tcp()),
    ] {
        for m in [method::BINDING, method::ALLOCATE, method::REFRESH] {
            let req = build(
                m,
                Class::Request,
                &new_tid(),
                &[Attr::U32(0x7777, 1), Attr::U32(0x0031, 2)],
                None,
            );
            let r = c.transact(&req);
            assert_eq!(r.method(), m);
            assert_eq!(r.error_code(), Some(420), "method {m:#x}: {r:?}");
            let unknown = r
                .message()
                .get(attr::UNKNOWN_ATTRIBUTES)
                .expect("UNKNOWN-ATTRIBUTES")
                .to_vec();
            assert_eq!(
                unknown,
                vec![0x77, 0x77, 0x00, 0x31],
                "UNKNOWN-ATTRIBUTES lists both"
            );
        }
        // Unknown comprehension-optional attributes (>= 0x8000) are ignored.
        let req = build(
            method::BINDING,
            Class::Request,
            &new_tid(),
            &[Attr::U32(0xC0DE, 1)],
            None,
        );
        assert!(c.transact(&req).is_success());
    }
}

/// A UDP socket that must never receive anything.
struct SilentPeer {
    sock: UdpSocket,
}

impl SilentPeer {
    fn bind(addr: &str) -> SilentPeer {
        let sock = UdpSocket::bind(addr).expect("bind peer");
        sock.set_nonblocking(true).expect("nonblocking");
        SilentPeer { sock }
    }
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }
    fn assert_nothing_received(&self, what: &str) {
        let mut buf = [0u8; 2048];
        match self.sock.recv_from(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok((n, from)) => panic!(
                "{what}: peer {} received {n} bytes from {from}",
                self.addr()
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn denied_peers_get_403_and_never_a_packet() {
    let ember = Ember::start_turn(&TurnOptions {
        relay_ip: vec!["127.0.0.1".into(), "::1".into()],
        allowed_peers: vec![],
        ..TurnOptions::default()
    });
    let v4 = SilentPeer::bind("127.0.0.1:0");
    let v6 = SilentPeer::bind("[::1]:0");
    let p4 = v4.addr().port();
    let mut c = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let relays = c.must_allocate(&[Attr::Raw(
        attr::ADDITIONAL_ADDRESS_FAMILY,
        vec![0x02, 0, 0, 0],
    )]);
    assert_eq!(relays.len(), 2, "dual-stack allocation: {relays:?}");
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6(), "{relays:?}");

    let denied: Vec<SocketAddr> = [
        format!("127.0.0.1:{p4}"),
        format!("127.1.2.3:{p4}"),
        "10.0.0.1:5000".into(),
        "172.16.5.4:5000".into(),
        "192.168.1.1:5000".into(),
        "100.64.0.1:5000".into(),
        "169.254.169.254:80".into(),
        "0.0.0.0:5000".into(),
        "224.0.0.1:5000".into(),
        "255.255.255.255:5000".into(),
        format!("[::ffff:127.0.0.1]:{p4}"),
        "[::ffff:10.0.0.1]:5000".into(),
        format!("[::1]:{}", v6.addr().port()),
        "[::]:5000".into(),
        "[fe80::1]:5000".into(),
        "[fd00::1]:5000".into(),
        "[ff02::1]:5000".into(),
        format!("[64:ff9b::7f00:1]:{p4}"),
        format!("[2002:7f00:1::]:{p4}"),
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect();
    for (i, peer) in denied.iter().enumerate() {
        let r = c.create_permission(&[*peer]);
        assert_eq!(r.error_code(), Some(403), "CreatePermission {peer}: {r:?}");
        let r = c.channel_bind(0x4000 + i as u16, *peer);
        assert_eq!(r.error_code(), Some(403), "ChannelBind {peer}: {r:?}");
        c.send_indication(*peer, b"must not be relayed");
    }
    // One denied address among allowed ones fails the whole request.
    let r = c.create_permission(&["8.8.8.8:53".parse().expect("addr"), denied[0]]);
    assert_eq!(r.error_code(), Some(403), "mixed CreatePermission: {r:?}");
    // A public address is fine: the 403s above are the policy, not a broken allocation.
    // (A permission sends nothing to the peer.)
    let r = c.create_permission(&[
        "8.8.8.8:53".parse().expect("addr"),
        "[2001:4860:4860::8888]:53".parse().expect("addr"),
    ]);
    assert!(r.is_success(), "public peers: {r:?}");

    assert_next_reply_is_binding(&mut c, "after the denied requests");
    std::thread::sleep(QUIET);
    v4.assert_nothing_received("denied IPv4 loopback peer");
    v6.assert_nothing_received("denied IPv6 loopback peer");
    let n = denied.len() as f64;
    metrics::wait_for(
        ember.metrics_addr(),
        "denied peers counted",
        METRICS_WAIT,
        |m| {
            m.get("ember_turn_denied_peer_total", &[]) >= 3.0 * n + 1.0
                && m.get("ember_turn_relayed_packets_total", &[]) == 0.0
        },
    );
}

#[test]
fn relay_to_own_listeners_is_denied_even_with_loopback_allowed() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let mut c = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let relay = c.must_allocate(&[])[0];
    for own in [ember.turn_udp(), ember.turn_tls()] {
        let r = c.channel_bind(0x4001, own);
        assert_eq!(
            r.error_code(),
            Some(403),
            "ChannelBind to own listener {own}: {r:?}"
        );
    }
    // Loopback itself is allowed here, so the permission for the IP succeeds, but a Send
    // indication to the listener port is still dropped: the relay must not talk to itself.
    assert!(c.create_permission(&[ember.turn_udp()]).is_success());
    let before = metrics::scrape(ember.metrics_addr()).expect("scrape");
    c.send_indication(
        ember.turn_udp(),
        &build(method::BINDING, Class::Request, &new_tid(), &[], None),
    );
    // A relay-to-relay Send is allowed (client-to-client through two allocations).
    let mut other = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let other_relay = other.must_allocate(&[])[0];
    assert!(other.create_permission(&[relay]).is_success());
    assert!(c.create_permission(&[other_relay]).is_success());
    c.send_indication(other_relay, b"hello other");
    let data = recv_data_indication(&mut other);
    assert_eq!(data, (relay, b"hello other".to_vec()));
    metrics::wait_for(
        ember.metrics_addr(),
        "own-address Send counted as denied",
        METRICS_WAIT,
        |m| {
            m.get("ember_turn_denied_peer_total", &[])
                > before.get("ember_turn_denied_peer_total", &[])
                && m.get(
                    "ember_turn_relayed_packets_total",
                    &[("direction", "client_to_peer")],
                ) == 1.0
        },
    );
}

/// The next Data indication: (peer, data).
fn recv_data_indication(c: &mut RawClient) -> (SocketAddr, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(b) = c.recv_raw(Duration::from_millis(200)).expect("recv") else {
            continue;
        };
        let Ok(m) = Message::parse(&b) else { continue };
        if m.method() == method::DATA && m.class() == Class::Indication {
            return (
                m.get_xor_addr(attr::XOR_PEER_ADDRESS)
                    .expect("XOR-PEER-ADDRESS"),
                m.get(attr::DATA).expect("DATA").to_vec(),
            );
        }
    }
    panic!("no Data indication within 5 s");
}

#[test]
fn user_quota_one_gives_486_to_the_second_allocation() {
    let ember = Ember::start_turn(&TurnOptions {
        user_quota: 1,
        ..TurnOptions::default()
    });
    let mut first = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    first.must_allocate(&[]);
    let mut second = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let r = second.allocate(&[]);
    assert_eq!(
        r.error_code(),
        Some(486),
        "second UDP allocation of alice: {r:?}"
    );
    let mut over_tcp = RawClient::tcp(ember.turn_tcp()).credentials("alice", "alicepw");
    let r = over_tcp.allocate(&[]);
    assert_eq!(r.error_code(), Some(486), "alice over TCP: {r:?}");

    // REST users are counted by their user part, whatever the expiry.
    let (u1, p1) = rest_credentials("s3cret", "bob", unix_now() + 3600);
    let (u2, p2) = rest_credentials("older-secret", "bob", unix_now() + 7200);
    let mut bob1 = RawClient::udp(ember.turn_udp()).credentials(&u1, &p1);
    bob1.must_allocate(&[]);
    let mut bob2 = RawClient::udp(ember.turn_udp()).credentials(&u2, &p2);
    let r = bob2.allocate(&[]);
    assert_eq!(
        r.error_code(),
        Some(486),
        "second allocation of REST user bob: {r:?}"
    );
    // Another user is not affected.
    let (u3, p3) = rest_credentials("s3cret", "carol", unix_now() + 3600);
    RawClient::udp(ember.turn_udp())
        .credentials(&u3, &p3)
        .must_allocate(&[]);

    // Deleting the first allocation frees the quota.
    let r = first.delete_allocation();
    assert!(r.is_success(), "Refresh(0): {r:?}");
    second.must_allocate(&[]);
    // Closing a TCP connection frees its allocation's quota too.
    drop(bob1);
    let r = second.delete_allocation();
    assert!(r.is_success());
    let mut tcp_alice = RawClient::tcp(ember.turn_tcp()).credentials("alice", "alicepw");
    tcp_alice.must_allocate(&[]);
    drop(tcp_alice);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    loop {
        let r = again.allocate(&[]);
        if r.is_success() {
            break;
        }
        assert_eq!(r.error_code(), Some(486), "{r:?}");
        assert!(
            Instant::now() < deadline,
            "closing the TCP connection did not free alice's quota"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    metrics::wait_for(
        ember.metrics_addr(),
        "quota rejections counted",
        METRICS_WAIT,
        |m| m.get("ember_turn_quota_rejections_total", &[]) >= 3.0,
    );
}

fn wait_metrics(ember: &Ember, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
    metrics::wait_for(ember.metrics_addr(), what, METRICS_WAIT, cond)
}

#[test]
fn metrics_follow_allocations_traffic_and_auth_failures() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let m = wait_metrics(&ember, "first publication", |m| {
        m.has("ember_turn_allocations")
    });
    for name in [
        "ember_turn_allocations",
        "ember_turn_relayed_packets_total",
        "ember_turn_auth_failures_total",
    ] {
        assert!(
            m.text.contains(&format!("# TYPE {name} ")),
            "{name} not exported:\n{}",
            m.text
        );
    }
    assert_eq!(m.get("ember_turn_allocations", &[]), 0.0);
    assert_eq!(m.get("ember_turn_auth_failures_total", &[]), 0.0);

    // Two wrong passwords.
    for _ in 0..2 {
        let mut bad = RawClient::udp(ember.turn_udp()).credentials("alice", "wrong");
        assert_eq!(bad.allocate(&[]).error_code(), Some(401));
    }
    wait_metrics(&ember, "auth failures = 2", |m| {
        m.get("ember_turn_auth_failures_total", &[]) == 2.0
    });

    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut u = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let relay = u.must_allocate(&[])[0];
    let mut t = RawClient::tcp(ember.turn_tcp()).credentials("alice", "alicepw");
    t.must_allocate(&[]);
    wait_metrics(&ember, "one UDP and one TCP allocation", |m| {
        m.get("ember_turn_allocations", &[("transport", "udp")]) == 1.0
            && m.get("ember_turn_allocations", &[("transport", "tcp")]) == 1.0
    });

    assert!(u
        .create_permission(&[peer.local_addr().expect("addr")])
        .is_success());
    let mut buf = [0u8; 2048];
    for i in 0..5u8 {
        u.send_indication(peer.local_addr().expect("addr"), &[i; 100]);
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!((n, from), (100, relay));
    }
    for i in 0..3u8 {
        peer.send_to(&[i; 10], relay).expect("peer sends");
        let (from, data) = recv_data_indication(&mut u);
        assert_eq!(
            (from, data),
            (peer.local_addr().expect("addr"), vec![i; 10])
        );
    }
    wait_metrics(&ember, "5 packets up, 3 down", |m| {
        m.get(
            "ember_turn_relayed_packets_total",
            &[("direction", "client_to_peer")],
        ) == 5.0
            && m.get(
                "ember_turn_relayed_packets_total",
                &[("direction", "peer_to_client")],
            ) == 3.0
            && m.get(
                "ember_turn_relayed_bytes_total",
                &[("direction", "client_to_peer")],
            ) == 500.0
            && m.get(
                "ember_turn_relayed_bytes_total",
                &[("direction", "peer_to_client")],
            ) == 30.0
    });

    assert!(u.delete_allocation().is_success());
    drop(t);
    let m = wait_metrics(&ember, "allocations back to 0", |m| {
        m.get("ember_turn_allocations", &[]) == 0.0
    });
    assert_eq!(m.get("ember_turn_auth_failures_total", &[]), 2.0);
    assert_eq!(m.get("ember_turn_allocations_created_total", &[]), 2.0);
}

#[test]
fn auth_failure_limiter_refuses_that_user_at_that_address() {
    let ember = Ember::start_turn(&TurnOptions {
        extra_turn_toml: "auth_failures_per_minute = 3".into(),
        ..TurnOptions::default()
    });
    let allocate = |auth: Option<Auth<'_>>| {
        build(
            method::ALLOCATE,
            Class::Request,
            &new_tid(),
            &[Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            auth,
        )
    };
    // A well-behaved client gets its challenge before the budget is spent.
    let mut good = RawClient::udp(ember.turn_udp());
    let challenge = good.transact(&allocate(None));
    assert_eq!(challenge.error_code(), Some(401));
    let realm = challenge.get_str(attr::REALM).expect("REALM");
    let nonce = challenge.get_str(attr::NONCE).expect("NONCE");
    let key = long_term_key("alice", &realm, "alicepw");

    for i in 0..3 {
        let mut bad = RawClient::udp(ember.turn_udp()).credentials("alice", "wrong");
        assert_eq!(bad.allocate(&[]).error_code(), Some(401), "failure {i}");
    }
    // alice's budget at 127.0.0.1 is spent: her requests get a plain 401 without a credential
    // check, even with the right password, until the minute is over (so clients such as
    // coturn's uclient give up instead of hanging). Others at the same address are served.
    let auth = Auth {
        user: "alice",
        realm: &realm,
        nonce: &nonce,
        key: &key,
    };
    let r = good.transact(&allocate(Some(auth)));
    assert_eq!(
        r.error_code(),
        Some(401),
        "throttled user, right password: {r:?}"
    );
    let r = good.transact(&allocate(None));
    assert_eq!(
        r.error_code(),
        Some(401),
        "the challenge is still answered: {r:?}"
    );
    assert_next_reply_is_binding(&mut good, "throttled user's address, Binding");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let (bob, bob_pw) = ember_tests::turn_client::rest_credentials("s3cret", "bob", expiry);
    let mut other = RawClient::udp(ember.turn_udp()).credentials(&bob, &bob_pw);
    other.must_allocate(&[]);
    metrics::wait_for(
        ember.metrics_addr(),
        "3 failures, 1 throttled",
        METRICS_WAIT,
        |m| {
            m.get("ember_turn_auth_failures_total", &[]) == 3.0
                && m.get("ember_turn_auth_throttled_total", &[]) == 1.0
        },
    );
}

#[test]
fn sigterm_with_live_allocations_exits_cleanly_and_frees_ports() {
    let mut ember = Ember::start_turn(&TurnOptions::default());
    let mut u = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    let relay = u.must_allocate(&[])[0];
    let mut t = RawClient::tcp(ember.turn_tcp()).credentials("alice", "alicepw");
    t.must_allocate(&[]);
    let ports = (ember.turn_udp(), ember.turn_tls(), ember.metrics_addr());
    let started = Instant::now();
    let status = ember.stop();
    let status =
        status.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM:\n{}", ember.log()));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        ember.log()
    );
    eprintln!("stopped in {:?}", started.elapsed());
    // The TCP client sees its connection closed.
    match t.recv_raw(Duration::from_secs(5)) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) => {}
        other => panic!("TCP connection not closed by the shutdown: {other:?}"),
    }
    // Every port is free again (bound without SO_REUSEPORT, so a leftover socket would fail).
    UdpSocket::bind(ports.0).expect("TURN UDP port still bound");
    TcpListener::bind(ports.0).expect("TURN TCP port still bound");
    TcpListener::bind(ports.1).expect("TURN TLS port still bound");
    TcpListener::bind(ports.2).expect("metrics port still bound");
    UdpSocket::bind(relay).expect("relay port still bound");
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let ember = Ember::start_turn(&TurnOptions {
        extra_turn_toml: "nonce_lifetime = 1".into(),
        ..TurnOptions::default()
    });
    let mut c = RawClient::udp(ember.turn_udp()).credentials("alice", "alicepw");
    c.must_allocate(&[]);
    // Nonces carry their expiry in whole seconds: past 2 s this one is stale.
    std::thread::sleep(Duration::from_millis(2100));
    let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let a = c.request_once(
        method::CREATE_PERMISSION,
        &[Attr::Xor(attr::XOR_PEER_ADDRESS, peer)],
    );
    assert!(a.was_authenticated);
    assert_eq!(a.error_code(), Some(438), "{:?}", a.response);
    assert!(
        a.response.get_str(attr::NONCE).is_some(),
        "438 without NONCE"
    );
    assert!(
        a.response.get_str(attr::REALM).is_some(),
        "438 without REALM"
    );
    // The same request with the fresh nonce goes through.
    let a = c.request_once(
        method::CREATE_PERMISSION,
        &[Attr::Xor(attr::XOR_PEER_ADDRESS, peer)],
    );
    assert!(a.response.is_success(), "{:?}", a.response);
    metrics::wait_for(
        ember.metrics_addr(),
        "a stale nonce is no auth failure",
        METRICS_WAIT,
        |m| {
            m.get("ember_turn_permissions_created_total", &[]) == 1.0
                && m.get("ember_turn_auth_failures_total", &[]) == 0.0
        },
    );
}
