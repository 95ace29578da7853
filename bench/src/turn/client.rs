//! The TURN client side of the load generator: one UDP socket (one 5-tuple) per
//! allocation, and a single-threaded transaction engine that takes many sessions through
//! Allocate (answering the 401 long-term-credential challenge and 438 stale nonces),
//! CreatePermission, ChannelBind and Refresh concurrently, with retransmissions and an
//! overall deadline. Every failure comes back as a message that names the session, the
//! request and the server's error code; nothing here panics on a misbehaving server.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use anyhow::{bail, Result};
use ember_turn::auth::long_term_key;
use ember_turn::stun::{self, attr, method, Class, Message, MessageWriter};

use super::sys::{self, now_ns, Epoll};

/// Credentials of the bench user.
#[derive(Debug, Clone)]
pub struct Creds {
    pub user: String,
    pub password: String,
}

/// One allocation: its client socket and what the server told it.
pub struct Session {
    pub id: u32,
    pub sock: UdpSocket,
    pub fd: RawFd,
    pub local: SocketAddr,
    pub relay: Option<SocketAddr>,
    /// Where this allocation relays to: the echo peer, or (pairs) the partner's relay address.
    pub peer: SocketAddr,
    pub channel: u16,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: Option<[u8; 16]>,
}

/// A control operation a session goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Allocate a UDP relay with the given LIFETIME request.
    Allocate { lifetime: u32 },
    /// CreatePermission for the session's peer address.
    Permission,
    /// ChannelBind the session's channel number to its peer address.
    ChannelBind,
    /// Refresh with LIFETIME (0 deletes the allocation).
    Refresh { lifetime: u32 },
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Allocate { .. } => "Allocate",
            Op::Permission => "CreatePermission",
            Op::ChannelBind => "ChannelBind",
            Op::Refresh { lifetime: 0 } => "Refresh(0)",
            Op::Refresh { .. } => "Refresh",
        }
    }
    fn method(self) -> u16 {
        match self {
            Op::Allocate { .. } => method::ALLOCATE,
            Op::Permission => method::CREATE_PERMISSION,
            Op::ChannelBind => method::CHANNEL_BIND,
            Op::Refresh { .. } => method::REFRESH,
        }
    }
}

/// Per-run tuning of the transaction engine.
#[derive(Debug, Clone, Copy)]
pub struct CtlOpts {
    /// Sessions with a transaction in flight at once.
    pub concurrency: usize,
    /// First retransmission timeout; doubles up to 2 s.
    pub rto: Duration,
    /// Transmissions per request before giving up.
    pub max_tx: u32,
    /// Whole batch gives up after this long.
    pub deadline: Duration,
    /// Don't wait for answers (best-effort Refresh(0) at the end): send once, forget.
    pub fire_and_forget: bool,
}

impl Default for CtlOpts {
    fn default() -> Self {
        CtlOpts {
            concurrency: 256,
            rto: Duration::from_millis(250),
            max_tx: 6,
            deadline: Duration::from_secs(120),
            fire_and_forget: false,
        }
    }
}

/// Outcome of a batch of control operations.
#[derive(Debug, Default)]
pub struct CtlReport {
    pub ok: usize,
    pub failed: usize,
    /// Error text -> count (first example session id).
    pub errors: BTreeMap<String, (usize, u32)>,
    pub elapsed: Duration,
    pub retransmissions: u64,
}

