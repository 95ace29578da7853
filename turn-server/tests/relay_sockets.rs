//! Integration tests of the I/O shell: an in-process relay on loopback, driven over real UDP
//! and TCP sockets with the crate's own codec as the client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ember_common::config::TurnConfig;
use ember_turn::auth::long_term_key;
use ember_turn::stun::{self, attr, method, ChannelData, Class, Message, MessageWriter};
use ember_turn::TurnServer;
use tokio_util::sync::CancellationToken;

const REALM: &str = "it.test";

fn config() -> TurnConfig {
    let mut c = TurnConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec![],
        relay_ip: vec!["127.0.0.1".parse().unwrap()],
        allowed_peers: vec!["127.0.0.0/8".parse().unwrap()],
        realm: REALM.into(),
        threads: 2,
        ..TurnConfig::default()
    };
    c.users.insert("alice".into(), "pw".into());
    c
}

struct Running {
    server: Option<TurnServer>,
    stop: CancellationToken,
    rt: tokio::runtime::Runtime,
}

impl Running {
    fn start(cfg: TurnConfig) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let registry = prometheus::Registry::new();
        let server = rt
            .block_on(async { TurnServer::start(&cfg, None, &registry, stop.clone()) })
            .unwrap();
        Running {
            server: Some(server),
            stop,
            rt,
        }
    }
    fn addr(&self, proto: &str) -> SocketAddr {
        self.server
            .as_ref()
            .unwrap()
            .local_addrs()
            .into_iter()
            .find(|(p, _)| *p == proto)
            .unwrap()
            .1
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.wait());
        }
    }
}

/// A minimal TURN client over a datagram or stream transport.
trait Wire {
    fn send(&mut self, b: &[u8]);
    fn recv(&mut self) -> Vec<u8>;
}

impl Wire for (UdpSocket, SocketAddr) {
    fn send(&mut self, b: &[u8]) {
        self.0.send_to(b, self.1).unwrap();
    }
    fn recv(&mut self) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let (n, _) = self.0.recv_from(&mut buf).expect("reply within timeout");
        buf[..n].to_vec()
    }
}

impl Wire for TcpStream {
    fn send(&mut self, b: &[u8]) {
        self.write_all(b).unwrap();
    }
    fn recv(&mut self) -> Vec<u8> {
        let mut head = [0u8; 4];
        self.read_exact(&mut head).unwrap();
        let len = stun::stream_frame_len(&head).unwrap().unwrap();
        let mut rest = vec![0u8; len - 4];
        self.read_exact(&mut rest).unwrap();
        let mut v = head.to_vec();
        v.extend(rest);
        v
    }
}

struct Client<W: Wire> {
    wire: W,
    key: [u8; 16],
    nonce: String,
    tid: u8,
}

impl<W: Wire> Client<W> {
    fn new(wire: W) -> Self {
        Client {
            wire,
            key: long_term_key("alice", REALM, "pw"),
            nonce: String::new(),
            tid: 0,
        }
    }

    /// Sends an authenticated request (answering one 401/438 challenge) and returns the
    /// response bytes.
    fn request(&mut self, m: u16, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        for _ in 0..2 {
            self.tid += 1;
            let tid = [self.tid; 12];
            let mut buf = Vec::new();
            {
                let mut w = MessageWriter::new(&mut buf, m, Class::Request, &tid);
                attrs(&mut w);
                if !self.nonce.is_empty() {
                    w.attr(attr::USERNAME, b"alice")
                        .attr(attr::REALM, REALM.as_bytes())
                        .attr(attr::NONCE, self.nonce.as_bytes())
                        .integrity_sha1(&self.key);
                }
                w.fingerprint();
            }
            self.wire.send(&buf);
            let r = self.wire.recv();
            let msg = Message::parse(&r).unwrap();
            if msg.class() == Class::Error {
                let code = error_code(&msg);
                if code == 401 || code == 438 {
                    if let Some(n) = msg.get_str(attr::NONCE) {
                        if self.nonce.is_empty() || code == 438 {
                            self.nonce = n.to_string();
                            continue;
                        }
                    }
                }
            }
            return r;
        }
        panic!("challenge loop");
    }
}

fn error_code(m: &Message<'_>) -> u16 {
    m.get(attr::ERROR_CODE)
        .map_or(0, |v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

fn relay_round_trip<W: Wire>(c: &mut Client<W>) {
    let r = c.request(method::ALLOCATE, &|w| {
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    let m = Message::parse(&r).unwrap();
    assert_eq!(
        m.class(),
        Class::Success,
        "allocate: {m:?} code {}",
        error_code(&m)
    );
    assert!(m.verify_integrity(&c.key));
    let relayed = m.get_xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer_addr = peer.local_addr().unwrap();

    // Permission, then a Send indication to the peer.
    let r = c.request(method::CREATE_PERMISSION, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer_addr);
    });
    assert_eq!(Message::parse(&r).unwrap().class(), Class::Success);
    let mut ind = Vec::new();
    MessageWriter::new(&mut ind, method::SEND, Class::Indication, &[9; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, peer_addr)
        .attr(attr::DATA, b"via-send");
    c.wire.send(&ind);
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"via-send");
    assert_eq!(from, relayed);

    // Peer answers without a channel: a Data indication.
    peer.send_to(b"back-data", relayed).unwrap();
    let d = c.wire.recv();
    let dm = Message::parse(&d).unwrap();
    assert_eq!((dm.method(), dm.class()), (method::DATA, Class::Indication));
    assert_eq!(dm.get(attr::DATA), Some(&b"back-data"[..]));
    assert_eq!(dm.get_xor_addr(attr::XOR_PEER_ADDRESS), Some(peer_addr));

    // Channel, both ways.
    let r = c.request(method::CHANNEL_BIND, &|w| {
        w.u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer_addr);
    });
    assert_eq!(Message::parse(&r).unwrap().class(), Class::Success);
    let mut cd = vec![0x40, 0x01, 0, 5];
    cd.extend_from_slice(b"hello\0\0\0");
    c.wire.send(&cd);
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    peer.send_to(b"world!", relayed).unwrap();
    let back = c.wire.recv();
    let ch = ChannelData::parse(&back).unwrap();
    assert_eq!((ch.channel, ch.data), (0x4001, &b"world!"[..]));

    // Delete.
    let r = c.request(method::REFRESH, &|w| {
        w.u32(attr::LIFETIME, 0);
    });
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.get_u32(attr::LIFETIME), Some(0));
}

#[test]
fn udp_allocate_permission_channel_and_data() {
    let s = Running::start(config());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Client::new((sock, s.addr("udp")));
    relay_round_trip(&mut c);
}

#[test]
fn tcp_allocate_permission_channel_and_data() {
    let s = Running::start(config());
    let sock = TcpStream::connect(s.addr("tcp")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Client::new(sock);
    relay_round_trip(&mut c);
}

#[test]
fn binding_over_udp_reports_the_mapped_address() {
    let s = Running::start(config());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, &[1; 12]).fingerprint();
    // Garbage first: it must be ignored, and the server must keep answering.
    sock.send_to(&[0xff; 64], s.addr("udp")).unwrap();
    sock.send_to(&buf, s.addr("udp")).unwrap();
    let mut r = [0u8; 512];
    let (n, _) = sock.recv_from(&mut r).unwrap();
    let m = Message::parse(&r[..n]).unwrap();
    assert_eq!(
        m.get_xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(sock.local_addr().unwrap())
    );
}
