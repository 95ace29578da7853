//! Assembles the messaging core from `[im]`: the engine (store), the router, the MQTT
//! listeners, the short-link HTTP API and the signed admin API, each as a running part that
//! resolves once it has stopped after shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use ember_common::config::{ImConfig, ImMode};
use ember_common::http::{BindError, HttpServer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::auth::AdminAuth;
use crate::engine::{Engine, EngineConfig, EngineError, Sink};
use crate::metrics::ImMetrics;
use crate::router::{Presence, Router};
use crate::server::conn::Shared;
use crate::server::{Kind, MqttListeners};
use crate::session::SessionConfig;
use crate::token::TokenKey;

/// A started part of the messaging core.
pub struct Part {
    /// "im" (MQTT listeners), "im-http" (short links), "im-admin" (admin API).
    pub name: &'static str,
    /// Every socket it listens on: (protocol, bound address).
    pub listening: Vec<(&'static str, SocketAddr)>,
    /// Resolves when the part has stopped.
    pub stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Why the messaging core could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot open the message store: {0}")]
    Engine(#[from] EngineError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("[im] {0}")]
    Config(String),
}

fn random_secret() -> String {
    ember_common::template::random_token(30)
}

/// Starts every part of the messaging core. `tls` is the suite's certificate, needed when
/// `mqtts_listen` or `wss_listen` is set.
pub async fn start(
    cfg: &ImConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    registry: &prometheus::Registry,
    shutdown: &CancellationToken,
) -> Result<Vec<Part>, StartError> {
    let dev = cfg.mode == ImMode::Dev;
    let admin_secret = if cfg.admin_secret.is_empty() && dev {
        let s = random_secret();
        warn!(
            "im: DEV MODE without [im] admin_secret: this run's admin secret is {s} \
             (set one, or run `ember init`, for anything but a trial)"
        );
        s
    } else {
        cfg.admin_secret.clone()
    };
    let token_key = if cfg.token_key.is_empty() && dev {
        warn!(
            "im: DEV MODE without [im] token_key: a random key is used, every token dies \
             with this process"
        );
        random_secret()
    } else {
        cfg.token_key.clone()
    };
    if admin_secret.is_empty() || token_key.is_empty() {
        return Err(StartError::Config(
            "admin_secret and token_key are required in production mode".into(),
        ));
    }
    if cfg.no_check_time {
        warn!(
            "im: DEV ONLY: [im] no_check_time = true: admin requests are accepted whatever \
             their timestamp (replays are still refused)"
        );
    }
    let database = if cfg.database.is_empty() {
        None
    } else {
        let path = PathBuf::from(&cfg.database);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Some(path)
    };

    let node = node_id(cfg);
    let metrics = Arc::new(ImMetrics::new(registry)?);
    let router = Router::start(metrics.clone())?;
    let engine_cfg = EngineConfig {
        database,
        max_message_bytes: cfg.max_message_bytes as usize,
        recall_window: Duration::from_secs(cfg.recall_window_secs.into()),
        rate_limit_per_sec: cfg.rate_limit_per_sec,
        rate_limit_burst: cfg.rate_limit_burst,
        group_max_members: cfg.group_max_members as usize,
        metrics: Some(metrics.clone()),
    };
    let engine = {
        let sink: Arc<dyn Sink> = router.clone();
        tokio::task::spawn_blocking(move || Engine::open(engine_cfg, sink))
            .await
            .map_err(|e| StartError::Config(format!("engine start panicked: {e}")))??
    };
    {
        let engine = engine.clone();
        router.set_groups_of(Box::new(move |u| engine.groups_of(u)));
    }
    let tokens = TokenKey::new(token_key.as_bytes());

    let listeners = MqttListeners::bind(
        &[
            (Kind::Mqtt, &cfg.mqtt_listen),
            (Kind::Mqtts, &cfg.mqtts_listen),
            (Kind::Ws, &cfg.ws_listen),
            (Kind::Wss, &cfg.wss_listen),
        ],
        tls.clone(),
    )
    .await?;
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        router: router.clone(),
        tokens: tokens.clone(),
        metrics,
        session: SessionConfig {
            max_packet_bytes: cfg.max_message_bytes as usize + 8 * 1024,
            keepalive_max_secs: cfg.keepalive_max_secs,
            receive_maximum: 64,
        },
        send_queue_bytes: cfg.send_queue_bytes as usize,
        max_connections: cfg.max_connections as usize,
        active: AtomicUsize::new(0),
        shutdown: shutdown.clone(),
    });
    let mut parts = Vec::new();
    let mqtt_addrs = listeners.local_addrs();
    {
        let engine = engine.clone();
        let router = router.clone();
        parts.push(Part {
            name: "im",
            listening: mqtt_addrs.clone(),
            stopped: Box::pin(async move {
                listeners.run(shared).await;
                let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
                router.stop();
                info!("im: stopped");
            }),
        });
    }

    if !cfg.http_listen.is_empty() {
        let http = HttpServer::bind("im-http", &cfg.http_listen, &[], None).await?;
        let port = |kind: &str| {
            mqtt_addrs
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, a)| a.port())
                .unwrap_or(0)
        };
        let mut info = crate::http::RouteInfo::from_config(cfg, &node);
        // The bound ports (the configured ones may be 0 = ephemeral).
        info.ports = crate::http::Ports {
            http: http.local_addrs().first().map_or(0, |(_, a)| a.port()),
            mqtt: port("mqtt"),
            mqtts: port("mqtts"),
            ws: port("ws"),
            wss: port("wss"),
        };
        let login: Arc<dyn crate::http::LoginCheck> = Arc::new(EngineLogin {
            engine: engine.clone(),
            tokens: tokens.clone(),
        });
        let router = crate::http::router(&node, info, login);
        parts.push(Part {
            name: "im-http",
            listening: http.local_addrs(),
            stopped: Box::pin(http.run(router, shutdown.clone())),
        });
    }

    if !cfg.admin_listen.is_empty() {
        let http = HttpServer::bind("im-admin", &cfg.admin_listen, &[], None).await?;
        let auth = Arc::new(AdminAuth::new(
            admin_secret.as_bytes(),
            &cfg.admin_signatures,
            Duration::from_secs(cfg.admin_time_window_secs.into()),
            cfg.no_check_time,
        ));
        let presence: Arc<dyn Presence> = router.clone();
        let (routes, _openapi) = crate::admin::routes::router(crate::admin::routes::AdminState {
            engine: engine.clone(),
            presence,
            tokens: tokens.clone(),
            token_ttl_secs: cfg.token_ttl_secs.into(),
            node_id: node.clone(),
        });
        let routes = routes.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::admin::auth::require_signature,
        ));
        parts.push(Part {
            name: "im-admin",
            listening: http.local_addrs(),
            stopped: Box::pin(http.run(routes, shutdown.clone())),
        });
    }
    Ok(parts)
}

/// This node's id: `server_host`, else the machine's host name.
fn node_id(cfg: &ImConfig) -> String {
    if !cfg.server_host.is_empty() {
        return cfg.server_host.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ember".to_owned())
}

/// `/route`'s token check: the same as a CONNECT's.
struct EngineLogin {
    engine: Engine,
    tokens: TokenKey,
}

impl crate::http::LoginCheck for EngineLogin {
    fn check(
        &self,
        user: &str,
        device: &str,
        token: &[u8],
    ) -> Result<(), crate::session::ConnectRefusal> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        crate::token::check_login(
            &self.tokens,
            self.engine.user(user),
            user,
            device,
            token,
            now,
        )
        .map(|_| ())
    }
}
