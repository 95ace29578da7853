//! Result rows, the fixed-width tables printed at the end of a run, and their JSON form.

use serde::Serialize;

/// One measured load window against one server.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    pub server: String,
    pub version: String,
    pub sessions: usize,
    pub size: usize,
    pub framing: &'static str,
    /// "echo" or "pairs".
    pub topology: &'static str,
    /// Offered packets/s per session (0 = window mode).
    pub rate_per_session: f64,
    /// Packets per session burst.
    pub burst: u32,
    pub window: u32,
    pub window_s: f64,
    /// Packets sent by the clients during the window.
    pub sent: u64,
    /// Of those, echoes that came back (unique).
    pub echoes: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    /// Datagrams that were not a valid echo for the session they arrived on.
    pub bad: u64,
    /// Packets the generator skipped because it fell behind the schedule.
    pub gen_skipped: u64,
    /// Packets the generator's own socket refused.
    pub gen_send_failed: u64,
    /// True when the generator could not send the offered load on schedule (the figures are
    /// then the generator's limit, not the server's).
    pub gen_limited: bool,
    /// Where lost packets were dropped (kernel socket counters), empty without loss.
    pub loss_at: String,
    /// Client packets/s offered to the relay.
    pub offered_pps: f64,
    /// Packets/s relayed, every leg (echo: client->peer and peer->client = 2 per round trip;
    /// pairs: 4 per round trip).
    pub relayed_pps: f64,
    pub echoes_per_s: f64,
    /// Payload Mbit/s through the relay, both legs.
    pub mbit_s: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_p999_us: f64,
    pub rtt_max_us: f64,
    pub server_cpu_s: Option<f64>,
    /// Server CPU over the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Server CPU µs per relayed packet.
    pub server_cpu_us_per_pkt: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    pub server_threads: Option<u64>,
    /// Server threads using >= 1% of a core over the window: (name, % of one core).
    pub server_thread_cpu_pct: Vec<(String, f64)>,
    /// CPU the load generator itself (clients + echo peer) used over the window.
    pub gen_cpu_s: f64,
    /// Generator CPU µs per relayed packet.
    pub gen_cpu_us_per_pkt: f64,
    /// Whole-machine busy % over the window (all processes; 200% = both cores).
    pub host_busy_pct: f64,
    /// CPU used by other processes over the window, % of one core (host - server -
    /// generator); large values mean the figures are skewed by other load.
    pub other_load_pct: f64,
    /// Kernel receive-buffer drops on the server's sockets (listen + relay ports).
    pub drops_server: u64,
    /// Of those, on the listen port (client side) ...
    pub drops_server_listen: u64,
    /// ... and on the relay sockets (peer side).
    pub drops_server_relay: u64,
    /// Kernel receive-buffer drops on the generator's sockets (clients + echo peer).
    pub drops_generator: u64,
    /// Datagrams the echo peer received during the phase (all, incl. warmup).
    pub peer_received: u64,
}

/// Result of `--find-max` for one server.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxResult {
    pub server: String,
    /// Highest relayed rate with loss within the limit.
    pub best: Option<LoadRow>,
    pub steps: Vec<LoadRow>,
    pub stop_reason: String,
}

