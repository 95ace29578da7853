//! One measured load step over an open [`Fleet`]: QoS 1 publishes paced by a 1 ms timer,
//! every body carrying its send time, sender and message number; deliveries are checked
//! against the intended receivers (exactly once), latencies go into histograms.
//!
//! Ember: `rq/send` with `{"id","to"|"g","cid","body"}`, responses on `u/<uid>/<dev>/rs`,
//! deliveries on `.../ev`. Mosquitto: the same JSON published to `u/<peer>/m` or `g/<gid>`,
//! so payload sizes match.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;

use super::fleet::{Fleet, Handler, TIMER_TOKEN};
use super::report::LoadRow;
use super::server::{Broker, Kind};
use crate::turn::sys::{self, now_ns, TimerFd};

/// Who sends to whom.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Random sender, random other receiver, among the ready connections.
    Pairs,
    /// The listed connections take turns sending to the group; every other ready connection
    /// is a receiver.
    Group { gid: String, senders: Vec<usize> },
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub scenario: &'static str,
    pub pattern: Pattern,
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Longest wait after the window for outstanding deliveries.
    pub drain_s: f64,
}

#[derive(Clone, Copy, Default)]
struct Msg {
    t: u64,
    sender: u32,
    /// Pairs: the receiver's connection index.
    dest: u32,
    got: u32,
    /// Ember answered the request with an error.
    rejected: bool,
}

struct Tracker {
    base: u64,
    msgs: Vec<Msg>,
    win: (u64, u64),
    group: bool,
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
    delivered_win: u64,
    delivered_total: u64,
    acked_win: u64,
    acked_total: u64,
    self_deliveries: u64,
    wrong_receiver: u64,
    stale: u64,
    bad_payload: u64,
    other_events: u64,
    responses: u64,
    resp_errors: BTreeMap<String, u64>,
}

/// The decimal number after `"key":` in `s`.
fn num_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let pos = s.windows(key.len()).position(|w| w == key)?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &s[pos + key.len()..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
        any = true;
    }
    any.then_some(v)
}

/// The string value after `"key":"` (short, for error summaries).
fn str_after(s: &[u8], key: &[u8]) -> Option<String> {
    let pos = s.windows(key.len()).position(|w| w == key)?;
    let rest = &s[pos + key.len()..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&rest[..end.min(60)]).into_owned())
}

impl Handler for Tracker {
    fn publish(&mut self, conn: usize, topic: &[u8], payload: &[u8], now: u64) {
        if topic.ends_with(b"/rs") {
            self.responses += 1;
            if !payload.windows(8).any(|w| w == b"\"code\":0") {
                // A refused request (busy, rate limited, ...) is never delivered: not missing.
                let id = str_after(payload, b"\"id\":\"").and_then(|v| v.parse::<u64>().ok());
                if let Some(m) = id
                    .and_then(|n| n.checked_sub(self.base))
                    .and_then(|i| self.msgs.get_mut(i as usize))
                {
                    m.rejected = true;
                }
                let e = str_after(payload, b"\"error\":\"").unwrap_or_else(|| {
                    String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned()
                });
                *self.resp_errors.entry(e).or_insert(0) += 1;
            }
            return;
        }
        if payload.windows(5).any(|w| w == b"\"k\":\"")
            && !payload.windows(9).any(|w| w == b"\"k\":\"msg\"")
        {
            self.other_events += 1;
            return;
        }
        let Some(bpos) = payload.windows(7).position(|w| w == b"\"body\":") else {
            self.bad_payload += 1;
            return;
        };
        let body = &payload[bpos..];
        let (Some(t), Some(n)) = (num_after(body, b"\"t\":"), num_after(body, b"\"n\":")) else {
            self.bad_payload += 1;
            return;
        };
        if n < self.base {
            self.stale += 1;
            return;
        }
        let Some(m) = self.msgs.get_mut((n - self.base) as usize) else {
            self.bad_payload += 1;
            return;
        };
        if m.t != t {
            self.bad_payload += 1;
            return;
        }
        if m.sender as usize == conn {
            // Ember may copy a message to the sender's own devices; not a delivery here.
            self.self_deliveries += 1;
            return;
        }
        if !self.group && m.dest as usize != conn {
            self.wrong_receiver += 1;
            return;
        }
        m.got += 1;
        self.delivered_total += 1;
        if now >= self.win.0 && now < self.win.1 {
            self.delivered_win += 1;
        }
        if t >= self.win.0 && t < self.win.1 {
            let _ = self.e2e.record((now.saturating_sub(t) / 1000).max(1));
        }
    }

