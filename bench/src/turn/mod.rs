//! `ember-bench turn`: TURN relay load generator, Ember and coturn side by side.
//!
//! Modes:
//! - fixed load (default): N allocations relay S-byte packets at R packets/s each (or with a
//!   window of W in flight) to an echo peer and back, for a warmup and a measured window;
//! - `--realistic`: the "call load" preset, 200 sessions x 50 packets/s, zero-loss check;
//! - `--find-max`: steps the offered load up until loss exceeds the limit;
//! - `--allocations-only N`: N allocations (with channel/permission and a Refresh round),
//!   then the server's resident memory.
//!
//! The server runs as a child process (or externally); its CPU time and memory come from
//! `/proc`. The generator is one thread (clients and echo peer, `epoll` + `recvmmsg`/
//! `sendmmsg` batches): it never takes more than one of the machine's cores from the server.

mod client;
mod load;
mod report;
mod server;
pub(crate) mod sys;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use client::{Creds, CtlOpts, Fleet, Op};
use load::{EchoPeer, Framing, PhaseSpec, WindowHooks};
use report::{AllocRow, FindMaxResult, LoadRow};
use server::{Kind, LaunchOpts, Server};
use sys::ProcSample;

/// Which server(s) to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerChoice {
    /// Start `ember turn` (see --ember-bin).
    Ember,
    /// Start Debian's coturn `turnserver` (see --coturn-bin).
    Coturn,
    /// Ember, then coturn, with identical load; one table with a ratio row.
    Both,
    /// An already running server at --addr.
    External,
}

/// How the relayed packets come back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// client -> relay -> echo peer -> relay -> client (2 relayed packets per round trip).
    Echo,
    /// Sessions in pairs relay to each other's relay address and the partner reflects:
    /// client A -> relay A -> relay B -> client B -> relay B -> relay A -> client A (4 relayed
    /// packets per round trip, half the generator work per relayed packet).
    Pairs,
}

/// Options of `ember-bench turn`.
#[derive(Debug, Clone, Args)]
pub struct TurnArgs {
    /// Server(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub server: ServerChoice,
    /// External server's UDP address (with --server external).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// TURN user name (long-term credentials).
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// TURN password.
    #[arg(long, default_value = "benchpw")]
    pub password: String,
    /// Realm configured on the servers the bench starts.
    #[arg(long, default_value = "ember-bench")]
    pub realm: String,
    /// PID of the external server, for the CPU and memory columns.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Ember binary [default: $CARGO_TARGET_DIR/release/ember, else next to ember-bench].
    #[arg(long)]
    pub ember_bin: Option<PathBuf>,
    /// coturn binary.
    #[arg(long, default_value = "turnserver")]
    pub coturn_bin: PathBuf,
    /// Server data-path threads, both servers (0 = their default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Relay port range for both servers, MIN-MAX (kept below the ephemeral range that the
    /// client sockets use).
    #[arg(long, default_value = "10000-29999", value_parser = parse_range)]
    pub relay_ports: (u16, u16),
    /// Extra line for Ember's [turn] section (repeatable), e.g. 'bandwidth_limit = 0'.
    #[arg(long = "ember-config")]
    pub ember_config: Vec<String>,
    /// Extra coturn option (repeatable), e.g. '--no-udp-relay'.
    #[arg(long = "coturn-arg", allow_hyphen_values = true)]
    pub coturn_arg: Vec<String>,

    /// Concurrent allocations (one client socket each).
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Application payload bytes per packet (>= 16: session, seq, timestamp).
    #[arg(long, default_value_t = 170)]
    pub size: usize,
    /// Packets/s per session; 0 = as fast as possible with --window packets in flight.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// In-flight packets per session with --rate 0.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warmup before the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// After the window, how long late echoes still count, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub grace: f64,
    /// Packets each session sends back to back, every BURST/RATE seconds (sessions are
    /// spread evenly over that period, so the aggregate stays smooth); a burst leaves as one
    /// UDP GSO write. "auto": one burst per session every ~4 ms (1000 pkt/s -> 4, 50 -> 1),
    /// like a video sender pushing a frame's packets; 1 = perfectly even pacing.
    #[arg(long, default_value = "auto", value_parser = parse_burst)]
    pub burst: Burst,
    /// Pacing tick in microseconds (each session's due packets leave together).
    #[arg(long, default_value_t = 1000)]
    pub tick_us: u64,
    /// ChannelBind + ChannelData (the default).
    #[arg(long, conflicts_with = "send_indications")]
    pub channels: bool,
    /// CreatePermission + Send/Data indications instead of channels.
    #[arg(long)]
    pub send_indications: bool,
    /// Send every packet with its own sendmmsg entry instead of UDP GSO writes per burst
    /// (the server receives the same separate datagrams either way).
    #[arg(long)]
    pub no_gso: bool,
    /// Round-trip path: through an echo peer, or between pairs of allocations.
    #[arg(long, value_enum, default_value = "echo")]
    pub topology: Topology,