impl CtlReport {
    /// One-line summary of the errors, most frequent first.
    pub fn error_summary(&self) -> String {
        let mut v: Vec<_> = self.errors.iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
        v.iter()
            .take(5)
            .map(|(e, (n, id))| format!("{n} x {e} (e.g. session {id})"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// All sessions of a run plus the epoll instance their sockets are registered with
/// (token = session index).
pub struct Fleet {
    pub sessions: Vec<Session>,
    pub epoll: Epoll,
    pub creds: Creds,
}

/// In-flight state of one session in the engine.
struct Tx {
    session: usize,
    op_idx: usize,
    tid: [u8; 12],
    req: Vec<u8>,
    sent_ns: u64,
    tx_count: u32,
    auth_retries: u32,
}

impl Fleet {
    /// Opens `n` client sockets (each its own 5-tuple towards `server`).
    pub fn open(
        n: usize,
        server: SocketAddr,
        peer: SocketAddr,
        creds: Creds,
        bufsize: usize,
    ) -> Result<Fleet> {
        if !server.is_ipv4() {
            bail!("only IPv4 server addresses are supported (got {server})");
        }
        let epoll = Epoll::new(1024)?;
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let sock = sys::udp_socket("127.0.0.1:0".parse()?, Some(server), bufsize, bufsize)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "opening client socket {i} of {n}: {e:#} (open-files limit is {})",
                        sys::raise_nofile_limit().unwrap_or(0)
                    )
                })?;
            let fd = sock.as_raw_fd();
            epoll.add(fd, i as u64)?;
            sessions.push(Session {
                id: i as u32,
                local: sock.local_addr()?,
                fd,
                sock,
                relay: None,
                peer,
                channel: 0x4000 + (i % 0x1000) as u16,
                realm: Vec::new(),
                nonce: Vec::new(),
                key: None,
            });
        }
        Ok(Fleet {
            sessions,
            epoll,
            creds,
        })
    }

    fn build(&self, s: usize, op: Op, tid: &[u8; 12], out: &mut Vec<u8>) {
        let sess = &self.sessions[s];
        out.clear();
        let mut w = MessageWriter::new(out, op.method(), Class::Request, tid);
        match op {
            Op::Allocate { lifetime } => {
                w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
                if lifetime > 0 {
                    w.u32(attr::LIFETIME, lifetime);
                }
            }
            Op::Permission => {
                w.xor_addr(attr::XOR_PEER_ADDRESS, sess.peer);
            }
            Op::ChannelBind => {
                w.u32(attr::CHANNEL_NUMBER, u32::from(sess.channel) << 16);
                w.xor_addr(attr::XOR_PEER_ADDRESS, sess.peer);
            }
            Op::Refresh { lifetime } => {
                w.u32(attr::LIFETIME, lifetime);
            }
        }
        if let Some(key) = sess.key {
            w.attr(attr::USERNAME, self.creds.user.as_bytes());
            w.attr(attr::REALM, &sess.realm);
            w.attr(attr::NONCE, &sess.nonce);
            w.integrity_sha1(&key);
        }
        w.fingerprint();
    }

