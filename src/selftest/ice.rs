//! ICE gathering as a WebRTC stack sees it: a webrtc-rs 0.17 peer connection whose only ICE
//! servers are the ones given (the relay under test) creates a data channel and an offer,
//! and every candidate it gathers — host, srflx, relay — is listed with its SDP line.
//! mDNS host candidates are disabled, so nothing but the configured servers is contacted.
//!
//! # Which URLs webrtc-rs 0.17 gathers from
//!
//! Read from `webrtc-ice` 0.17.1 (`url/mod.rs`, `agent/agent_gather.rs`) and checked by the
//! tests below and `tests/tests/turn_webrtc_peers.rs`:
//!
//! - `turn:HOST[:PORT]` and `turn:HOST[:PORT]?transport=udp` — **the only form that yields
//!   relay candidates**: a TURN/UDP allocation made from a socket bound to `0.0.0.0:0`, so
//!   the server must be reachable over IPv4 (a host name resolving to IPv4 works).
//! - `turn:[IPv6]...` — parsed, but no relay candidate: the allocation socket is bound to
//!   `0.0.0.0` and the server address is looked up for IPv4 only.
//! - `turn:...?transport=tcp`, `turns:...` (with or without `?transport=`) — parsed and
//!   accepted by `RTCConfiguration`, then silently ignored by relay gathering (TURN over TCP,
//!   TLS and DTLS is a TODO in `gather_candidates_relay`, which logs "Unable to handle URL").
//! - `stun:HOST[:PORT]` — srflx candidates over UDP (IPv4 and IPv6). `stuns:` has no TLS
//!   support: like every other URL it only gets a plain UDP Binding request.
//! - srflx gathering sends that plain UDP STUN Binding to *every* URL's host and port,
//!   whatever the scheme and transport, and waits up to 5 s for an answer.
//! - A `turn:`/`turns:` URL without user name or credential makes webrtc-rs reject the whole
//!   configuration; so do URLs it cannot parse (`turn://host`, unknown schemes, query keys
//!   other than one `transport=udp|tcp`, any query on `stun:`).
//!
//! [`gather`] therefore keeps only the URLs that mean something to webrtc-rs — `stun:` and
//! `turn:` over UDP to an IPv4 address or a name, with credentials — and reports every other
//! one in [`Gathered::skipped_urls`] with the reason, rather than failing the whole gathering
//! or waiting for UDP answers from a TCP/TLS port.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::url::{ProtoType, SchemeType, Url};
use webrtc::ice_transport::ice_candidate::RTCIceCandidate;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::RTCPeerConnection;

/// One ICE server entry, as in `RTCIceServer`.
#[derive(Debug, Clone)]
pub struct IceServer {
    /// `turn:`/`turns:`/`stun:` URLs.
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// A gathered candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// host, srflx, prflx or relay.
    pub kind: String,
    /// udp or tcp.
    pub protocol: String,
    pub address: String,
    pub port: u16,
    pub related_address: Option<String>,
    pub related_port: Option<u16>,
    /// The candidate line as the stack writes it in SDP.
    pub sdp: String,
}

/// What gathering produced.
#[derive(Debug, Clone, Serialize)]
pub struct Gathered {
    pub candidates: Vec<Candidate>,
    /// Gathering reached "complete" before the timeout.
    pub complete: bool,
    /// Milliseconds from start to complete (or to the timeout).
    pub elapsed_ms: u64,
    /// URLs left out of the configuration because webrtc-rs 0.17 rejects them or gathers
    /// nothing useful from them (see the module docs), each with the reason.
    pub skipped_urls: Vec<(String, String)>,
}

/// Why gathering could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum IceError {
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error("webrtc-rs did not start gathering within {0:?}")]
    Timeout(Duration),
}

/// Time kept back from gathering for closing the peer connection.
const CLOSE_RESERVE_MAX: Duration = Duration::from_millis(500);

