//! The client connections, all driven by one thread: non-blocking TCP sockets with
//! `TCP_NODELAY`, each bound to a 127.0.0.x source address (port chosen at connect time, so
//! every source address has its own ephemeral range), registered in one `epoll` set.
//!
//! A connection goes CONNECT → CONNACK → SUBSCRIBE → SUBACK → ready. Opening runs in batches
//! (a bounded number of handshakes at a time, each with a deadline). Afterwards
//! [`Fleet::pump`] reads what the server sent and hands every PUBLISH and PUBACK to a
//! [`Handler`]; writes are queued per connection and flushed by [`Fleet::flush`] (with
//! `EPOLLOUT` only while a socket's send buffer is full).

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};

use super::mqtt::{self, Packet};
use crate::turn::sys::{now_ns, Epoll};

/// Token of the pacing timer in the epoll set (connections use their index).
pub const TIMER_TOKEN: u64 = u64::MAX;

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

/// What a client connects as and subscribes to.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    pub client_id: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub filter: String,
    pub sub_qos: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connecting,
    WaitConnack,
    WaitSuback,
    Ready,
    Dead,
}

pub struct Conn {
    sock: Option<Socket>,
    pub state: State,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    out_armed: bool,
    deadline: u64,
    next_pid: u16,
    /// Unacknowledged QoS 1 publishes: (packet id, caller's tag), oldest first.
    pub inflight: std::collections::VecDeque<(u16, u64)>,
}

/// Receives what the server sends to ready connections.
pub trait Handler {
    fn publish(&mut self, conn: usize, topic: &[u8], payload: &[u8], now: u64);
    /// A PUBACK for the publish tagged `tag` (see [`Fleet::publish`]).
    fn puback(&mut self, conn: usize, tag: u64, now: u64);
}

/// A handler that ignores everything (connection setup, idle phases).
pub struct Nop;

impl Handler for Nop {
    fn publish(&mut self, _: usize, _: &[u8], _: &[u8], _: u64) {}
    fn puback(&mut self, _: usize, _: u64, _: u64) {}
}

/// Outcome of [`Fleet::open`].
#[derive(Debug, Default, Clone)]
pub struct OpenStats {
    pub ready: usize,
    pub failed: usize,
    pub secs: f64,
    /// Failure reasons with counts.
    pub errors: BTreeMap<String, usize>,
}

