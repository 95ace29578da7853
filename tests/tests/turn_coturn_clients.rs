//! coturn's `turnutils_uclient` against `ember turn`, with `turnutils_peer` as the UDP echo
//! peer on 127.0.0.1 (and ::1).
//!
//! Every run is bounded (`-m 2 -n 100 -l 170 -z 5`, killed after [`RUN_TIMEOUT`]) and judged
//! by uclient's own summary: every message sent came back, 0 lost, 0 send-dropped. The
//! matrix covers UDP, TCP (`-t`) and TLS (`-t -S`) to the server, ChannelData and Send
//! indications (`-s`), a static user (`-u alice -w alicepw`) and REST credentials
//! (`-u bob -W s3cret`: uclient builds the timed username and its password itself), plus
//! client-to-client through two allocations (`-y`) and an IPv6 relay (`-x`) to a ::1 peer.
//! Refused credentials show in uclient as `ERROR: Cannot complete Allocation` with exit
//! status 255 and no summary.
//!
//! The coturn tools are required: a missing `turnutils_uclient` fails these tests.

use ember_turn::core::Transport;
use std::net::SocketAddr;
use std::time::Duration;

use ember_tests::coturn::{require_tool, run_uclient, Peer, UclientRun};
use ember_tests::metrics;
use ember_tests::process::TlsMode;
use ember_tests::turn_client::{rest_credentials, unix_now};
use ember_tests::{Ember, TurnOptions};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SESSIONS: u64 = 2;
const MESSAGES: u64 = 100;
const LENGTH: u64 = 170;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Channels,
    SendIndications,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Creds {
    Static,
    Rest,
    /// `-u USER`, then `-w PASSWORD` or `-W SECRET`.
    Given(String, &'static str, String),
}

/// What a uclient run does besides its transport.
#[derive(Debug, Clone)]
struct Case {
    t: Transport,
    d: Data,
    creds: Creds,
    /// The echo peer; `None` for client-to-client (`-y`).
    peer: Option<SocketAddr>,
    /// `-x`: ask for an IPv6 relay address.
    ipv6_relay: bool,
}

fn server_addr(ember: &Ember, t: Transport) -> SocketAddr {
    match t {
        Transport::Udp => ember.turn_udp(),
        Transport::Tcp => ember.turn_tcp(),
        Transport::Tls => ember.turn_tls(),
    }
}

fn uclient_args(ember: &Ember, case: &Case, creds: &[String]) -> Vec<String> {
    let server = server_addr(ember, case.t);
    let mut a: Vec<String> = Vec::new();
    let mut flag = |f: &str| a.push(f.to_string());
    match case.t {
        Transport::Udp => {}
        Transport::Tcp => flag("-t"),
        Transport::Tls => {
            flag("-t");
            flag("-S");
        }
    }
    if case.d == Data::SendIndications {
        flag("-s");
    }
    if case.ipv6_relay {
        flag("-x");
    }
    let sizes = [
        ("-c", None),
        ("-z", Some("5".to_string())),
        ("-l", Some(LENGTH.to_string())),
        ("-m", Some(SESSIONS.to_string())),
        ("-n", Some(MESSAGES.to_string())),
        ("-p", Some(server.port().to_string())),
    ];
    for (f, v) in sizes {
        a.push(f.to_string());
        a.extend(v);
    }
    match case.peer {
        Some(p) => a.extend([
            "-e".into(),
            p.ip().to_string(),
            "-r".into(),
            p.port().to_string(),
        ]),
        None => a.push("-y".into()),
    }
    a.extend(creds.iter().cloned());
    a.push(server.ip().to_string());
    a
}

fn creds_args(c: &Creds) -> Vec<String> {
    let v: [&str; 4] = match c {
        Creds::Static => ["-u", "alice", "-w", "alicepw"],
        Creds::Rest => ["-u", "bob", "-W", "s3cret"],
        Creds::Given(u, flag, pw) => ["-u", u, flag, pw],
    };
    v.map(String::from).to_vec()
}

fn context(ember: &Ember, run: &UclientRun) -> String {
    format!(
        "uclient {:?} (status {:?}, {:?}):\n{}\n--- ember.log ---\n{}",
        run.args,
        run.status,
        run.elapsed,
        run.output,
        ember.log()
    )
}

/// Runs one lossless-echo case and checks uclient's summary.
fn echo_case(ember: &Ember, case: Case) {
    let run = run_uclient(
        &uclient_args(ember, &case, &creds_args(&case.creds)),
        RUN_TIMEOUT,
    );
    assert_eq!(run.code(), Some(0), "{case:?}: {}", context(ember, &run));
    let s = run.summary();
    let want = SESSIONS * MESSAGES;
    assert_eq!(
        (s.sent_msgs, s.recv_msgs, s.lost_packets, s.send_dropped),
        (want, want, 0, 0),
        "{case:?}: sent, received, lost, send-dropped; {}",
        context(ember, &run)
    );
    assert_eq!(s.lost_percent, 0.0);
    assert_eq!((s.sent_bytes, s.recv_bytes), (want * LENGTH, want * LENGTH));
    eprintln!("{case:?}: {want} echoed, 0 lost, in {:?}", run.elapsed);
}

/// Runs the static and REST cases of one transport/data mode on a fresh server, and checks
/// that the server saw the traffic through the expected path.
fn echo_matrix(t: Transport, d: Data) {
    require_tool("turnutils_uclient");
    let ember = Ember::start_turn(&TurnOptions {
        // uclient does not verify certificates: let TLS use the one ember generates when
        // `[tls]` is empty (the webrtc-rs tests cover configured certificate files).
        tls: if t == Transport::Tls {
            TlsMode::Generated
        } else {
            TlsMode::TestCert
        },
        ..TurnOptions::default()
    });
    let peer = Peer::start();
    for creds in [Creds::Static, Creds::Rest] {
        echo_case(
            &ember,
            Case {
                t,
                d,
                creds,
                peer: Some(peer.addr()),
                ipv6_relay: false,
            },
        );
    }

    // Two runs of SESSIONS sessions each: every message went to the peer and back.
    let relayed = (2 * SESSIONS * MESSAGES) as f64;
    let m = metrics::wait_for(
        ember.metrics_addr(),
        "relayed packets counted",
        Duration::from_secs(10),
        |m| {
            let up = m.get(
                "ember_turn_relayed_packets_total",
                &[("direction", "client_to_peer")],
            );
            let down = m.get(
                "ember_turn_relayed_packets_total",
                &[("direction", "peer_to_client")],
            );
            up >= relayed && down >= relayed
        },
    );
    let channels = m.get("ember_turn_channels_bound_total", &[]);
    match d {
        Data::Channels => assert!(channels > 0.0, "no channel was bound:\n{}", m.text),
        Data::SendIndications => assert_eq!(channels, 0.0, "-s bound channels:\n{}", m.text),
    }
    let label = t.as_str();
    assert!(
        m.get(
            "ember_turn_allocations_created_total",
            &[("transport", label)]
        ) >= (2 * SESSIONS) as f64,
        "allocations not counted under transport={label}:\n{}",
        m.text
    );
    assert_eq!(m.get("ember_turn_auth_failures_total", &[]), 0.0);
}

#[test]
fn udp_channels_static_and_rest() {
    echo_matrix(Transport::Udp, Data::Channels);
}

#[test]
fn udp_send_indications_static_and_rest() {
    echo_matrix(Transport::Udp, Data::SendIndications);
}

#[test]
fn tcp_channels_static_and_rest() {
    echo_matrix(Transport::Tcp, Data::Channels);
}

#[test]
fn tcp_send_indications_static_and_rest() {
    echo_matrix(Transport::Tcp, Data::SendIndications);
}

#[test]
fn tls_channels_static_and_rest() {
    echo_matrix(Transport::Tls, Data::Channels);
}

#[test]
fn client_to_client_and_ipv6_relay() {
    require_tool("turnutils_uclient");
    let ember = Ember::start_turn(&TurnOptions {
        relay_ip: vec!["127.0.0.1".into(), "::1".into()],
        ..TurnOptions::default()
    });
    // -y: each session allocates twice and sends from one relay to the other.
    echo_case(
        &ember,
        Case {
            t: Transport::Udp,
            d: Data::Channels,
            creds: Creds::Static,
            peer: None,
            ipv6_relay: false,
        },
    );
    // -x: an IPv6 relay address (RFC 6156) relaying to a peer on ::1.
    let peer = Peer::start_on(&["::1", "127.0.0.1"]);
    for (t, d) in [
        (Transport::Udp, Data::Channels),
        (Transport::Tcp, Data::SendIndications),
    ] {
        echo_case(
            &ember,
            Case {
                t,
                d,
                creds: Creds::Rest,
                peer: Some(peer.addr()),
                ipv6_relay: true,
            },
        );
    }
}

/// Checks that uclient was refused: exit status 255, "Cannot complete Allocation", no
/// summary.
fn assert_refused(ember: &Ember, run: &UclientRun) {
    assert_eq!(run.code(), Some(255), "{}", context(ember, run));
    assert!(
        run.output.contains("ERROR: Cannot complete Allocation"),
        "{}",
        context(ember, run)
    );
    assert!(
        !run.output.contains("Total lost packets"),
        "{}",
        context(ember, run)
    );
}

#[test]
fn refused_credentials_get_no_allocation() {
    require_tool("turnutils_uclient");
    // uclient answers each 401 with another Allocate, 31 times per session, before it gives
    // up. This runs with the default limiter (30 failures a minute per user and address):
    // past it Ember keeps answering 401 without checking, so uclient still gives up.
    let ember = Ember::start_turn(&TurnOptions::default());
    let peer = Peer::start();
    let (expired_user, expired_pw) = rest_credentials("s3cret", "bob", unix_now() - 60);
    let given = |u: &str, flag: &'static str, pw: &str| Creds::Given(u.into(), flag, pw.into());
    let cases = [
        (
            "wrong password, UDP",
            Transport::Udp,
            given("alice", "-w", "wrong"),
        ),
        (
            "wrong password, TCP",
            Transport::Tcp,
            given("alice", "-w", "wrong"),
        ),
        (
            "wrong password, TLS",
            Transport::Tls,
            given("alice", "-w", "wrong"),
        ),
        (
            "unknown user",
            Transport::Udp,
            given("mallory", "-w", "alicepw"),
        ),
        (
            "wrong REST secret",
            Transport::Udp,
            given("bob", "-W", "not-the-secret"),
        ),
        (
            "expired REST credential",
            Transport::Udp,
            given(&expired_user, "-w", &expired_pw),
        ),
    ];
    let n = cases.len();
    for (what, t, creds) in cases {
        let case = Case {
            t,
            d: Data::Channels,
            creds,
            peer: Some(peer.addr()),
            ipv6_relay: false,
        };
        let run = run_uclient(
            &uclient_args(&ember, &case, &creds_args(&case.creds)),
            RUN_TIMEOUT,
        );
        assert_refused(&ember, &run);
        eprintln!("{what}: refused in {:?}", run.elapsed);
    }
    let m = metrics::wait_for(
        ember.metrics_addr(),
        "auth failures counted",
        Duration::from_secs(10),
        |m| m.get("ember_turn_auth_failures_total", &[]) >= n as f64,
    );
    assert_eq!(
        m.get("ember_turn_relayed_packets_total", &[]),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get("ember_turn_allocations_created_total", &[]),
        0.0,
        "{}",
        m.text
    );
}