/// Gathers candidates with `servers` as the only ICE servers; loopback host candidates are
/// included when `include_loopback`. Returns within `timeout` (closing the peer connection
/// continues in the background if it takes longer than the time left).
pub async fn gather(
    servers: &[IceServer],
    include_loopback: bool,
    timeout: Duration,
) -> Result<Gathered, IceError> {
    let start = Instant::now();
    // A timeout too large to add is as good as none.
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let gather_deadline = deadline - (deadline - start) / 5;
    let gather_deadline = deadline
        .checked_sub(CLOSE_RESERVE_MAX)
        .map_or(gather_deadline, |d| d.max(gather_deadline));
    let (ice_servers, skipped_urls) = usable_servers(servers);

    let (tx, mut rx) = mpsc::unbounded_channel::<Option<RTCIceCandidate>>();
    // A task of its own, so that a connection whose setup outlives the deadline is still
    // closed, and a panic inside webrtc-rs is an error here.
    let mut setup = tokio::spawn(start_gathering(ice_servers, include_loopback, tx));
    let pc = match tokio::time::timeout_at(gather_deadline, &mut setup).await {
        Ok(Ok(Ok(pc))) => pc,
        Ok(Ok(Err((pc, e)))) => {
            if let Some(pc) = pc {
                close(pc, deadline).await;
            }
            return Err(IceError::WebRtc(e.to_string()));
        }
        Ok(Err(e)) => return Err(IceError::WebRtc(format!("setting up gathering: {e}"))),
        Err(_) => {
            tokio::spawn(async move {
                if let Ok(Ok(pc)) = setup.await {
                    let _ = pc.close().await;
                }
            });
            return Err(IceError::Timeout(timeout));
        }
    };

    let mut candidates = Vec::new();
    let mut complete = false;
    loop {
        match tokio::time::timeout_at(gather_deadline, rx.recv()).await {
            Ok(Some(Some(c))) => candidates.push(candidate(&c)),
            Ok(Some(None)) => {
                complete = true;
                break;
            }
            // The handler was dropped (the connection is gone) or time is up.
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    close(pc, deadline).await;
    Ok(Gathered {
        candidates,
        complete,
        elapsed_ms,
        skipped_urls,
    })
}

/// A peer connection that has started gathering, its candidates going to `tx` (`None` when
/// gathering completes). On error, the connection if one was made, to be closed.
async fn start_gathering(
    ice_servers: Vec<RTCIceServer>,
    include_loopback: bool,
    tx: mpsc::UnboundedSender<Option<RTCIceCandidate>>,
) -> Result<Arc<RTCPeerConnection>, (Option<Arc<RTCPeerConnection>>, webrtc::Error)> {
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(include_loopback);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new().with_setting_engine(settings).build();
    let config = RTCConfiguration {
        ice_servers,
        ice_transport_policy: RTCIceTransportPolicy::All,
        ..Default::default()
    };
    let pc = Arc::new(
        api.new_peer_connection(config)
            .await
            .map_err(|e| (None, e))?,
    );
    pc.on_ice_candidate(Box::new(move |c| {
        // The receiver may be gone after a timeout; nothing to do then.
        let _ = tx.send(c);
        Box::pin(async {})
    }));
    let result = async {
        pc.create_data_channel("ember-selftest", None).await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await
    }
    .await;
    match result {
        Ok(()) => Ok(pc),
        Err(e) => Err((Some(pc), e)),
    }
}

/// Closes `pc`, waiting at most until `deadline`; a close that takes longer finishes in the
/// background.
async fn close(pc: Arc<RTCPeerConnection>, deadline: Instant) {
    let task = tokio::spawn(async move {
        let _ = pc.close().await;
    });
    let _ = tokio::time::timeout_at(deadline, task).await;
}

fn candidate(c: &RTCIceCandidate) -> Candidate {
    let related = !c.related_address.is_empty();
    let sdp = match c.to_json() {
        Ok(init) => init.candidate,
        // Not expected for a candidate the stack gathered itself; an equivalent line.
        Err(_) => {
            let mut line = format!(
                "candidate:{} {} {} {} {} {} typ {}",
                c.foundation, c.component, c.protocol, c.priority, c.address, c.port, c.typ
            );
            if related {
                line.push_str(&format!(
                    " raddr {} rport {}",
                    c.related_address, c.related_port
                ));
            }
            line
        }
    };
    Candidate {
        kind: c.typ.to_string(),
        protocol: c.protocol.to_string(),
        address: c.address.clone(),
        port: c.port,
        related_address: related.then(|| c.related_address.clone()),
        related_port: related.then_some(c.related_port),
        sdp,
    }
}

/// The servers with only the URLs webrtc-rs gathers from, and the skipped URLs with reasons.
fn usable_servers(servers: &[IceServer]) -> (Vec<RTCIceServer>, Vec<(String, String)>) {
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for s in servers {
        let mut urls = Vec::new();
        for u in &s.urls {
            match check_url(u, &s.username, &s.credential) {
                Ok(()) => urls.push(u.clone()),
                Err(why) => skipped.push((u.clone(), why)),
            }
        }
        if !urls.is_empty() {
            usable.push(RTCIceServer {
                urls,
                username: s.username.clone(),
                credential: s.credential.clone(),
            });
        }
    }
    (usable, skipped)
}

/// Whether webrtc-rs 0.17 gathers anything meaningful from `raw`; if not, why.
fn check_url(raw: &str, username: &str, credential: &str) -> Result<(), String> {
    let url = Url::parse_url(raw).map_err(|e| format!("webrtc-rs cannot parse this URL: {e}"))?;
    match url.scheme {
        SchemeType::Stun => Ok(()),
        SchemeType::Stuns => Err(
            "webrtc-rs 0.17 has no STUN over TLS (it would send a plain UDP Binding to this port)"
                .into(),
        ),
        SchemeType::Turn | SchemeType::Turns => {
            if username.is_empty() || credential.is_empty() {
                return Err(
                    "TURN URL without user name or credential (webrtc-rs rejects the whole \
                     configuration)"
                        .into(),
                );
            }
            if url.scheme == SchemeType::Turns || url.proto != ProtoType::Udp {
                return Err(format!(
                    "webrtc-rs 0.17 gathers relay candidates only from turn: over UDP, not {}",
                    if url.scheme == SchemeType::Turns {
                        format!("turns: (TLS/DTLS, transport={})", url.proto)
                    } else {
                        format!("transport={}", url.proto)
                    }
                ));
            }
            if url.host.parse::<Ipv6Addr>().is_ok() {
                return Err(
                    "webrtc-rs 0.17 allocates only from an IPv4 socket, so an IPv6 TURN server \
                     yields no relay candidate"
                        .into(),
                );
            }
            Ok(())
        }
        SchemeType::Unknown => Err("unknown URL scheme".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use webrtc::turn::auth::{generate_auth_key, AuthHandler};
    use webrtc::turn::relay::relay_static::RelayAddressGeneratorStatic;
    use webrtc::turn::server::config::{ConnConfig, ServerConfig};
    use webrtc::turn::server::Server;
    use webrtc::util::vnet::net::Net;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn server(urls: &[&str], user: &str, pass: &str) -> IceServer {
        IceServer {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            username: user.into(),
            credential: pass.into(),
        }
    }

    fn count(g: &Gathered, kind: &str) -> usize {
        g.candidates.iter().filter(|c| c.kind == kind).count()
    }

    #[test]
    fn url_forms() {
        let ok = |u: &str| check_url(u, "u", "p");
        assert!(ok("stun:127.0.0.1:3478").is_ok());
        assert!(ok("stun:[::1]:3478").is_ok());
        assert!(ok("turn:127.0.0.1:3478").is_ok());
        assert!(ok("turn:127.0.0.1:3478?transport=udp").is_ok());
        assert!(ok("turn:relay.example.org?transport=udp").is_ok());
        for bad in [
            "turn:127.0.0.1:3478?transport=tcp",
            "turns:127.0.0.1:5349",
            "turns:127.0.0.1:5349?transport=tcp",
            "turns:127.0.0.1:5349?transport=udp",
            "turn:[::1]:3478?transport=udp",
            "stuns:127.0.0.1:5349",
            "turn://127.0.0.1:3478",
            "turn:127.0.0.1:3478?transport=sctp",
            "stun:127.0.0.1:3478?transport=udp",
            "http:127.0.0.1",
            "no-scheme",
        ] {
            let e = ok(bad).expect_err(bad);
            assert!(!e.is_empty());
        }
        assert!(check_url("turn:127.0.0.1:3478", "", "p").is_err());
        assert!(check_url("turn:127.0.0.1:3478", "u", "").is_err());
        // STUN needs no credentials.
        assert!(check_url("stun:127.0.0.1:3478", "", "").is_ok());

        let (usable, skipped) = usable_servers(&[
            server(&["turns:127.0.0.1:5349", "turn:127.0.0.1:3478"], "u", "p"),
            server(&["turn:127.0.0.1:3478?transport=tcp"], "u", "p"),
        ]);
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0].urls, ["turn:127.0.0.1:3478"]);
        let skipped: Vec<&str> = skipped.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            skipped,
            ["turns:127.0.0.1:5349", "turn:127.0.0.1:3478?transport=tcp"]
        );
    }

    #[tokio::test]
    async fn host_candidates_without_servers() {
        let timeout = Duration::from_secs(10);
        let g = gather(&[], true, timeout).await.expect("gather");
        assert!(g.complete, "{g:?}");
        assert!(g.elapsed_ms < 10_000);
        assert!(g.skipped_urls.is_empty());
        assert!(count(&g, "host") >= 1, "{g:?}");
        assert_eq!(count(&g, "host"), g.candidates.len(), "{g:?}");
        let lo = g
            .candidates
            .iter()
            .find(|c| c.address == "127.0.0.1")
            .unwrap_or_else(|| panic!("no loopback candidate: {g:?}"));
        assert_eq!(lo.protocol, "udp");
        assert_ne!(lo.port, 0);
        assert!(lo.related_address.is_none() && lo.related_port.is_none());
        assert!(
            lo.sdp.starts_with("candidate:")
                && lo.sdp.contains(&format!(" 127.0.0.1 {} typ host", lo.port)),
            "{}",
            lo.sdp
        );

        // No bound at all works too.
        let g = gather(&[], true, Duration::MAX).await.expect("gather");
        assert!(g.complete && !g.candidates.is_empty(), "{g:?}");

        let g = gather(&[], false, timeout).await.expect("gather");
        assert!(g.complete);
        assert!(
            g.candidates.iter().all(|c| c.address != "127.0.0.1"),
            "{g:?}"
        );
    }

    #[tokio::test]
    async fn silent_stun_server_is_bounded_by_the_timeout() {
        // A UDP socket that never answers (webrtc-rs waits 5 s for a Binding response).
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("stun:{}", silent.local_addr().unwrap());
        let timeout = Duration::from_millis(1500);
        let started = std::time::Instant::now();
        let g = gather(&[server(&[&url], "", "")], true, timeout)
            .await
            .expect("gather");
        let took = started.elapsed();
        assert!(took <= timeout + Duration::from_millis(300), "{took:?}");
        assert!(!g.complete, "{g:?}");
        assert!(g.elapsed_ms <= 1500, "{g:?}");
        assert_eq!(count(&g, "srflx"), 0, "{g:?}");
        assert!(count(&g, "host") >= 1, "{g:?}");
    }

    #[tokio::test]
    async fn unusable_urls_are_skipped_not_fatal() {
        let g = gather(
            &[
                server(
                    &[
                        "turns:127.0.0.1:1?transport=tcp",
                        "turn://x",
                        "turn:[::1]:1",
                    ],
                    "u",
                    "p",
                ),
                server(&["turn:127.0.0.1:1"], "", ""),
            ],
            true,
            Duration::from_secs(10),
        )
        .await
        .expect("gather");
        assert_eq!(g.skipped_urls.len(), 4, "{g:?}");
        assert!(g.complete, "{g:?}");
        assert!(count(&g, "host") >= 1, "{g:?}");
    }

    struct OneUser;

    impl AuthHandler for OneUser {
        fn auth_handle(
            &self,
            username: &str,
            realm: &str,
            _src: SocketAddr,
        ) -> Result<Vec<u8>, webrtc::turn::Error> {
            if username == "user" {
                Ok(generate_auth_key(username, realm, "pass"))
            } else {
                Err(webrtc::turn::Error::ErrNoSuchUser)
            }
        }
    }

    /// webrtc-rs's own TURN server on loopback: answers Binding requests and allocates
    /// relays on 127.0.0.1.
    async fn loopback_turn_server() -> (Server, SocketAddr) {
        let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = conn.local_addr().unwrap();
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(conn),
                relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                    relay_address: LOOPBACK,
                    address: "127.0.0.1".into(),
                    net: Arc::new(Net::new(None)),
                }),
            }],
            realm: "ember.test".into(),
            auth_handler: Arc::new(OneUser),
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: None,
        })
        .await
        .unwrap();
        (server, addr)
    }

    #[tokio::test]
    async fn srflx_and_relay_from_a_loopback_turn_server() {
        let (turn, addr) = loopback_turn_server().await;
        let g = gather(
            &[server(
                &[
                    &format!("turn:{addr}?transport=udp"),
                    &format!("stun:{addr}"),
                    &format!("turn:{addr}?transport=tcp"),
                ],
                "user",
                "pass",
            )],
            true,
            Duration::from_secs(10),
        )
        .await
        .expect("gather");
        let _ = turn.close().await;
        assert!(g.complete, "{g:?}");
        assert_eq!(g.skipped_urls.len(), 1, "{g:?}");
        let relay: Vec<&Candidate> = g.candidates.iter().filter(|c| c.kind == "relay").collect();
        assert_eq!(relay.len(), 1, "{g:?}");
        let r = relay[0];
        assert_eq!(
            (r.protocol.as_str(), r.address.as_str()),
            ("udp", "127.0.0.1")
        );
        assert!(
            r.related_address.is_some() && r.related_port.is_some(),
            "{r:?}"
        );
        assert!(
            r.sdp
                .contains(&format!(" 127.0.0.1 {} typ relay raddr ", r.port)),
            "{}",
            r.sdp
        );
        let srflx: Vec<&Candidate> = g.candidates.iter().filter(|c| c.kind == "srflx").collect();
        assert!(!srflx.is_empty(), "{g:?}");
        for s in srflx {
            assert_eq!(s.address, "127.0.0.1", "{s:?}");
            // The mapped port of a loopback socket is its own port.
            assert_eq!(s.related_port, Some(s.port), "{s:?}");
        }
    }
}