    /// Step the offered load up until loss exceeds --max-loss; report the best step.
    #[arg(long, conflicts_with_all = ["allocations_only", "realistic"])]
    pub find_max: bool,
    /// First --find-max step, packets/s per session.
    #[arg(long, default_value_t = 200.0)]
    pub start_rate: f64,
    /// Factor between --find-max steps.
    #[arg(long, default_value_t = 1.25)]
    pub step: f64,
    /// Measured seconds per --find-max step (plus 1 s warmup and up to 1 s grace).
    #[arg(long, default_value_t = 3.0)]
    pub step_secs: f64,
    /// Most --find-max steps.
    #[arg(long, default_value_t = 25)]
    pub max_steps: usize,
    /// Loss limit of a passing --find-max step, percent.
    #[arg(long, default_value_t = 0.1)]
    pub max_loss: f64,

    /// Call-load preset: 200 sessions x 50 packets/s; zero-loss check and p99.
    #[arg(long, conflicts_with = "allocations_only")]
    pub realistic: bool,

    /// Only create N allocations (+ channel, + one Refresh round) and report server memory.
    #[arg(long, value_name = "N")]
    pub allocations_only: Option<usize>,
    /// Seconds to hold the allocations before the last memory sample.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// Memory budget checked by --allocations-only, MB.
    #[arg(long, default_value_t = 200.0)]
    pub rss_limit_mb: f64,
    /// Control transactions in flight at once during setup.
    #[arg(long, default_value_t = 256)]
    pub ctl_concurrency: usize,

    /// Before each server run, wait up to this many seconds for the machine to be idle
    /// (under 15% busy over 2 s): on a shared machine, other builds skew every figure.
    #[arg(long, default_value_t = 0.0)]
    pub wait_idle: f64,

    /// Machine-readable output (JSON on stdout; progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// `--burst`: fixed packets per burst, or derived from the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burst {
    Auto,
    Fixed(u32),
}

impl Burst {
    /// Packets per burst at `rate` packets/s per session.
    pub fn at(self, rate: f64) -> u32 {
        match self {
            Burst::Fixed(n) => n,
            Burst::Auto => (rate * 0.004).round().clamp(1.0, 16.0) as u32,
        }
    }
}

impl std::fmt::Display for Burst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Burst::Auto => write!(f, "auto"),
            Burst::Fixed(n) => write!(f, "{n}"),
        }
    }
}