    fn puback(&mut self, _conn: usize, tag: u64, now: u64) {
        let Some(m) = tag
            .checked_sub(self.base)
            .and_then(|i| self.msgs.get((i) as usize))
        else {
            return;
        };
        self.acked_total += 1;
        if now >= self.win.0 && now < self.win.1 {
            self.acked_win += 1;
        }
        if m.t >= self.win.0 && m.t < self.win.1 {
            let _ = self.ack.record((now.saturating_sub(m.t) / 1000).max(1));
        }
    }
}

/// Small fast PRNG for picking senders and receivers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize * n) >> 32
    }
}

/// Runs one step: warmup, measured window, drain. `next_n` numbers messages across steps.
pub fn run_step(
    fleet: &mut Fleet,
    broker: &mut Broker,
    spec: &StepSpec,
    next_n: &mut u64,
) -> Result<LoadRow> {
    let kind = broker.kind;
    let ready: Vec<usize> = (0..fleet.len()).filter(|&i| fleet.is_ready(i)).collect();
    if ready.len() < 2 {
        bail!("fewer than 2 connections ready");
    }
    let group = matches!(spec.pattern, Pattern::Group { .. });
    let expected_per_msg: u32 = if group { ready.len() as u32 - 1 } else { 1 };
    let total_msgs = (spec.rate * (spec.warmup_s + spec.duration_s) * 1.05) as usize + 16;
    let t0 = now_ns();
    let w0 = t0 + (spec.warmup_s * 1e9) as u64;
    let w1 = w0 + (spec.duration_s * 1e9) as u64;
    let hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let mut tr = Tracker {
        base: *next_n,
        msgs: Vec::with_capacity(total_msgs),
        win: (w0, w1),
        group,
        e2e: hist()?,
        ack: hist()?,
        delivered_win: 0,
        delivered_total: 0,
        acked_win: 0,
        acked_total: 0,
        self_deliveries: 0,
        wrong_receiver: 0,
        stale: 0,
        bad_payload: 0,
        other_events: 0,
        responses: 0,
        resp_errors: BTreeMap::new(),
    };
    let timer = TimerFd::new(std::time::Duration::from_millis(1))?;
    fleet.poll.ctl(
        libc::EPOLL_CTL_ADD,
        timer.raw(),
        TIMER_TOKEN,
        libc::EPOLLIN as u32,
    )?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ t0.max(1));
    let mut payload = Vec::with_capacity(256);
    let mut topic = Vec::with_capacity(64);
    let mut scheduled: u64 = 0;
    let mut sent_win = 0u64;
    let mut skipped = 0u64;
    let mut send_failed = 0u64;
    let max_lag = (spec.rate * 0.05).max(10.0) as u64;
    let mut s_start = None;
    let mut s_end = None;
    let (mut th_start, mut th_end) = Default::default();
    let (mut g_start, mut g_end) = (0.0, 0.0);
    let mut last_print = t0;
    let (mut p_sent, mut p_acked, mut p_deliv) = (0u64, 0u64, 0u64);
    let mut turn = 0usize;
    let label = format!("{} {}", kind.name(), spec.scenario);
    let result = loop {
        let fired = fleet.pump(&mut tr, 1)?;
        if fired {
            timer.drain();
        }
        let now = now_ns();
        if s_start.is_none() && now >= w0 {
            s_start = broker.sample();
            th_start = sys::thread_cpu(broker.pid);
            g_start = sys::self_cpu_s();
        }
        if now < w1 {
            let due = ((now - t0) as f64 * spec.rate / 1e9) as u64;
            if due > scheduled + max_lag {
                skipped += due - scheduled - max_lag;
                scheduled = due - max_lag;
            }
            while scheduled < due {
                scheduled += 1;
                let (sender, dest) = match &spec.pattern {
                    Pattern::Pairs => {
                        let a = ready[rng.below(ready.len())];
                        let mut b = ready[rng.below(ready.len() - 1)];
                        if b == a {
                            b = ready[ready.len() - 1];
                        }
                        (a, b)
                    }
                    Pattern::Group { senders, .. } => {
                        turn += 1;
                        (senders[turn % senders.len()], 0)
                    }
                };
                let n = tr.base + tr.msgs.len() as u64;
                let t = now_ns();
                payload.clear();
                topic.clear();
                let _ = match &spec.pattern {
                    Pattern::Pairs => write!(
                        payload,
                        "{{\"id\":\"{n}\",\"to\":\"u{dest}\",\"cid\":\"c{n}\",\"body\":{{\"t\":{t},\"s\":{sender},\"n\":{n}}}}}"
                    ),
                    Pattern::Group { gid, .. } => write!(
                        payload,
                        "{{\"id\":\"{n}\",\"g\":\"{gid}\",\"cid\":\"c{n}\",\"body\":{{\"t\":{t},\"s\":{sender},\"n\":{n}}}}}"
                    ),
                };
                let _ = match (kind, &spec.pattern) {
                    (Kind::Ember, _) => write!(topic, "rq/send"),
                    (Kind::Mosquitto, Pattern::Pairs) => write!(topic, "u/u{dest}/m"),
                    (Kind::Mosquitto, Pattern::Group { gid, .. }) => write!(topic, "g/{gid}"),
                };
                if fleet.publish(sender, &topic, &payload, n) {
                    tr.msgs.push(Msg {
                        t,
                        sender: sender as u32,
                        dest: dest as u32,
                        got: 0,
                        rejected: false,
                    });
                    if t >= w0 {
                        sent_win += 1;
                    }
                } else {
                    send_failed += 1;
                }
            }
            fleet.flush();
        } else {
            if s_end.is_none() {
                s_end = broker.sample();
                th_end = sys::thread_cpu(broker.pid);
                g_end = sys::self_cpu_s();
            }
            let outstanding = tr.msgs.len() as u64 * expected_per_msg as u64 > tr.delivered_total
                || (tr.acked_total as usize) < tr.msgs.len();
            if !outstanding || now > w1 + (spec.drain_s * 1e9) as u64 {
                break Ok(());
            }
        }
        if now - last_print >= 1_000_000_000 {
            let dt = (now - last_print) as f64 / 1e9;
            last_print = now;
            eprintln!(
                "  [{label}] t={:.0}s sent {:.0}/s acked {:.0}/s delivered {:.0}/s ready {}",
                (now - t0) as f64 / 1e9,
                (tr.msgs.len() as u64 - p_sent) as f64 / dt,
                (tr.acked_total - p_acked) as f64 / dt,
                (tr.delivered_total - p_deliv) as f64 / dt,
                fleet.ready_count(),
            );
            p_sent = tr.msgs.len() as u64;
            p_acked = tr.acked_total;
            p_deliv = tr.delivered_total;
            if let Err(e) = broker.check_alive() {
                break Err(e);
            }
            if fleet.ready_count() == 0 {
                break Err(anyhow::anyhow!(
                    "every connection was lost: {:?}",
                    fleet.lost
                ));
            }
        }
    };
    let _ = fleet
        .poll
        .ctl(libc::EPOLL_CTL_DEL, timer.raw(), TIMER_TOKEN, 0);
    *next_n = tr.base + tr.msgs.len() as u64;
    result?;

    let mut missing = 0u64;
    let mut dups = 0u64;
    let mut rejected = 0u64;
    for m in tr.msgs.iter().filter(|m| m.t >= w0 && m.t < w1) {
        if m.rejected {
            rejected += 1;
            continue;
        }
        missing += expected_per_msg.saturating_sub(m.got) as u64;
        dups += m.got.saturating_sub(expected_per_msg) as u64;
    }
    let unacked_total = tr.msgs.len() as u64 - tr.acked_total.min(tr.msgs.len() as u64);
    let win_s = spec.duration_s;
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            None
        } else {
            Some(h.value_at_quantile(p) as f64 / 1000.0)
        }
    };
    let cpu = match (s_start, s_end) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    let mut errs: Vec<String> = tr
        .resp_errors
        .iter()
        .map(|(k, v)| format!("{v}x {k}"))
        .collect();
    errs.extend(
        fleet
            .lost
            .iter()
            .map(|(k, v)| format!("{v} conns lost: {k}")),
    );
    if tr.wrong_receiver > 0 {
        errs.push(format!("{} to the wrong receiver", tr.wrong_receiver));
    }
    if tr.bad_payload > 0 {
        errs.push(format!("{} unparsable deliveries", tr.bad_payload));
    }
    let row = LoadRow {
        server_threads: busiest_threads(&th_start, &th_end, win_s),
        server: kind.name().into(),
        version: broker.version.clone(),
        scenario: spec.scenario,
        online: ready.len(),
        offered_per_s: spec.rate,
        window_s: win_s,
        sent: sent_win,
        sent_per_s: sent_win as f64 / win_s,
        acked_per_s: tr.acked_win as f64 / win_s,
        delivered_per_s: tr.delivered_win as f64 / win_s,
        receivers_per_msg: expected_per_msg,
        missing,
        rejected,
        duplicates: dups,
        unacked: unacked_total,
        self_deliveries: tr.self_deliveries,
        other_events: tr.other_events,
        responses: tr.responses,
        gen_skipped: skipped,
        send_failed,
        gen_limited: skipped > (spec.rate * (spec.warmup_s + spec.duration_s) * 0.03) as u64,
        p50_ms: q(&tr.e2e, 0.5),
        p99_ms: q(&tr.e2e, 0.99),
        p999_ms: q(&tr.e2e, 0.999),
        max_ms: (!tr.e2e.is_empty()).then(|| tr.e2e.max() as f64 / 1000.0),
        ack_p50_ms: q(&tr.ack, 0.5),
        ack_p99_ms: q(&tr.ack, 0.99),
        server_cores: cpu.map(|c| c / win_s),
        server_us_per_delivery: cpu
            .filter(|_| tr.delivered_win > 0)
            .map(|c| c * 1e6 / tr.delivered_win as f64),
        server_rss_mb: s_end.map(|s| s.rss as f64 / 1048576.0),
        server_peak_rss_mb: s_end.map(|s| s.hwm as f64 / 1048576.0),
        gen_cores: (g_end - g_start) / win_s,
        errors: errs.join("; "),
    };
    Ok(row)
}

