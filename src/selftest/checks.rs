//! The checks of `ember selftest`, in the order they run. Each returns [`Check`] lines;
//! a failure carries a hint naming the likely cause and the config key (Ember's, with
//! coturn's equivalent) that fixes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_turn::auth::{rest_password, unix_now};
use ember_turn::client::{Allocation, ClientCredentials};
use ember_turn::stun::{attr, method, MessageWriter};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::UdpSocket;

use super::conn::{
    binding_from, data_indication, tls_config, Conn, ConnectError, Frame, Proto, TxError,
};
use super::ice::{self, IceServer};
use super::report::{classify, Check, Reach, Report, Status, Summary};
use super::{Args, Progress, Target};

/// REQUESTED-TRANSPORT value for UDP (protocol 17 in the first byte).
const UDP_TRANSPORT: u32 = 17 << 24;
/// First channel number.
const CHANNEL: u16 = 0x4000;
/// Ping phase of the data check: packets sent one at a time.
const PINGS: u32 = 30;
/// Longest the ping phase may take.
const PING_TIME: Duration = Duration::from_secs(5);
/// Consecutive lost pings after which the ping phase stops.
const MAX_LOST_IN_A_ROW: u32 = 5;
/// Burst phase: packets, size, and how many may be in flight.
const BURST_PACKETS: u32 = 1000;
const BURST_SIZE: usize = 1000;
/// 32 x 1000 B fits the 64 KiB receive buffer coturn sets on its relay sockets; a larger
/// window measured coturn's buffer, not the path.
const BURST_WINDOW: u32 = 32;
/// Longest the burst may send.
const BURST_TIME: Duration = Duration::from_secs(3);
/// How long echoes still in flight are waited for after the burst.
const BURST_DRAIN: Duration = Duration::from_secs(1);
/// Loss above this (percent) is a warning.
const LOSS_WARN_PERCENT: f64 = 1.0;
/// Marks the peer's opening packet, which is not echoed.
const PUNCH: &[u8] = b"ember-selftest-punch";

/// Fixed settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest a single request may take.
    pub timeout: Duration,
    pub transports: Vec<Proto>,
    pub creds: Option<ClientCredentials>,
    /// Where the credentials came from, for hints: "static" or "rest".
    pub creds_kind: &'static str,
}