    /// Takes every session in `which` through `ops` in order. Returns the report; sessions
    /// that failed have `relay == None` if the Allocate failed.
    pub fn run_ops(&mut self, which: &[usize], ops: &[Op], o: CtlOpts) -> Result<CtlReport> {
        let start = now_ns();
        let deadline = start + o.deadline.as_nanos() as u64;
        let mut rep = CtlReport::default();
        let mut next = 0usize; // index into `which` of the next session to start
        let mut txs: Vec<Option<Tx>> = (0..self.sessions.len()).map(|_| None).collect();
        let mut active = 0usize;
        let mut ready = Vec::new();
        let mut buf = vec![0u8; sys::SLOT];
        let mut last_scan = 0u64;
        let fail = |rep: &mut CtlReport, msg: String, id: u32| {
            rep.failed += 1;
            let e = rep.errors.entry(msg).or_insert((0, id));
            e.0 += 1;
        };

        loop {
            let now = now_ns();
            // Start new sessions up to the concurrency limit.
            while active < o.concurrency && next < which.len() {
                let s = which[next];
                next += 1;
                let mut tx = Tx {
                    session: s,
                    op_idx: 0,
                    tid: rand::random(),
                    req: Vec::with_capacity(256),
                    sent_ns: now,
                    tx_count: 0,
                    auth_retries: 0,
                };
                self.build(s, ops[0], &tx.tid, &mut tx.req);
                self.send(&mut tx, now);
                if o.fire_and_forget {
                    rep.ok += 1;
                    continue;
                }
                txs[s] = Some(tx);
                active += 1;
            }
            if active == 0 && next >= which.len() {
                break;
            }
            if now >= deadline {
                for t in txs.iter_mut().filter_map(Option::take) {
                    let op = ops[t.op_idx];
                    let id = self.sessions[t.session].id;
                    fail(
                        &mut rep,
                        format!(
                            "{}: no answer before the {:?} deadline",
                            op.name(),
                            o.deadline
                        ),
                        id,
                    );
                }
                let left = which.len() - next;
                if left > 0 {
                    fail(
                        &mut rep,
                        format!("not started before the {:?} deadline", o.deadline),
                        which[next] as u32,
                    );
                    rep.failed += left - 1;
                }
                break;
            }

            self.epoll.wait(5, &mut ready)?;
            for &tok in &ready {
                let s = tok as usize;
                if s >= txs.len() {
                    continue;
                }
                // Drain the socket; answers to sessions without a transaction are ignored.
                for _ in 0..16 {
                    let n = match self.sessions[s].sock.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            if let Some(t) = txs[s].take() {
                                active -= 1;
                                let id = self.sessions[s].id;
                                fail(
                                    &mut rep,
                                    format!(
                                        "{}: ICMP port unreachable from the server (not running?)",
                                        ops[t.op_idx].name()
                                    ),
                                    id,
                                );
                            }
                            break;
                        }
                        Err(_) => break,
                    };
                    let Some(mut t) = txs[s].take() else {
                        continue;
                    };
                    match self.on_response(&mut t, &buf[..n], ops) {
                        Step::Ignore => txs[s] = Some(t),
                        Step::Resend => {
                            t.tid = rand::random();
                            self.build(s, ops[t.op_idx], &t.tid, &mut t.req);
                            t.tx_count = 0;
                            self.send(&mut t, now_ns());
                            txs[s] = Some(t);
                        }
                        Step::Next => {
                            t.op_idx += 1;
                            if t.op_idx == ops.len() {
                                rep.ok += 1;
                                active -= 1;
                            } else {
                                t.tid = rand::random();
                                t.auth_retries = 0;
                                self.build(s, ops[t.op_idx], &t.tid, &mut t.req);
                                t.tx_count = 0;
                                self.send(&mut t, now_ns());
                                txs[s] = Some(t);
                            }
                        }
                        Step::Fail(msg) => {
                            active -= 1;
                            let id = self.sessions[s].id;
                            fail(&mut rep, format!("{}: {msg}", ops[t.op_idx].name()), id);
                        }
                    }
                }
            }