fn parse_burst(s: &str) -> Result<Burst, String> {
    if s == "auto" {
        return Ok(Burst::Auto);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(Burst::Fixed(n)),
        _ => Err(format!("expected \"auto\" or 1..=64, got {s:?}")),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected MIN-MAX, got {s:?}"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("invalid range {s:?}"));
    }
    Ok((a, b))
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(0.0..=3600.0).contains(&v) || v.is_nan() {
        bail!("{what} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Entry point of `ember-bench turn`.
pub fn run(mut a: TurnArgs) -> Result<()> {
    let nofile = sys::raise_nofile_limit()?;
    if a.realistic {
        a.sessions = 200;
        a.rate = 50.0;
    }
    let framing = if a.send_indications {
        Framing::Indications
    } else {
        Framing::Channels
    };
    let n_sessions = a.allocations_only.unwrap_or(a.sessions);
    if n_sessions == 0 {
        bail!("need at least one session");
    }
    let pairs = a.topology == Topology::Pairs;
    if pairs && (!a.sessions.is_multiple_of(2) || a.allocations_only.is_some()) {
        bail!("--topology pairs needs an even --sessions (and no --allocations-only)");
    }
    // One client socket per allocation, plus a few for epoll, timer, echo peer, probes.
    if n_sessions as u64 + 64 > nofile {
        bail!(
            "{n_sessions} sessions need {n_sessions} client sockets; the open-files limit is \
             {nofile} (one process cannot go higher here)"
        );
    }
    let ports = u32::from(a.relay_ports.1 - a.relay_ports.0) + 1;
    if n_sessions as u32 > ports {
        bail!("{n_sessions} allocations do not fit the relay port range ({ports} ports)");
    }
    if a.rate < 0.0 || a.rate > 1e6 || a.rate.is_nan() {
        bail!("--rate must be between 0 and 1,000,000 packets/s per session");
    }
    if a.rate == 0.0 && a.window == 0 {
        bail!("--rate 0 needs --window >= 1");
    }
    if a.find_max && (a.step <= 1.0 || a.step > 10.0 || a.start_rate <= 0.0) {
        bail!("--find-max needs --step in (1, 10] and --start-rate > 0");
    }
    if a.max_steps > 100 {
        bail!("--max-steps is at most 100");
    }
    if !(100..=1_000_000).contains(&a.tick_us) {
        bail!("--tick-us must be between 100 and 1,000,000");
    }
    if a.size < load::HDR || a.size > 1400 {
        bail!("--size must be between {} and 1400 bytes", load::HDR);
    }
    let creds = Creds {
        user: a.user.clone(),
        password: a.password.clone(),
    };
    let kinds: Vec<Kind> = match a.server {
        ServerChoice::Ember => vec![Kind::Ember],
        ServerChoice::Coturn => vec![Kind::Coturn],
        ServerChoice::Both => vec![Kind::Ember, Kind::Coturn],
        ServerChoice::External => {
            if a.addr.is_none() {
                bail!("--server external needs --addr IP:PORT");
            }
            vec![Kind::External]
        }
    };
    let launch = LaunchOpts {
        ember_bin: a.ember_bin.clone().unwrap_or_else(default_ember_bin),
        coturn_bin: a.coturn_bin.clone(),
        relay_ports: a.relay_ports,
        threads: a.threads,
        realm: a.realm.clone(),
        creds: creds.clone(),
        ember_extra: a.ember_config.clone(),
        coturn_extra: a.coturn_arg.clone(),
    };
    let wait_idle = secs(a.wait_idle, "--wait-idle")?;
    let start = |k: Kind| -> Result<Server> {
        if !wait_idle.is_zero() {
            wait_for_idle(wait_idle);
        }
        match k {
            Kind::Ember => Server::start_ember(&launch),
            Kind::Coturn => Server::start_coturn(&launch),
            Kind::External => Server::external(a.addr.context("--addr")?, creds.clone(), a.pid),
        }
    };

    let mut errors: Vec<(String, String)> = Vec::new();
    // Servers other than coturn (the reference) that lost packets under --realistic.
    let mut realistic_failures: Vec<String> = Vec::new();
    if let Some(n) = a.allocations_only {
        let mut rows = Vec::new();
        for &k in &kinds {
            eprintln!("== {}: {n} allocations", k.name());
            match start(k).and_then(|mut s| run_allocs(&mut s, &a, n, framing)) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    eprintln!("!! {}: {e:#}", k.name());
                    errors.push((k.name().into(), format!("{e:#}")));
                }
            }
        }
        if a.json {
            let j = serde_json::json!({
                "mode": "allocations-only",
                "allocations": n,
                "framing": framing_name(framing),
                "results": rows,
                "errors": errors_json(&errors),
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            println!(
                "\nTURN allocations-only: {n} allocations ({}), one Refresh round, hold {} s",
                if framing == Framing::Channels {
                    "+ ChannelBind each"
                } else {
                    "+ CreatePermission each"
                },
                a.hold
            );
            println!("{}", report::alloc_table(&rows));
            print_errors(&errors);
        }
    } else if a.find_max {
        let mut results = Vec::new();
        for &k in &kinds {
            eprintln!(
                "== {}: find-max, {} sessions x {} B, start {} pkt/s/session, x{} per step",
                k.name(),
                a.sessions,
                a.size,
                a.start_rate,
                a.step
            );
            match start(k).and_then(|mut s| run_find_max(&mut s, &a, framing)) {
                Ok(r) => results.push(r),
                Err(e) => {
                    eprintln!("!! {}: {e:#}", k.name());
                    errors.push((k.name().into(), format!("{e:#}")));
                }
            }
        }
        if a.json {
            let j = serde_json::json!({
                "mode": "find-max",
                "sessions": a.sessions,
                "size": a.size,
                "framing": framing_name(framing),
                "max_loss_pct": a.max_loss,
                "shape": shape(&a),
                "results": results,
                "errors": errors_json(&errors),
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            println!(
                "\nTURN find-max: {} sessions, {} B payload, {}, {}, loss limit {}%, {} s per step",
                a.sessions,
                a.size,
                framing_name(framing),
                shape(&a),
                a.max_loss,
                a.step_secs
            );
            println!("{}", report::find_max_table(&results, a.max_loss));
            print_footer();
            print_errors(&errors);
        }
    } else {
        let spec = PhaseSpec {
            burst: a.burst.at(a.rate),
            rate: a.rate,
            window: a.window,
            warmup: secs(a.warmup, "--warmup")?,
            duration: secs(a.duration, "--duration")?,
            grace: secs(a.grace, "--grace")?,
            tick: Duration::from_micros(a.tick_us),
            pairs: a.topology == Topology::Pairs,
            gso: !a.no_gso,
        };
        if spec.duration.is_zero() {
            bail!("--duration must be > 0");
        }
        let mut rows = Vec::new();
        for &k in &kinds {
            eprintln!(
                "== {}: {} sessions x {} B at {}, {} s",
                k.name(),
                a.sessions,
                a.size,
                if a.rate > 0.0 {
                    format!("{} pkt/s/session", a.rate)
                } else {
                    format!("window {}", a.window)
                },
                a.duration
            );
            match start(k).and_then(|mut s| run_fixed(&mut s, &a, framing, &spec)) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    eprintln!("!! {}: {e:#}", k.name());
                    errors.push((k.name().into(), format!("{e:#}")));
                }
            }
        }
        if a.realistic {
            realistic_failures = rows
                .iter()
                .filter(|r| r.server != "coturn" && (r.lost > 0 || r.bad > 0))
                .map(|r| r.server.clone())
                .collect();
        }
        if a.json {
            let j = serde_json::json!({
                "mode": if a.realistic { "realistic" } else { "fixed" },
                "sessions": a.sessions,
                "size": a.size,
                "rate_per_session": a.rate,
                "framing": framing_name(framing),
                "shape": shape(&a),
                "results": rows,
                "errors": errors_json(&errors),
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            println!(
                "\nTURN {}: {} sessions x {} B, {}, {}, {}, {} s window",
                if a.realistic {
                    "realistic call load"
                } else {
                    "fixed load"
                },
                a.sessions,
                a.size,
                if a.rate > 0.0 {
                    format!("{} pkt/s per session", a.rate)
                } else {
                    format!("window {} per session", a.window)
                },
                framing_name(framing),
                shape(&a),
                a.duration
            );
            println!("{}", report::load_table(&rows, a.realistic));
            print_footer();
            print_errors(&errors);
        }
    }
    if !errors.is_empty() {
        bail!("{} server run(s) failed", errors.len());
    }
    if !realistic_failures.is_empty() {
        bail!(
            "realistic call load: not loss-free on {}",
            realistic_failures.join(", ")
        );
    }
    Ok(())
}

/// "burst 4, echo, GSO": the load-shape options of a run, for the table titles.
fn shape(a: &TurnArgs) -> String {
    format!(
        "burst {}, tick {} µs, {} topology{}",
        match a.burst {
            Burst::Auto if a.rate > 0.0 && !a.find_max => {
                format!("auto={}", a.burst.at(a.rate))
            }
            b => b.to_string(),
        },
        a.tick_us,
        match a.topology {
            Topology::Echo => "echo",
            Topology::Pairs => "pairs",
        },
        if a.no_gso { ", no GSO" } else { "" }
    )
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Channels => "ChannelData",
        Framing::Indications => "Send/Data indications",
    }
}

fn errors_json(errors: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        errors
            .iter()
            .map(|(s, e)| serde_json::json!({"server": s, "error": e}))
            .collect(),
    )
}

fn print_errors(errors: &[(String, String)]) {
    for (s, e) in errors {
        println!("ERROR {s}: {e}");
    }
}

fn print_footer() {
    println!(
        "relayed pkt/s counts both legs (client->peer and peer->client); µs/pkt = server CPU \
         (utime+stime) per relayed packet;\nCPU % of one core; drops s/g = kernel receive-buffer \
         drops on server / generator sockets; generator and server share the machine's cores."
    );
}

fn default_ember_bin() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("release").join("ember");
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ember")))
        .unwrap_or_else(|| PathBuf::from("target/release/ember"))
}

/// Opens the sessions and takes them through Allocate and ChannelBind/CreatePermission.
/// With `pairs`, allocations first, then each binds to its partner's relay address.
fn setup(
    srv: &mut Server,
    peer: SocketAddr,
    n: usize,
    framing: Framing,
    bufsize: usize,
    concurrency: usize,
    pairs: bool,
) -> Result<(Fleet, client::CtlReport)> {
    let mut fleet = Fleet::open(n, srv.addr, peer, srv.creds.clone(), bufsize)?;
    let second = match framing {
        Framing::Channels => Op::ChannelBind,
        Framing::Indications => Op::Permission,
    };
    let all: Vec<usize> = (0..n).collect();
    let o = CtlOpts {
        concurrency,
        deadline: Duration::from_secs(60 + n as u64 / 50),
        ..Default::default()
    };
    let alloc = Op::Allocate { lifetime: 3600 };
    if !pairs {
        let rep = fleet.run_ops(&all, &[alloc, second], o)?;
        srv.check_alive()?;
        return Ok((fleet, rep));
    }
    let mut rep = fleet.run_ops(&all, &[alloc], o)?;
    srv.check_alive()?;
    if rep.failed > 0 {
        return Ok((fleet, rep));
    }
    for k in (0..n).step_by(2) {
        let (Some(a), Some(b)) = (fleet.sessions[k].relay, fleet.sessions[k + 1].relay) else {
            bail!("allocation without a relay address");
        };
        fleet.sessions[k].peer = b;
        fleet.sessions[k + 1].peer = a;
    }
    let r2 = fleet.run_ops(&all, &[second], o)?;
    srv.check_alive()?;
    rep.ok = r2.ok;
    rep.failed = r2.failed;
    rep.errors = r2.errors;
    rep.elapsed += r2.elapsed;
    rep.retransmissions += r2.retransmissions;
    Ok((fleet, rep))
}

/// Samples the server and the kernel drop counters at the window edges.
struct Hooks<'a> {
    srv: &'a Server,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
    threads0: HashMap<u32, (String, f64)>,
    threads1: HashMap<u32, (String, f64)>,
    drops0: HashMap<u16, u64>,
    drops1: HashMap<u16, u64>,
}

impl WindowHooks for Hooks<'_> {
    fn window_start(&mut self) {
        self.start = self.srv.sample();
        if let Some(p) = self.srv.pid {
            self.threads0 = sys::thread_cpu(p);
        }
        self.drops0 = sys::udp_drops_by_port();
    }
    fn window_end(&mut self) {
        self.end = self.srv.sample();
        if let Some(p) = self.srv.pid {
            self.threads1 = sys::thread_cpu(p);
        }
        self.drops1 = sys::udp_drops_by_port();
    }
}

