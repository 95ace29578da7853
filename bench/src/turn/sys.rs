//! Thin wrappers over the Linux calls the load generator needs and std does not offer:
//! `epoll`, `timerfd`, `recvmmsg`/`sendmmsg` batches, `RLIMIT_NOFILE`, and the `/proc`
//! readers for a server's CPU time, memory and the kernel's per-socket UDP drop counters.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Monotonic nanoseconds since the first call (the bench's own epoch).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    // SAFETY: rlimit is plain old data.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(rl.rlim_cur as u64)
}

/// A non-blocking UDP socket on 127.0.0.1 with an ephemeral port, optionally connected.
pub fn udp_socket(
    bind: SocketAddr,
    connect: Option<SocketAddr>,
    rcvbuf: usize,
    sndbuf: usize,
) -> Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .context("socket(UDP)")?;
    s.set_nonblocking(true)?;
    if rcvbuf > 0 {
        set_buf_force(&s, libc::SO_RCVBUFFORCE, rcvbuf)
            .or_else(|_| s.set_recv_buffer_size(rcvbuf))?;
    }
    if sndbuf > 0 {
        set_buf_force(&s, libc::SO_SNDBUFFORCE, sndbuf)
            .or_else(|_| s.set_send_buffer_size(sndbuf))?;
    }
    s.bind(&bind.into())
        .with_context(|| format!("bind UDP {bind}"))?;
    if let Some(c) = connect {
        s.connect(&c.into())
            .with_context(|| format!("connect UDP to {c}"))?;
    }
    Ok(s.into())
}

/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (root only): buffers above `rmem_max`/`wmem_max`.
fn set_buf_force(s: &Socket, opt: libc::c_int, size: usize) -> io::Result<()> {
    let v = size as libc::c_int;
    // SAFETY: the option value is a c_int that lives across the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `port` on 127.0.0.1 is free for both UDP and TCP right now (a plain bind without
/// `SO_REUSEPORT` fails if any socket holds it, including a coturn or Ember listener).
pub fn port_is_free(ip: std::net::IpAddr, port: u16) -> bool {
    let a = SocketAddr::new(ip, port);
    std::net::UdpSocket::bind(a).is_ok() && std::net::TcpListener::bind(a).is_ok()
}

/// A port that is free for UDP and TCP on `ip` and outside `avoid` (the relay range).
pub fn pick_free_port(ip: std::net::IpAddr, avoid: (u16, u16)) -> Result<u16> {
    for _ in 0..200 {
        let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = s.local_addr()?.port();
        drop(s);
        if (avoid.0..=avoid.1).contains(&port) {
            continue;
        }
        // The neighbouring port must be free too: coturn's RFC 5780 alternate port is +1.
        if port < u16::MAX && port_is_free(ip, port) && port_is_free(ip, port + 1) {
            return Ok(port);
        }
    }
    bail!("no free UDP+TCP port found on {ip}")
}

/// An epoll instance (level-triggered), `u64` tokens.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        Ok(Epoll {
            // SAFETY: fd is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev lives across the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error()).context("epoll_ctl(ADD)");
        }
        Ok(())
    }

    pub fn del(&self, fd: RawFd) -> Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: ev lives across the call (ignored by DEL on modern kernels).
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error()).context("epoll_ctl(DEL)");
        }
        Ok(())
    }

    /// `epoll_ctl` with explicit event flags (`EPOLL_CTL_ADD`/`MOD`/`DEL`).
    pub fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev lives across the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error()).context("epoll_ctl");
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever); the ready events, empty when interrupted.
    fn ready(&mut self, timeout_ms: i32) -> Result<&[libc::epoll_event]> {
        // SAFETY: the events buffer has `len` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(&[]);
            }
            return Err(e).context("epoll_wait");
        }
        Ok(&self.events[..n as usize])
    }

    /// Waits up to `timeout_ms` (-1: forever); returns the ready tokens via `out`.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> Result<()> {
        out.clear();
        out.extend(self.ready(timeout_ms)?.iter().map(|e| e.u64));
        Ok(())
    }

    /// Like [`Epoll::wait`], with each token's event flags.
    pub fn wait_flags(&mut self, timeout_ms: i32, out: &mut Vec<(u64, u32)>) -> Result<()> {
        out.clear();
        out.extend(self.ready(timeout_ms)?.iter().map(|e| (e.u64, e.events)));
        Ok(())
    }
}

