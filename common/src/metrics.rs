//! Prometheus metrics: the process-wide [`registry()`] every service registers into, and
//! [`MetricsServer`], the small HTTP/1 endpoint serving `GET /metrics` (text exposition
//! format) and `GET /healthz`.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::http::HttpServer;

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

/// Registers `c` in `r` and returns it; a metric already registered under the same name
/// (a second instance of a service in one process, as tests do) is not an error, the new
/// handle then simply counts unexported.
pub fn register<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> prometheus::Result<T> {
    match r.register(Box::new(c.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => Ok(c),
        Err(e) => Err(e),
    }
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

/// A bound, not yet serving, metrics endpoint (on the shared [`HttpServer`]).
pub struct MetricsServer {
    http: HttpServer,
    local_addr: SocketAddr,
    registry: Registry,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: SocketAddr, registry: Registry) -> Result<MetricsServer, MetricsError> {
        let http = HttpServer::bind("metrics", &[addr], &[], None)
            .await
            .map_err(|e| MetricsError::Bind {
                addr,
                source: e.source,
            })?;
        let local_addr = http.local_addrs()[0].1;
        Ok(MetricsServer {
            http,
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
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.registry);
        self.http.run(router, shutdown).await;
    }
}

async fn metrics(State(registry): State<Registry>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(CONTENT_TYPE, encoder.format_type().to_owned())], body).into_response(),
        Err(e) => {
            error!("metrics: encoding failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}
