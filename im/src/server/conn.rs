//! One client connection's task: read bytes into the [`Session`], act on its events (login,
//! requests to the engine, subscription), drain the outbox into one write per wake.
//!
//! The transport is a byte stream (TCP, TLS) or a WebSocket carrying MQTT in binary frames
//! (MQTT-6.0.0-1/-2: any frame may hold part of a packet or several). Reading stops while
//! `receive_maximum` requests are unanswered, so a client that floods requests meets TCP
//! back-pressure instead of growing a queue. Idle connections hold no read or write buffer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::{Caller, Engine};
use crate::metrics::ImMetrics;
use crate::proto::{encode_response, parse_request, Request};
use crate::router::{DeviceInfo, Registration, Router};
use crate::server::outbox::{Item, Outbox};
use crate::session::{CloseReason, ConnectRefusal, Session, SessionConfig, SessionEvent, Version};
use crate::token::{check_login, TokenKey};

/// A byte stream the connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The connection's transport.
pub enum Transport {
    /// Plain or TLS stream.
    Stream(Box<dyn Io>),
    /// WebSocket (over a plain or TLS stream), MQTT in binary frames.
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

impl Transport {
    /// Appends what arrived to `buf`; Ok(false) at end of stream.
    async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<bool> {
        match self {
            Transport::Stream(s) => {
                if buf.capacity() - buf.len() < 1024 && !buf.is_empty() {
                    buf.reserve(4096);
                }
                Ok(s.read_buf(buf).await? > 0)
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(false),
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_))) => return Ok(false),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // MQTT-6.0.0-1: anything but binary frames closes the connection.
                    Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                        return Err(std::io::Error::other("non-binary WebSocket frame"))
                    }
                }
            },
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Transport::Stream(s) => s.write_all(data).await,
            Transport::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(std::io::Error::other),
        }
    }

    async fn close(&mut self) {
        match self {
            Transport::Stream(s) => {
                let _ = s.shutdown().await;
            }
            Transport::Ws(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}

/// What every connection task shares.
pub struct Shared {
    pub engine: Engine,
    pub router: Arc<Router>,
    pub tokens: TokenKey,
    pub metrics: Arc<ImMetrics>,
    pub session: SessionConfig,
    pub send_queue_bytes: usize,
    pub max_connections: usize,
    pub active: AtomicUsize,
    pub shutdown: CancellationToken,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn refusal_label(r: ConnectRefusal) -> &'static str {
    match r {
        ConnectRefusal::BadCredentials => "bad_credentials",
        ConnectRefusal::NotAuthorized => "not_authorized",
        ConnectRefusal::BadClientId => "bad_client_id",
        ConnectRefusal::ServerUnavailable => "unavailable",
    }
}

/// Reads (sync, pull, history, receipts) one connection may have in flight before it stops
/// reading: their answers can be large (a page is capped at 512 KiB), so this bounds what
/// waits in its outbox for a client that does not read.
const MAX_READS_IN_FLIGHT: usize = 4;

/// Longest a write may block before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one connection to its end.
pub async fn run(
    shared: Arc<Shared>,
    mut transport: Transport,
    transport_name: &'static str,
    remote: SocketAddr,
) {
    shared.active.fetch_add(1, Ordering::Relaxed);
    let gauge = shared
        .metrics
        .connections
        .with_label_values(&[transport_name]);
    gauge.inc();
    let mut conn = Conn {
        shared: shared.clone(),
        session: Session::new(shared.session.clone(), Instant::now()),
        outbox: Arc::new(Outbox::new(shared.send_queue_bytes)),
        registration: None,
        caller: None,
        reads: Arc::new(AtomicUsize::new(0)),
        transport_name,
        remote,
        closing: false,
    };
    if let Err(e) = conn.run(&mut transport).await {
        debug!(%remote, "im connection: {e}");
    }
    transport.close().await;
    if let Some(reg) = conn.registration.take() {
        shared.router.unregister(&reg);
    }
    gauge.dec();
    shared.active.fetch_sub(1, Ordering::Relaxed);
}

struct Conn {
    shared: Arc<Shared>,
    session: Session,
    outbox: Arc<Outbox>,
    registration: Option<Registration>,
    caller: Option<Caller>,
    /// Reads in flight (see [`MAX_READS_IN_FLIGHT`]).
    reads: Arc<AtomicUsize>,
    transport_name: &'static str,
    remote: SocketAddr,
    /// Write what is pending, then end.
    closing: bool,
}

impl Conn {
    async fn run(&mut self, transport: &mut Transport) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        let mut out: Vec<u8> = Vec::new();
        let mut items = VecDeque::new();
        loop {
            // Everything pending leaves in one write.
            let close = self.outbox.drain(&mut items);
            let mut events = 0usize;
            let mut oldest: Option<Instant> = None;
            while let Some(item) = items.pop_front() {
                match item {
                    Item::Response(ticket, json) => self.session.complete(ticket, &json),
                    Item::Event(ev, since) => {
                        self.session.write_event(&ev, &mut out);
                        events += 1;
                        oldest.get_or_insert(since);
                    }
                }
            }
            if let Some(why) = close {
                if why == CloseReason::SessionTakenOver {
                    self.shared.metrics.takeovers.inc();
                }
                self.session.close(why);
                self.closing = true;
            }
            self.session.poll_transmit(&mut out);
            if !out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, transport.write(&out)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(std::io::Error::other("write timed out")),
                }
                if let Some(since) = oldest {
                    let secs = since.elapsed().as_secs_f64();
                    for _ in 0..events {
                        self.shared.metrics.delivery_seconds.observe(secs);
                    }
                }
                if out.capacity() > 2048 {
                    out = Vec::new();
                } else {
                    out.clear();
                }
            }
            if self.closing {
                return Ok(());
            }
            let reading = self.session.in_flight() < self.shared.session.receive_maximum as usize
                && self.reads.load(Ordering::Acquire) < MAX_READS_IN_FLIGHT;
            let deadline = self
                .session
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = transport.read(&mut buf), if reading => {
                    if !r? {
                        return Ok(());
                    }
                    // Packets behind a CONNECT stay buffered until it is accepted: decode
                    // again once the login went through.
                    for _ in 0..2 {
                        let was_ready = self.session.is_ready();
                        let res = self.session.handle_bytes(Instant::now(), &mut buf);
                        self.handle_events();
                        if let Err(e) = res {
                            self.shared.metrics.protocol_errors.inc();
                            debug!(remote = %self.remote, "im: closing: {e}");
                            self.closing = true;
                            break;
                        }
                        if was_ready || !self.session.is_ready() || buf.is_empty() {
                            break;
                        }
                    }
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                }
                _ = self.outbox.wait() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(e) = self.session.handle_timeout(Instant::now()) {
                        debug!(remote = %self.remote, "im: closing: {e}");
                        self.closing = true;
                    }
                }
                _ = self.shared.shutdown.cancelled(), if !self.closing => {
                    self.session.close(CloseReason::ServerShuttingDown);
                    self.closing = true;
                }
            }
        }
    }

    fn handle_events(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SessionEvent::Connect {
                    version,
                    client_id,
                    username,
                    password,
                    ..
                } => self.login(
                    version,
                    &client_id,
                    username.as_deref(),
                    password.as_deref(),
                ),
                SessionEvent::Request {
                    ticket,
                    method,
                    payload,
                } => {
                    let m = &self.shared.metrics;
                    m.requests.with_label_values(&[method.name()]).inc();
                    let Some(caller) = self.caller.clone() else {
                        continue;
                    };
                    match parse_request(method, &payload) {
                        Err((id, e)) => {
                            m.request_errors
                                .with_label_values(&[method.name(), "400"])
                                .inc();
                            self.session
                                .complete(ticket, &encode_response(id.as_deref(), &Err(e)));
                        }
                        Ok(req) => {
                            let id = req.id().map(str::to_owned);
                            let read = matches!(
                                req,
                                Request::Sync(_)
                                    | Request::Pull(_)
                                    | Request::History(_)
                                    | Request::Receipts(_)
                            )
                            .then(|| {
                                self.reads.fetch_add(1, Ordering::AcqRel);
                                self.reads.clone()
                            });
                            let outbox = self.outbox.clone();
                            let metrics = self.shared.metrics.clone();
                            let started = Instant::now();
                            self.shared.engine.submit(
                                caller,
                                req,
                                Box::new(move |result| {
                                    metrics
                                        .request_seconds
                                        .with_label_values(&[method.name()])
                                        .observe(started.elapsed().as_secs_f64());
                                    if let Err(e) = &result {
                                        metrics
                                            .request_errors
                                            .with_label_values(&[
                                                method.name(),
                                                &e.code.to_string(),
                                            ])
                                            .inc();
                                    }
                                    // Before the push wakes the task, which then
                                    // decides whether to read again.
                                    if let Some(reads) = read {
                                        reads.fetch_sub(1, Ordering::AcqRel);
                                    }
                                    outbox.push_response(
                                        ticket,
                                        encode_response(id.as_deref(), &result),
                                    );
                                }),
                            );
                        }
                    }
                }
                SessionEvent::Subscribed => self.outbox.set_subscribed(true),
                SessionEvent::Unsubscribed => self.outbox.set_subscribed(false),
                SessionEvent::Disconnected => self.closing = true,
            }
        }
    }

    fn login(
        &mut self,
        version: Version,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) {
        let sh = &self.shared;
        let result = if sh.shutdown.is_cancelled()
            || sh.active.load(Ordering::Relaxed) > sh.max_connections
        {
            Err(ConnectRefusal::ServerUnavailable)
        } else {
            match (username, password) {
                (Some(user), Some(token)) => check_login(
                    &sh.tokens,
                    sh.engine.user(user),
                    user,
                    client_id,
                    token,
                    unix_now(),
                ),
                _ => Err(ConnectRefusal::BadCredentials),
            }
        };
        match result {
            Err(why) => {
                sh.metrics
                    .connects
                    .with_label_values(&[refusal_label(why)])
                    .inc();
                self.session.reject_connect(why);
                self.closing = true;
            }
            Ok(claims) => {
                sh.metrics.connects.with_label_values(&["ok"]).inc();
                self.session.accept_connect(&claims.user, &claims.device);
                let user: Arc<str> = claims.user.as_str().into();
                let device: Arc<str> = claims.device.as_str().into();
                let info = DeviceInfo {
                    device: device.clone(),
                    transport: self.transport_name,
                    version: match version {
                        Version::V311 => "3.1.1",
                        Version::V5 => "5",
                    },
                    remote: self.remote.to_string(),
                    since: unix_ms(),
                };
                let (reg, _took_over) = sh.router.register(info, user.clone(), self.outbox.clone());
                self.registration = Some(reg);
                self.caller = Some(Caller {
                    user: Some(user),
                    device,
                });
            }
        }
    }
}