/// A periodic `timerfd` (monotonic clock), for pacing sends at sub-millisecond ticks.
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    pub fn new(period: Duration) -> Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: spec lives across the call; old value not requested.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error()).context("timerfd_settime");
        }
        Ok(TimerFd { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Clears the expiration count so the fd stops being readable.
    pub fn drain(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into v.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// Datagram slot size in batches (the bench never sends more than this).
pub const SLOT: usize = 2048;

/// `SOL_UDP` / `UDP_SEGMENT` (UDP GSO, Linux 4.18+; not exported by libc for glibc).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments per GSO write (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGS: usize = 64;
/// Most bytes per GSO write (one IP datagram before segmentation).
const GSO_MAX_BYTES: usize = 60_000;

/// Control buffer holding one `UDP_SEGMENT` cmsg (8-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct GsoCmsg([u8; 32]);

impl GsoCmsg {
    /// Fills the buffer with a `UDP_SEGMENT = seg` cmsg; returns the control length.
    fn set(&mut self, seg: u16) -> usize {
        // SAFETY: CMSG_* are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(2) as usize, libc::CMSG_LEN(2) as usize) };
        debug_assert!(space <= self.0.len());
        self.0 = [0; 32];
        // SAFETY: the buffer is 8-byte aligned and large enough for a cmsghdr plus 2 bytes.
        unsafe {
            let h = self.0.as_mut_ptr().cast::<libc::cmsghdr>();
            (*h).cmsg_len = len as _;
            (*h).cmsg_level = SOL_UDP;
            (*h).cmsg_type = UDP_SEGMENT;
            let d = libc::CMSG_DATA(h);
            std::ptr::copy_nonoverlapping(seg.to_ne_bytes().as_ptr(), d, 2);
        }
        space
    }
}

/// Whether an error from a GSO write means "this kernel/device cannot do UDP GSO".
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
    )
}

/// Buffers for one `recvmmsg` call of up to `cap` datagrams, with source addresses.
pub struct RecvBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
    /// Echo side: one header (and GSO cmsg) per run of same-source datagrams.
    out: Vec<libc::mmsghdr>,
    cmsgs: Vec<GsoCmsg>,
    /// Datagrams in each echo message.
    runs: Vec<usize>,
    /// UDP GSO for echoes (cleared when the kernel refuses it).
    pub gso: bool,
}

// The raw pointers inside only ever point into the batch's own vectors.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(cap: usize) -> Self {
        RecvBatch {
            data: vec![0u8; cap * SLOT],
            lens: vec![0; cap],
            // SAFETY: sockaddr_in is plain old data.
            addrs: vec![unsafe { zeroed() }; cap],
            // SAFETY: iovec is plain old data.
            iov: vec![unsafe { zeroed() }; cap],
            // SAFETY: mmsghdr is plain old data.
            hdrs: vec![unsafe { zeroed() }; cap],
            n: 0,
            // SAFETY: mmsghdr is plain old data.
            out: vec![unsafe { zeroed() }; cap],
            cmsgs: vec![GsoCmsg([0; 32]); cap],
            runs: vec![0; cap],
            gso: true,
        }
    }

    /// Receives up to the capacity. `flags`: `MSG_DONTWAIT` or `MSG_WAITFORONE` (blocking
    /// for the first datagram, subject to the socket's `SO_RCVTIMEO`). Returns the count;
    /// `Ok(0)` when nothing was there.
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let cap = self.lens.len();
        let base = self.data.as_mut_ptr();
        for i in 0..cap {
            self.iov[i] = libc::iovec {
                // SAFETY: slot i lies within `data`.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: every pointer in hdrs points into our own buffers, valid for the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.n = 0;
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        self.n = r as usize;
        for i in 0..self.n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(self.n)
    }

    /// Datagram `i` of the last receive (truncated datagrams come back cut to the slot).
    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT..i * SLOT + self.lens[i].min(SLOT)]
    }

    /// Sends every received datagram back to where it came from (the echo peer) with
    /// `sendmmsg`. With [`RecvBatch::gso`], a run of consecutive equal-sized datagrams from
    /// one source leaves as one UDP GSO write (the receiver still gets separate datagrams).
    /// Returns the number of datagrams sent.
    pub fn echo(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.n {
            self.iov[i].iov_len = self.lens[i].min(SLOT);
        }
        let same = |a: &libc::sockaddr_in, b: &libc::sockaddr_in| {
            a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port
        };
        // Group into messages.
        let mut m = 0;
        let mut i = 0;
        while i < self.n {
            let mut j = i + 1;
            if self.gso {
                while j < self.n
                    && j - i < GSO_MAX_SEGS
                    && same(&self.addrs[i], &self.addrs[j])
                    && self.lens[j] == self.lens[i]
                    && (j - i + 1) * self.lens[i] <= GSO_MAX_BYTES
                {
                    j += 1;
                }
            }
            let h = &mut self.out[m].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = j - i;
            if j - i > 1 {
                let len = self.cmsgs[m].set(self.lens[i] as u16);
                h.msg_control = self.cmsgs[m].0.as_mut_ptr().cast();
                h.msg_controllen = len;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
            self.runs[m] = j - i;
            m += 1;
            i = j;
        }
        let mut done_msgs = 0;
        let mut sent = 0;
        let mut attempts = 0;
        while done_msgs < m && attempts < 64 {
            attempts += 1;
            // SAFETY: headers point into our own buffers, valid for the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.out[done_msgs..].as_mut_ptr(),
                    (m - done_msgs) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    _ if self.gso && gso_unsupported(&e) => {
                        // No UDP GSO here: this message is lost, later batches go without.
                        self.gso = false;
                        done_msgs += 1;
                    }
                    // ECONNREFUSED etc. for one destination: skip that message.
                    _ => done_msgs += 1,
                }
                continue;
            }
            sent += self.runs[done_msgs..done_msgs + r as usize]
                .iter()
                .sum::<usize>();
            done_msgs += r as usize;
        }
        Ok(sent)
    }
}