/// Everything one load phase needs besides the spec.
struct LoadCtx<'a> {
    srv: &'a mut Server,
    fleet: Fleet,
    flows: Vec<load::Flow>,
    peer: EchoPeer,
    framing: Framing,
    size: usize,
    /// The server's relay ports (its listen port is `srv.addr`).
    server_ports: HashSet<u16>,
    gen_ports: HashSet<u16>,
}

impl LoadCtx<'_> {
    fn open<'s>(srv: &'s mut Server, a: &TurnArgs, framing: Framing) -> Result<LoadCtx<'s>> {
        let peer = EchoPeer::new()?;
        let (fleet, rep) = setup(
            srv,
            peer.addr,
            a.sessions,
            framing,
            512 << 10,
            a.ctl_concurrency,
            a.topology == Topology::Pairs,
        )?;
        if rep.failed > 0 {
            let mut msg = format!(
                "{} of {} sessions failed to set up: {}",
                rep.failed,
                a.sessions,
                rep.error_summary()
            );
            for l in srv.log_problems(5) {
                msg.push_str("\n  server log: ");
                msg.push_str(&l);
            }
            bail!(msg);
        }
        eprintln!(
            "   {} allocations ready in {:.2} s ({} retransmissions)",
            rep.ok,
            rep.elapsed.as_secs_f64(),
            rep.retransmissions
        );
        let flows = load::make_flows(&fleet, a.size, framing)?;
        let server_ports: HashSet<u16> = fleet
            .sessions
            .iter()
            .filter_map(|s| s.relay.map(|r| r.port()))
            .filter(|&p| p != srv.addr.port())
            .collect();
        let mut gen_ports: HashSet<u16> = fleet.sessions.iter().map(|s| s.local.port()).collect();
        gen_ports.insert(peer.port());
        Ok(LoadCtx {
            srv,
            fleet,
            flows,
            peer,
            framing,
            size: a.size,
            server_ports,
            gen_ports,
        })
    }

    fn phase(&mut self, spec: &PhaseSpec) -> Result<LoadRow> {
        let peer0 = self.peer.received;
        let mut hooks = Hooks {
            srv: &*self.srv,
            start: None,
            end: None,
            threads0: HashMap::new(),
            threads1: HashMap::new(),
            drops0: HashMap::new(),
            drops1: HashMap::new(),
        };
        let st = load::run_phase(
            &mut self.fleet,
            &mut self.peer,
            &mut self.flows,
            self.framing,
            self.size,
            spec,
            &mut hooks,
        )?;
        let (s0, s1) = (hooks.start, hooks.end);
        let sum_drops = |ports: &HashSet<u16>| -> u64 {
            ports
                .iter()
                .map(|p| {
                    hooks
                        .drops1
                        .get(p)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(hooks.drops0.get(p).copied().unwrap_or(0))
                })
                .sum()
        };
        // Busiest server threads over the window, % of one core.
        let mut per_thread: Vec<(String, f64)> = hooks
            .threads1
            .iter()
            .filter_map(|(tid, (name, c1))| {
                let c0 = hooks.threads0.get(tid).map_or(0.0, |t| t.1);
                let pct = 100.0 * (c1 - c0) / st.window_s.max(1e-9);
                (pct >= 1.0).then(|| (name.clone(), (pct * 10.0).round() / 10.0))
            })
            .collect();
        per_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
        let drops_relay = sum_drops(&self.server_ports);
        let drops_listen = sum_drops(&HashSet::from([self.srv.addr.port()]));
        let drops_server = drops_relay + drops_listen;
        let drops_generator = sum_drops(&self.gen_ports);
        self.srv.check_alive()?;
        let w = st.window_s.max(1e-9);
        let relayed = if spec.pairs { 4 } else { 2 } * st.received;
        let cpu = match (s0, s1) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        };
        let q = |p: f64| st.rtt.value_at_quantile(p) as f64 / 1000.0;
        let gen_limited =
            !st.rtt.is_empty() && st.scheduled > 0 && (st.sent as f64) < 0.97 * st.scheduled as f64;
        Ok(LoadRow {
            server: self.srv.kind.name().into(),
            version: self.srv.version.clone(),
            sessions: self.fleet.sessions.len(),
            size: self.size,
            framing: framing_name(self.framing),
            topology: if spec.pairs { "pairs" } else { "echo" },
            rate_per_session: spec.rate,
            burst: spec.burst,
            window: if spec.rate > 0.0 { 0 } else { spec.window },
            window_s: st.window_s,
            sent: st.sent,
            echoes: st.received,
            lost: st.sent - st.received.min(st.sent),
            loss_pct: if st.sent > 0 {
                100.0 * (st.sent - st.received.min(st.sent)) as f64 / st.sent as f64
            } else {
                0.0
            },
            duplicates: st.duplicates,
            bad: st.bad,
            gen_skipped: st.skipped,
            gen_send_failed: st.send_failed,
            gen_limited: gen_limited || st.skipped > st.sent / 100,
            loss_at: loss_at(
                st.sent - st.received.min(st.sent),
                drops_listen,
                drops_relay,
                drops_generator,
            ),
            offered_pps: st.sent as f64 / w,
            relayed_pps: relayed as f64 / w,
            echoes_per_s: st.received as f64 / w,
            mbit_s: relayed as f64 * self.size as f64 * 8.0 / w / 1e6,
            rtt_p50_us: q(0.5),
            rtt_p99_us: q(0.99),
            rtt_p999_us: q(0.999),
            rtt_max_us: st.rtt.max() as f64 / 1000.0,
            server_cpu_s: cpu,
            server_cpu_pct: cpu.map(|c| 100.0 * c / w),
            server_cpu_us_per_pkt: cpu
                .filter(|_| relayed > 0)
                .map(|c| c * 1e6 / relayed as f64),
            server_rss_mb: s1.map(|s| s.rss as f64 / 1048576.0),
            server_peak_rss_mb: s1.map(|s| s.hwm as f64 / 1048576.0),
            server_threads: s1.map(|s| s.threads),
            server_thread_cpu_pct: per_thread,
            gen_cpu_s: st.gen_cpu_s,
            gen_cpu_us_per_pkt: if relayed > 0 {
                st.gen_cpu_s * 1e6 / relayed as f64
            } else {
                0.0
            },
            host_busy_pct: st.host_busy * 100.0 * host_cores(),
            other_load_pct: (st.host_busy * 100.0 * host_cores()
                - cpu.map_or(0.0, |c| 100.0 * c / w)
                - 100.0 * st.gen_cpu_s / w)
                .max(0.0),
            drops_server,
            drops_server_listen: drops_listen,
            drops_server_relay: drops_relay,
            drops_generator,
            peer_received: self.peer.received - peer0,
        })
    }

    /// Deletes the allocations on an external server (best effort, no waiting).
    fn release(&mut self) {
        if self.srv.kind == Kind::External {
            let all: Vec<usize> = (0..self.fleet.sessions.len()).collect();
            let _ = self.fleet.run_ops(
                &all,
                &[Op::Refresh { lifetime: 0 }],
                CtlOpts {
                    fire_and_forget: true,
                    deadline: Duration::from_secs(5),
                    ..Default::default()
                },
            );
        }
    }
}