impl OpenStats {
    pub fn error_summary(&self) -> String {
        self.errors
            .iter()
            .map(|(k, v)| format!("{v}x {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub struct Fleet {
    pub poll: Epoll,
    pub conns: Vec<Conn>,
    specs: Vec<ConnSpec>,
    server: SocketAddr,
    sources: Vec<Ipv4Addr>,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    events: Vec<(u64, u32)>,
    /// Ready connections lost afterwards, by reason.
    pub lost: BTreeMap<String, usize>,
    /// PUBLISH packets from the server to connections that were not ready yet, and packets
    /// the bench does not expect.
    pub unexpected: u64,
}

impl Fleet {
    /// A fleet of `specs.len()` clients for `server`, spread over `n_sources` source addresses
    /// 127.0.0.2, 127.0.0.3, ...
    pub fn new(server: SocketAddr, specs: Vec<ConnSpec>, n_sources: usize) -> Result<Self> {
        let sources = (0..n_sources.clamp(1, 250))
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        let conns = (0..specs.len())
            .map(|_| Conn {
                sock: None,
                state: State::Idle,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                out_armed: false,
                deadline: 0,
                next_pid: 1,
                inflight: Default::default(),
            })
            .collect();
        Ok(Fleet {
            poll: Epoll::new(1024)?,
            conns,
            specs,
            server,
            sources,
            scratch: vec![0; 256 * 1024],
            dirty: Vec::new(),
            events: Vec::with_capacity(1024),
            lost: BTreeMap::new(),
            unexpected: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_ready(&self, i: usize) -> bool {
        self.conns[i].state == State::Ready
    }

    pub fn ready_count(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state == State::Ready)
            .count()
    }

    fn start(&mut self, i: usize, timeout_ns: u64) -> Result<(), String> {
        let src = self.sources[i % self.sources.len()];
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("socket: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int that lives across the call. Failure is harmless
        // (the port is then chosen at bind time, from a smaller space).
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
            .map_err(|e| format!("bind {src}: {e}"))?;
        match s.connect(&self.server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(format!("connect: {e}")),
        }
        self.poll
            .ctl(libc::EPOLL_CTL_ADD, s.as_raw_fd(), i as u64, IN | OUT)
            .map_err(|e| format!("{e:#}"))?;
        let c = &mut self.conns[i];
        c.sock = Some(s);
        c.state = State::Connecting;
        c.out_armed = true;
        c.deadline = now_ns() + timeout_ns;
        Ok(())
    }

    fn kill(&mut self, i: usize, why: String) {
        let c = &mut self.conns[i];
        let was_ready = c.state == State::Ready;
        if let Some(s) = c.sock.take() {
            let _ = self.poll.ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), 0, 0);
        }
        c.state = State::Dead;
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
        c.inflight.clear();
        if was_ready {
            *self.lost.entry(why).or_insert(0) += 1;
        } else {
            // Recorded by open() through the dead state; keep the reason on the side.
            *self.lost.entry(format!("handshake: {why}")).or_insert(0) += 1;
        }
    }

    /// Connects and subscribes every client: at most `batch` handshakes at a time, each
    /// within `per_conn_s`, all within `total_s`. Clients not ready by then are dead.
    pub fn open(&mut self, batch: usize, per_conn_s: f64, total_s: f64) -> Result<OpenStats> {
        let t0 = now_ns();
        let until = t0 + (total_s * 1e9) as u64;
        let per_ns = (per_conn_s * 1e9) as u64;
        let mut next = 0;
        let mut pending = 0usize;
        let mut st = OpenStats::default();
        let mut last_print = t0;
        loop {
            while pending < batch && next < self.conns.len() {
                if let Err(e) = self.start(next, per_ns) {
                    self.kill(next, e);
                } else {
                    pending += 1;
                }
                next += 1;
            }
            self.pump(&mut Nop, 5)?;
            let now = now_ns();
            pending = 0;
            for i in 0..next {
                let c = &self.conns[i];
                if matches!(
                    c.state,
                    State::Connecting | State::WaitConnack | State::WaitSuback
                ) {
                    if now > c.deadline || now > until {
                        self.kill(i, "handshake timeout".into());
                    } else {
                        pending += 1;
                    }
                }
            }
            if now - last_print > 2_000_000_000 {
                last_print = now;
                eprintln!(
                    "  connecting: {} ready, {} in handshake, {} to go",
                    self.ready_count(),
                    pending,
                    self.conns.len() - next
                );
            }
            if (pending == 0 && next >= self.conns.len()) || now > until {
                break;
            }
        }
        for i in next..self.conns.len() {
            self.kill(i, "not started: open() time limit".into());
        }
        st.ready = self.ready_count();
        st.failed = self.conns.len() - st.ready;
        st.secs = (now_ns() - t0) as f64 / 1e9;
        st.errors = std::mem::take(&mut self.lost);
        Ok(st)
    }

    /// Queues a QoS 1 PUBLISH on connection `i` (tag comes back in [`Handler::puback`]).
    /// False when the connection is not ready.
    pub fn publish(&mut self, i: usize, topic: &[u8], payload: &[u8], tag: u64) -> bool {
        let c = &mut self.conns[i];
        if c.state != State::Ready {
            return false;
        }
        let pid = c.next_pid;
        c.next_pid = c.next_pid.checked_add(1).unwrap_or(1);
        if c.wbuf.is_empty() {
            self.dirty.push(i);
        }
        mqtt::publish(&mut c.wbuf, topic, 1, pid, payload);
        c.inflight.push_back((pid, tag));
        true
    }

    /// Queues a PINGREQ on every ready connection (keep-alive for long runs).
    pub fn ping_all(&mut self) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state == State::Ready {
                if c.wbuf.is_empty() {
                    self.dirty.push(i);
                }
                mqtt::pingreq(&mut c.wbuf);
            }
        }
    }

    /// Writes queued bytes; a full socket buffer arms `EPOLLOUT` for the rest.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.write_out(i);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn write_out(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.sock.as_ref() else { return };
        let fd = s.as_raw_fd();
        let mut off = 0;
        let mut err = None;
        while off < c.wbuf.len() {
            // SAFETY: the slice is valid for its length; MSG_NOSIGNAL: no SIGPIPE.
            let r = unsafe {
                libc::send(
                    fd,
                    c.wbuf[off..].as_ptr().cast(),
                    c.wbuf.len() - off,
                    libc::MSG_NOSIGNAL,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => {
                        err = Some(format!("write: {e}"));
                        break;
                    }
                }
            }
            off += r as usize;
        }
        if let Some(e) = err {
            self.kill(i, e);
            return;
        }
        c.wbuf.drain(..off);
        let want_out = !c.wbuf.is_empty();
        if want_out != c.out_armed && c.state != State::Connecting {
            let ev = if want_out { IN | OUT } else { IN };
            if self.poll.ctl(libc::EPOLL_CTL_MOD, fd, i as u64, ev).is_ok() {
                c.out_armed = want_out;
            }
        }
        if c.wbuf.capacity() > 64 * 1024 && c.wbuf.is_empty() {
            c.wbuf = Vec::new();
        }
    }

    /// Waits up to `timeout_ms` for socket events and handles them. Returns whether the
    /// pacing timer fired.
    pub fn pump(&mut self, h: &mut dyn Handler, timeout_ms: i32) -> Result<bool> {
        let mut events = std::mem::take(&mut self.events);
        self.poll.wait_flags(timeout_ms, &mut events)?;
        let now = now_ns();
        let mut timer = false;
        for &(tok, ev) in &events {
            if tok == TIMER_TOKEN {
                timer = true;
                continue;
            }
            let i = tok as usize;
            if i >= self.conns.len() || self.conns[i].sock.is_none() {
                continue;
            }
            if self.conns[i].state == State::Connecting {
                if ev & (OUT | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
                    self.connected(i);
                }
                continue;
            }
            if ev & (IN | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
                self.read_in(i, h, now);
            }
            if ev & OUT != 0 && self.conns[i].sock.is_some() {
                self.write_out(i);
            }
        }
        self.events = events;
        self.flush();
        Ok(timer)
    }

    fn connected(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.sock.as_ref() else { return };
        match s.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                self.kill(i, format!("connect: {e}"));
                return;
            }
        }
        let sp = &self.specs[i];
        mqtt::connect(
            &mut c.wbuf,
            &sp.client_id,
            sp.user.as_deref(),
            sp.password.as_deref(),
            300,
        );
        c.state = State::WaitConnack;
        self.write_out(i);
    }

    fn read_in(&mut self, i: usize, h: &mut dyn Handler, now: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..4 {
            let Some(s) = self.conns[i].sock.as_ref() else {
                break;
            };
            // SAFETY: scratch is valid for its length.
            let r =
                unsafe { libc::recv(s.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len(), 0) };
            if r == 0 {
                self.kill(i, "closed by the server".into());
                break;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => {
                        self.kill(i, format!("read: {e}"));
                        break;
                    }
                }
            }
            let n = r as usize;
            let full = n == scratch.len();
            if self.conns[i].rbuf.is_empty() {
                let used = self.handle_bytes(i, &scratch[..n], h, now);
                if let Some(used) = used {
                    self.conns[i].rbuf.extend_from_slice(&scratch[used..n]);
                }
            } else {
                let mut rb = std::mem::take(&mut self.conns[i].rbuf);
                rb.extend_from_slice(&scratch[..n]);
                if let Some(used) = self.handle_bytes(i, &rb, h, now) {
                    rb.drain(..used);
                    if self.conns[i].state != State::Dead {
                        self.conns[i].rbuf = rb;
                    }
                }
            }
            if !full {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Handles whole packets in `buf`; returns the bytes consumed, `None` if the connection
    /// died.
    fn handle_bytes(
        &mut self,
        i: usize,
        buf: &[u8],
        h: &mut dyn Handler,
        now: u64,
    ) -> Option<usize> {
        let mut at = 0;
        loop {
            let (p, n) = match mqtt::parse(&buf[at..]) {
                Ok(Some(x)) => x,
                Ok(None) => return Some(at),
                Err(e) => {
                    self.kill(i, format!("malformed packet from the server: {e}"));
                    return None;
                }
            };
            at += n;
            let state = self.conns[i].state;
            match (state, p) {
                (State::WaitConnack, Packet::ConnAck { code }) => {
                    if code != 0 {
                        self.kill(i, format!("CONNACK refused, code {code}"));
                        return None;
                    }
                    let c = &mut self.conns[i];
                    let sp = &self.specs[i];
                    mqtt::subscribe(&mut c.wbuf, 1, &sp.filter, sp.sub_qos);
                    c.state = State::WaitSuback;
                    self.dirty.push(i);
                }
                (State::WaitSuback, Packet::SubAck { codes, .. }) => {
                    if codes.iter().any(|&c| c >= 0x80) || codes.is_empty() {
                        self.kill(i, format!("SUBSCRIBE refused: {codes:02x?}"));
                        return None;
                    }
                    self.conns[i].state = State::Ready;
                }
                (
                    _,
                    Packet::Publish {
                        qos,
                        pid,
                        topic,
                        payload,
                    },
                ) => {
                    if qos > 0 {
                        let c = &mut self.conns[i];
                        if c.wbuf.is_empty() {
                            self.dirty.push(i);
                        }
                        mqtt::puback(&mut c.wbuf, pid);
                    }
                    if state == State::Ready {
                        h.publish(i, topic, payload, now);
                    } else {
                        self.unexpected += 1;
                    }
                }
                (State::Ready, Packet::PubAck { pid }) => {
                    let c = &mut self.conns[i];
                    // Acks come in order; tolerate a server that skips some.
                    while let Some((p, tag)) = c.inflight.pop_front() {
                        if p == pid {
                            h.puback(i, tag, now);
                            break;
                        }
                    }
                }
                (_, Packet::PingResp) => {}
                _ => self.unexpected += 1,
            }
        }
    }
}
