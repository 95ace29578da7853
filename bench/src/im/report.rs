//! Result rows of `ember-bench im` and the fixed-width tables (Ember and mosquitto side by
//! side, with an ember/mosquitto ratio row and the targets as a verdict).

use serde::Serialize;

/// One measured load window (single chat or group) against one broker.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    pub server: String,
    pub version: String,
    pub scenario: &'static str,
    pub online: usize,
    pub offered_per_s: f64,
    pub window_s: f64,
    /// Messages sent during the window.
    pub sent: u64,
    pub sent_per_s: f64,
    /// PUBACKs received during the window, per second.
    pub acked_per_s: f64,
    /// Deliveries received during the window, per second (group: every receiver counts).
    pub delivered_per_s: f64,
    /// Expected deliveries per message (pair 1; group: online members but the sender).
    pub receivers_per_msg: u32,
    /// Deliveries of window messages that never arrived (after the drain).
    pub missing: u64,
    /// Window messages the server refused (error response; Ember only), not in `missing`.
    pub rejected: u64,
    pub duplicates: u64,
    /// Messages (whole step) without PUBACK at the end.
    pub unacked: u64,
    /// Copies the sending connection got of its own message (not counted above).
    pub self_deliveries: u64,
    /// Ember events other than `msg` (membership notices etc.).
    pub other_events: u64,
    /// Ember responses on `.../rs`.
    pub responses: u64,
    pub gen_skipped: u64,
    pub send_failed: u64,
    pub gen_limited: bool,
    /// End-to-end latency (send → delivery), ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Send → PUBACK, ms (Ember: stored).
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Server CPU over the window, cores.
    pub server_cores: Option<f64>,
    pub server_us_per_delivery: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    /// Busiest server threads over the window (by thread name, % of one core).
    pub server_threads: String,
    /// Generator CPU over the window, cores.
    pub gen_cores: f64,
    pub errors: String,
}

/// The idle-connections measurement against one broker.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    pub server: String,
    pub version: String,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub connect_s: f64,
    pub conns_per_s: f64,
    pub rss_before_mb: Option<f64>,
    pub rss_after_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// (RSS after − RSS before) / connected, KB (1000 bytes).
    pub kb_per_conn: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub errors: String,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

