//! Relay sockets: the shared port pool (with EVEN-PORT reservations) and each worker's table
//! of open relay sockets, indexed by allocation slot so a relayed packet costs no map lookup.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::udp::{self, RecvBatch, BATCH};
use super::Worker;
use crate::core::{AllocId, BindError, Family, RelayIo, RelayRequest};
use crate::stun::DATA_INDICATION_HEADROOM;

/// How long a port reserved by EVEN-PORT R stays held for its RESERVATION-TOKEN (RFC 8656 §7.2).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Relay addresses and ports, shared by all workers.
pub struct PortPool {
    ips: [Option<IpAddr>; 2],
    min: u16,
    max: u16,
    reservations: Mutex<HashMap<u64, (std::net::UdpSocket, Instant)>>,
}

impl PortPool {
    pub fn new(ips: &[IpAddr], min: u16, max: u16) -> Self {
        PortPool {
            ips: [
                ips.iter().copied().find(IpAddr::is_ipv4),
                ips.iter().copied().find(IpAddr::is_ipv6),
            ],
            min,
            max,
            reservations: Mutex::new(HashMap::new()),
        }
    }

    pub fn expire_reservations(&self, now: Instant) {
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, (_, exp)| *exp > now);
    }

    /// Binds a relay socket on `ip` with a port from the range: random probes first, then a
    /// scan from a random start, so a nearly full range still finds its last free ports.
    fn bind_port(
        &self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> Result<(std::net::UdpSocket, Option<std::net::UdpSocket>), BindError> {
        let span = u32::from(self.max) - u32::from(self.min) + 1;
        let start: u32 = rand::random::<u32>() % span;
        let random_tries = span.min(32);
        let try_port = |p: u16| -> Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
            if even && !p.is_multiple_of(2) {
                return None;
            }
            let s = bind_relay(SocketAddr::new(ip, p)).ok()?;
            if reserve_next {
                if p == self.max {
                    return None;
                }
                let next = bind_relay(SocketAddr::new(ip, p + 1)).ok()?;
                return Some((s, Some(next)));
            }
            Some((s, None))
        };
        for _ in 0..random_tries {
            let p = self.min + (rand::random::<u32>() % span) as u16;
            if let Some(r) = try_port(p) {
                return Ok(r);
            }
        }
        for k in 0..span {
            let p = self.min + ((start + k) % span) as u16;
            if let Some(r) = try_port(p) {
                return Ok(r);
            }
        }
        Err(BindError::Exhausted)
    }
}

fn bind_relay(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = super::new_socket(addr, true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_dont_fragment(s: &std::net::UdpSocket, v6: bool) -> io::Result<()> {
    let (level, name, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt with a c_int option value on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct RelaySock {
    id: AllocId,
    fd: Rc<AsyncFd<std::net::UdpSocket>>,
    task: JoinHandle<()>,
}

impl Drop for RelaySock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One worker's open relay sockets.
pub struct RelayTable {
    pool: std::sync::Arc<PortPool>,
    slots: Vec<[Option<RelaySock>; 2]>,
    worker: Weak<RefCell<Worker>>,
    /// Receive buffers shared by all relay tasks of the worker (borrowed only between awaits),
    /// so an idle allocation costs a socket and a small task, not 130 KB of buffers.
    batch: Rc<RefCell<RecvBatch>>,
}

impl RelayTable {
    pub fn new(pool: std::sync::Arc<PortPool>) -> Self {
        RelayTable {
            pool,
            slots: Vec::new(),
            worker: Weak::new(),
            batch: Rc::new(RefCell::new(RecvBatch::new(DATA_INDICATION_HEADROOM))),
        }
    }

    pub fn set_worker(&mut self, w: Weak<RefCell<Worker>>) {
        self.worker = w;
    }

    /// Sends a client's payload from the allocation's relay socket to `peer`.
    pub fn send(&self, id: AllocId, family: Family, peer: SocketAddr, bytes: &[u8]) {
        if let Some(Some(s)) = self
            .slots
            .get(id.index as usize)
            .map(|s| &s[family.index()])
        {
            if s.id == id {
                // Errors (a full socket buffer, ICMP-refused peers) drop the datagram, as UDP would.
                let _ = udp::send_to(s.fd.as_raw_fd(), peer, bytes);
            }
        }
    }

    pub fn release_all(&mut self) {
        self.slots.clear();
    }
}

impl RelayIo for RelayTable {
    fn bind(
        &mut self,
        id: AllocId,
        req: &RelayRequest,
    ) -> Result<(SocketAddr, Option<u64>), BindError> {
        let (sock, token) = match req.token {
            Some(t) => {
                let mut r = self
                    .pool
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match r.remove(&t) {
                    Some((s, _)) => (s, None),
                    None => return Err(BindError::BadToken),
                }
            }
            None => {
                let ip = self.pool.ips[req.family.index()].ok_or(BindError::Family)?;
                let (s, next) = self.pool.bind_port(ip, req.even_port, req.reserve_next)?;
                let token = next.map(|n| {
                    let t: u64 = rand::random();
                    let mut r = self
                        .pool
                        .reservations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    r.insert(t, (n, Instant::now() + RESERVATION_LIFETIME));
                    t
                });
                (s, token)
            }
        };
        let local = sock.local_addr().map_err(|_| BindError::Exhausted)?;
        if req.dont_fragment {
            let _ = set_dont_fragment(&sock, local.is_ipv6());
        }
        let fd = Rc::new(udp::register(sock).map_err(|_| BindError::Exhausted)?);
        let family = Family::of(local.ip());
        let task = tokio::task::spawn_local(relay_task(
            self.worker.clone(),
            Rc::clone(&fd),
            Rc::clone(&self.batch),
            id,
        ));
        let i = id.index as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || [None, None]);
        }
        self.slots[i][family.index()] = Some(RelaySock { id, fd, task });
        Ok((local, token))
    }

    fn release(&mut self, id: AllocId) {
        if let Some(s) = self.slots.get_mut(id.index as usize) {
            for f in s.iter_mut() {
                if f.as_ref().is_some_and(|r| r.id == id) {
                    *f = None;
                }
            }
        }
    }
}

/// Reads peer datagrams from one relay socket and hands them to the core, which frames them
/// in place for the client.
async fn relay_task(
    worker: Weak<RefCell<Worker>>,
    fd: Rc<AsyncFd<std::net::UdpSocket>>,
    batch: Rc<RefCell<RecvBatch>>,
    id: AllocId,
) {
    let raw = fd.as_raw_fd();
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(_) => return,
        };
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let mut b = batch.borrow_mut();
        let n = match b.recv(raw, BATCH) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                continue;
            }
            Err(_) => continue,
        };
        if n < BATCH {
            guard.clear_ready();
        }
        let now = Instant::now();
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        for i in 0..n {
            let Some((peer, slot, at, len)) = b.get(i) else {
                continue;
            };
            if let Some((tuple, range)) = w.core.handle_peer(now, id, peer, slot, at, len) {
                w.send_to_client(&tuple, &slot[range]);
            }
        }
    }
}
