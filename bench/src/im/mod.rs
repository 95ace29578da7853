//! `ember-bench im`: MQTT messaging load, Ember (`ember im`) and mosquitto side by side.
//!
//! Scenarios, each against a freshly started broker:
//! - `pair`: N online clients, single-chat messages between random pairs at a target rate
//!   (or `--find-max`: rising steps until the latency or delivery target breaks);
//! - `group`: a group of `--group-members` users, `--group-online` of them connected,
//!   `--group-rate` messages/s from `--group-senders` senders;
//! - `idle`: N connected and subscribed clients, server RSS before vs after → KB/connection.
//!
//! One generator thread drives every client socket (see `fleet.rs`), so the generator never
//! takes more than one core from the broker. Server CPU and memory come from `/proc`.

mod fleet;
mod load;
mod mqtt;
mod report;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use fleet::{ConnSpec, Fleet, Nop, OpenStats};
use load::{Pattern, StepSpec};
use report::{IdleRow, LoadRow};
use server::{Broker, Kind};

use crate::turn::sys::{self, now_ns};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerChoice {
    Ember,
    Mosquitto,
    /// Ember, then mosquitto, with identical load.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Pair,
    Group,
    Idle,
    All,
}

/// Options of `ember-bench im`.
#[derive(Debug, Clone, Args)]
pub struct ImArgs {
    #[arg(long, value_enum, default_value = "both")]
    pub server: ServerChoice,
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Single chat: connected clients.
    #[arg(long, default_value_t = 10_000)]
    pub online: usize,
    /// Single chat: messages/s offered (whole fleet).
    #[arg(long, default_value_t = 25_000.0)]
    pub rate: f64,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load before the measured window, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Longest wait for outstanding deliveries after the window, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    #[arg(long, default_value_t = 10_000)]
    pub group_members: usize,
    #[arg(long, default_value_t = 1_000)]
    pub group_online: usize,
    /// Group messages/s (each delivered to every online member).
    #[arg(long, default_value_t = 500.0)]
    pub group_rate: f64,
    #[arg(long, default_value_t = 10)]
    pub group_senders: usize,
    /// Idle scenario: connections.
    #[arg(long, default_value_t = 15_000)]
    pub idle: usize,
    /// Single chat: steps of 0.4x .. 2x --rate until p99 >= 50 ms, a message is missing, or
    /// fewer than 97 % are delivered.
    #[arg(long)]
    pub find_max: bool,
    /// Handshakes in flight while connecting.
    #[arg(long, default_value_t = 500)]
    pub connect_batch: usize,
    /// Ember binary [default: $CARGO_TARGET_DIR/release/ember, else next to ember-bench].
    #[arg(long)]
    pub ember_bin: Option<PathBuf>,
    /// Where Ember serves its Prometheus metrics during the run (scrape it for the store's
    /// commit latency and batch sizes); default an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub ember_metrics: std::net::SocketAddr,
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto_bin: PathBuf,
    /// Also print every row as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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

const GID: &str = "g1";

pub fn run(a: ImArgs) -> Result<()> {
    let nofile = sys::raise_nofile_limit()?;
    let biggest = [
        if matches!(a.scenario, Scenario::Pair | Scenario::All) {
            a.online
        } else {
            0
        },
        if matches!(a.scenario, Scenario::Group | Scenario::All) {
            a.group_online
        } else {
            0
        },
        if matches!(a.scenario, Scenario::Idle | Scenario::All) {
            a.idle
        } else {
            0
        },
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    if biggest as u64 + 64 > nofile {
        bail!("{biggest} connections need more open files than RLIMIT_NOFILE allows ({nofile})");
    }
    if a.group_senders == 0 || a.group_senders > a.group_online || a.group_online > a.group_members
    {
        bail!("need 0 < --group-senders <= --group-online <= --group-members");
    }
    let kinds: Vec<Kind> = match a.server {
        ServerChoice::Ember => vec![Kind::Ember],
        ServerChoice::Mosquitto => vec![Kind::Mosquitto],
        ServerChoice::Both => vec![Kind::Ember, Kind::Mosquitto],
    };
    let scen: Vec<Scenario> = match a.scenario {
        Scenario::All => vec![Scenario::Pair, Scenario::Group, Scenario::Idle],
        s => vec![s],
    };
    let (busy0, total0) = sys::host_cpu();
    let mut out = Vec::new();
    let mut json = Vec::new();
    let mut failures = Vec::new();
    for s in scen {
        let mut rows: Vec<LoadRow> = Vec::new();
        let mut idle_rows: Vec<IdleRow> = Vec::new();
        for &k in &kinds {
            eprintln!("== {} {:?}", k.name(), s);
            let r = match s {
                Scenario::Pair => run_pair(&a, k).map(|r| rows.extend(r)),
                Scenario::Group => run_group(&a, k).map(|r| rows.push(r)),
                _ => run_idle(&a, k).map(|r| idle_rows.push(r)),
            };
            if let Err(e) = r {
                eprintln!("  {} {:?} failed: {e:#}", k.name(), s);
                failures.push(format!("{} {:?}: {e:#}", k.name(), s));
            }
        }
        let title = match s {
            Scenario::Pair => format!(
                "single chat: {} online, {} msg/s offered, {} s window",
                a.online, a.rate, a.duration
            ),
            Scenario::Group => format!(
                "group: {} members, {} online, {} msg/s from {} senders, {} s window",
                a.group_members, a.group_online, a.group_rate, a.group_senders, a.duration
            ),
            _ => format!("idle: {} connections (connected + subscribed)", a.idle),
        };
        let table = if matches!(s, Scenario::Idle) {
            report::idle_table(&idle_rows)
        } else {
            report::load_table(&rows)
        };
        println!("\n{title}\n{table}");
        out.push(format!("{title}\n{table}"));
        json.extend(rows.iter().filter_map(|r| serde_json::to_value(r).ok()));
        json.extend(
            idle_rows
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok()),
        );
    }
    let (busy1, total1) = sys::host_cpu();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nhost busy over the run: {:.0}% of {} cores; load average {}",
        100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if a.json {
        println!("{}", serde_json::Value::Array(json));
    }
    if !failures.is_empty() {
        println!("\nfailed:");
        for f in &failures {
            println!("  {f}");
        }
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}

fn start(a: &ImArgs, k: Kind) -> Result<Broker> {
    match k {
        Kind::Ember => Broker::start_ember(
            &a.ember_bin.clone().unwrap_or_else(default_ember_bin),
            a.ember_metrics,
        ),
        Kind::Mosquitto => Broker::start_mosquitto(&a.mosquitto_bin),
    }
}

fn uid(i: usize) -> String {
    format!("u{i}")
}

/// Ember: `POST /v1/users` in batches of 1,000.
fn create_users(b: &Broker, n: usize) -> Result<()> {
    let t0 = now_ns();
    for start in (0..n).step_by(1000) {
        let users: Vec<_> = (start..(start + 1000).min(n))
            .map(|i| serde_json::json!({"uid": uid(i), "name": uid(i)}))
            .collect();
        b.admin_call("POST", "/v1/users", &serde_json::json!({ "users": users }))
            .with_context(|| format!("creating users {start}.."))?;
    }
    eprintln!(
        "  created {n} users in {:.1} s",
        (now_ns() - t0) as f64 / 1e9
    );
    Ok(())
}

/// Ember: `POST /v1/groups` with the first 1,000 members, then `POST /v1/groups/{gid}/members`
/// in batches of 1,000.
fn create_group(b: &Broker, gid: &str, members: usize) -> Result<()> {
    let first: Vec<String> = (0..members.min(1000)).map(uid).collect();
    b.admin_call(
        "POST",
        "/v1/groups",
        &serde_json::json!({"gid": gid, "name": gid, "owner": uid(0), "members": first}),
    )
    .context("creating the group")?;
    for start in (1000..members).step_by(1000) {
        let add: Vec<String> = (start..(start + 1000).min(members)).map(uid).collect();
        b.admin_call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            &serde_json::json!({ "add": add }),
        )
        .with_context(|| format!("adding members {start}.."))?;
    }
    Ok(())
}

/// Client `i`: Ember logs in as user `u<i>`, device `d<i>` with a minted token and subscribes
/// to its own space; mosquitto subscribes to `u/u<i>/m`, or the group topic.
fn specs(b: &Broker, n: usize, group: bool) -> Vec<ConnSpec> {
    (0..n)
        .map(|i| match b.kind {
            Kind::Ember => ConnSpec {
                client_id: format!("d{i}"),
                user: Some(uid(i)),
                password: Some(b.mint_token(&uid(i), &format!("d{i}"))),
                filter: format!("u/u{i}/d{i}/#"),
                sub_qos: 0,
            },
            Kind::Mosquitto => ConnSpec {
                client_id: format!("c{i}"),
                user: None,
                password: None,
                filter: if group {
                    format!("g/{GID}")
                } else {
                    format!("u/u{i}/m")
                },
                sub_qos: 0,
            },
        })
        .collect()
}

fn open(a: &ImArgs, b: &mut Broker, n: usize, group: bool) -> Result<(Fleet, OpenStats)> {
    let mut f = Fleet::new(b.mqtt, specs(b, n, group), n / 5000 + 2)?;
    let st = f.open(a.connect_batch.max(1), 20.0, 60.0 + n as f64 / 100.0)?;
    eprintln!(
        "  {} of {n} connected and subscribed in {:.1} s ({:.0}/s){}",
        st.ready,
        st.secs,
        st.ready as f64 / st.secs.max(1e-9),
        if st.failed > 0 {
            format!("; {} failed: {}", st.failed, st.error_summary())
        } else {
            String::new()
        }
    );
    b.check_alive()?;
    Ok((f, st))
}

/// Keeps the fleet's sockets serviced for `secs`.
fn settle(f: &mut Fleet, secs: f64) -> Result<()> {
    let until = now_ns() + (secs * 1e9) as u64;
    while now_ns() < until {
        f.pump(&mut Nop, 20)?;
    }
    Ok(())
}

fn pair_ok(r: &LoadRow) -> bool {
    r.p99_ms.is_some_and(|p| p < 50.0)
        && r.missing == 0
        && r.rejected == 0
        && !r.gen_limited
        && r.delivered_per_s >= 0.97 * r.offered_per_s
}

fn run_pair(a: &ImArgs, k: Kind) -> Result<Vec<LoadRow>> {
    let mut b = start(a, k)?;
    if k == Kind::Ember {
        create_users(&b, a.online)?;
    }
    let (mut f, st) = open(a, &mut b, a.online, false)?;
    if st.ready < 2 {
        bail!("only {} connections: {}", st.ready, st.error_summary());
    }
    settle(&mut f, 1.0)?;
    let factors: &[f64] = if a.find_max {
        &[0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0]
    } else {
        &[1.0]
    };
    let mut rows = Vec::new();
    let mut n = 0;
    for &x in factors {
        let spec = StepSpec {
            scenario: "pair",
            pattern: Pattern::Pairs,
            rate: a.rate * x,
            warmup_s: a.warmup,
            duration_s: a.duration,
            drain_s: a.drain,
        };
        f.ping_all();
        let r = load::run_step(&mut f, &mut b, &spec, &mut n)?;
        eprintln!(
            "{}\n  server threads: {}",
            report::load_line(&r),
            r.server_threads
        );
        let ok = pair_ok(&r);
        rows.push(r);
        if a.find_max && !ok {
            break;
        }
        if a.find_max {
            settle(&mut f, 1.0)?;
        }
    }
    Ok(rows)
}

fn run_group(a: &ImArgs, k: Kind) -> Result<LoadRow> {
    let mut b = start(a, k)?;
    if k == Kind::Ember {
        create_users(&b, a.group_members)?;
        create_group(&b, GID, a.group_members)?;
    }
    let (mut f, st) = open(a, &mut b, a.group_online, true)?;
    if st.ready <= a.group_senders {
        bail!("only {} connections: {}", st.ready, st.error_summary());
    }
    settle(&mut f, 1.0)?;
    let spec = StepSpec {
        scenario: "group",
        pattern: Pattern::Group {
            gid: GID.into(),
            senders: (0..a.group_senders).collect(),
        },
        rate: a.group_rate,
        warmup_s: a.warmup,
        duration_s: a.duration,
        drain_s: a.drain,
    };
    let r = load::run_step(&mut f, &mut b, &spec, &mut 0)?;
    eprintln!(
        "{}\n  server threads: {}",
        report::load_line(&r),
        r.server_threads
    );
    Ok(r)
}

fn run_idle(a: &ImArgs, k: Kind) -> Result<IdleRow> {
    let mut b = start(a, k)?;
    if k == Kind::Ember {
        create_users(&b, a.idle)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = b.sample();
    let (mut f, st) = open(a, &mut b, a.idle, false)?;
    settle(&mut f, 3.0)?;
    b.check_alive()?;
    let after = b.sample();
    let mb = |s: Option<sys::ProcSample>| s.map(|s| s.rss as f64 / 1048576.0);
    let kb = match (before, after) {
        (Some(x), Some(y)) if st.ready > 0 => {
            Some((y.rss as f64 - x.rss as f64) / 1000.0 / st.ready as f64)
        }
        _ => None,
    };
    let mut errors = st.error_summary();
    if !f.lost.is_empty() {
        errors.push_str(&format!(" lost after connecting: {:?}", f.lost));
    }
    Ok(IdleRow {
        server: k.name().into(),
        version: b.version.clone(),
        requested: a.idle,
        connected: st.ready,
        failed: st.failed,
        connect_s: st.secs,
        conns_per_s: st.ready as f64 / st.secs.max(1e-9),
        rss_before_mb: mb(before),
        rss_after_mb: mb(after),
        peak_rss_mb: after.map(|s| s.hwm as f64 / 1048576.0),
        kb_per_conn: kb,
        server_cpu_s: after.map(|s| s.cpu_s),
        errors,
    })
}
