//! The tokio I/O shell around [`crate::core::Core`].
//!
//! One worker thread per core, each a current-thread runtime with its own `SO_REUSEPORT`
//! UDP and TCP sockets on every listen address: the kernel hashes a client's 5-tuple to one
//! worker, which owns that client's allocations, so the data path shares no lock. Client
//! datagrams arrive in `recvmmsg` batches; datagrams to clients are queued and leave in
//! `sendmmsg` batches once the worker has handled everything that was ready. Each
//! allocation's relay socket is driven by a small task that reads into the worker's shared
//! batch buffer with headroom, so ChannelData and Data indications are framed in place.

pub mod metrics;
mod relay;
mod stream;
pub mod udp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_common::config::TurnConfig;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{self, Credentials, FailureLimiter, Nonces};
use crate::core::{ClientAction, Core, FiveTuple, Gauges, Quotas, Shared, Transport};
use crate::policy::PeerPolicy;
use metrics::TurnMetrics;
use relay::{PortPool, RelayTable};
use stream::ConnWriter;
use udp::{RecvBatch, SendBatch, BATCH};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("turn config: {0}")]
    Config(String),
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
}

/// A running relay.
pub struct TurnServer {
    addrs: Vec<(&'static str, SocketAddr)>,
    relay_ips: Vec<IpAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Sockets one worker owns.
struct WorkerSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
}

impl TurnServer {
    /// Binds every listener (UDP and TCP on each `listen`, TLS on each `tls_listen` when `tls`
    /// is given) and starts the worker threads. Port 0 picks one free port per address.
    pub fn start(
        cfg: &TurnConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<TurnServer, StartError> {
        if cfg.listen.is_empty() {
            return Err(StartError::Config("turn.listen is empty".into()));
        }
        let workers = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let relay_ips = choose_relay_ips(cfg);
        let families = [
            relay_ips.iter().any(IpAddr::is_ipv4),
            relay_ips.iter().any(IpAddr::is_ipv6),
        ];
        if !families[0] && !families[1] {
            return Err(StartError::Config(
                "no relay address (set turn.relay_ip)".into(),
            ));
        }

        let mut sockets: Vec<WorkerSockets> = (0..workers)
            .map(|_| WorkerSockets {
                udp: Vec::new(),
                tcp: Vec::new(),
                tls: Vec::new(),
            })
            .collect();
        let mut addrs = Vec::new();
        for &want in &cfg.listen {
            let addr = concrete(want)?;
            for w in sockets.iter_mut() {
                w.udp.push(bind_udp(addr)?);
                w.tcp.push(bind_tcp(addr, "tcp")?);
            }
            addrs.push(("udp", addr));
            addrs.push(("tcp", addr));
        }
        if tls.is_some() {
            for &want in &cfg.tls_listen {
                let addr = concrete(want)?;
                for w in sockets.iter_mut() {
                    w.tls.push(bind_tcp(addr, "tls")?);
                }
                addrs.push(("tls", addr));
            }
        }

        let own: Vec<SocketAddr> = addrs.iter().map(|(_, a)| *a).collect();
        if !cfg.allowed_peers.is_empty() {
            warn!(
                allowed = ?cfg.allowed_peers.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "turn.allowed_peers opens peer ranges the default policy denies (internal networks reachable through the relay)"
            );
        }
        let shared = Arc::new(Shared {
            credentials: Credentials::new(&cfg.realm, &cfg.users, &cfg.auth_secrets),
            nonces: Nonces::new(u64::from(cfg.nonce_lifetime)),
            limiter: FailureLimiter::new(cfg.auth_failures_per_minute),
            policy: PeerPolicy::new(cfg.allowed_peers.clone(), cfg.denied_peers.clone(), own),
            quotas: Quotas::new(cfg.user_quota, cfg.total_quota),
            software: format!("Ember {}", env!("CARGO_PKG_VERSION")),
            max_lifetime: cfg.max_lifetime,
            bandwidth_limit: cfg.bandwidth_limit,
            families,
            external: cfg
                .external_ip
                .iter()
                .map(|e| (e.relay, e.public))
                .collect(),
        });
        let metrics = TurnMetrics::new(registry)?;
        let pool = Arc::new(PortPool::new(
            &relay_ips,
            cfg.relay_ports.min,
            cfg.relay_ports.max,
        ));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);

        let mut threads = Vec::new();
        for (i, socks) in sockets.into_iter().enumerate() {
            let ctx = WorkerCtx {
                shared: Arc::clone(&shared),
                pool: Arc::clone(&pool),
                metrics: metrics.clone(),
                acceptor: acceptor.clone(),
                shutdown: shutdown.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("turn-worker-{i}"))
                .spawn(move || run_worker(ctx, socks))
                .map_err(StartError::Thread)?;
            threads.push(t);
        }
        info!(
            workers,
            relay_ips = ?relay_ips,
            relay_ports = %cfg.relay_ports,
            "TURN relay started"
        );
        Ok(TurnServer {
            addrs,
            relay_ips,
            threads,
        })
    }

