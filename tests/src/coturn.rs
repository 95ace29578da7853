//! coturn's test tools (Debian package `coturn`) as clients of Ember.
//!
//! - [`Peer`] runs `turnutils_peer -L 127.0.0.1 [-L ::1] -p PORT`, the UDP echo peer, on a
//!   port picked by binding and releasing an ephemeral port, and checks that it echoes
//!   before handing it out.
//! - [`run_uclient`] runs `turnutils_uclient` with a time limit and keeps its output;
//!   [`UclientSummary::parse`] reads the summary it prints at the end, e.g.
//!
//! ```text
//! 5: : start_mclient: tot_send_msgs=100, tot_recv_msgs=100
//! 5: : start_mclient: tot_send_bytes ~ 17000, tot_recv_bytes ~ 17000
//! 5: : Total transmit time is 5
//! 5: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
//! 5: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
//! ```
//!
//! A refused allocation (wrong password) prints `ERROR: Cannot complete Allocation` and
//! exits with status 255 without a summary (coturn 4.6.1; uclient never prints the STUN
//! error code).
//!
//! [`CoturnServer`] runs coturn's server, `turnserver`, on 127.0.0.1 as a reference relay
//! for Ember's own clients (e.g. `ember selftest`): UDP/TCP and TLS on ephemeral ports,
//! a relay port range of its own, static long-term users or a TURN REST secret.
//!
//! The tools are required: [`require_tool`] panics when one is missing, so CI cannot pass
//! by silently skipping these tests.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ember_turn::stun::{attr, method, Class};

use crate::process::wait_or_kill;
use crate::stun_client::{build, new_tid, RawClient};
use crate::turn_client::TestCert;

/// Full path of a coturn tool from `$PATH`; panics with install instructions when absent.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found in PATH. These end-to-end tests drive Ember with coturn's client \
         tools and must not be skipped: install them with `apt-get install -y coturn`."
    );
}