impl Settings {
    pub fn from_args(args: &Args, target: &Target) -> Settings {
        let mut transports: Vec<Proto> = if !args.transport.is_empty() {
            args.transport.iter().map(|&t| t.into()).collect()
        } else if !target.transports.is_empty() {
            target.transports.clone()
        } else {
            vec![Proto::Udp, Proto::Tcp, Proto::Tls]
        };
        transports.sort();
        transports.dedup();
        let (creds, creds_kind) = match (&args.user, &args.password, &args.secret) {
            (Some(u), Some(p), _) => (
                Some(ClientCredentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                "static",
            ),
            (_, _, Some(secret)) => (
                Some(rest_credentials(
                    secret,
                    &args.secret_user,
                    unix_now() + 3600,
                )),
                "rest",
            ),
            _ => (None, "none"),
        };
        Settings {
            timeout: Duration::from_secs(3),
            transports,
            creds,
            creds_kind,
        }
    }
}

/// TURN REST credentials: `<expiry>:<user>` and base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, user: &str, expiry: u64) -> ClientCredentials {
    let username = format!("{expiry}:{user}");
    ClientCredentials {
        password: rest_password(secret.as_bytes(), &username),
        username,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The hint for an error code from an Allocate with credentials.
fn allocate_hint(e: &TxError, kind: &str, realm: Option<&str>) -> String {
    let realm = realm.map_or(String::new(), |r| format!(" (the server's realm is {r:?})"));
    match e.code() {
        Some(401) if kind == "rest" => format!(
            "the server refused the REST credential{realm}: --secret must be one of \
             turn.auth_secrets (coturn: static-auth-secret), and both clocks must be right"
        ),
        Some(401) => format!(
            "the server refused the user name/password{realm}: check turn.users \
             (coturn: user=NAME:PASSWORD) and that the realm matches turn.realm"
        ),
        Some(403) => "the server forbids this client: check its allowed/denied address lists".into(),
        Some(437) => "allocation mismatch: a stale allocation from this address; retry in a minute".into(),
        Some(441) => "wrong credentials for the existing allocation".into(),
        Some(442) => "the server does not relay UDP: unusual, check its configuration".into(),
        Some(486) => "allocation quota reached: raise turn.user_quota (coturn: user-quota)".into(),
        Some(508) => "the server has no free relay port: widen turn.relay_ports (coturn: min-port/max-port) or raise turn.total_quota".into(),
        Some(420) => "the server does not understand a mandatory attribute".into(),
        _ => match e {
            TxError::Timeout(_) => "no answer: a firewall drops the traffic, or nothing listens there (turn.listen)".into(),
            TxError::BadIntegrity => "the response's MESSAGE-INTEGRITY is wrong: a middlebox rewrote it, or the server does not check passwords".into(),
            _ => "see the error above".into(),
        },
    }
}

fn connect_hint(proto: Proto, addr: SocketAddr, e: &ConnectError) -> String {
    let key = if proto == Proto::Tls {
        "turn.tls_listen"
    } else {
        "turn.listen"
    };
    match e {
        ConnectError::Refused => format!(
            "nothing listens on {addr}/{proto}: check {key} (coturn: listening-port / \
             tls-listening-port), or a firewall rejects the port"
        ),
        ConnectError::Timeout(_) => format!(
            "no answer from {addr}/{proto}: a firewall drops it (open {} {}), or the host is wrong",
            if proto == Proto::Udp { "UDP" } else { "TCP" },
            addr.port()
        ),
        ConnectError::Tls(_) => "the TLS handshake failed: check [tls] cert and key".into(),
        ConnectError::Io(_) => "a local network error: check the route to the server".into(),
    }
}

/// Runs every check and returns the report.
pub async fn run(
    args: &Args,
    target: &Target,
    settings: &Settings,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let mut report = Report {
        target: args.target.clone(),
        host: target.host.clone(),
        address: None,
        transports: settings
            .transports
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        checks: Vec::new(),
        ice: None,
        summary: Summary::default(),
        ok: false,
        strict: args.strict,
    };
    let verified_tls = tls_config(args.ca.as_deref(), true).context("TLS setup")?;
    let unverified_tls = tls_config(None, false).context("TLS setup")?;
    let checks = &mut report.checks;

    // DNS.
    progress.step("DNS");
    let server_ip = match resolve(&target.host, target.port).await {
        Ok(ips) => {
            let chosen = ips.iter().find(|ip| ip.is_ipv4()).unwrap_or(&ips[0]);
            let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            checks.push(
                Check::new("dns", "dns", Status::Pass)
                    .result(format!(
                        "{} -> {} (testing {chosen})",
                        target.host,
                        list.join(", ")
                    ))
                    .details(json!({ "addresses": list, "chosen": chosen.to_string() })),
            );
            *chosen
        }
        Err(e) => {
            checks.push(
                Check::new("dns", "dns", Status::Fail)
                    .result(format!("cannot resolve {}: {e}", target.host))
                    .hint("check the DNS record of the TURN host name (an A/AAAA record)"),
            );
            report.finish();
            return Ok(report);
        }
    };
    report.address = Some(server_ip.to_string());
    let udp_addr = SocketAddr::new(server_ip, target.port);
    let tls_addr = SocketAddr::new(server_ip, target.tls_port);
    let server_name = ServerName::try_from(target.host.clone())
        .map_err(|e| anyhow::anyhow!("{}: not a valid TLS server name: {e}", target.host))?;

    // Per transport: connect, STUN Binding, Allocate.
    let mut live: Vec<(Conn, Allocation)> = Vec::new();
    let mut auth_probe_done = false;
    for &proto in &settings.transports {
        let addr = if proto == Proto::Tls {
            tls_addr
        } else {
            udp_addr
        };
        progress.step(&format!("connect {proto}"));
        let conn = match proto {
            Proto::Udp => Conn::udp(addr, settings.creds.clone(), settings.timeout).await,
            Proto::Tcp => {
                let started = Instant::now();
                let c = Conn::tcp(addr, settings.creds.clone(), settings.timeout).await;
                if c.is_ok() {
                    checks.push(
                        Check::new("connect.tcp", "connect tcp", Status::Pass)
                            .result(format!("{addr} in {}", ms(started.elapsed()))),
                    );
                }
                c
            }
            Proto::Tls => {
                let started = Instant::now();
                let verified = Conn::tls(
                    addr,
                    server_name.clone(),
                    verified_tls.clone(),
                    settings.creds.clone(),
                    settings.timeout,
                )
                .await;
                match verified {
                    Ok(c) => {
                        checks.push(
                            Check::new("connect.tls", "connect tls", Status::Pass)
                                .result(format!("{addr}, handshake in {}", ms(started.elapsed()))),
                        );
                        checks.push(
                            Check::new("tls.certificate", "tls certificate", Status::Pass)
                                .result(format!("valid for {}", target.host)),
                        );
                        Ok(c)
                    }
                    Err(ConnectError::Tls(reason)) => {
                        checks.push(
                            Check::new("tls.certificate", "tls certificate", Status::Fail)
                                .result(format!("not accepted: {reason}"))
                                .hint(format!(
                                    "clients will refuse TURN over TLS: set [tls] cert/key to a \
                                     certificate for {} from a CA they trust, with its full \
                                     chain (or pass --ca for a private CA)",
                                    target.host
                                )),
                        );
                        // Go on without verification to test the rest over TLS.
                        let c = Conn::tls(
                            addr,
                            server_name.clone(),
                            unverified_tls.clone(),
                            settings.creds.clone(),
                            settings.timeout,
                        )
                        .await;
                        if c.is_ok() {
                            checks.push(
                                Check::new("connect.tls", "connect tls", Status::Pass).result(
                                    format!("{addr} (certificate not verified, see above)"),
                                ),
                            );
                        }
                        c
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                checks.push(
                    Check::new(
                        format!("connect.{proto}"),
                        format!("connect {proto}"),
                        Status::Fail,
                    )
                    .result(format!("{addr}: {e}"))
                    .hint(connect_hint(proto, addr, &e)),
                );
                continue;
            }
        };

        progress.step(&format!("STUN binding {proto}"));
        match conn.transact(method::BINDING, |_| {}).await {
            Ok(r) => {
                let mapped = ember_turn::client::mapped_address(&r.message());
                let shown = mapped.map_or("no mapped address".into(), |m| m.to_string());
                checks.push(
                    Check::new(format!("binding.{proto}"), format!("stun binding {proto}"), Status::Pass)
                        .result(format!("server-reflexive {shown} in {}", ms(r.rtt)))
                        .details(json!({ "mapped": mapped.map(|m| m.to_string()), "rtt_ms": r.rtt.as_secs_f64() * 1000.0 })),
                );
            }
            Err(e) => {
                let hint = if proto == Proto::Udp && matches!(e, TxError::Timeout(_)) {
                    connect_hint(proto, addr, &ConnectError::Timeout(settings.timeout))
                } else {
                    "the server did not answer a STUN Binding request: is it a STUN/TURN server?"
                        .into()
                };
                checks.push(
                    Check::new(
                        format!("binding.{proto}"),
                        format!("stun binding {proto}"),
                        Status::Fail,
                    )
                    .result(format!("{addr}: {e}"))
                    .hint(hint),
                );
                if proto == Proto::Udp {
                    continue;
                }
            }
        }

        progress.step(&format!("allocate {proto}"));
        let allocate = conn
            .transact(method::ALLOCATE, |w| {
                w.u32(attr::REQUESTED_TRANSPORT, UDP_TRANSPORT);
            })
            .await;
        let id = format!("allocate.{proto}");
        let name = format!("allocate {proto}");
        let required = |checks: &mut Vec<Check>, realm: Option<&str>| match realm {
            Some(realm) => checks.push(
                Check::new("auth.required", "credentials required", Status::Pass).result(format!(
                    "an unauthenticated Allocate got 401 (realm {realm:?})"
                )),
            ),
            None => checks.push(
                Check::new("auth.required", "credentials required", Status::Fail)
                    .result("the server allocated without asking for credentials")
                    .hint(
                        "anyone can use it as an open relay: require long-term credentials \
                         (Ember always does; coturn: lt-cred-mech, not no-auth)",
                    ),
            ),
        };
        match allocate {
            Ok(r) => {
                if !auth_probe_done {
                    auth_probe_done = true;
                    required(checks, conn.realm());
                }
                let a = Allocation::from_response(&r.message());
                let relayed: Vec<String> = a.relayed.iter().map(ToString::to_string).collect();
                let status = if a.relayed.is_empty() {
                    Status::Fail
                } else {
                    Status::Pass
                };
                checks.push(
                    Check::new(id, name, status)
                        .result(format!(
                            "relayed {}, lifetime {} s, in {}",
                            if relayed.is_empty() {
                                "NO ADDRESS".to_owned()
                            } else {
                                relayed.join(" + ")
                            },
                            a.lifetime.map_or("?".into(), |l| l.to_string()),
                            ms(r.rtt)
                        ))
                        .details(json!({
                            "relayed": relayed,
                            "mapped": a.mapped.map(|m| m.to_string()),
                            "lifetime": a.lifetime,
                            "realm": conn.realm(),
                        })),
                );
                if !a.relayed.is_empty() {
                    live.push((conn, a));
                }
            }
            Err(TxError::Error { code: 401, .. }) if settings.creds.is_none() => {
                if !auth_probe_done {
                    auth_probe_done = true;
                    required(checks, Some(conn.realm().unwrap_or("")));
                }
                checks.push(
                    Check::new(id, name, Status::Skip)
                        .result("needs credentials")
                        .hint("pass --user/--password or --secret to test allocations"),
                );
            }
            Err(e) => {
                if e.code() == Some(401) && !auth_probe_done {
                    auth_probe_done = true;
                    required(checks, Some(conn.realm().unwrap_or("")));
                }
                let hint = allocate_hint(&e, settings.creds_kind, conn.realm());
                checks.push(
                    Check::new(id, name, Status::Fail)
                        .result(e.to_string())
                        .hint(hint),
                );
            }
        }
    }

    relay_address_check(checks, &live, args.allow_private);

    // Data through each allocation.
    for (conn, a) in &mut live {
        let proto = conn.proto;
        progress.step(&format!("data through the relay ({proto})"));
        let relay = a.relayed[0];
        checks.push(data_check(conn, relay, udp_addr, settings.timeout, args.allow_private).await);
    }
    for (conn, _) in &mut live {
        conn.release().await;
    }
    let first = settings.transports.first().copied();
    let have_udp = live.iter().any(|(c, _)| c.proto == Proto::Udp);
    drop(live);

    // Credentials, the other way round.
    if let (Some(creds), Some(proto)) = (&settings.creds, first) {
        let addr = if proto == Proto::Tls {
            tls_addr
        } else {
            udp_addr
        };
        let open = |creds: ClientCredentials| {
            let server_name = server_name.clone();
            let tls = unverified_tls.clone();
            let timeout = settings.timeout;
            async move {
                match proto {
                    Proto::Udp => Conn::udp(addr, Some(creds), timeout).await,
                    Proto::Tcp => Conn::tcp(addr, Some(creds), timeout).await,
                    Proto::Tls => Conn::tls(addr, server_name, tls, Some(creds), timeout).await,
                }
            }
        };
        progress.step("a wrong password is refused");
        let wrong = ClientCredentials {
            username: creds.username.clone(),
            password: format!("{}-wrong", creds.password),
        };
        checks.push(
            refusal_check(
                open(wrong).await,
                "auth.wrong_password",
                "wrong password refused",
            )
            .await,
        );
        if let Some(secret) = &args.secret {
            progress.step("an expired REST credential is refused");
            let expired =
                rest_credentials(secret, &args.secret_user, unix_now().saturating_sub(3600));
            checks.push(
                refusal_check(
                    open(expired).await,
                    "auth.expired_rest",
                    "expired credential refused",
                )
                .await,
            );
        } else {
            checks.push(
                Check::new(
                    "auth.expired_rest",
                    "expired credential refused",
                    Status::Skip,
                )
                .result("needs --secret (REST credentials)"),
            );
        }
    }

    // IPv6 relay and the port range, over UDP.
    if settings.creds.is_some() && have_udp {
        progress.step("IPv6 relay");
        checks.push(ipv6_check(udp_addr, settings).await);
        progress.step("relay port range");
        checks.push(port_range_check(udp_addr, settings, args.port_samples).await);
    }

    // ICE gathering by webrtc-rs.
    if args.no_ice {
        checks
            .push(Check::new("ice", "ice gathering (webrtc-rs)", Status::Skip).result("--no-ice"));
    } else if let Some(creds) = &settings.creds {
        progress.step("ICE gathering (webrtc-rs)");
        let (check, gathered) = ice_check(target, server_ip, settings, creds).await;
        checks.push(check);
        report.ice = gathered;
    }

    report.finish();
    Ok(report)
}

async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await?
        .map(|a| a.ip())
        .collect();
    ips.dedup();
    if ips.is_empty() {
        return Err(std::io::Error::other("no address"));
    }
    Ok(ips)
}

/// Is the relay address one that clients elsewhere can reach?
fn relay_address_check(checks: &mut Vec<Check>, live: &[(Conn, Allocation)], allow_private: bool) {
    let mut seen: Vec<(IpAddr, Vec<&'static str>)> = Vec::new();
    for (conn, a) in live {
        for r in &a.relayed {
            match seen.iter_mut().find(|(ip, _)| *ip == r.ip()) {
                Some((_, protos)) => protos.push(conn.proto.as_str()),
                None => seen.push((r.ip(), vec![conn.proto.as_str()])),
            }
        }
    }
    for (ip, protos) in seen {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let id = format!(
            "relay_address.{}",
            if ip.is_ipv4() { "ipv4" } else { "ipv6" }
        );
        let via = protos.join(",");
        let check = match classify(ip) {
            Reach::Public => Check::new(id, "relay address", Status::Pass)
                .result(format!("{ip} ({family}, public) via {via}")),
            Reach::NotPublic(kind) if allow_private => {
                Check::new(id, "relay address", Status::Pass).result(format!(
                    "{ip} ({family}, {kind}; accepted with --allow-private) via {via}"
                ))
            }
            Reach::NotPublic(kind) => Check::new(id, "relay address", Status::Warn)
                .result(format!(
                    "{ip} ({family}) is {kind}: clients on other networks cannot reach it"
                ))
                .hint(
                    "behind NAT, tell clients the public address: turn.external_ip = \
                     [\"<public IP>\"] (or \"<private>/<public>\" pairs; coturn: external-ip); \
                     pass --allow-private if this relay serves a private network only",
                ),
        };
        checks.push(check.details(json!({ "address": ip.to_string(), "transports": protos })));
    }
}

/// An Allocate with credentials that must be refused (401).
async fn refusal_check(conn: Result<Conn, ConnectError>, id: &str, name: &str) -> Check {
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return Check::new(id, name, Status::Skip).result(format!("cannot connect: {e}")),
    };
    let r = conn
        .transact(method::ALLOCATE, |w| {
            w.u32(attr::REQUESTED_TRANSPORT, UDP_TRANSPORT);
        })
        .await;
    match r {
        Err(TxError::Error { code: 401, .. }) => {
            Check::new(id, name, Status::Pass).result("401 Unauthorized")
        }
        Err(e @ TxError::Error { .. }) => {
            Check::new(id, name, Status::Pass).result(format!("refused with {e}"))
        }
        Err(e) => Check::new(id, name, Status::Warn)
            .result(format!("no clear answer: {e}"))
            .hint("a refusal should be a 401 error response"),
        Ok(_) => {
            conn.release().await;
            Check::new(id, name, Status::Fail)
                .result("the server ACCEPTED it")
                .hint("the server does not check credentials properly: anyone can relay through it")
        }
    }
}

/// Payload of the data check: sequence number and send time.
fn probe(seq: u64, base: Instant, size: usize) -> Vec<u8> {
    let mut v = vec![0x5a; size.max(16)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    let t = base.elapsed().as_nanos() as u64;
    v[8..16].copy_from_slice(&t.to_be_bytes());
    v
}

fn parse_probe(data: &[u8], base: Instant) -> Option<(u64, Duration)> {
    if data.len() < 16 {
        return None;
    }
    let seq = u64::from_be_bytes(data[..8].try_into().ok()?);
    let sent = u64::from_be_bytes(data[8..16].try_into().ok()?);
    let now = base.elapsed().as_nanos() as u64;
    Some((seq, Duration::from_nanos(now.saturating_sub(sent))))
}

/// Echoes every datagram that comes from `relay` back to it, until aborted.
fn spawn_echo(peer: Arc<UdpSocket>, relay: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = peer.recv_from(&mut buf).await {
            if from == relay && &buf[..n] != PUNCH {
                let _ = peer.send_to(&buf[..n], relay).await;
            }
        }
    })
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Permission + channel to a peer socket opened here, then packets to it and back.
async fn data_check(
    conn: &mut Conn,
    relay: SocketAddr,
    stun_server: SocketAddr,
    timeout: Duration,
    allow_private: bool,
) -> Check {
    let proto = conn.proto;
    let id = format!("data.{proto}");
    let name = format!("data through relay {proto}");
    let fail = |result: String, hint: &str| {
        Check::new(id.clone(), name.clone(), Status::Fail)
            .result(result)
            .hint(hint)
    };
    let family_any: SocketAddr = if relay.is_ipv4() {
        (IpAddr::from([0, 0, 0, 0]), 0).into()
    } else {
        (IpAddr::from([0u16; 8]), 0).into()
    };
    let peer = match UdpSocket::bind(family_any).await {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(format!("cannot open a peer socket: {e}"), "a local problem"),
    };
    // The peer as the relay will see it: its server-reflexive address if the server
    // answers STUN over UDP, else its local address.
    let local = peer.local_addr().expect("bound");
    let peer_addr = if stun_server.is_ipv4() == relay.is_ipv4() {
        binding_from(&peer, stun_server, timeout)
            .await
            .unwrap_or(local)
    } else {
        local
    };
    let peer_addr = if peer_addr.ip().is_unspecified() {
        SocketAddr::new(conn.local.ip(), peer_addr.port())
    } else {
        peer_addr
    };

    let perm = conn
        .transact(method::CREATE_PERMISSION, |w: &mut MessageWriter<'_>| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer_addr);
        })
        .await;
    if let Err(e) = perm {
        let hint = if e.code() == Some(403) {
            "the server refuses this peer address: Ember denies private and loopback peers \
             unless turn.allowed_peers lists them (coturn: allowed-peer-ip / denied-peer-ip)"
        } else {
            "CreatePermission failed"
        };
        return fail(format!("CreatePermission for peer {peer_addr}: {e}"), hint);
    }
    let bind = conn
        .transact(method::CHANNEL_BIND, |w: &mut MessageWriter<'_>| {
            w.u32(attr::CHANNEL_NUMBER, u32::from(CHANNEL) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer_addr);
        })
        .await;
    if let Err(e) = bind {
        return fail(
            format!("ChannelBind for peer {peer_addr}: {e}"),
            "ChannelBind failed",
        );
    }
    // Opens NAT/firewall state on the peer's side towards the relay.
    let _ = peer.send_to(PUNCH, relay).await;
    let _echo = AbortOnDrop(spawn_echo(peer.clone(), relay));

    let base = Instant::now();
    let mut rtts: Vec<Duration> = Vec::new();
    let mut sent = 0u64;
    let mut lost_in_a_row = 0;
    // Ping phase: one packet at a time.
    for seq in 0..u64::from(PINGS) {
        if base.elapsed() > PING_TIME {
            break;
        }
        if conn
            .send_channel(CHANNEL, &probe(seq, base, 200))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = false;
        while let Ok(Some(frame)) = conn.recv_frame(deadline).await {
            if let Some((s, rtt)) = echoed(&frame, peer_addr).and_then(|d| parse_probe(&d, base)) {
                if s == seq {
                    rtts.push(rtt);
                    got = true;
                    break;
                }
            }
        }
        if got {
            lost_in_a_row = 0;
        } else {
            lost_in_a_row += 1;
            if lost_in_a_row >= MAX_LOST_IN_A_ROW {
                break;
            }
        }
    }
    let ping_received = rtts.len() as u64;
    if ping_received == 0 {
        let private = classify(relay.ip()) != Reach::Public;
        let mut check = fail(
            format!("nothing came back through {relay} ({sent} packets sent)"),
            "the relay could not reach the peer, or the peer the relay: open the relay port \
             range (turn.relay_ports, UDP) in the firewall; check turn.external_ip",
        );
        if private && !allow_private {
            check.status = Status::Skip;
            check.result = format!(
                "relay address {relay} is not public and not reachable from here; data path not tested"
            );
        }
        return check;
    }

    // Burst phase: a window of packets in flight; after the sending time, late echoes
    // still count for a while.
    let burst_start = Instant::now();
    let stop_sending = burst_start + BURST_TIME;
    let mut drain_until: Option<Instant> = None;
    let mut next = u64::from(PINGS);
    let end = next + u64::from(BURST_PACKETS);
    let mut received = 0u64;
    let mut in_flight = 0u32;
    let mut last_echo = burst_start;
    loop {
        let now = Instant::now();
        let sending = now < stop_sending && next < end;
        if sending {
            while in_flight < BURST_WINDOW && next < end {
                if conn
                    .send_channel(CHANNEL, &probe(next, base, BURST_SIZE))
                    .await
                    .is_err()
                {
                    break;
                }
                next += 1;
                in_flight += 1;
            }
        } else if in_flight == 0 {
            break;
        }
        let wait_until = if sending {
            now + Duration::from_millis(500)
        } else {
            *drain_until.get_or_insert(now + BURST_DRAIN)
        };
        match conn.recv_frame(wait_until).await {
            Ok(Some(frame)) => {
                let echo = echoed(&frame, peer_addr).and_then(|d| parse_probe(&d, base));
                if echo.is_some_and(|(s, _)| s >= u64::from(PINGS)) {
                    received += 1;
                    last_echo = Instant::now();
                    in_flight = in_flight.saturating_sub(1);
                }
            }
            // Whatever is still out after a quiet wait is lost: free the window.
            Ok(None) if sending => in_flight = 0,
            Ok(None) | Err(_) => break,
        }
    }
    let burst_time = last_echo.duration_since(burst_start);
    let burst_sent = next - u64::from(PINGS);
    let total_sent = sent + burst_sent;
    let total_lost = total_sent - ping_received - received;
    let loss = total_lost as f64 * 100.0 / total_sent.max(1) as f64;
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    let mbit = received as f64 * BURST_SIZE as f64 * 8.0 / burst_time.as_secs_f64().max(1e-6) / 1e6;
    let status = if loss > LOSS_WARN_PERCENT {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut check = Check::new(id, name, status)
        .result(format!(
            "{total_sent} packets, {:.1}% lost, RTT p50 {} p99 {}, {mbit:.1} Mbit/s echoed ({burst_sent} x {BURST_SIZE} B)",
            loss,
            ms(pct(0.5)),
            ms(pct(0.99)),
        ))
        .details(json!({
            "relay": relay.to_string(),
            "peer": peer_addr.to_string(),
            "sent": total_sent,
            "lost": total_lost,
            "loss_percent": loss,
            "rtt_p50_ms": pct(0.5).as_secs_f64() * 1000.0,
            "rtt_p99_ms": pct(0.99).as_secs_f64() * 1000.0,
            "throughput_mbit_s": mbit,
        }));
    if status == Status::Warn {
        check = check.hint(
            "packets are lost on the way: a congested link, a bandwidth cap \
             (turn.bandwidth_limit), or full socket buffers on the relay (Ember: raise \
             net.core.rmem_max; coturn sets 64 KiB per relay socket itself)",
        );
    }
    check
}

/// The payload of a frame that the peer echoed back (ChannelData or Data indication).
fn echoed(frame: &Frame, peer: SocketAddr) -> Option<Vec<u8>> {
    match frame {
        Frame::Channel(CHANNEL, data) => Some(data.clone()),
        Frame::Channel(..) => None,
        Frame::Stun(bytes) => data_indication(bytes)
            .filter(|(from, _)| *from == peer)
            .map(|(_, d)| d),
    }
}

/// An allocation with an IPv6 relay address (RFC 6156).
async fn ipv6_check(server: SocketAddr, settings: &Settings) -> Check {
    let (id, name) = ("relay_ipv6", "ipv6 relay");
    let mut conn = match Conn::udp(server, settings.creds.clone(), settings.timeout).await {
        Ok(c) => c,
        Err(e) => return Check::new(id, name, Status::Skip).result(e.to_string()),
    };
    let r = conn
        .transact(method::ALLOCATE, |w| {
            w.u32(attr::REQUESTED_TRANSPORT, UDP_TRANSPORT)
                .u32(attr::REQUESTED_ADDRESS_FAMILY, 0x02 << 24);
        })
        .await;
    match r {
        Ok(r) => {
            let a = Allocation::from_response(&r.message());
            conn.release().await;
            match a.relayed.iter().find(|r| r.is_ipv6()) {
                Some(v6) => Check::new(id, name, Status::Pass).result(format!("relayed {v6}")),
                None => Check::new(id, name, Status::Warn)
                    .result("asked for IPv6, got no IPv6 relay address"),
            }
        }
        Err(e) if e.code() == Some(440) => Check::new(id, name, Status::Skip)
            .result("the server offers IPv4 relays only (440)")
            .hint("for IPv6 clients and peers add an IPv6 address to turn.relay_ip (coturn: relay-ip)"),
        Err(e) => Check::new(id, name, Status::Warn).result(e.to_string()),
    }
}

/// Several allocations: which relay ports they get, and whether a packet from the peer
/// reaches each of them (the firewall lets the range through).
async fn port_range_check(server: SocketAddr, settings: &Settings, samples: u32) -> Check {
    let (id, name) = ("relay_ports", "relay port range");
    if samples == 0 {
        return Check::new(id, name, Status::Skip).result("--port-samples 0");
    }
    let peer = match UdpSocket::bind(SocketAddr::new(
        if server.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    ))
    .await
    {
        Ok(p) => p,
        Err(e) => return Check::new(id, name, Status::Skip).result(format!("no peer socket: {e}")),
    };
    let mut conns = Vec::new();
    let mut ports = Vec::new();
    let mut unreachable = Vec::new();
    let mut stopped: Option<String> = None;
    let mut peer_addr: Option<SocketAddr> = None;
    // Allocations a packet from the peer was sent to.
    let mut tested = 0usize;
    for i in 0..samples {
        let mut conn = match Conn::udp(server, settings.creds.clone(), settings.timeout).await {
            Ok(c) => c,
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        };
        let pa = match peer_addr {
            Some(p) => p,
            None => {
                let local = peer.local_addr().expect("bound");
                let p = binding_from(&peer, server, settings.timeout)
                    .await
                    .unwrap_or_else(|| SocketAddr::new(conn.local.ip(), local.port()));
                peer_addr = Some(p);
                p
            }
        };
        let r = conn
            .transact(method::ALLOCATE, |w| {
                w.u32(attr::REQUESTED_TRANSPORT, UDP_TRANSPORT);
            })
            .await;
        let relay = match r.map(|r| Allocation::from_response(&r.message())) {
            Ok(a) if !a.relayed.is_empty() => a.relayed[0],
            Ok(_) => {
                stopped = Some("an allocation without relay address".into());
                break;
            }
            Err(e) => {
                stopped = Some(match e.code() {
                    Some(486) => format!("{e} after {i} allocations (quota: turn.user_quota)"),
                    Some(508) => format!("{e} after {i} allocations (out of relay ports)"),
                    _ => e.to_string(),
                });
                break;
            }
        };
        ports.push(relay.port());
        let perm = conn
            .transact(method::CREATE_PERMISSION, |w| {
                w.xor_addr(attr::XOR_PEER_ADDRESS, pa);
            })
            .await;
        let mut arrived = false;
        if let Err(e) = &perm {
            let why = format!("CreatePermission for peer {pa}: {e}");
            conns.push(conn);
            stopped = Some(if e.code() == Some(403) {
                why + " (the peer address is denied: turn.allowed_peers)"
            } else {
                why
            });
            break;
        } else {
            tested += 1;
            let _ = peer.send_to(&i.to_be_bytes(), relay).await;
            let deadline = Instant::now() + Duration::from_millis(1500);
            while let Ok(Some(frame)) = conn.recv_frame(deadline).await {
                if let Frame::Stun(b) = &frame {
                    if data_indication(b).is_some_and(|(_, d)| d == i.to_be_bytes()) {
                        arrived = true;
                        break;
                    }
                }
            }
        }
        if !arrived {
            unreachable.push(relay.port());
        }
        conns.push(conn);
    }
    for c in &mut conns {
        c.release().await;
    }
    if ports.is_empty() {
        return Check::new(id, name, Status::Warn)
            .result(format!("no allocation: {}", stopped.unwrap_or_default()));
    }
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let reached = tested - unreachable.len();
    let mut result = format!(
        "{} allocations, ports {}-{} ({} distinct), {reached}/{tested} reachable from here",
        ports.len(),
        sorted[0],
        sorted[sorted.len() - 1],
        sorted.len(),
    );
    if let Some(why) = &stopped {
        result.push_str(&format!("; stopped: {why}"));
    }
    let details = json!({
        "tried": samples, "ports": ports, "unreachable": unreachable, "stopped": stopped,
    });
    let status = if !unreachable.is_empty() || stopped.is_some() {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut check = Check::new(id, name, status).result(result).details(details);
    if !unreachable.is_empty() {
        check = check.hint(format!(
            "packets to relay ports {unreachable:?} did not arrive: open the whole relay range \
             (turn.relay_ports; coturn: min-port/max-port) for UDP in the firewall, or the peer \
             address is refused (turn.allowed_peers)"
        ));
    }
    check
}

/// ICE gathering with the server as the only ICE server.
async fn ice_check(
    target: &Target,
    server_ip: IpAddr,
    settings: &Settings,
    creds: &ClientCredentials,
) -> (Check, Option<ice::Gathered>) {
    let (id, name) = ("ice", "ice gathering (webrtc-rs)");
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let mut urls = Vec::new();
    for p in &settings.transports {
        urls.push(match p {
            Proto::Udp => format!("turn:{host}:{}?transport=udp", target.port),
            Proto::Tcp => format!("turn:{host}:{}?transport=tcp", target.port),
            Proto::Tls => format!("turns:{host}:{}?transport=tcp", target.tls_port),
        });
    }
    if settings.transports.contains(&Proto::Udp) {
        urls.push(format!("stun:{host}:{}", target.port));
    }
    let servers = [IceServer {
        urls,
        username: creds.username.clone(),
        credential: creds.password.clone(),
    }];
    let include_loopback = server_ip.is_loopback();
    match ice::gather(&servers, include_loopback, Duration::from_secs(10)).await {
        Err(e) => (
            Check::new(id, name, Status::Fail).result(e.to_string()),
            None,
        ),
        Ok(g) => {
            let count = |k: &str| g.candidates.iter().filter(|c| c.kind == k).count();
            let relays: Vec<String> = g
                .candidates
                .iter()
                .filter(|c| c.kind == "relay")
                .map(|c| format!("{}:{}", c.address, c.port))
                .collect();
            let summary = format!(
                "host {}, srflx {}, relay {}{}",
                count("host"),
                count("srflx"),
                count("relay"),
                if relays.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", relays.join(", "))
                }
            );
            let mut summary = summary;
            if !g.skipped_urls.is_empty() {
                let skipped: Vec<&str> = g.skipped_urls.iter().map(|(u, _)| u.as_str()).collect();
                summary.push_str(&format!(
                    "; not usable by webrtc-rs (browsers use them, see the /selftest page): {}",
                    skipped.join(", ")
                ));
            }
            let check = if relays.is_empty() {
                Check::new(id, name, Status::Fail)
                    .result(summary)
                    .hint("a WebRTC client gets no relay candidate: see the allocate and credential checks above")
            } else {
                Check::new(id, name, Status::Pass).result(summary)
            };
            (check, Some(g))
        }
    }
}