/// Result of `--allocations-only` for one server.
#[derive(Debug, Clone, Serialize)]
pub struct AllocRow {
    pub server: String,
    pub version: String,
    pub requested: usize,
    pub allocated: usize,
    pub failed: usize,
    pub errors: String,
    pub setup_s: f64,
    pub allocs_per_s: f64,
    pub retransmissions: u64,
    pub refreshed: usize,
    pub refresh_failed: usize,
    pub refresh_s: f64,
    pub rss_before_mb: Option<f64>,
    pub rss_after_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// (RSS after - RSS before) / allocated, KiB.
    pub kib_per_alloc: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_threads: Option<u64>,
    pub rss_limit_mb: f64,
    pub within_limit: Option<bool>,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

const LOAD_HDR: [(&str, usize); 17] = [
    ("server", 8),
    ("sess", 5),
    ("size", 5),
    ("offered/s", 10),
    ("relayed pkt/s", 14),
    ("echoes/s", 9),
    ("Mbit/s", 8),
    ("loss %", 8),
    ("p50 µs", 8),
    ("p99 µs", 8),
    ("srv CPU s", 10),
    ("CPU %", 6),
    ("µs/pkt", 7),
    ("peak RSS MB", 12),
    ("gen CPU s", 10),
    ("drops s/g", 10),
    ("note", 0),
];

fn row_line(cols: &[(String, usize)]) -> String {
    let mut s = String::new();
    for (i, (v, w)) in cols.iter().enumerate() {
        if i == 0 {
            s.push_str(&format!("{v:<w$}"));
        } else if *w == 0 {
            s.push_str(&format!(" {v}"));
        } else {
            s.push_str(&format!(" {v:>w$}"));
        }
    }
    s.trim_end().to_owned()
}

fn header(h: &[(&str, usize)]) -> String {
    let cols: Vec<(String, usize)> = h.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    let line = row_line(&cols);
    let rule = "-".repeat(line.chars().count());
    format!("{line}\n{rule}")
}

/// One table line for a load row.
pub fn load_line(r: &LoadRow, note: &str) -> String {
    let w: Vec<usize> = LOAD_HDR.iter().map(|h| h.1).collect();
    let mut note = note.to_owned();
    if r.other_load_pct > 15.0 {
        if !note.is_empty() {
            note.push_str(", ");
        }
        note.push_str(&format!("other load {:.0}%", r.other_load_pct));
    }
    if r.gen_limited {
        if !note.is_empty() {
            note.push_str(", ");
        }
        note.push_str("generator-limited");
    }
    row_line(&[
        (r.server.clone(), w[0]),
        (r.sessions.to_string(), w[1]),
        (r.size.to_string(), w[2]),
        (format!("{:.0}", r.offered_pps), w[3]),
        (format!("{:.0}", r.relayed_pps), w[4]),
        (format!("{:.0}", r.echoes_per_s), w[5]),
        (format!("{:.1}", r.mbit_s), w[6]),
        (format!("{:.3}", r.loss_pct), w[7]),
        (format!("{:.0}", r.rtt_p50_us), w[8]),
        (format!("{:.0}", r.rtt_p99_us), w[9]),
        (opt(r.server_cpu_s, 2), w[10]),
        (opt(r.server_cpu_pct, 0), w[11]),
        (opt(r.server_cpu_us_per_pkt, 2), w[12]),
        (opt(r.server_peak_rss_mb, 1), w[13]),
        (format!("{:.2}", r.gen_cpu_s), w[14]),
        (format!("{}/{}", r.drops_server, r.drops_generator), w[15]),
        (note, 0),
    ])
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Ratio line ember/coturn for two load rows.
pub fn load_ratio_line(e: &LoadRow, c: &LoadRow) -> String {
    let w: Vec<usize> = LOAD_HDR.iter().map(|h| h.1).collect();
    row_line(&[
        ("e/c".into(), w[0]),
        (String::new(), w[1]),
        (String::new(), w[2]),
        (ratio(Some(e.offered_pps), Some(c.offered_pps)), w[3]),
        (ratio(Some(e.relayed_pps), Some(c.relayed_pps)), w[4]),
        (ratio(Some(e.echoes_per_s), Some(c.echoes_per_s)), w[5]),
        (ratio(Some(e.mbit_s), Some(c.mbit_s)), w[6]),
        (String::new(), w[7]),
        (ratio(Some(e.rtt_p50_us), Some(c.rtt_p50_us)), w[8]),
        (ratio(Some(e.rtt_p99_us), Some(c.rtt_p99_us)), w[9]),
        (ratio(e.server_cpu_s, c.server_cpu_s), w[10]),
        (ratio(e.server_cpu_pct, c.server_cpu_pct), w[11]),
        (
            ratio(e.server_cpu_us_per_pkt, c.server_cpu_us_per_pkt),
            w[12],
        ),
        (ratio(e.server_peak_rss_mb, c.server_peak_rss_mb), w[13]),
        (String::new(), w[14]),
        (String::new(), w[15]),
        ("ember/coturn".into(), 0),
    ])
}

/// The table for fixed-load runs (`--realistic` adds a zero-loss verdict per row).
pub fn load_table(rows: &[LoadRow], realistic: bool) -> String {
    let mut out = vec![header(&LOAD_HDR)];
    for r in rows {
        let note = if realistic {
            if r.lost == 0 && r.bad == 0 && !r.gen_limited {
                "zero-loss PASS".to_string()
            } else {
                format!("zero-loss FAIL ({} lost)", r.lost)
            }
        } else {
            String::new()
        };
        out.push(load_line(r, &note));
    }
    if let (Some(e), Some(c)) = (
        rows.iter().find(|r| r.server == "ember"),
        rows.iter().find(|r| r.server == "coturn"),
    ) {
        out.push(load_ratio_line(e, c));
    }
    out.join("\n")
}

/// The `--find-max` table: every step per server, then the best rows and the ratio.
pub fn find_max_table(results: &[FindMaxResult], max_loss: f64) -> String {
    let mut out = Vec::new();
    for fm in results {
        out.push(format!("steps for {}:", fm.server));
        out.push(header(&LOAD_HDR));
        for s in &fm.steps {
            let note = format!("{:.0}/s/session, burst {}", s.rate_per_session, s.burst);
            out.push(load_line(s, &note));
        }
        out.push(format!("stopped: {}", fm.stop_reason));
        out.push(String::new());
    }
    out.push(format!(
        "highest relayed packet rate with loss <= {max_loss}% per server:"
    ));
    out.push(header(&LOAD_HDR));
    for fm in results {
        match &fm.best {
            Some(b) => out.push(load_line(b, &fm.stop_reason)),
            None => out.push(format!(
                "{:<8} no step passed ({})",
                fm.server, fm.stop_reason
            )),
        }
    }
    let best = |n: &str| {
        results
            .iter()
            .find(|r| r.server == n)
            .and_then(|r| r.best.clone())
    };
    if let (Some(e), Some(c)) = (best("ember"), best("coturn")) {
        out.push(load_ratio_line(&e, &c));
    }
    out.join("\n")
}

const ALLOC_HDR: [(&str, usize); 13] = [
    ("server", 8),
    ("allocs", 7),
    ("failed", 7),
    ("alloc/s", 8),
    ("refreshed", 10),
    ("RSS before MB", 14),
    ("RSS after MB", 13),
    ("peak RSS MB", 12),
    ("KiB/alloc", 10),
    ("srv CPU s", 10),
    ("thr", 4),
    ("verdict", 10),
    ("errors", 0),
];

/// The `--allocations-only` table.
pub fn alloc_table(rows: &[AllocRow]) -> String {
    let w: Vec<usize> = ALLOC_HDR.iter().map(|h| h.1).collect();
    let mut out = vec![header(&ALLOC_HDR)];
    for r in rows {
        let verdict = match r.within_limit {
            Some(true) => format!("<{:.0}MB ok", r.rss_limit_mb),
            Some(false) => format!(">{:.0}MB!", r.rss_limit_mb),
            None => "-".into(),
        };
        out.push(row_line(&[
            (r.server.clone(), w[0]),
            (r.allocated.to_string(), w[1]),
            (r.failed.to_string(), w[2]),
            (format!("{:.0}", r.allocs_per_s), w[3]),
            (r.refreshed.to_string(), w[4]),
            (opt(r.rss_before_mb, 1), w[5]),
            (opt(r.rss_after_mb, 1), w[6]),
            (opt(r.peak_rss_mb, 1), w[7]),
            (opt(r.kib_per_alloc, 2), w[8]),
            (opt(r.server_cpu_s, 2), w[9]),
            (
                r.server_threads.map_or("-".into(), |t| t.to_string()),
                w[10],
            ),
            (verdict, w[11]),
            (r.errors.clone(), 0),
        ]));
    }
    out.join("\n")
}