/// A running `turnutils_peer` (UDP echo) on 127.0.0.1; killed on drop.
pub struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Peer {
    /// Starts the peer on a free port of 127.0.0.1 and waits until it echoes.
    pub fn start() -> Peer {
        Peer::start_on(&["127.0.0.1"])
    }

    /// Starts the peer on the same free port of each of `ips` (e.g. `["127.0.0.1", "::1"]`)
    /// and waits until it echoes on every one; [`Peer::addr`] is on the first.
    pub fn start_on(ips: &[&str]) -> Peer {
        let bin = require_tool("turnutils_peer");
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().expect("peer IP")).collect();
        let mut last = String::new();
        for _ in 0..5 {
            let Some(port) = free_udp_port(&ips) else {
                continue;
            };
            let mut args = Vec::new();
            for ip in &ips {
                args.extend(["-L".to_string(), ip.to_string()]);
            }
            args.extend(["-p".to_string(), port.to_string()]);
            let child = Command::new(&bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut peer = Peer {
                child,
                addr: SocketAddr::new(ips[0], port),
            };
            match ips.iter().try_for_each(|ip| {
                peer.wait_echo(SocketAddr::new(*ip, port), Duration::from_secs(3))
            }) {
                Ok(()) => return peer,
                Err(e) => last = e,
            }
            drop(peer);
        }
        panic!("turnutils_peer never echoed on {ips:?}: {last}");
    }

    fn wait_echo(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let local = SocketAddr::new(addr.ip(), 0);
        let probe = UdpSocket::bind(local).map_err(|e| e.to_string())?;
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Err(format!("turnutils_peer exited: {s}"));
            }
            let _ = probe.send_to(b"ember-probe", addr);
            if let Ok((n, from)) = probe.recv_from(&mut buf) {
                if from == addr && &buf[..n] == b"ember-probe" {
                    return Ok(());
                }
            }
        }
        Err(format!("no echo from {addr} within {timeout:?}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port that is free on every one of `ips` right now (bound, then released).
fn free_udp_port(ips: &[IpAddr]) -> Option<u16> {
    let first = UdpSocket::bind(SocketAddr::new(ips[0], 0)).ok()?;
    let port = first.local_addr().ok()?.port();
    let others: Vec<UdpSocket> = ips[1..]
        .iter()
        .map(|ip| UdpSocket::bind(SocketAddr::new(*ip, port)))
        .collect::<Result<_, _>>()
        .ok()?;
    drop(others);
    Some(port)
}

/// Longest wait for a started `turnserver` to answer (per attempt).
pub const COTURN_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which credentials a [`CoturnServer`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoturnAuth {
    /// Long-term credentials: `--lt-cred-mech --user=NAME:PASSWORD` for each pair.
    Static(Vec<(String, String)>),
    /// TURN REST: `--use-auth-secret --static-auth-secret=SECRET`.
    Rest(String),
}

/// How [`CoturnServer::start`] configures `turnserver`; [`Default`] is the static user
/// alice/alicepw in realm `ember.test` with TLS, like [`crate::TurnOptions::default`].
#[derive(Debug, Clone)]
pub struct CoturnOptions {
    pub auth: CoturnAuth,
    /// `--realm`.
    pub realm: String,
    /// A TLS listener (`--tls-listening-port`, with a fresh [`TestCert`]); else `--no-tls`.
    pub tls: bool,
    /// Relay port range `--min-port`/`--max-port`; `None`: a block of
    /// [`RELAY_BLOCK`] ports from [`relay_port_block`].
    pub relay_ports: Option<(u16, u16)>,
    /// Extra command-line arguments, appended last.
    pub extra_args: Vec<String>,
}

impl Default for CoturnOptions {
    fn default() -> Self {
        CoturnOptions {
            auth: CoturnAuth::Static(vec![("alice".into(), "alicepw".into())]),
            realm: "ember.test".into(),
            tls: true,
            relay_ports: None,
            extra_args: Vec::new(),
        }
    }
}

/// Ports in each relay range handed out by [`relay_port_block`].
pub const RELAY_BLOCK: u16 = 100;
/// Relay ranges come from `[RELAY_FIRST, RELAY_FIRST + RELAY_BLOCKS * RELAY_BLOCK)`, below
/// Linux's ephemeral range (32768-60999), so the kernel never hands out one of them for a
/// port-0 bind, whoever does it.
const RELAY_FIRST: u16 = 20000;
const RELAY_BLOCKS: u32 = 120;

/// A relay port range (min, max) for one coturn: consecutive blocks within this process,
/// starting at a random block so that test binaries running at the same time rarely share
/// one (coturn skips relay ports it cannot bind anyway).
pub fn relay_port_block() -> (u16, u16) {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random::<u32>() % RELAY_BLOCKS,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let block = NEXT.fetch_add(1, Ordering::SeqCst) % RELAY_BLOCKS;
    let min = RELAY_FIRST + block as u16 * RELAY_BLOCK;
    (min, min + RELAY_BLOCK - 1)
}

/// A port of 127.0.0.1 free right now for TCP, and for UDP too when `udp` (bound, then
/// released).
fn free_port(udp: bool) -> Option<u16> {
    let tcp = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = tcp.local_addr().ok()?.port();
    let u = if udp {
        Some(UdpSocket::bind(("127.0.0.1", port)).ok()?)
    } else {
        None
    };
    drop((tcp, u));
    Some(port)
}

/// A running coturn `turnserver` on 127.0.0.1; killed on drop.
///
/// Everything it writes lives in its temp dir: `coturn.log` (the log, quoted in failures),
/// `coturn.out` (stdout and stderr), the pid file, the SQLite user database and the TLS
/// certificate.
pub struct CoturnServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    cert: Option<TestCert>,
    relay_ports: (u16, u16),
    args: Vec<String>,
}

impl CoturnServer {
    /// Starts `turnserver` with `opts` on free ports and waits until it answers a STUN
    /// Binding over UDP (and, with TLS, accepts TCP connections on the TLS port). A start
    /// that loses its ports to someone else is retried on new ports; panics (quoting the
    /// log) when that keeps failing.
    pub fn start(opts: &CoturnOptions) -> CoturnServer {
        let bin = require_tool("turnserver");
        let mut last = String::new();
        for _ in 0..3 {
            let (Some(port), Some(tls_port)) = (free_port(true), free_port(true)) else {
                continue;
            };
            if port == tls_port {
                continue;
            }
            let mut server = CoturnServer::spawn(&bin, opts, port, tls_port);
            match server.wait_ready(COTURN_READY_TIMEOUT) {
                Ok(()) => return server,
                Err(e) => {
                    last = format!(
                        "{e}\n--- command line ---\nturnserver {}\n--- coturn.log ---\n{}\n--- coturn.out ---\n{}",
                        server.args.join(" "),
                        server.log(),
                        fs::read_to_string(server.dir.path().join("coturn.out"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        panic!("coturn did not start: {last}");
    }

    fn spawn(bin: &Path, opts: &CoturnOptions, port: u16, tls_port: u16) -> CoturnServer {
        let dir = tempfile::Builder::new()
            .prefix("ember-e2e-coturn-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let relay_ports = opts.relay_ports.unwrap_or_else(relay_port_block);
        let mut args: Vec<String> = vec![
            "-n".into(),
            "--listening-ip=127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            format!("--min-port={}", relay_ports.0),
            format!("--max-port={}", relay_ports.1),
            format!("--realm={}", opts.realm),
            "--allow-loopback-peers".into(),
            "--no-cli".into(),
            "--no-dtls".into(),
            format!("--log-file={}", d.join("coturn.log").display()),
            "--simple-log".into(),
            "--no-stdout-log".into(),
            format!("--pidfile={}", d.join("turnserver.pid").display()),
            format!("--userdb={}", d.join("turndb").display()),
        ];
        match &opts.auth {
            CoturnAuth::Static(users) => {
                args.push("--lt-cred-mech".into());
                args.extend(users.iter().map(|(u, p)| format!("--user={u}:{p}")));
            }
            CoturnAuth::Rest(secret) => {
                args.push("--use-auth-secret".into());
                args.push(format!("--static-auth-secret={secret}"));
            }
        }
        let cert = opts.tls.then(|| TestCert::generate(d));
        match &cert {
            Some(c) => args.extend([
                format!("--tls-listening-port={tls_port}"),
                format!("--cert={}", c.cert_path.display()),
                format!("--pkey={}", c.key_path.display()),
            ]),
            None => args.push("--no-tls".into()),
        }
        args.extend(opts.extra_args.iter().cloned());
        let out = fs::File::create(d.join("coturn.out")).expect("create coturn.out");
        let err = out.try_clone().expect("dup coturn.out");
        let child = Command::new(bin)
            .args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let localhost = IpAddr::from([127, 0, 0, 1]);
        CoturnServer {
            child: Some(child),
            dir,
            addr: SocketAddr::new(localhost, port),
            tls_addr: opts.tls.then(|| SocketAddr::new(localhost, tls_port)),
            cert,
            relay_ports,
            args,
        }
    }

    /// Waits until a STUN Binding to [`CoturnServer::addr`] is answered by coturn (its
    /// SOFTWARE attribute says so: not some other process that took the port) and the TLS
    /// port accepts connections. Kills the server when it is not ready in time.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        let mut client = RawClient::udp(self.addr);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("turnserver exited: {s}"));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "not ready on {} within {timeout:?}: {last}",
                    self.addr
                ));
            }
            let req = build(method::BINDING, Class::Request, &new_tid(), &[], None);
            match client.try_transact(&req, Duration::from_millis(250)) {
                Ok(r) => {
                    let software = r.get_str(attr::SOFTWARE).unwrap_or_default();
                    if !r.is_success() || !software.to_lowercase().contains("coturn") {
                        last = format!(
                            "a Binding on {} was answered by {software:?}: {r:?}",
                            self.addr
                        );
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    match self.tls_addr {
                        None => return Ok(()),
                        Some(t) => match TcpStream::connect_timeout(&t, Duration::from_millis(250))
                        {
                            Ok(_) => return Ok(()),
                            Err(e) => last = format!("TLS port {t}: {e}"),
                        },
                    }
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The UDP and TCP listener (same port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS listener; panics when started without TLS.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr.expect("coturn started without TLS")
    }

    /// The certificate the TLS listener serves; panics when started without TLS.
    pub fn tls_cert(&self) -> &TestCert {
        self.cert.as_ref().expect("coturn started without TLS")
    }

    /// The relay port range (min, max).
    pub fn relay_ports(&self) -> (u16, u16) {
        self.relay_ports
    }

    /// The command-line arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The server's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything coturn logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("coturn.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CoturnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One finished (or killed) `turnutils_uclient` run.
#[derive(Debug)]
pub struct UclientRun {
    pub args: Vec<String>,
    /// `None` when it was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// stdout and stderr, interleaved as written.
    pub output: String,
    pub elapsed: Duration,
}

impl UclientRun {
    /// The summary, or a panic quoting the output.
    pub fn summary(&self) -> UclientSummary {
        UclientSummary::parse(&self.output).unwrap_or_else(|| {
            panic!(
                "turnutils_uclient {:?} printed no summary (status {:?}):\n{}",
                self.args, self.status, self.output
            )
        })
    }

    /// Exit code (`None` when killed or ended by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `turnutils_uclient ARGS`; kills it after `timeout`.
pub fn run_uclient(args: &[String], timeout: Duration) -> UclientRun {
    let bin = require_tool("turnutils_uclient");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("uclient.out");
    let out = fs::File::create(&out_path).expect("create output file");
    let err = out.try_clone().expect("dup output file");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = started + timeout;
    let status = wait_or_kill(&mut child, deadline);
    let output = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
    UclientRun {
        args: args.to_vec(),
        status,
        output,
        elapsed: started.elapsed(),
    }
}

/// The totals uclient prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UclientSummary {
    pub sent_msgs: u64,
    pub recv_msgs: u64,
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    pub lost_packets: u64,
    pub lost_percent: f64,
    pub send_dropped: u64,
}

/// The text after `key` up to the first character that is not part of a number.
fn number_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

impl UclientSummary {
    /// Parses the last summary in `output`; `None` when there is none.
    pub fn parse(output: &str) -> Option<UclientSummary> {
        let mut msgs = None;
        let mut bytes = None;
        let mut lost = None;
        for line in output.lines() {
            // The per-tick progress lines carry "msz=" and are not totals.
            if line.contains("start_mclient: tot_send_msgs=") {
                msgs = Some((
                    number_after(line, "tot_send_msgs=")?.parse().ok()?,
                    number_after(line, "tot_recv_msgs=")?.parse().ok()?,
                ));
            } else if line.contains("start_mclient: tot_send_bytes ~") {
                bytes = Some((
                    number_after(line, "tot_send_bytes ~")?.parse().ok()?,
                    number_after(line, "tot_recv_bytes ~")?.parse().ok()?,
                ));
            } else if line.contains("Total lost packets") {
                lost = Some((
                    number_after(line, "Total lost packets")?.parse().ok()?,
                    number_after(line, "(")?.parse().ok()?,
                    number_after(line, "total send dropped")?.parse().ok()?,
                ));
            }
        }
        let (sent_msgs, recv_msgs) = msgs?;
        let (sent_bytes, recv_bytes) = bytes?;
        let (lost_packets, lost_percent, send_dropped) = lost?;
        Some(UclientSummary {
            sent_msgs,
            recv_msgs,
            sent_bytes,
            recv_bytes,
            lost_packets,
            lost_percent,
            send_dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_coturn_4_6_summary() {
        let out = "0: : Total connect time is 0\n\
            1: : start_mclient: msz=2, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0, tot_recv_bytes ~ 0\n\
            5: : start_mclient: msz=2, tot_send_msgs=50, tot_recv_msgs=49, tot_send_bytes ~ 8500, tot_recv_bytes ~ 8500\n\
            5: : start_mclient: tot_send_msgs=100, tot_recv_msgs=97\n\
            5: : start_mclient: tot_send_bytes ~ 17000, tot_recv_bytes ~ 16490\n\
            5: : Total transmit time is 5\n\
            5: : Total lost packets 3 (3.000000%), total send dropped 0 (0.000000%)\n\
            5: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms\n";
        let s = UclientSummary::parse(out).unwrap();
        assert_eq!(
            s,
            UclientSummary {
                sent_msgs: 100,
                recv_msgs: 97,
                sent_bytes: 17000,
                recv_bytes: 16490,
                lost_packets: 3,
                lost_percent: 3.0,
                send_dropped: 0,
            }
        );
        assert_eq!(
            UclientSummary::parse("0: : ERROR: Cannot complete Allocation\n"),
            None
        );
    }
}
