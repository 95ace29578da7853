//! webrtc-rs's TURN client (`turn` 0.10) against `ember turn` over UDP, TCP and TLS.
//!
//! Each case allocates, learns its server-reflexive address with a Binding request, and
//! relays payloads of awkward sizes (1 byte up to 1200, most not a multiple of 4) to a UDP
//! peer on 127.0.0.1 and back, byte for byte. The client creates the permission on the first
//! send and binds a channel in the background, so the first packets travel as Send/Data
//! indications and the rest as ChannelData; the test checks that both paths carried traffic.
//! Credentials: the static user and TURN REST (`"<expiry>:bob"`, both configured secrets);
//! expired REST credentials, a wrong secret and a wrong password are refused with 401.
//!
//! TCP and TLS go through `ember_tests::turn_client::StreamConn`, since the crate only ships
//! a datagram transport; TLS trusts the certificate the harness generated for the server.

use ember_turn::core::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ember_tests::metrics;
use ember_tests::turn_client::{rest_credentials, unix_now, StreamConn};
use ember_tests::{Ember, TurnOptions};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const STEP: Duration = Duration::from_secs(10);

/// A connection to the server over `t`, and the server address the client must use.
async fn connect(ember: &Ember, t: Transport) -> (Arc<dyn Conn + Send + Sync>, SocketAddr) {
    match t {
        Transport::Udp => {
            let s = UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind client socket");
            (Arc::new(s), ember.turn_udp())
        }
        Transport::Tcp => {
            let c = StreamConn::tcp(ember.turn_tcp())
                .await
                .expect("TCP connect");
            (Arc::new(c), ember.turn_tcp())
        }
        Transport::Tls => {
            let cfg = ember.tls_cert().client_config();
            let c = StreamConn::tls(ember.turn_tls(), cfg)
                .await
                .expect("TLS connect");
            (Arc::new(c), ember.turn_tls())
        }
    }
}