/// Batched `sendmmsg` on a connected socket: datagrams are appended into a flat buffer.
pub struct SendBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

// The raw pointers inside only ever point into the batch's own vectors.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(cap: usize) -> Self {
        SendBatch {
            data: vec![0u8; cap * SLOT],
            lens: vec![0; cap],
            // SAFETY: iovec is plain old data.
            iov: vec![unsafe { zeroed() }; cap],
            // SAFETY: mmsghdr is plain old data.
            hdrs: vec![unsafe { zeroed() }; cap],
            n: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }

    /// Room for the next datagram (`SLOT` bytes); commit it with [`SendBatch::push`].
    pub fn next_slot(&mut self) -> &mut [u8] {
        let i = self.n;
        &mut self.data[i * SLOT..(i + 1) * SLOT]
    }

    pub fn push(&mut self, len: usize) {
        self.lens[self.n] = len.min(SLOT);
        self.n += 1;
    }

    /// Sends the queued datagrams (all the same length) on the connected socket `fd` as UDP
    /// GSO writes of up to 64 segments: one trip through the stack for the whole burst, the
    /// receiver still gets separate datagrams. Falls back to [`SendBatch::flush`] (and clears
    /// `*gso`) when the kernel refuses GSO. Returns how many datagrams left.
    pub fn flush_gso(&mut self, fd: RawFd, gso: &mut bool) -> io::Result<usize> {
        let n = self.n;
        if !*gso || n < 2 || self.lens[..n].iter().any(|&l| l != self.lens[0]) {
            return self.flush(fd);
        }
        let seg = self.lens[0];
        let per = GSO_MAX_SEGS.min(GSO_MAX_BYTES / seg.max(1)).max(1);
        let base = self.data.as_mut_ptr();
        for i in 0..n {
            self.iov[i] = libc::iovec {
                // SAFETY: slot i lies within `data`.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: seg,
            };
        }
        let mut cm = GsoCmsg([0; 32]);
        let clen = cm.set(seg as u16);
        let mut done = 0;
        while done < n {
            let k = per.min(n - done);
            // SAFETY: msghdr is plain old data.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_iov = self.iov[done..].as_mut_ptr();
            h.msg_iovlen = k;
            if k > 1 {
                h.msg_control = cm.0.as_mut_ptr().cast();
                h.msg_controllen = clen;
            }
            // SAFETY: h points into our own buffers, valid for the call.
            let r = unsafe { libc::sendmsg(fd, &h, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if gso_unsupported(&e) {
                    *gso = false;
                    // Move the unsent datagrams to the front and send them one by one.
                    let left = n - done;
                    if done > 0 {
                        self.data.copy_within(done * SLOT..n * SLOT, 0);
                        self.lens.copy_within(done..n, 0);
                    }
                    self.n = left;
                    return Ok(done + self.flush(fd)?);
                }
                // Buffer full or ICMP error: the rest of the burst is lost.
                break;
            }
            done += k;
        }
        self.n = 0;
        Ok(done)
    }

    /// Sends the queued datagrams on the connected socket `fd`. Returns how many left; the
    /// rest (socket buffer full, `ECONNREFUSED` from an ICMP error) are dropped and counted
    /// by the caller as not sent.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.data.as_mut_ptr();
        for i in 0..self.n {
            self.iov[i] = libc::iovec {
                // SAFETY: slot i lies within `data`.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: self.lens[i],
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
        }
        let mut done = 0;
        let mut attempts = 0;
        while done < self.n && attempts < 4 {
            attempts += 1;
            // SAFETY: headers point into our own buffers, valid for the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (self.n - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::ConnectionRefused => continue,
                    _ => {
                        self.n = 0;
                        return Err(e);
                    }
                }
            }
            done += r as usize;
        }
        self.n = 0;
        Ok(done)
    }
}