/// Where the lost packets went, from the kernel's per-socket drop counters.
fn loss_at(lost: u64, drops_listen: u64, drops_relay: u64, drops_gen: u64) -> String {
    let drops_server = drops_listen + drops_relay;
    if lost == 0 {
        return String::new();
    }
    let total = drops_server + drops_gen;
    if total == 0 {
        return "no socket drops: lost inside the server or the kernel".into();
    }
    if drops_server >= drops_gen {
        format!(
            "mostly server socket queues ({drops_server} of {total} drops: {drops_listen} on the \
             listen port, {drops_relay} on relay sockets)"
        )
    } else {
        format!(
            "mostly generator socket queues ({drops_gen} of {total} drops: the machine's CPU ran out)"
        )
    }
}

/// Waits (at most `max`) until the whole machine was under 15% busy for 2 s.
fn wait_for_idle(max: Duration) {
    let until = sys::now_ns() + max.as_nanos() as u64;
    let mut waited = false;
    loop {
        let (b0, t0) = sys::host_cpu();
        std::thread::sleep(Duration::from_secs(2));
        let (b1, t1) = sys::host_cpu();
        let busy = if t1 > t0 {
            (b1 - b0) as f64 / (t1 - t0) as f64
        } else {
            0.0
        };
        if busy < 0.15 {
            if waited {
                eprintln!("   machine idle, starting");
            }
            return;
        }
        if sys::now_ns() >= until {
            eprintln!(
                "   machine still {:.0}% busy after --wait-idle {:?}: starting anyway",
                busy * 100.0,
                max
            );
            return;
        }
        if !waited {
            eprintln!(
                "   waiting for the machine to be idle ({:.0}% busy)",
                busy * 100.0
            );
            waited = true;
        }
    }
}

