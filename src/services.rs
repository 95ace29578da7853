//! The services `ember` runs in one process, started from one [`Config`]: each start
//! function binds its sockets and returns a [`Service`] that lists them and resolves once
//! the service has stopped after shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use ember_common::config::Config;
use ember_common::http::HttpServer;
use ember_common::metrics::{registry, MetricsServer};
use ember_common::tls::TlsProvider;
use ember_turn::TurnServer;
use tokio_util::sync::CancellationToken;

use crate::selftest::web::{router, SelftestWeb};

/// A started service.
pub struct Service {
    /// Short name used in logs and in the `ember: listening` lines.
    pub name: &'static str,
    /// Every socket it listens on: (protocol, bound address).
    pub listening: Vec<(&'static str, SocketAddr)>,
    /// Resolves when the service has stopped.
    pub stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// A well-known port below 1024 that the built-in defaults replace with an unprivileged
/// one, so that a normal user can run `ember up`.
pub struct PortSubstitute {
    /// Service and protocol, e.g. "http".
    pub service: &'static str,
    /// The standard port, e.g. 80.
    pub standard: u16,
    /// The port used instead, e.g. 8080.
    pub used: u16,
}

/// Substitutes made by the built-in defaults (TURN's 3478 and 5349 and MQTT's 1883/8083
/// are unprivileged already).
pub const DEV_PORT_SUBSTITUTES: &[PortSubstitute] = &[PortSubstitute {
    service: "im/http",
    standard: 80,
    used: 8080,
}];

/// The `[tls]` certificate, loaded once for every TLS listener, if any is configured.
pub async fn tls_provider(
    cfg: &Config,
    run_turn: bool,
    run_storage: bool,
    run_im: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<TlsProvider>> {
    let mut users = Vec::new();
    if run_storage && !cfg.storage.tls_listen.is_empty() {
        users.push("storage.tls_listen");
    }
    if run_im && !cfg.im.mqtts_listen.is_empty() {
        users.push("im.mqtts_listen");
    }
    if run_im && !cfg.im.wss_listen.is_empty() {
        users.push("im.wss_listen");
    }
    if run_turn && !cfg.turn.tls_listen.is_empty() {
        users.push("turn.tls_listen");
    }
    if run_turn && cfg.selftest.enabled && !cfg.selftest.tls_listen.is_empty() {
        users.push("selftest.tls_listen");
    }
    if users.is_empty() {
        return Ok(None);
    }
    let tls = TlsProvider::new(&cfg.tls, shutdown.clone()).await;
    Ok(Some(tls.with_context(|| {
        format!("TLS certificate for {}", users.join(" and "))
    })?))
}

/// The STUN/TURN relay: UDP+TCP on `turn.listen`, TLS on `turn.tls_listen` with the
/// `[tls]` certificate (self-signed when none is configured).
pub async fn start_turn(
    cfg: &Config,
    tls: Option<&TlsProvider>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Service> {
    let tls = tls.filter(|_| !cfg.turn.tls_listen.is_empty());
    let server = TurnServer::start(
        &cfg.turn,
        tls.map(TlsProvider::server_config),
        registry(),
        shutdown.clone(),
    )
    .context("cannot start the TURN relay")?;
    Ok(Service {
        name: "turn",
        listening: server.local_addrs(),
        stopped: Box::pin(server.wait()),
    })
}

/// The relay self-test page on `selftest.listen` / `selftest.tls_listen`, unless disabled.
/// `token` is the effective credential token; `turn` the started relay, whose real ports
/// go into the URLs the page offers.
pub async fn start_selftest(
    cfg: &Config,
    token: &str,
    turn: Option<&Service>,
    tls: Option<&TlsProvider>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Service>> {
    let st = &cfg.selftest;
    if !st.enabled || (st.listen.is_empty() && st.tls_listen.is_empty()) {
        return Ok(None);
    }
    let mut web = SelftestWeb::new(cfg, token, registry());
    if let Some(turn) = turn {
        let ports = |proto: &str| -> Vec<u16> {
            let mut p: Vec<u16> = turn
                .listening
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, a)| a.port())
                .collect();
            p.dedup();
            p
        };
        web.set_turn_ports(ports("udp"), ports("tcp"), ports("tls"));
    }
    let server = HttpServer::bind(
        "selftest",
        &st.listen,
        &st.tls_listen,
        tls.map(TlsProvider::server_config),
    )
    .await?;
    Ok(Some(Service {
        name: "selftest",
        listening: server.local_addrs(),
        stopped: Box::pin(server.run(router(web), shutdown.clone())),
    }))
}

/// The object store on `storage.listen` / `storage.tls_listen`.
pub async fn start_storage(
    cfg: &Config,
    tls: Option<&TlsProvider>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Service> {
    let st = &cfg.storage;
    let backend = ember_storage::server::open_backend(st)
        .await
        .context("cannot start the object store")?;
    let server = HttpServer::bind(
        "storage",
        &st.listen,
        &st.tls_listen,
        tls.filter(|_| !st.tls_listen.is_empty())
            .map(TlsProvider::server_config),
    )
    .await?;
    if let Some(tls) = tls.filter(|_| !st.tls_listen.is_empty()) {
        for domain in st.bucket_domains.keys() {
            if !tls.has_certificate_for(domain) {
                tracing::warn!(
                    "storage: no certificate in [tls] names bucket domain {domain}: HTTPS \
                     clients will get the default certificate and refuse it \
                     (add one with [[tls.certificates]])"
                );
            }
        }
    }
    let router = ember_storage::server::router(backend, st);
    Ok(Service {
        name: "storage",
        listening: server.local_addrs(),
        stopped: Box::pin(server.run(router, shutdown.clone())),
    })
}

/// The messaging core: MQTT (TCP, TLS, WebSocket, WSS), the short-link HTTP API and the
/// signed admin API, each a service of its own.
pub async fn start_im(
    cfg: &Config,
    tls: Option<&TlsProvider>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Service>> {
    let tls = tls
        .filter(|_| !cfg.im.mqtts_listen.is_empty() || !cfg.im.wss_listen.is_empty())
        .map(TlsProvider::server_config);
    let parts = ember_im::service::start(&cfg.im, tls, registry(), shutdown)
        .await
        .context("cannot start the messaging core")?;
    Ok(parts
        .into_iter()
        .map(|p| Service {
            name: p.name,
            listening: p.listening,
            stopped: p.stopped,
        })
        .collect())
}

/// The Prometheus endpoint, unless `metrics.listen` is empty.
pub async fn start_metrics(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Service>> {
    let Some(addr) = cfg.metrics.listen_addr().map_err(anyhow::Error::msg)? else {
        return Ok(None);
    };
    let server = MetricsServer::bind(addr, registry().clone()).await?;
    Ok(Some(Service {
        name: "metrics",
        listening: vec![("http", server.local_addr())],
        stopped: Box::pin(server.run(shutdown.clone())),
    }))
}
