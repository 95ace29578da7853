//! The data path of the load generator.
//!
//! - [`EchoPeer`]: one UDP socket on 127.0.0.1 that sends every datagram back to where it
//!   came from (a relay address), in `recvmmsg`/`sendmmsg` batches of 64.
//! - [`run_phase`]: one thread drives every session and the echo peer: a `timerfd` tick paces the sends (each
//!   session's due packets leave in one `sendmmsg`), and `epoll` reports which client sockets
//!   have echoes to collect (`recvmmsg`, 64 at a time). With `rate == 0` each session instead
//!   keeps a window of packets in flight.
//!
//! Every packet carries `[session u32][seq u32][send time ns u64]` in its first 16 bytes.
//! A phase is warmup, measured window, then a drain grace: the packets sent during the
//! window are the measured ones; those not back (unique seq) by the end of the grace are lost.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ember_turn::stun::{self, attr, method, Class, Message, MessageWriter};
use hdrhistogram::Histogram;

use super::client::Fleet;
use super::sys::{self, now_ns, RecvBatch, SendBatch, TimerFd};

/// Token of the pacing timer in the fleet's epoll set.
const TIMER_TOKEN: u64 = u64::MAX;
/// Token of the echo peer's socket.
const PEER_TOKEN: u64 = u64::MAX - 1;
/// Datagrams per `recvmmsg` on a client socket and per echo batch.
const RX_BATCH: usize = 64;
/// Most datagrams one session sends per tick (catch-up is capped at this).
const TX_BATCH: usize = 64;
/// Bytes of bench header at the start of every payload.
pub const HDR: usize = 16;

/// The echo peer: one UDP socket that sends every datagram back to where it came from.
/// It is pumped by the client loop itself (one more fd in its epoll set), so the whole
/// generator is one thread: it never takes more than one core from the server.
pub struct EchoPeer {
    pub addr: SocketAddr,
    sock: UdpSocket,
    batch: RecvBatch,
    /// Datagrams received (and echoed) so far.
    pub received: u64,
}

