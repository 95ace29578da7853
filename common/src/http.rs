//! The HTTP/1.1 server every Ember web service runs on: an axum [`Router`] served on plain
//! TCP and/or TLS listeners (the suite's rustls config), with a header timeout, the peer
//! address available to handlers as `ConnectInfo<SocketAddr>`, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, open connections get this long to finish their current request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}")]
pub struct BindError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Which service and protocol, e.g. "selftest/http".
    pub what: String,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// One bound listener, not yet serving.
struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Bound listeners of one service; [`run`](Self::run) serves a router on all of them.
pub struct HttpServer {
    listeners: Vec<Listener>,
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl HttpServer {
    /// Binds `plain` (HTTP) and `tls` (HTTPS with the given rustls config) listeners;
    /// port 0 picks a free port (see [`local_addrs`](Self::local_addrs)).
    pub async fn bind(
        service: &str,
        plain: &[SocketAddr],
        tls: &[SocketAddr],
        tls_config: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<HttpServer, BindError> {
        let mut server = HttpServer {
            listeners: Vec::new(),
            addrs: Vec::new(),
        };
        let acceptor = tls_config.map(TlsAcceptor::from);
        for (addr, tls) in plain
            .iter()
            .map(|a| (a, None))
            .chain(tls.iter().map(|a| (a, acceptor.clone())))
        {
            let proto = if tls.is_some() { "https" } else { "http" };
            let bind_err = |source| BindError {
                addr: *addr,
                what: format!("{service}/{proto}"),
                source,
            };
            let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
            let local = tcp.local_addr().map_err(bind_err)?;
            server.addrs.push((proto, local));
            server.listeners.push(Listener { tcp, tls });
        }
        Ok(server)
    }

    /// Every bound listener: ("http" or "https", address).
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.addrs.clone()
    }

    /// Serves `router` until `shutdown`, then lets open connections finish their current
    /// request (for at most a few seconds).
    pub async fn run(self, router: Router, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for listener in self.listeners {
            tasks.spawn(accept_loop(listener, router.clone(), shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(listener: Listener, router: Router, shutdown: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next() => {}
            accepted = listener.tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let router = router.clone();
                    let shutdown = shutdown.clone();
                    let tls = listener.tls.clone();
                    conns.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        match tls {
                            None => serve(stream, peer, router, shutdown).await,
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    TLS_HANDSHAKE_TIMEOUT,
                                    acceptor.accept(stream),
                                );
                                match handshake.await {
                                    Ok(Ok(tls)) => serve(tls, peer, router, shutdown).await,
                                    Ok(Err(e)) => debug!(%peer, "https: TLS handshake failed: {e}"),
                                    Err(_) => debug!(%peer, "https: TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    error!("http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        conns.abort_all();
    }
}

async fn serve<S>(stream: S, peer: SocketAddr, router: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router.layer(axum::Extension(ConnectInfo(peer)));
    let service = TowerToHyperService::new(router);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, "http: connection error: {e}");
    }
}