/// CPU time and memory of a process, from `/proc/PID/stat` and `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of all threads, seconds.
    pub cpu_s: f64,
    /// Current resident set, bytes.
    pub rss: u64,
    /// Peak resident set (VmHWM), bytes.
    pub hwm: u64,
    pub threads: u64,
}

/// CPU seconds per thread (tid -> (name, utime+stime)), from `/proc/PID/task/*/stat`.
pub fn thread_cpu(pid: u32) -> HashMap<u32, (String, f64)> {
    let mut m = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    let tick = clock_ticks();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        m.insert(tid, (name, (u + s) / tick));
    }
    m
}

pub fn proc_sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the server exit?)"))?;
    // Fields after the parenthesised command name; utime is field 14, stime 15 (1-based).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_ticks();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let mut s = ProcSample {
        cpu_s: (utime + stime) / tick,
        ..Default::default()
    };
    for line in status.lines() {
        let kb = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            s.rss = kb(line) * 1024;
        } else if line.starts_with("VmHWM:") {
            s.hwm = kb(line) * 1024;
        } else if line.starts_with("Threads:") {
            s.threads = kb(line);
        }
    }
    Ok(s)
}

fn clock_ticks() -> f64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn self_cpu_s() -> f64 {
    // SAFETY: rusage is plain old data; valid pointer.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
pub fn host_cpu() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Kernel drop counters of every IPv4 UDP socket on 127.0.0.1, by local port
/// (`/proc/net/udp`, last column): a datagram dropped because a socket's receive buffer was
/// full shows up here, on the socket that dropped it.
pub fn udp_drops_by_port() -> HashMap<u16, u64> {
    let mut m = HashMap::new();
    let Ok(s) = std::fs::read_to_string("/proc/net/udp") else {
        return m;
    };
    for line in s.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 {
            continue;
        }
        let Some((ip, port)) = f[1].split_once(':') else {
            continue;
        };
        if ip != "0100007F" {
            continue;
        }
        let (Ok(port), Ok(drops)) = (u16::from_str_radix(port, 16), f[12].parse::<u64>()) else {
            continue;
        };
        *m.entry(port).or_insert(0) += drops;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_all(s: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < want {
            match s.recv(&mut buf) {
                Ok(n) => out.push(buf[..n].to_vec()),
                Err(_) => break,
            }
        }
        out
    }

    /// A GSO burst arrives as separate datagrams, and the echo batch sends a same-source run
    /// back as separate datagrams too (with or without GSO).
    #[test]
    fn gso_burst_and_echo_keep_datagram_boundaries() {
        for gso in [true, false] {
            let peer = udp_socket("127.0.0.1:0".parse().unwrap(), None, 0, 0).unwrap();
            let pa = peer.local_addr().unwrap();
            let client = udp_socket("127.0.0.1:0".parse().unwrap(), Some(pa), 0, 0).unwrap();
            let mut tx = SendBatch::new(8);
            for i in 0..5u8 {
                let slot = tx.next_slot();
                slot[..100].fill(i);
                tx.push(100);
            }
            let mut g = gso;
            assert_eq!(tx.flush_gso(client.as_raw_fd(), &mut g).unwrap(), 5);
            assert_eq!(g, gso, "the kernel refused UDP GSO");

            let mut rb = RecvBatch::new(16);
            rb.gso = gso;
            let until = Instant::now() + Duration::from_secs(2);
            let mut got = 0;
            while got < 5 && Instant::now() < until {
                let n = rb.recv(peer.as_raw_fd(), libc::MSG_DONTWAIT).unwrap();
                for k in 0..n {
                    assert_eq!(rb.get(k).len(), 100);
                }
                if n > 0 {
                    assert_eq!(rb.echo(peer.as_raw_fd()).unwrap(), n);
                }
                got += n;
            }
            assert_eq!(got, 5, "gso={gso}");
            assert_eq!(rb.gso, gso, "the kernel refused UDP GSO for echoes");
            let back = recv_all(&client, 5);
            assert_eq!(back.len(), 5, "gso={gso}");
            for (i, d) in back.iter().enumerate() {
                assert_eq!(d.len(), 100);
                assert!(d.iter().all(|&b| b == i as u8));
            }
        }
    }

    #[test]
    fn proc_sample_of_self() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.rss > 0 && s.hwm >= s.rss && s.threads >= 1);
        assert!(proc_sample(u32::MAX).is_err());
    }

    #[test]
    fn free_port_is_free() {
        let ip = "127.0.0.1".parse().unwrap();
        let p = pick_free_port(ip, (10000, 29999)).unwrap();
        assert!(!(10000..=29999).contains(&p));
        assert!(port_is_free(ip, p));
    }
}