impl EchoPeer {
    pub fn new() -> Result<EchoPeer> {
        let sock = sys::udp_socket("127.0.0.1:0".parse()?, None, 4 << 20, 4 << 20)?;
        Ok(EchoPeer {
            addr: sock.local_addr()?,
            sock,
            batch: RecvBatch::new(RX_BATCH),
            received: 0,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Echoes what is queued, at most 4 batches per call (the epoll set is level-triggered).
    fn pump(&mut self) {
        let fd = self.sock.as_raw_fd();
        for _ in 0..4 {
            let n = self.batch.recv(fd, libc::MSG_DONTWAIT).unwrap_or(0);
            if n == 0 {
                return;
            }
            self.received += n as u64;
            let _ = self.batch.echo(fd);
            if n < RX_BATCH {
                return;
            }
        }
    }
}

/// How packets go through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// ChannelData (after ChannelBind).
    Channels,
    /// Send indications out, Data indications back.
    Indications,
}

/// Load of one phase.
#[derive(Debug, Clone, Copy)]
pub struct PhaseSpec {
    /// Packets/s per session; 0 = window mode.
    pub rate: f64,
    /// In-flight packets per session in window mode.
    pub window: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub grace: Duration,
    /// Pacing tick.
    pub tick: Duration,
    /// Pairs topology: session 2k and 2k+1 relay to each other's relay address; a session
    /// reflects its partner's packets back instead of the echo peer doing it.
    pub pairs: bool,
    /// Packets a session sends back to back, every `burst / rate` seconds (sessions are
    /// spread evenly over that period, so the aggregate stays smooth).
    pub burst: u32,
    /// Send each session's burst (and the echo peer's same-source runs) as UDP GSO writes.
    pub gso: bool,
}

/// Callbacks at the start and end of the measured window (server CPU snapshots etc.).
pub trait WindowHooks {
    fn window_start(&mut self);
    fn window_end(&mut self);
}

/// What one phase measured on the client side.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Packets sent in the window.
    pub sent: u64,
    /// Of those, unique ones that came back.
    pub received: u64,
    pub duplicates: u64,
    /// Datagrams that were not a valid echo of this session (wrong size, session, framing).
    pub bad: u64,
    /// Packets the generator could not send on time (fell behind) and skipped.
    pub skipped: u64,
    /// Packets the generator's socket refused (send buffer full).
    pub send_failed: u64,
    /// Nominal packets the schedule wanted sent in the window (rate mode).
    pub scheduled: u64,
    pub rtt: Histogram<u64>,
    /// Generator CPU seconds over the window.
    pub gen_cpu_s: f64,
    /// Whole-machine busy fraction over the window (0..1).
    pub host_busy: f64,
}

/// Per-session data-path state (kept across phases: sequence numbers keep increasing).
pub struct Flow {
    template: Vec<u8>,
    payload_off: usize,
    next_seq: u32,
    win_first: u32,
    win_end: u32,
    bitmap: Vec<u64>,
    sent_in_phase: u64,
    offset_ns: u64,
    credits: u32,
    last_progress: u64,
    received_in_win: u64,
}

/// Builds the per-session frame templates. Payload bytes after the header are a fixed filler.
pub fn make_flows(fleet: &Fleet, size: usize, framing: Framing) -> Result<Vec<Flow>> {
    if size < HDR {
        bail!("--size must be at least {HDR} bytes (the bench header)");
    }
    if size > 1400 {
        bail!("--size must be at most 1400 bytes (one unfragmented datagram with TURN framing)");
    }
    let n = fleet.sessions.len();
    let mut flows = Vec::with_capacity(n);
    for s in &fleet.sessions {
        let payload: Vec<u8> = (0..size).map(|k| (k % 251) as u8).collect();
        let (template, payload_off) = match framing {
            Framing::Channels => {
                let mut t = vec![0u8; 4 + size];
                t[0..2].copy_from_slice(&s.channel.to_be_bytes());
                t[2..4].copy_from_slice(&(size as u16).to_be_bytes());
                t[4..].copy_from_slice(&payload);
                (t, 4)
            }
            Framing::Indications => {
                let mut t = Vec::with_capacity(64 + size);
                let tid: [u8; 12] = rand::random();
                MessageWriter::new(&mut t, method::SEND, Class::Indication, &tid)
                    .xor_addr(attr::XOR_PEER_ADDRESS, s.peer)
                    .attr(attr::DATA, &payload);
                let pad = (4 - size % 4) % 4;
                let off = t.len() - pad - size;
                (t, off)
            }
        };
        flows.push(Flow {
            template,
            payload_off,
            next_seq: 0,
            win_first: 0,
            win_end: 0,
            bitmap: Vec::new(),
            sent_in_phase: 0,
            offset_ns: 0,
            credits: 0,
            last_progress: 0,
            received_in_win: 0,
        });
    }
    Ok(flows)
}

/// Runs one phase on every session of `fleet`.
pub fn run_phase(
    fleet: &mut Fleet,
    peer: &mut EchoPeer,
    flows: &mut [Flow],
    framing: Framing,
    size: usize,
    spec: &PhaseSpec,
    hooks: &mut dyn WindowHooks,
) -> Result<PhaseStats> {
    let n = flows.len();
    let window_mode = spec.rate <= 0.0;
    let tick = if window_mode {
        Duration::from_millis(10)
    } else {
        spec.tick
    };
    let timer = TimerFd::new(tick)?;
    fleet.epoll.add(timer.raw(), TIMER_TOKEN)?;
    fleet.epoll.add(peer.fd(), PEER_TOKEN)?;
    let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .context("creating the RTT histogram")?;
    let mut rx = RecvBatch::new(RX_BATCH);
    let mut tx = SendBatch::new(TX_BATCH);
    let mut rtx = SendBatch::new(RX_BATCH);
    let mut gso = spec.gso;
    peer.batch.gso = spec.gso;

    let t0 = now_ns();
    let burst = spec.burst.max(1);
    // One burst per session every `period_ns`.
    let period_ns = if window_mode {
        0.0
    } else {
        1e9 * f64::from(burst) / spec.rate
    };
    for (i, f) in flows.iter_mut().enumerate() {
        f.sent_in_phase = 0;
        f.offset_ns = (period_ns * i as f64 / n as f64) as u64;
        f.win_first = u32::MAX;
        f.win_end = u32::MAX;
        f.bitmap.clear();
        f.received_in_win = 0;
        f.credits = if window_mode { spec.window } else { 0 };
        f.last_progress = t0;
    }
    let warm_end = t0 + spec.warmup.as_nanos() as u64;
    let meas_end = warm_end + spec.duration.as_nanos() as u64;
    let drain_end = meas_end + spec.grace.as_nanos() as u64;
    let mut measuring = false;
    let mut sending = true;
    let (mut dup, mut bad, mut skipped, mut send_failed) = (0u64, 0u64, 0u64, 0u64);
    let mut gen_cpu0 = 0.0;
    let mut host0 = (0, 0);
    let mut gen_cpu_s = 0.0;
    let mut host_busy = 0.0;
    let mut win_t0 = warm_end;
    let mut win_t1 = meas_end;
    let mut ready = Vec::with_capacity(1024);
    let mut dirty: Vec<usize> = Vec::new();
    let mut is_dirty = vec![false; n];
    let max_lag = if window_mode {
        0
    } else {
        // Past 50 ms behind schedule the generator skips instead of bursting.
        ((spec.rate * 0.05) as u64).max(TX_BATCH as u64)
    };

    if window_mode {
        dirty.extend(0..n);
        is_dirty.fill(true);
    }

    loop {
        let now = now_ns();
        if !measuring && sending && now >= warm_end {
            measuring = true;
            win_t0 = now;
            for f in flows.iter_mut() {
                f.win_first = f.next_seq;
            }
            hooks.window_start();
            gen_cpu0 = sys::self_cpu_s();
            host0 = sys::host_cpu();
        }
        if sending && now >= meas_end {
            sending = false;
            win_t1 = now;
            for f in flows.iter_mut() {
                f.win_end = f.next_seq;
            }
            hooks.window_end();
            gen_cpu_s = sys::self_cpu_s() - gen_cpu0;
            let h1 = sys::host_cpu();
            let dt = h1.1.saturating_sub(host0.1);
            if dt > 0 {
                host_busy = h1.0.saturating_sub(host0.0) as f64 / dt as f64;
            }
        }
        if !sending {
            if now >= drain_end {
                break;
            }
            let all_back = flows
                .iter()
                .all(|f| f.received_in_win == u64::from(f.win_end.wrapping_sub(f.win_first)));
            if all_back {
                break;
            }
        }

        // Sends for window mode after receives (and the initial window).
        if sending && window_mode && !dirty.is_empty() {
            for &i in &dirty {
                is_dirty[i] = false;
                let f = &mut flows[i];
                let k = (f.credits as usize).min(TX_BATCH);
                if k == 0 {
                    continue;
                }
                f.credits -= k as u32;
                let sent = send_burst(fleet.sessions[i].fd, i as u32, f, k, &mut tx, &mut gso);
                send_failed += (k - sent) as u64;
            }
            dirty.clear();
        }

        fleet.epoll.wait(5, &mut ready)?;
        for &tok in &ready {
            if tok == PEER_TOKEN {
                peer.pump();
                continue;
            }
            if tok == TIMER_TOKEN {
                timer.drain();
                if !sending {
                    continue;
                }
                let now = now_ns();
                if window_mode {
                    // Stalled sessions (everything in flight lost): re-open the window.
                    for (i, f) in flows.iter_mut().enumerate() {
                        if f.credits == 0 && now.saturating_sub(f.last_progress) > 200_000_000 {
                            f.credits = spec.window;
                            f.last_progress = now;
                            if !is_dirty[i] {
                                is_dirty[i] = true;
                                dirty.push(i);
                            }
                        }
                    }
                    continue;
                }
                let elapsed = now.saturating_sub(t0);
                for (i, f) in flows.iter_mut().enumerate() {
                    if elapsed < f.offset_ns {
                        continue;
                    }
                    let bursts = ((elapsed - f.offset_ns) as f64 / period_ns) as u64 + 1;
                    let due = bursts * u64::from(burst);
                    let mut behind = due.saturating_sub(f.sent_in_phase);
                    if behind == 0 {
                        continue;
                    }
                    if behind > max_lag {
                        let skip = behind - TX_BATCH as u64;
                        f.sent_in_phase += skip;
                        if measuring {
                            skipped += skip;
                        }
                        behind = TX_BATCH as u64;
                    }
                    let k = (behind as usize).min(TX_BATCH);
                    let sent = send_burst(fleet.sessions[i].fd, i as u32, f, k, &mut tx, &mut gso);
                    f.sent_in_phase += k as u64;
                    send_failed += (k - sent) as u64;
                }
                continue;
            }
            let i = tok as usize;
            if i >= n {
                continue;
            }
            let fd = fleet.sessions[i].fd;
            for _ in 0..2 {
                // An error (ECONNREFUSED after an ICMP error) means nothing to read.
                let got = rx.recv(fd, libc::MSG_DONTWAIT).unwrap_or_default();
                if got == 0 {
                    break;
                }
                let now = now_ns();
                let f = &mut flows[i];
                for k in 0..got {
                    let d = rx.get(k);
                    let payload = match framing {
                        Framing::Channels => {
                            if !stun::is_channel_data(d) {
                                continue; // late control answers
                            }
                            match stun::ChannelData::parse(d) {
                                Ok(cd) => cd.data,
                                Err(_) => {
                                    bad += 1;
                                    continue;
                                }
                            }
                        }
                        Framing::Indications => match Message::parse(d) {
                            Ok(m)
                                if m.method() == method::DATA && m.class() == Class::Indication =>
                            {
                                match m.get(attr::DATA) {
                                    Some(p) => p,
                                    None => {
                                        bad += 1;
                                        continue;
                                    }
                                }
                            }
                            Ok(_) => continue,
                            Err(_) => {
                                bad += 1;
                                continue;
                            }
                        },
                    };
                    if payload.len() != size {
                        bad += 1;
                        continue;
                    }
                    let sid = u32::from_be_bytes(payload[0..4].try_into().unwrap_or([0; 4]));
                    let seq = u32::from_be_bytes(payload[4..8].try_into().unwrap_or([0; 4]));
                    let ts = u64::from_be_bytes(payload[8..16].try_into().unwrap_or([0; 8]));
                    if sid != i as u32 {
                        if spec.pairs && sid == (i ^ 1) as u32 {
                            // The partner's packet: send it back through our allocation.
                            if rtx.len() == rtx.capacity() {
                                let sent = rtx.flush_gso(fd, &mut gso).unwrap_or(0);
                                send_failed += (rtx.capacity() - sent) as u64;
                            }
                            let slot = rtx.next_slot();
                            let len = f.template.len();
                            slot[..len].copy_from_slice(&f.template);
                            slot[f.payload_off..f.payload_off + size].copy_from_slice(payload);
                            rtx.push(len);
                            continue;
                        }
                        bad += 1;
                        continue;
                    }
                    f.last_progress = now;
                    if window_mode && sending {
                        f.credits = (f.credits + 1).min(spec.window);
                        if !is_dirty[i] {
                            is_dirty[i] = true;
                            dirty.push(i);
                        }
                    }
                    if seq < f.win_first || seq >= f.win_end {
                        continue;
                    }
                    let idx = (seq - f.win_first) as usize;
                    let (w, b) = (idx / 64, idx % 64);
                    if f.bitmap.len() <= w {
                        f.bitmap.resize(w + 1, 0);
                    }
                    if f.bitmap[w] & (1 << b) != 0 {
                        dup += 1;
                        continue;
                    }
                    f.bitmap[w] |= 1 << b;
                    f.received_in_win += 1;
                    let _ = rtt.record(now.saturating_sub(ts).max(1));
                }
                if !rtx.is_empty() {
                    let k = rtx.len();
                    let sent = rtx.flush_gso(fd, &mut gso).unwrap_or(0);
                    send_failed += (k - sent) as u64;
                }
                if got < RX_BATCH {
                    break;
                }
            }
        }
    }
    fleet.epoll.del(timer.raw())?;
    fleet.epoll.del(peer.fd())?;

    let mut sent = 0u64;
    let mut received = 0u64;
    for f in flows.iter() {
        if f.win_first != u32::MAX {
            sent += u64::from(f.win_end.wrapping_sub(f.win_first));
        }
        received += f.received_in_win;
    }
    let window_s = (win_t1.saturating_sub(win_t0)) as f64 / 1e9;
    let scheduled = if window_mode {
        0
    } else {
        (spec.rate * window_s * n as f64) as u64
    };
    Ok(PhaseStats {
        window_s,
        sent,
        received,
        duplicates: dup,
        bad,
        skipped,
        send_failed,
        scheduled,
        rtt,
        gen_cpu_s,
        host_busy,
    })
}

/// Queues `k` packets of flow `f` and sends them with one `sendmmsg`. Returns how many left.
fn send_burst(
    fd: i32,
    sid: u32,
    f: &mut Flow,
    k: usize,
    tx: &mut SendBatch,
    gso: &mut bool,
) -> usize {
    tx.clear();
    let now = now_ns();
    let len = f.template.len();
    for _ in 0..k.min(tx.capacity()) {
        let slot = tx.next_slot();
        slot[..len].copy_from_slice(&f.template);
        let p = &mut slot[f.payload_off..f.payload_off + HDR];
        p[0..4].copy_from_slice(&sid.to_be_bytes());
        p[4..8].copy_from_slice(&f.next_seq.to_be_bytes());
        p[8..16].copy_from_slice(&now.to_be_bytes());
        f.next_seq = f.next_seq.wrapping_add(1);
        tx.push(len);
    }
    tx.flush_gso(fd, gso).unwrap_or(0)
}
