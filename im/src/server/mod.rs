//! The tokio shell of the messaging core: MQTT listeners over TCP, TLS, WebSocket and WSS,
//! one task per connection driving a [`crate::session::Session`] (`conn`), and the outbox
//! through which other threads reach a connection (`outbox`).

pub mod conn;
pub mod outbox;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ember_common::http::BindError;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, error};

use conn::{Io, Shared, Transport};

/// How long a client gets for the TLS and WebSocket handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, connections get this long to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mqtt => "mqtt",
            Kind::Mqtts => "mqtts",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
        }
    }
}

struct Listener {
    tcp: TcpListener,
    kind: Kind,
}

/// The bound MQTT listeners, not yet serving.
pub struct MqttListeners {
    listeners: Vec<Listener>,
    tls: Option<TlsAcceptor>,
}

impl MqttListeners {
    /// Binds every listener (port 0 picks a free port). `tls` is required when `mqtts` or
    /// `wss` is non-empty.
    pub async fn bind(
        addrs: &[(Kind, &[SocketAddr])],
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<MqttListeners, BindError> {
        let mut listeners = Vec::new();
        for (kind, list) in addrs {
            for addr in *list {
                let bind_err = |source| BindError {
                    addr: *addr,
                    what: format!("im/{}", kind.name()),
                    source,
                };
                let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
                listeners.push(Listener { tcp, kind: *kind });
            }
        }
        Ok(MqttListeners {
            listeners,
            tls: tls.map(TlsAcceptor::from),
        })
    }

    /// Every bound listener: (protocol, address).
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.kind.name(), l.tcp.local_addr().ok()?)))
            .collect()
    }

    /// Serves until `shared.shutdown`, then gives open connections a moment to close.
    pub async fn run(self, shared: Arc<Shared>) {
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.listeners {
            tasks.spawn(accept_loop(l, self.tls.clone(), shared.clone()));
        }
        while tasks.join_next().await.is_some() {}
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while shared.active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn accept_loop(l: Listener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            a = l.tcp.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, l.kind, tls))
                        .await
                    {
                        Ok(Ok(t)) => conn::run(shared, t, l.kind.name(), peer).await,
                        Ok(Err(e)) => debug!(%peer, "im/{}: handshake failed: {e}", l.kind.name()),
                        Err(_) => debug!(%peer, "im/{}: handshake timed out", l.kind.name()),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                error!("im/{}: accept failed: {e}", l.kind.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handshake(
    stream: TcpStream,
    kind: Kind,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<Transport> {
    let io: Box<dyn Io> = match kind {
        Kind::Mqtt | Kind::Ws => Box::new(stream),
        Kind::Mqtts | Kind::Wss => {
            let acceptor = tls.ok_or_else(|| std::io::Error::other("no TLS certificate"))?;
            Box::new(acceptor.accept(stream).await?)
        }
    };
    match kind {
        Kind::Mqtt | Kind::Mqtts => Ok(Transport::Stream(io)),
        Kind::Ws | Kind::Wss => {
            // tungstenite's default 128 KiB read buffer would dominate an idle connection.
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_message_size(Some(1 << 20))
                .max_frame_size(Some(1 << 20));
            let ws =
                tokio_tungstenite::accept_hdr_async_with_config(io, select_mqtt, Some(config))
                    .await
                    .map_err(std::io::Error::other)?;
            Ok(Transport::Ws(Box::new(ws)))
        }
    }
}

/// MQTT-6.0.0-3/-4: the client offers the `mqtt` subprotocol and the server selects it.
/// A client offering none is accepted (some libraries omit it); one offering only others
/// is refused.
#[allow(clippy::result_large_err)]
fn select_mqtt(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.iter().any(|p| p.eq_ignore_ascii_case("mqtt")) {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    } else if offered.is_empty() {
        Ok(resp)
    } else {
        let mut err = ErrorResponse::new(Some("subprotocol mqtt required".into()));
        *err.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
        Err(err)
    }
}