            // Retransmissions, at most every 20 ms.
            let now = now_ns();
            if now - last_scan > 20_000_000 {
                last_scan = now;
                for slot in txs.iter_mut() {
                    let Some(t) = slot else { continue };
                    let rto = (o.rto.as_nanos() as u64) << (t.tx_count.saturating_sub(1)).min(3);
                    let rto = rto.min(2_000_000_000);
                    if now - t.sent_ns < rto {
                        continue;
                    }
                    if t.tx_count >= o.max_tx {
                        let op = ops[t.op_idx];
                        let id = self.sessions[t.session].id;
                        *slot = None;
                        active -= 1;
                        fail(
                            &mut rep,
                            format!("{}: no answer after {} transmissions", op.name(), o.max_tx),
                            id,
                        );
                        continue;
                    }
                    rep.retransmissions += 1;
                    let fd = self.sessions[t.session].fd;
                    send_raw(fd, &t.req);
                    t.sent_ns = now;
                    t.tx_count += 1;
                }
            }
        }
        rep.elapsed = Duration::from_nanos(now_ns() - start);
        Ok(rep)
    }

    fn send(&self, t: &mut Tx, now: u64) {
        send_raw(self.sessions[t.session].fd, &t.req);
        t.sent_ns = now;
        t.tx_count += 1;
    }

    fn on_response(&mut self, t: &mut Tx, b: &[u8], ops: &[Op]) -> Step {
        if stun::is_channel_data(b) {
            return Step::Ignore;
        }
        let Ok(m) = Message::parse(b) else {
            return Step::Ignore;
        };
        if m.transaction_id() != t.tid {
            return Step::Ignore;
        }
        let op = ops[t.op_idx];
        if m.method() != op.method() {
            return Step::Fail(format!(
                "response has method {:#x}, expected {:#x}",
                m.method(),
                op.method()
            ));
        }
        let sess = &mut self.sessions[t.session];
        match m.class() {
            Class::Success => {
                if let Some(key) = sess.key {
                    if m.integrity().is_some() && !m.verify_integrity(&key) {
                        return Step::Fail("success response with a bad MESSAGE-INTEGRITY".into());
                    }
                }
                if let Op::Allocate { .. } = op {
                    match m.get_xor_addr(attr::XOR_RELAYED_ADDRESS) {
                        Some(a) => sess.relay = Some(a),
                        None => {
                            return Step::Fail("success without XOR-RELAYED-ADDRESS".into());
                        }
                    }
                }
                if let Op::Refresh { lifetime: 0 } = op {
                    sess.relay = None;
                }
                Step::Next
            }
            Class::Error => {
                let (code, reason) = match m.get(attr::ERROR_CODE) {
                    Some(v) if v.len() >= 4 => (
                        u16::from(v[2] & 7) * 100 + u16::from(v[3]),
                        String::from_utf8_lossy(&v[4..]).into_owned(),
                    ),
                    _ => (0, "error response without ERROR-CODE".into()),
                };
                let realm = m.get(attr::REALM);
                let nonce = m.get(attr::NONCE);
                match code {
                    401 if sess.key.is_none() => {
                        let (Some(realm), Some(nonce)) = (realm, nonce) else {
                            return Step::Fail("401 without REALM/NONCE".into());
                        };
                        sess.realm = realm.to_vec();
                        sess.nonce = nonce.to_vec();
                        let realm = String::from_utf8_lossy(realm);
                        sess.key = Some(long_term_key(
                            &self.creds.user,
                            &realm,
                            &self.creds.password,
                        ));
                        Step::Resend
                    }
                    438 if t.auth_retries < 3 => {
                        let Some(nonce) = nonce else {
                            return Step::Fail("438 without NONCE".into());
                        };
                        t.auth_retries += 1;
                        sess.nonce = nonce.to_vec();
                        if let Some(r) = realm {
                            sess.realm = r.to_vec();
                        }
                        Step::Resend
                    }
                    401 => Step::Fail(format!(
                        "401 {reason} with credentials (wrong user/password?)"
                    )),
                    _ => Step::Fail(format!("{code} {reason}")),
                }
            }
            Class::Request | Class::Indication => Step::Ignore,
        }
    }
}

enum Step {
    Ignore,
    Resend,
    Next,
    Fail(String),
}

fn send_raw(fd: RawFd, b: &[u8]) {
    // SAFETY: b is valid for its length; the socket is connected.
    let _ = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
}

/// Sends a STUN Binding request to `addr` and waits up to `wait` for a success answer.
pub fn binding_probe(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if s.connect(addr).is_err() || s.set_read_timeout(Some(wait)).is_err() {
        return false;
    }
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::BINDING, Class::Request, &tid).fingerprint();
    if s.send(&req).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let until = now_ns() + wait.as_nanos() as u64;
    while now_ns() < until {
        match s.recv(&mut buf) {
            Ok(n) => {
                if let Ok(m) = Message::parse(&buf[..n]) {
                    if m.transaction_id() == tid && m.class() == Class::Success {
                        return true;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    false
}