    /// Bound addresses: ("udp" | "tcp" | "tls", address).
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.addrs.clone()
    }

    /// Addresses relay sockets bind to.
    pub fn relay_ips(&self) -> &[IpAddr] {
        &self.relay_ips
    }

    /// Resolves when every worker has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Relay addresses: configured, else the concrete listen addresses, else the first
/// non-loopback interface address (loopback as a last resort, with a warning).
fn choose_relay_ips(cfg: &TurnConfig) -> Vec<IpAddr> {
    if !cfg.relay_ip.is_empty() {
        return cfg.relay_ip.clone();
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in &cfg.listen {
        if !a.ip().is_unspecified() && !ips.iter().any(|i| i.is_ipv4() == a.ip().is_ipv4()) {
            ips.push(a.ip());
        }
    }
    if ips.is_empty() {
        match interface_ipv4() {
            Some(ip) => ips.push(ip),
            None => {
                warn!("no non-loopback interface address found: relaying on 127.0.0.1 (set turn.relay_ip)");
                ips.push(IpAddr::from([127, 0, 0, 1]));
            }
        }
    }
    ips
}

/// First IPv4 address of an interface that is up and not loopback.
fn interface_ipv4() -> Option<IpAddr> {
    let mut found = None;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below; we only read it.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return None;
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
            let lo = ifa.ifa_flags & (libc::IFF_LOOPBACK as libc::c_uint) != 0;
            if up
                && !lo
                && !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
                break;
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    found
}

/// `want` itself, or with port 0 replaced by one port free for both UDP and TCP.
fn concrete(want: SocketAddr) -> Result<SocketAddr, StartError> {
    if want.port() != 0 {
        return Ok(want);
    }
    Ok(SocketAddr::new(want.ip(), free_port(want)?))
}

/// A port free for both UDP and TCP on `addr`'s IP, found by binding exclusively (without
/// SO_REUSEPORT, so no other process's reuseport socket can be joined by accident).
fn free_port(addr: SocketAddr) -> Result<u16, StartError> {
    let mut last = None;
    for _ in 0..20 {
        let u = match std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)) {
            Ok(u) => u,
            Err(e) => {
                return Err(StartError::Bind {
                    proto: "udp",
                    addr,
                    source: e,
                })
            }
        };
        let port = u.local_addr().map(|a| a.port()).unwrap_or(0);
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(StartError::Bind {
        proto: "tcp",
        addr,
        source: last.unwrap_or_else(|| io::Error::other("no free port")),
    })
}

/// A non-blocking socket for `addr`'s family; IPv6 sockets are IPv6-only so that IPv4 and
/// IPv6 listeners on the same port stay separate.
pub(crate) fn new_socket(addr: SocketAddr, udp: bool) -> io::Result<socket2::Socket> {
    let (ty, proto) = if udp {
        (socket2::Type::DGRAM, socket2::Protocol::UDP)
    } else {
        (socket2::Type::STREAM, socket2::Protocol::TCP)
    };
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    let bind = || -> io::Result<std::net::UdpSocket> {
        let s = new_socket(addr, true)?;
        s.set_reuse_port(true)?;
        // Larger buffers absorb bursts while a worker is busy; the kernel caps them at rmem_max.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    bind().map_err(|source| StartError::Bind {
        proto: "udp",
        addr,
        source,
    })
}