fn host_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn progress(r: &LoadRow) {
    eprintln!(
        "   offered {:>9.0}/s relayed {:>9.0} pkt/s loss {:>7.3}% p50 {:>6.0} µs p99 {:>7.0} µs \
         srv CPU {:>5}% {:>6} µs/pkt gen CPU {:.2}s {:.2} µs/pkt host {:.0}% drops {}/{}{}",
        r.offered_pps,
        r.relayed_pps,
        r.loss_pct,
        r.rtt_p50_us,
        r.rtt_p99_us,
        r.server_cpu_pct.map_or("-".into(), |v| format!("{v:.0}")),
        r.server_cpu_us_per_pkt
            .map_or("-".into(), |v| format!("{v:.2}")),
        r.gen_cpu_s,
        r.gen_cpu_us_per_pkt,
        r.host_busy_pct,
        r.drops_server,
        r.drops_generator,
        if r.gen_limited {
            " generator-limited"
        } else {
            ""
        }
    );
    if !r.server_thread_cpu_pct.is_empty() {
        let t: Vec<String> = r
            .server_thread_cpu_pct
            .iter()
            .take(4)
            .map(|(n, p)| format!("{n} {p:.0}%"))
            .collect();
        eprintln!("   server threads: {}", t.join(", "));
    }
    if !r.loss_at.is_empty() {
        eprintln!("   loss: {}", r.loss_at);
    }
}

