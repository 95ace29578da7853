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
//! The tools are required: [`require_tool`] panics when one is missing, so CI cannot pass
//! by silently skipping these tests.

use std::fs;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
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