fn line(cols: &[(String, usize)]) -> String {
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
    let l = line(
        &h.iter()
            .map(|(n, w)| (n.to_string(), *w))
            .collect::<Vec<_>>(),
    );
    let rule = "-".repeat(l.chars().count());
    format!("{l}\n{rule}")
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

const LOAD_HDR: [(&str, usize); 16] = [
    ("server", 9),
    ("online", 6),
    ("offered/s", 9),
    ("sent/s", 8),
    ("acked/s", 8),
    ("deliv/s", 9),
    ("missing", 7),
    ("dup", 4),
    ("p50 ms", 7),
    ("p99 ms", 8),
    ("p999 ms", 8),
    ("srv cores", 9),
    ("µs/deliv", 8),
    ("peak RSS MB", 11),
    ("gen cores", 9),
    ("note", 0),
];

/// Target verdict for Ember rows (issue 5): single chat p99 < 50 ms, group p99 < 250 ms, every
/// message delivered at the offered rate.
fn verdict(r: &LoadRow) -> String {
    let limit = if r.scenario == "group" { 250.0 } else { 50.0 };
    let on_rate = r.delivered_per_s >= 0.97 * r.offered_per_s * r.receivers_per_msg as f64;
    let ok = r.p99_ms.is_some_and(|p| p < limit) && r.missing == 0 && r.rejected == 0 && on_rate;
    format!(
        "p99<{limit:.0}ms+all delivered: {}",
        if ok { "ok" } else { "FAIL" }
    )
}

pub fn load_line(r: &LoadRow) -> String {
    let w: Vec<usize> = LOAD_HDR.iter().map(|h| h.1).collect();
    let mut note = Vec::new();
    if r.server == "ember" {
        note.push(verdict(r));
    }
    if r.rejected > 0 {
        note.push(format!("{} window msgs refused", r.rejected));
    }
    if r.p99_ms.is_none() && r.sent > 0 {
        note.push("collapsed: no window message delivered by the end of the drain".into());
    }
    if r.gen_limited {
        note.push("generator-limited".to_string());
    }
    if r.send_failed > 0 {
        note.push(format!("{} sends on dead conns", r.send_failed));
    }
    if !r.errors.is_empty() {
        note.push(r.errors.clone());
    }
    line(&[
        (r.server.clone(), w[0]),
        (r.online.to_string(), w[1]),
        (format!("{:.0}", r.offered_per_s), w[2]),
        (format!("{:.0}", r.sent_per_s), w[3]),
        (format!("{:.0}", r.acked_per_s), w[4]),
        (format!("{:.0}", r.delivered_per_s), w[5]),
        (r.missing.to_string(), w[6]),
        (r.duplicates.to_string(), w[7]),
        (opt(r.p50_ms, 2), w[8]),
        (opt(r.p99_ms, 2), w[9]),
        (opt(r.p999_ms, 2), w[10]),
        (opt(r.server_cores, 2), w[11]),
        (opt(r.server_us_per_delivery, 2), w[12]),
        (opt(r.server_peak_rss_mb, 1), w[13]),
        (format!("{:.2}", r.gen_cores), w[14]),
        (note.join("; "), 0),
    ])
}

fn load_ratio(e: &LoadRow, m: &LoadRow) -> String {
    let w: Vec<usize> = LOAD_HDR.iter().map(|h| h.1).collect();
    line(&[
        ("e/m".into(), w[0]),
        (String::new(), w[1]),
        (String::new(), w[2]),
        (ratio(Some(e.sent_per_s), Some(m.sent_per_s)), w[3]),
        (ratio(Some(e.acked_per_s), Some(m.acked_per_s)), w[4]),
        (
            ratio(Some(e.delivered_per_s), Some(m.delivered_per_s)),
            w[5],
        ),
        (String::new(), w[6]),
        (String::new(), w[7]),
        (ratio(e.p50_ms, m.p50_ms), w[8]),
        (ratio(e.p99_ms, m.p99_ms), w[9]),
        (ratio(e.p999_ms, m.p999_ms), w[10]),
        (ratio(e.server_cores, m.server_cores), w[11]),
        (
            ratio(e.server_us_per_delivery, m.server_us_per_delivery),
            w[12],
        ),
        (ratio(e.server_peak_rss_mb, m.server_peak_rss_mb), w[13]),
        (String::new(), w[14]),
        ("ember/mosquitto".into(), 0),
    ])
}

/// A load table: rows in order, then the ratio of the first Ember and mosquitto rows.
pub fn load_table(rows: &[LoadRow]) -> String {
    let mut out = vec![header(&LOAD_HDR)];
    out.extend(rows.iter().map(load_line));
    if let (Some(e), Some(m)) = (
        rows.iter().find(|r| r.server == "ember"),
        rows.iter().find(|r| r.server == "mosquitto"),
    ) {
        if rows.len() == 2 {
            out.push(load_ratio(e, m));
        }
    }
    out.join("\n")
}

const IDLE_HDR: [(&str, usize); 11] = [
    ("server", 9),
    ("conns", 6),
    ("failed", 6),
    ("conn/s", 7),
    ("RSS before MB", 13),
    ("RSS after MB", 12),
    ("peak RSS MB", 11),
    ("KB/conn", 8),
    ("srv CPU s", 9),
    ("verdict", 12),
    ("errors", 0),
];

/// The idle-connections table (target ≤ 10 KB per connection).
pub fn idle_table(rows: &[IdleRow]) -> String {
    let w: Vec<usize> = IDLE_HDR.iter().map(|h| h.1).collect();
    let mut out = vec![header(&IDLE_HDR)];
    for r in rows {
        let v = match r.kb_per_conn {
            Some(k) if r.server == "ember" && k <= 10.0 => "<=10KB ok",
            Some(_) if r.server == "ember" => ">10KB FAIL",
            _ => "-",
        };
        out.push(line(&[
            (r.server.clone(), w[0]),
            (r.connected.to_string(), w[1]),
            (r.failed.to_string(), w[2]),
            (format!("{:.0}", r.conns_per_s), w[3]),
            (opt(r.rss_before_mb, 1), w[4]),
            (opt(r.rss_after_mb, 1), w[5]),
            (opt(r.peak_rss_mb, 1), w[6]),
            (opt(r.kb_per_conn, 2), w[7]),
            (opt(r.server_cpu_s, 2), w[8]),
            (v.into(), w[9]),
            (r.errors.clone(), 0),
        ]));
    }
    out.join("\n")
}