fn run_fixed(
    srv: &mut Server,
    a: &TurnArgs,
    framing: Framing,
    spec: &PhaseSpec,
) -> Result<LoadRow> {
    let mut ctx = LoadCtx::open(srv, a, framing)?;
    let r = ctx.phase(spec)?;
    progress(&r);
    ctx.release();
    report_server_problems(ctx.srv);
    stop_server(ctx.srv);
    Ok(r)
}

fn run_find_max(srv: &mut Server, a: &TurnArgs, framing: Framing) -> Result<FindMaxResult> {
    let step_len = secs(a.step_secs, "--step-secs")?;
    if step_len.is_zero() {
        bail!("--step-secs must be > 0");
    }
    let mut ctx = LoadCtx::open(srv, a, framing)?;
    let mut rate = a.start_rate;
    let mut best: Option<LoadRow> = None;
    let mut steps = Vec::new();
    let mut retried = false;
    let mut stop_reason = format!("--max-steps {} reached", a.max_steps);
    for _ in 0..a.max_steps {
        let spec = PhaseSpec {
            burst: a.burst.at(rate),
            rate,
            window: a.window,
            warmup: Duration::from_secs(1),
            duration: step_len,
            grace: Duration::from_secs(1),
            tick: Duration::from_micros(a.tick_us),
            pairs: a.topology == Topology::Pairs,
            gso: !a.no_gso,
        };
        eprintln!("   step: {rate:.0} pkt/s/session");
        let r = match ctx.phase(&spec) {
            Ok(r) => r,
            Err(e) => {
                // The server died or misbehaved: keep what was measured so far.
                stop_reason = format!("server failed: {e:#}");
                eprintln!("!! {stop_reason}");
                break;
            }
        };
        progress(&r);
        let passed = r.loss_pct <= a.max_loss && r.bad == 0;
        steps.push(r.clone());
        if passed && best.as_ref().is_none_or(|b| r.relayed_pps > b.relayed_pps) {
            best = Some(r.clone());
        }
        if r.gen_limited {
            stop_reason = "the generator could not send the offered load on time".into();
            break;
        }
        if passed {
            retried = false;
            rate *= a.step;
        } else if !retried {
            retried = true;
            eprintln!(
                "   loss {:.3}% > {}%: retrying the step once",
                r.loss_pct, a.max_loss
            );
        } else {
            stop_reason = format!(
                "loss {:.3}% > {}% twice at {rate:.0}/s/session; {}",
                r.loss_pct, a.max_loss, r.loss_at
            );
            break;
        }
    }
    ctx.release();
    report_server_problems(ctx.srv);
    stop_server(ctx.srv);
    Ok(FindMaxResult {
        server: ctx.srv.kind.name().into(),
        best,
        steps,
        stop_reason,
    })
}

