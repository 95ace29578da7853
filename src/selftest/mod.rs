//! `ember selftest`: checks a TURN server (Ember's or anyone's) the way ops need before
//! going live — DNS, STUN, allocation over UDP/TCP/TLS, the certificate, credentials both
//! ways, whether the relay address is public, data through the relay, the relay port
//! range and ICE gathering by a WebRTC stack — and explains every failure with a hint
//! naming the config key that fixes it. Also home of the self-test web page ([`web`]).
//!
//! # Structure
//! - this file: command-line arguments and the order the checks run in;
//! - [`checks`]: the checks themselves; [`conn`]: the TURN client connection;
//! - [`report`]: results, table and JSON; [`ice`]: webrtc-rs ICE gathering;
//! - [`web`] and `page.html`: the page served by `ember up` / `ember turn`.

mod checks;
mod conn;
pub mod ice;
mod report;
pub mod web;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;

pub use conn::Proto;

/// Exit status when a check failed (or warned, with `--strict`).
const EXIT_FAILED: u8 = 1;
/// Exit status for arguments that cannot work.
const EXIT_USAGE: u8 = 2;

/// Transport names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Udp,
    Tcp,
    Tls,
}

impl From<TransportArg> for Proto {
    fn from(t: TransportArg) -> Proto {
        match t {
            TransportArg::Udp => Proto::Udp,
            TransportArg::Tcp => Proto::Tcp,
            TransportArg::Tls => Proto::Tls,
        }
    }
}

/// `ember selftest` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The server: turn:HOST[:PORT] (UDP/TCP, default port 3478; TLS on --tls-port) or
    /// turns:HOST[:PORT] (TLS only, default 5349). IPv6 literals in brackets.
    pub target: String,
    /// Static long-term credential: user name.
    #[arg(long, requires = "password", conflicts_with = "secret")]
    pub user: Option<String>,
    /// Static long-term credential: password.
    #[arg(long, env = "EMBER_SELFTEST_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// TURN REST shared secret (Ember's turn.auth_secrets, coturn's static-auth-secret):
    /// credentials are derived from it, and an expired one is tried too.
    #[arg(long, env = "EMBER_SELFTEST_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// User name part of the REST credentials derived from --secret.
    #[arg(long, default_value = "selftest")]
    pub secret_user: String,
    /// Transports to test, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub transport: Vec<TransportArg>,
    /// TLS port when the target is turn:HOST (default 5349).
    #[arg(long)]
    pub tls_port: Option<u16>,
    /// PEM file of CA certificates to trust besides the system's (a private CA).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A private, loopback or CGNAT relay address is expected (a LAN or lab): no warning.
    #[arg(long)]
    pub allow_private: bool,
    /// Warnings fail too.
    #[arg(long)]
    pub strict: bool,
    /// Seconds one request may take (retransmissions included).
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
    /// Allocations made to sample the relay port range.
    #[arg(long, default_value_t = 8)]
    pub port_samples: u32,
    /// Skip the webrtc-rs ICE gathering check.
    #[arg(long)]
    pub no_ice: bool,
}

/// Where the server is, from the target argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP (without brackets).
    pub host: String,
    /// UDP/TCP port.
    pub port: u16,
    /// TLS port.
    pub tls_port: u16,
    /// Transports named in the URL (`turns:` or `?transport=`), used when `--transport`
    /// is not given.
    pub transports: Vec<Proto>,
}

/// Parses `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT]`, `stun:...`, or a
/// bare `HOST[:PORT]`.
pub fn parse_target(s: &str, tls_port: Option<u16>) -> Result<Target, String> {
    let bad =
        |why: &str| format!("target {s:?}: {why} (expected turn:HOST[:PORT] or turns:HOST[:PORT])");
    let (scheme, rest) = match s.split_once(':') {
        Some((sch @ ("turn" | "turns" | "stun" | "stuns"), rest)) => (sch, rest),
        _ => ("turn", s),
    };
    let rest = rest.trim_start_matches("//");
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tls = scheme.ends_with('s');
    let default_port = if tls { 5349 } else { 3478 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(bad("junk after ']'")),
        };
        (h.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?)
            }
            Some(_) => return Err(bad("IPv6 addresses go in brackets")),
            None => (hostport.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if port == 0 {
        return Err(bad("port 0"));
    }
    let mut transports = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("transport", "udp")) if !tls => transports.push(Proto::Udp),
            Some(("transport", "tcp")) => {
                transports.push(if tls { Proto::Tls } else { Proto::Tcp })
            }
            Some(("transport", t)) => return Err(bad(&format!("unknown transport {t:?}"))),
            _ => {}
        }
    }
    if tls && transports.is_empty() {
        transports.push(Proto::Tls);
    }
    Ok(Target {
        host,
        port: if tls { 3478 } else { port },
        tls_port: if tls { port } else { tls_port.unwrap_or(5349) },
        transports,
    })
}

/// Shows which check runs (stderr): a live line on a terminal, one line each otherwise.
pub struct Progress {
    tty: bool,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// Announces a check about to run.
    pub fn step(&self, what: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K  checking {what} ...")
        } else {
            writeln!(err, "ember selftest: checking {what}")
        };
        let _ = err.flush();
    }

    fn done(&self) {
        if self.tty && !self.quiet {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// Runs `ember selftest` and returns the process exit status.
pub fn main(args: Args) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("ember selftest: {msg}");
        ExitCode::from(EXIT_USAGE)
    };
    let target = match parse_target(&args.target, args.tls_port) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if !(args.timeout > 0.0 && args.timeout <= 60.0) {
        return usage("--timeout must be between 0 and 60 seconds".into());
    }
    if args.user.is_some() && args.password.is_none() {
        return usage("--user needs --password".into());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ember selftest: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let progress = Progress::new(false);
    let settings = checks::Settings {
        timeout: Duration::from_secs_f64(args.timeout),
        ..checks::Settings::from_args(&args, &target)
    };
    let report = match runtime.block_on(checks::run(&args, &target, &settings, &progress)) {
        Ok(r) => r,
        Err(e) => return usage(format!("{e:#}")),
    };
    progress.done();
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        report.write_table(&mut out)
    };
    let _ = written.and_then(|()| out.flush());
    // webrtc-rs may leave tasks behind; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("turn:turn.example.com", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls_port),
            ("turn.example.com", 3478, 5349)
        );
        assert!(t.transports.is_empty());
        let t = parse_target("turn:10.0.0.1:3479?transport=tcp", Some(443)).unwrap();
        assert_eq!((t.port, t.tls_port), (3479, 443));
        assert_eq!(t.transports, vec![Proto::Tcp]);
        let t = parse_target("turns:[2001:db8::1]:443?transport=tcp", None).unwrap();
        assert_eq!((t.host.as_str(), t.tls_port), ("2001:db8::1", 443));
        assert_eq!(t.transports, vec![Proto::Tls]);
        let t = parse_target("example.org:1234", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.org", 1234));
        for bad in [
            "turn:",
            "turn:host:notaport",
            "turn:::1:3478",
            "turn:[::1",
            "turn:h?transport=sctp",
            "turn:h:0",
        ] {
            assert!(parse_target(bad, None).is_err(), "{bad}");
        }
    }
}