async fn new_client(
    ember: &Ember,
    t: Transport,
    user: &str,
    password: &str,
) -> (Client, SocketAddr) {
    let (conn, server) = connect(ember, t).await;
    let local = conn.local_addr().expect("local addr");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.to_string(),
        password: password.to_string(),
        realm: String::new(),
        software: "ember-e2e".to_string(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    (client, local)
}

/// A payload of `len` bytes that differs per `seed`.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Allocates, relays to a peer and back byte-exactly, and closes.
async fn relay_round_trips(ember: &Ember, t: Transport, user: &str, password: &str) {
    let what = format!("{t:?} as {user}");
    let (client, local) = new_client(ember, t, user, password).await;
    let relay = timeout(STEP, client.allocate())
        .await
        .unwrap_or_else(|_| panic!("{what}: allocate timed out"))
        .unwrap_or_else(|e| panic!("{what}: allocate failed: {e}\n{}", ember.log()));
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(
        relayed.ip().to_string(),
        "127.0.0.1",
        "{what}: relay address"
    );

    let mapped = timeout(STEP, client.send_binding_request())
        .await
        .unwrap_or_else(|_| panic!("{what}: binding timed out"))
        .expect("binding");
    assert_eq!(
        mapped, local,
        "{what}: XOR-MAPPED-ADDRESS is the client's own address"
    );

    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind peer");
    let peer_addr = peer.local_addr().expect("peer addr");
    let sizes = [1usize, 2, 3, 4, 5, 7, 64, 99, 170, 511, 1000, 1200];
    let mut buf = vec![0u8; 2048];
    for round in 0..3u8 {
        for (i, &len) in sizes.iter().enumerate() {
            let seed = round * 16 + i as u8;
            let up = payload(seed, len);
            relay.send_to(&up, peer_addr).await.expect("relay send");
            let (n, from) = timeout(STEP, peer.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: {len} bytes never reached the peer"))
                .expect("peer recv");
            assert_eq!(from, relayed, "{what}: the peer sees the relayed address");
            assert_eq!(&buf[..n], &up[..], "{what}: client -> peer payload");

            let down = payload(seed ^ 0xA5, len);
            peer.send_to(&down, relayed).await.expect("peer send");
            let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: {len} bytes never came back from the peer"))
                .expect("relay recv");
            assert_eq!(from, peer_addr, "{what}: data is attributed to the peer");
            assert_eq!(&buf[..n], &down[..], "{what}: peer -> client payload");
        }
        // The channel binding runs in the background after the first send; give it time so
        // the next rounds use ChannelData.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.close().await.expect("close relay");
    client.close().await.expect("close client");
}

/// Every case of one transport on a fresh server, then the server's view of it.
async fn transport_cases(t: Transport) {
    let ember = Ember::start_turn(&TurnOptions::default());
    relay_round_trips(&ember, t, "alice", "alicepw").await;
    let (u, p) = rest_credentials("s3cret", "bob", unix_now() + 3600);
    relay_round_trips(&ember, t, &u, &p).await;
    // The second configured secret (rotation) is accepted too.
    let (u, p) = rest_credentials("older-secret", "bob", unix_now() + 3600);
    relay_round_trips(&ember, t, &u, &p).await;

    let per_case = 3 * 12;
    let label = t.as_str();
    let m = metrics::wait_for(
        ember.metrics_addr(),
        "allocations released and packets counted",
        Duration::from_secs(10),
        |m| {
            m.get("ember_turn_allocations", &[]) == 0.0
                && m.get(
                    "ember_turn_relayed_packets_total",
                    &[("direction", "peer_to_client")],
                ) >= (3 * per_case) as f64
        },
    );
    assert_eq!(
        m.get(
            "ember_turn_allocations_created_total",
            &[("transport", label)]
        ),
        3.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "ember_turn_relayed_packets_total",
            &[("direction", "client_to_peer")]
        ),
        (3 * per_case) as f64,
        "{}",
        m.text
    );
    assert!(
        m.get("ember_turn_channels_bound_total", &[]) >= 3.0,
        "no channels:\n{}",
        m.text
    );
    assert_eq!(
        m.get("ember_turn_auth_failures_total", &[]),
        0.0,
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_static_and_rest_relay_byte_exact() {
    transport_cases(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_static_and_rest_relay_byte_exact() {
    transport_cases(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_static_and_rest_relay_byte_exact() {
    transport_cases(Transport::Tls).await;
}

/// Allocate with these credentials must fail with 401.
async fn assert_refused(ember: &Ember, t: Transport, user: &str, password: &str, what: &str) {
    let (client, _) = new_client(ember, t, user, password).await;
    let r = timeout(STEP, client.allocate())
        .await
        .unwrap_or_else(|_| panic!("{what} over {t:?}: no answer within {STEP:?}"));
    match r {
        Ok(relay) => panic!("{what} over {t:?}: allocated {:?}", relay.local_addr()),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("401"),
                "{what} over {t:?}: expected a 401, got {e}"
            );
        }
    }
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let now = unix_now();
    let expired = rest_credentials("s3cret", "bob", now - 1);
    let wrong_secret = rest_credentials("not-the-secret", "bob", now + 3600);
    for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        assert_refused(
            &ember,
            t,
            &expired.0,
            &expired.1,
            "expired REST credentials",
        )
        .await;
        assert_refused(
            &ember,
            t,
            &wrong_secret.0,
            &wrong_secret.1,
            "REST with a wrong secret",
        )
        .await;
        assert_refused(&ember, t, "alice", "not-alicepw", "wrong password").await;
    }
    metrics::wait_for(
        ember.metrics_addr(),
        "9 auth failures",
        Duration::from_secs(10),
        |m| {
            m.get("ember_turn_auth_failures_total", &[]) == 9.0
                && m.get("ember_turn_allocations_created_total", &[]) == 0.0
        },
    );
}
