//! Prometheus metrics: the process-wide [`registry()`] every service registers into, and
//! [`MetricsServer`], the small HTTP/1 endpoint serving `GET /metrics` (text exposition
//! format) and `GET /healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The process-wide registry, created on first use with `ember_build_info{version}`.
/// Tests that need isolation can build their own [`Registry`] instead.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "ember_build_info",
                "Always 1; the version label says which Ember runs.",
            ),
            &["version"],
        );
        match info.and_then(|g| {
            g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            registry.register(Box::new(g))
        }) {
            Ok(()) => {}
            Err(e) => warn!("metrics: cannot register ember_build_info: {e}"),
        }
        registry
    })
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr} for metrics")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: Registry,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: SocketAddr, registry: Registry) -> Result<MetricsServer, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(MetricsServer {
            listener,
            local_addr,
            registry,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`, then lets open connections finish their current request.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = conns.join_next() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let registry = self.registry.clone();
                        let shutdown = shutdown.clone();
                        conns.spawn(async move {
                            if let Err(e) = serve_connection(stream, registry, shutdown).await {
                                debug!(%peer, "metrics: connection error: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        error!("metrics: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(self.listener);
        while conns.join_next().await.is_some() {}
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), hyper::Error> {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&registry, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" if read => {
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                Ok(()) => text(StatusCode::OK, body, encoder.format_type()),
                Err(e) => {
                    error!("metrics: encoding failed: {e}");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.to_string(),
                        "text/plain",
                    )
                }
            }
        }
        "/healthz" if read => text(StatusCode::OK, "ok", "text/plain"),
        "/metrics" | "/healthz" => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                "text/plain",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}