fn bind_tcp(addr: SocketAddr, proto: &'static str) -> Result<std::net::TcpListener, StartError> {
    let bind = || -> io::Result<std::net::TcpListener> {
        let s = new_socket(addr, false)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    bind().map_err(|source| StartError::Bind {
        proto,
        addr,
        source,
    })
}

struct WorkerCtx {
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    metrics: TurnMetrics,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
}

/// One worker's state, shared by its tasks (single thread: `Rc<RefCell<_>>`, never held
/// across an await).
pub(crate) struct Worker {
    core: Core,
    relays: RelayTable,
    out: Vec<u8>,
    /// UDP listeners: bound address, fd, and the datagrams queued for it.
    udp: Vec<(SocketAddr, Rc<AsyncFd<std::net::UdpSocket>>)>,
    pending: Vec<SendBatch>,
    flush_scheduled: bool,
    flush: Rc<Notify>,
    conns: HashMap<FiveTuple, Rc<ConnWriter>>,
    conn_counts: [i64; 3],
}

impl Worker {
    /// Queues `bytes` for the client of `tuple` (batched for UDP, buffered for streams).
    pub(crate) fn send_to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        if tuple.transport == Transport::Udp {
            if let Some(i) = self.udp.iter().position(|(a, _)| *a == tuple.server) {
                if self.pending[i].push(tuple.client, bytes) {
                    self.pending[i].flush(self.udp[i].1.as_raw_fd());
                }
                self.schedule_flush();
            }
        } else if let Some(c) = self.conns.get(tuple) {
            c.push(bytes);
        }
    }

    fn schedule_flush(&mut self) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            self.flush.notify_one();
        }
    }

    fn flush_all(&mut self) {
        self.flush_scheduled = false;
        for (i, p) in self.pending.iter_mut().enumerate() {
            if !p.is_empty() {
                p.flush(self.udp[i].1.as_raw_fd());
            }
        }
    }

    /// Handles one client packet and performs the resulting action.
    pub(crate) fn client_packet(&mut self, now: Instant, unix: u64, tuple: &FiveTuple, pkt: &[u8]) {
        match self
            .core
            .handle_client(now, unix, tuple, pkt, &mut self.out, &mut self.relays)
        {
            ClientAction::None => {}
            ClientAction::Reply => {
                let out = std::mem::take(&mut self.out);
                self.send_to_client(tuple, &out);
                self.out = out;
            }
            ClientAction::Relay {
                id,
                family,
                peer,
                range,
            } => self.relays.send(id, family, peer, &pkt[range]),
        }
    }
}

fn run_worker(ctx: WorkerCtx, socks: WorkerSockets) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(BATCH as u32)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start a TURN worker runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, worker_main(ctx, socks));
}