/// Stops a server the bench started; a non-zero exit after SIGTERM is worth a note.
fn stop_server(srv: &mut Server) {
    if let Some(st) = srv.stop() {
        // coturn does not handle SIGTERM: being killed by it is its normal stop.
        let normal = st.contains("exit status: 0")
            || (srv.kind == Kind::Coturn && st.contains("SIGTERM") && !st.contains("killed"));
        if !normal {
            eprintln!(
                "   note: {} exited with {st} after SIGTERM; log tail:\n{}",
                srv.kind.name(),
                srv.log_tail(3)
            );
        }
    }
}

fn report_server_problems(srv: &Server) {
    for l in srv.log_problems(5) {
        eprintln!("   {} log: {l}", srv.kind.name());
    }
}

fn run_allocs(srv: &mut Server, a: &TurnArgs, n: usize, framing: Framing) -> Result<AllocRow> {
    let mb = |b: u64| b as f64 / 1048576.0;
    // Let the server settle, then take the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = srv.sample();
    // The peer is never sent to here; it only needs an address for permissions/channels.
    let peer = EchoPeer::new()?;
    let (mut fleet, rep) = setup(srv, peer.addr, n, framing, 0, a.ctl_concurrency, false)?;
    eprintln!(
        "   {} allocated, {} failed in {:.2} s ({} retransmissions){}",
        rep.ok,
        rep.failed,
        rep.elapsed.as_secs_f64(),
        rep.retransmissions,
        if rep.failed > 0 {
            format!(": {}", rep.error_summary())
        } else {
            String::new()
        }
    );
    let live: Vec<usize> = (0..n)
        .filter(|&i| fleet.sessions[i].relay.is_some())
        .collect();
    let refresh = fleet.run_ops(
        &live,
        &[Op::Refresh { lifetime: 3600 }],
        CtlOpts {
            concurrency: a.ctl_concurrency,
            deadline: Duration::from_secs(60 + n as u64 / 50),
            ..Default::default()
        },
    )?;
    eprintln!(
        "   {} refreshed, {} failed in {:.2} s{}",
        refresh.ok,
        refresh.failed,
        refresh.elapsed.as_secs_f64(),
        if refresh.failed > 0 {
            format!(": {}", refresh.error_summary())
        } else {
            String::new()
        }
    );
    std::thread::sleep(secs(a.hold, "--hold")?);
    srv.check_alive()?;
    let after = srv.sample();
    report_server_problems(srv);
    let mut errors = rep.error_summary();
    if refresh.failed > 0 {
        if !errors.is_empty() {
            errors.push_str("; ");
        }
        errors.push_str(&format!("refresh: {}", refresh.error_summary()));
    }
    // Count allocations that survived Allocate *and* the second step.
    let allocated = rep.ok;
    let row = AllocRow {
        server: srv.kind.name().into(),
        version: srv.version.clone(),
        requested: n,
        allocated,
        failed: rep.failed,
        errors,
        setup_s: rep.elapsed.as_secs_f64(),
        allocs_per_s: allocated as f64 / rep.elapsed.as_secs_f64().max(1e-9),
        retransmissions: rep.retransmissions + refresh.retransmissions,
        refreshed: refresh.ok,
        refresh_failed: refresh.failed,
        refresh_s: refresh.elapsed.as_secs_f64(),
        rss_before_mb: before.map(|s| mb(s.rss)),
        rss_after_mb: after.map(|s| mb(s.rss)),
        peak_rss_mb: after.map(|s| mb(s.hwm)),
        kib_per_alloc: match (before, after) {
            (Some(b), Some(a)) if allocated > 0 => {
                Some((a.rss as f64 - b.rss as f64) / 1024.0 / allocated as f64)
            }
            _ => None,
        },
        server_cpu_s: match (before, after) {
            (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
            _ => None,
        },
        server_threads: after.map(|s| s.threads),
        rss_limit_mb: a.rss_limit_mb,
        within_limit: after.map(|s| mb(s.hwm) < a.rss_limit_mb && allocated == n),
    };
    if srv.kind == Kind::External {
        let all: Vec<usize> = (0..n).collect();
        let _ = fleet.run_ops(
            &all,
            &[Op::Refresh { lifetime: 0 }],
            CtlOpts {
                fire_and_forget: true,
                deadline: Duration::from_secs(10),
                ..Default::default()
            },
        );
    }
    drop(fleet);
    stop_server(srv);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_range_parsing() {
        assert_eq!(parse_range("10000-29999"), Ok((10000, 29999)));
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("10").is_err());
    }

    #[test]
    fn cli_defaults_and_conflicts() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: TurnArgs,
        }
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.a.server, ServerChoice::Both);
        assert_eq!((t.a.sessions, t.a.size, t.a.rate), (100, 170, 1000.0));
        assert!(T::try_parse_from(["t", "--channels", "--send-indications"]).is_err());
        assert!(T::try_parse_from(["t", "--find-max", "--allocations-only", "5"]).is_err());
        assert!(T::try_parse_from(["t", "--coturn-arg=--no-udp-relay"]).is_ok());
    }
}