/// Server threads that used >= 2 % of a core over the window, busiest first: "name 45%, ...".
fn busiest_threads(a: &ThreadCpu, b: &ThreadCpu, win_s: f64) -> String {
    let mut by_name: BTreeMap<&str, f64> = BTreeMap::new();
    for (tid, (name, cpu)) in b {
        let before = a.get(tid).map_or(0.0, |x| x.1);
        *by_name.entry(name.as_str()).or_insert(0.0) += (cpu - before) / win_s * 100.0;
    }
    let mut v: Vec<(&str, f64)> = by_name.into_iter().filter(|x| x.1 >= 2.0).collect();
    v.sort_by(|x, y| y.1.total_cmp(&x.1));
    v.iter()
        .take(6)
        .map(|(n, p)| format!("{n} {p:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

type ThreadCpu = std::collections::HashMap<u32, (String, f64)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields() {
        let ev = br#"{"k":"msg","mid":"x","ts":17,"body":{"t":123456,"s":4,"n":99}}"#;
        let b = &ev[ev.windows(7).position(|w| w == b"\"body\":").unwrap()..];
        assert_eq!(num_after(b, b"\"t\":"), Some(123456));
        assert_eq!(num_after(b, b"\"n\":"), Some(99));
        assert_eq!(num_after(b, b"\"x\":"), None);
        assert_eq!(num_after(b"\"t\":99999999999999999999999", b"\"t\":"), None);
        assert_eq!(
            str_after(br#"{"code":403,"error":"not_member"}"#, b"\"error\":\""),
            Some("not_member".into())
        );
    }

    #[test]
    fn rng_in_range() {
        let mut r = Rng(7);
        for n in [1usize, 2, 10, 10_000] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
    }
}