async fn worker_main(ctx: WorkerCtx, socks: WorkerSockets) {
    let flush = Rc::new(Notify::new());
    let mut udp = Vec::new();
    for s in socks.udp {
        let addr = match s.local_addr() {
            Ok(a) => a,
            Err(e) => {
                error!("udp listener: {e}");
                continue;
            }
        };
        match udp::register(s) {
            Ok(fd) => udp.push((addr, Rc::new(fd))),
            Err(e) => error!("udp listener {addr}: {e}"),
        }
    }
    let worker = Rc::new(RefCell::new(Worker {
        core: Core::new(Arc::clone(&ctx.shared)),
        relays: RelayTable::new(Arc::clone(&ctx.pool)),
        out: Vec::with_capacity(1500),
        pending: udp.iter().map(|_| SendBatch::new()).collect(),
        udp: udp.clone(),
        flush_scheduled: false,
        flush: Rc::clone(&flush),
        conns: HashMap::new(),
        conn_counts: [0; 3],
    }));
    worker
        .borrow_mut()
        .relays
        .set_worker(Rc::downgrade(&worker));

    for (i, (addr, fd)) in udp.into_iter().enumerate() {
        tokio::task::spawn_local(udp_listener(Rc::clone(&worker), i, addr, fd));
    }
    for l in socks.tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::task::spawn_local(stream::accept_loop(
                    Rc::clone(&worker),
                    l,
                    None,
                    ctx.shutdown.clone(),
                ));
            }
            Err(e) => error!("tcp listener: {e}"),
        }
    }
    if let Some(acc) = &ctx.acceptor {
        for l in socks.tls {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::task::spawn_local(stream::accept_loop(
                        Rc::clone(&worker),
                        l,
                        Some(acc.clone()),
                        ctx.shutdown.clone(),
                    ));
                }
                Err(e) => error!("tls listener: {e}"),
            }
        }
    }
    {
        let worker = Rc::clone(&worker);
        tokio::task::spawn_local(async move {
            loop {
                flush.notified().await;
                worker.borrow_mut().flush_all();
            }
        });
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauges = Gauges::default();
    let mut conns = [0i64; 3];
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        w.core.handle_timeout(now, &mut w.relays);
        ctx.pool.expire_reservations(now);
        publish(&ctx.metrics, w, now, &mut gauges, &mut conns);
    }
    // Final figures, then drop every socket of this worker.
    let mut w = worker.borrow_mut();
    w.relays.release_all();
    w.conns.clear();
    let empty = Gauges::default();
    ctx.metrics.add(&std::mem::take(&mut w.core.stats));
    ctx.metrics.gauge_delta(&gauges, &empty, conns, [0; 3]);
}

fn publish(
    m: &TurnMetrics,
    w: &mut Worker,
    now: Instant,
    gauges: &mut Gauges,
    conns: &mut [i64; 3],
) {
    m.add(&std::mem::take(&mut w.core.stats));
    let g = w.core.gauges(now);
    m.gauge_delta(gauges, &g, *conns, w.conn_counts);
    *gauges = g;
    *conns = w.conn_counts;
}

/// Receives client datagrams in batches and handles them in order.
async fn udp_listener(
    worker: Rc<RefCell<Worker>>,
    index: usize,
    addr: SocketAddr,
    fd: Rc<AsyncFd<std::net::UdpSocket>>,
) {
    let mut batch = RecvBatch::new(0);
    let raw = fd.as_raw_fd();
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!("udp {addr}: {e}");
                return;
            }
        };
        let n = match batch.recv(raw, BATCH) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                continue;
            }
            Err(e) => {
                // ICMP-induced errors on an unconnected socket; nothing to do but go on.
                tracing::debug!("udp {addr} recv: {e}");
                continue;
            }
        };
        if n < BATCH {
            // Fewer than asked: the queue is empty. tokio keeps the readiness if a new
            // datagram's event raced with this, so nothing is lost.
            guard.clear_ready();
        }
        let now = Instant::now();
        let unix = auth::unix_now();
        let mut w = worker.borrow_mut();
        for i in 0..n {
            let Some((src, slot, at, len)) = batch.get(i) else {
                continue;
            };
            let tuple = FiveTuple {
                client: src,
                server: addr,
                transport: Transport::Udp,
            };
            w.client_packet(now, unix, &tuple, &slot[at..at + len]);
        }
        if !w.pending[index].is_empty() {
            w.pending[index].flush(raw);
        }
    }
}
