//! One MQTT connection's protocol state, without sockets: bytes in, events and bytes out.
//!
//! CONTRACT (step 0 skeleton): the connection task (`server/conn.rs`) owns a `Session`,
//! feeds it what it reads, acts on the events, and writes what `poll_transmit` and the
//! framing calls produce. Time is passed in (`now`), so tests drive it with a fake clock.
//!
//! The session enforces the protocol (first packet CONNECT, flags, packet ids, keep alive,
//! v5 limits), the topic ACL (a client publishes only on `rq/<method>`, subscribes only under
//! `u/<own uid>/`), and the order of PUBACKs (arrival order, even when requests complete out
//! of order).
//!
//! Choices the specifications leave open:
//! - Keep alive: the client's value capped at `keepalive_max_secs`; a client asking for 0
//!   (none) gets the cap too, so idle connections are always closed after 1.5 x the cap (v5
//!   is told with Server Keep Alive; 3.1.1 cannot be told, and a 3.1.1 client asking more
//!   than the cap is held to the cap as well). A cap of 0 means no cap.
//! - The packet size limit counts the whole packet (fixed header included), as v5's
//!   Maximum Packet Size does.
//! - Every request (QoS 0, 1 or 2) takes a place in one FIFO; responses and acks leave in
//!   arrival order, the response PUBLISH before its PUBACK.
//! - A protocol level other than 4 / 5 gets a 3.1.1-style CONNACK 0x01 when below 5 (3.1's
//!   "MQIsdp" level 3 reads it) and a v5-style CONNACK 0x84 above.
//! - The v5 CONNACK does not say Wildcard Subscription Available = 0: clients subscribe to
//!   `u/<uid>/<device>/#`, which a server without wildcards would have to refuse.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::mqtt::props::id as prop;
use crate::mqtt::{self, reason, AckKind, DecodeError, Packet, PropWriter};
use crate::proto::{self, ApiError, Method};

/// MQTT protocol level of the connection (defined by the codec, same variants).
pub use crate::mqtt::Version;

/// Limits the session enforces and advertises (v5 CONNACK properties).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest packet accepted (v5 Maximum Packet Size); bigger closes the connection.
    pub max_packet_bytes: usize,
    /// Upper bound for the client's keep alive (v5 Server Keep Alive when capped).
    pub keepalive_max_secs: u16,
    /// Unanswered QoS 1 requests allowed in flight (v5 Receive Maximum).
    pub receive_maximum: u16,
}

/// Why a CONNECT is refused; mapped to the 3.1.1 / v5 CONNACK codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// 3.1.1 0x04 / v5 0x86.
    BadCredentials,
    /// 3.1.1 0x05 / v5 0x87 (unknown or disabled user).
    NotAuthorized,
    /// 3.1.1 0x02 / v5 0x85 (client id is not the token's device, or not a valid id).
    BadClientId,
    /// 3.1.1 0x03 / v5 0x89 (too many connections, shutting down).
    ServerUnavailable,
}

/// Why the server closes a connection; v5 sends DISCONNECT with the code, 3.1.1 just closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// v5 0x8E: the same device connected again.
    SessionTakenOver,
    /// v5 0x97 (quota exceeded): the outbox overflowed; the client resyncs.
    SlowConsumer,
    /// v5 0x98 (administrative action): kicked by the admin API.
    Kicked,
    /// v5 0x8B: the server is shutting down.
    ServerShuttingDown,
    /// v5 0x8D: no packet within 1.5 x keep alive.
    KeepAliveTimeout,
}

/// Opaque handle of a request awaiting its answer (orders the PUBACKs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// What the connection task must act on.
#[derive(Debug)]
pub enum SessionEvent {
    /// A well-formed CONNECT: the task checks the token, then calls `accept_connect` or
    /// `reject_connect`. Nothing else is decoded until then.
    Connect {
        version: Version,
        client_id: String,
        username: Option<String>,
        password: Option<Bytes>,
        keep_alive: u16,
    },
    /// A PUBLISH on `rq/<method>` by an accepted client. The task answers with
    /// `complete(ticket, response)`, exactly once per ticket.
    Request {
        ticket: Ticket,
        method: Method,
        payload: Bytes,
    },
    /// A granted subscription now covers `u/<uid>/<device>/ev`: events may be pushed.
    Subscribed,
    /// An UNSUBSCRIBE left no filter covering `u/<uid>/<device>/ev`: stop pushing events.
    Unsubscribed,
    /// The client sent DISCONNECT; close after writing what is pending.
    Disconnected,
}

/// Protocol violations: the task writes `poll_transmit` (v5 DISCONNECT with the reason, if
/// the session queued one) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("keep alive timeout")]
    KeepAliveTimeout,
    #[error("CONNECT refused")]
    Refused,
}

/// How long a connection may take to send its CONNECT (and be accepted).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most distinct filters one connection may hold (bounds the per-connection memory).
pub const MAX_FILTERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decoded yet; only a CONNECT is acceptable.
    AwaitConnect,
    /// `SessionEvent::Connect` emitted; waiting for `accept_connect` / `reject_connect`.
    Connecting,
    Ready,
    /// Refused, failed, disconnected or closed: nothing more is decoded.
    Closed,
}

/// One request in the arrival-order FIFO.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    /// The acknowledgement owed (QoS 1: PUBACK, QoS 2: PUBREC) and its packet id.
    ack: Option<(AckKind, u16)>,
    /// v5 PUBACK reason code.
    reason: u8,
    /// Publish a response (false for v5 refusals, which the reason code says).
    respond: bool,
    /// v5 Response Topic, if under the session's own prefix.
    topic: Option<Box<str>>,
    correlation: Option<Bytes>,
    /// The response once complete (`Some` when it came while an earlier one was pending).
    done: Option<Vec<u8>>,
}

/// The per-connection protocol state machine.
pub struct Session {
    cfg: SessionConfig,
    state: State,
    version: Version,
    created: Instant,
    last_rx: Instant,
    /// 1.5 x the effective keep alive; `None`: no timeout.
    idle_timeout: Option<Duration>,
    /// Server Keep Alive to advertise (v5) when the client's value was replaced.
    server_keep_alive: Option<u16>,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    client_max_packet: usize,
    /// The v5 client asked for a non-zero Session Expiry Interval (answered with 0).
    session_expiry_asked: bool,
    /// A server DISCONNECT or refusal was queued: nothing more is written.
    sealed: bool,
    events: VecDeque<SessionEvent>,
    out: Vec<u8>,
    next_ticket: u64,
    pending: VecDeque<Pending>,
    /// 3.1.1 QoS 2: packet ids whose PUBREC went out, awaiting PUBREL.
    qos2: SmallVec<[u16; 2]>,
    /// `u/<uid>/`: the subscription ACL.
    user_prefix: String,
    /// `u/<uid>/<device>/`: allowed v5 Response Topics.
    prefix: String,
    rs_topic: String,
    ev_topic: String,
    subscribed: bool,
    filters: Vec<Box<str>>,
}

/// Keep the output buffer's capacity below this between writes.
const OUT_KEEP: usize = 4096;

#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// The `"id"` of a refused request's JSON, to echo in the 403 response.
fn request_id(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice::<IdOnly>(payload).ok()?.id? {
        serde_json::Value::String(s) if s.len() <= proto::MAX_ID_LEN => Some(s),
        _ => None,
    }
}

fn decode_error(e: DecodeError) -> (u8, SessionError) {
    match e {
        DecodeError::Malformed(m) => (reason::MALFORMED_PACKET, SessionError::Malformed(m)),
        DecodeError::Protocol(m) => (reason::PROTOCOL_ERROR, SessionError::Protocol(m)),
        DecodeError::TooLarge(n) => (reason::PACKET_TOO_LARGE, SessionError::TooLarge(n)),
        DecodeError::UnsupportedLevel(_) => (
            reason::PROTOCOL_ERROR,
            SessionError::Protocol("CONNECT after CONNECT"),
        ),
    }
}

impl ConnectRefusal {
    fn code(self, version: Version) -> u8 {
        use reason::v3;
        match (self, version) {
            (ConnectRefusal::BadCredentials, Version::V311) => v3::BAD_USER_NAME_OR_PASSWORD,
            (ConnectRefusal::BadCredentials, Version::V5) => reason::BAD_USER_NAME_OR_PASSWORD,
            (ConnectRefusal::NotAuthorized, Version::V311) => v3::NOT_AUTHORIZED,
            (ConnectRefusal::NotAuthorized, Version::V5) => reason::NOT_AUTHORIZED,
            (ConnectRefusal::BadClientId, Version::V311) => v3::IDENTIFIER_REJECTED,
            (ConnectRefusal::BadClientId, Version::V5) => reason::CLIENT_ID_NOT_VALID,
            (ConnectRefusal::ServerUnavailable, Version::V311) => v3::SERVER_UNAVAILABLE,
            (ConnectRefusal::ServerUnavailable, Version::V5) => reason::SERVER_BUSY,
        }
    }
}

impl CloseReason {
    /// The v5 DISCONNECT reason code.
    pub fn code(self) -> u8 {
        match self {
            CloseReason::SessionTakenOver => reason::SESSION_TAKEN_OVER,
            CloseReason::SlowConsumer => reason::QUOTA_EXCEEDED,
            CloseReason::Kicked => reason::ADMINISTRATIVE_ACTION,
            CloseReason::ServerShuttingDown => reason::SERVER_SHUTTING_DOWN,
            CloseReason::KeepAliveTimeout => reason::KEEP_ALIVE_TIMEOUT,
        }
    }
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        Session {
            cfg,
            state: State::AwaitConnect,
            version: Version::V311,
            created: now,
            last_rx: now,
            idle_timeout: None,
            server_keep_alive: None,
            client_max_packet: usize::MAX,
            session_expiry_asked: false,
            sealed: false,
            events: VecDeque::new(),
            out: Vec::new(),
            next_ticket: 0,
            pending: VecDeque::new(),
            qos2: SmallVec::new(),
            user_prefix: String::new(),
            prefix: String::new(),
            rs_topic: String::new(),
            ev_topic: String::new(),
            subscribed: false,
            filters: Vec::new(),
        }
    }

    /// The connection's protocol version (3.1.1 until a v5 CONNECT was decoded).
    pub fn version(&self) -> Version {
        self.version
    }

    /// True once `accept_connect` ran and the connection was not closed since.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Decodes every complete packet at the front of `buf` (consuming it; a partial packet
    /// stays). Refusals of ACL violations are answered inside the session (v5 PUBACK 0x87 /
    /// SUBACK 0x87; 3.1.1 PUBACK and a 403 response on `.../rs`, SUBACK 0x80).
    ///
    /// Between the `Connect` event and `accept_connect`, nothing is decoded: call again
    /// after accepting. Once closed, input is discarded.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        loop {
            match self.state {
                State::AwaitConnect | State::Ready => {}
                State::Connecting => return Ok(()),
                State::Closed => {
                    buf.clear();
                    return Ok(());
                }
            }
            let total = match mqtt::frame_len(buf, self.cfg.max_packet_bytes) {
                Ok(Some(n)) if buf.len() >= n => n,
                Ok(_) => return Ok(()),
                Err(e) => return self.fail(e),
            };
            let frame = buf.split_to(total).freeze();
            self.last_rx = now;
            self.packet(&frame)?;
        }
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Accepts the CONNECT for this user and device: queues CONNACK (v5: Maximum Packet
    /// Size, Receive Maximum, Topic Alias Maximum 0, Maximum QoS 1, Retain, Shared and
    /// Subscription Identifiers unavailable, Server Keep Alive if capped; Wildcard
    /// Subscriptions stay available, see the module doc).
    pub fn accept_connect(&mut self, user: &str, device: &str) {
        if self.state != State::Connecting {
            return;
        }
        self.state = State::Ready;
        self.user_prefix = format!("u/{user}/");
        self.prefix = format!("u/{user}/{device}/");
        self.rs_topic = format!("{}rs", self.prefix);
        self.ev_topic = format!("{}ev", self.prefix);
        match self.version {
            Version::V311 => {
                mqtt::write_connack(&mut self.out, Version::V311, reason::v3::ACCEPTED, None)
            }
            Version::V5 => {
                let mut p = PropWriter::new();
                p.u16(prop::RECEIVE_MAXIMUM, self.cfg.receive_maximum.max(1))
                    .u8(prop::MAXIMUM_QOS, 1)
                    .u8(prop::RETAIN_AVAILABLE, 0)
                    .u32(
                        prop::MAXIMUM_PACKET_SIZE,
                        u32::try_from(self.cfg.max_packet_bytes)
                            .unwrap_or(u32::MAX)
                            .max(1),
                    )
                    .u16(prop::TOPIC_ALIAS_MAXIMUM, 0)
                    .u8(prop::SUBSCRIPTION_IDS_AVAILABLE, 0)
                    .u8(prop::SHARED_AVAILABLE, 0);
                if let Some(ka) = self.server_keep_alive {
                    p.u16(prop::SERVER_KEEP_ALIVE, ka);
                }
                if self.session_expiry_asked {
                    p.u32(prop::SESSION_EXPIRY, 0);
                }
                mqtt::write_connack(&mut self.out, Version::V5, reason::SUCCESS, Some(&p));
            }
        }
    }

    /// Refuses the CONNECT: queues CONNACK with the code; the task writes it and closes.
    pub fn reject_connect(&mut self, why: ConnectRefusal) {
        if self.state != State::Connecting {
            return;
        }
        self.refuse(why.code(self.version));
    }

    fn refuse(&mut self, code: u8) {
        mqtt::write_connack(&mut self.out, self.version, code, None);
        self.state = State::Closed;
        self.sealed = true;
    }

    /// Answers a request: queues its PUBACK (QoS 1; in arrival order, holding back answers
    /// that complete early) and a PUBLISH of `response` (JSON from
    /// `proto::encode_response`) on the v5 Response Topic with the Correlation Data, or on
    /// `u/<uid>/<device>/rs`. Unknown or already answered tickets are ignored.
    pub fn complete(&mut self, ticket: Ticket, response: &[u8]) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.ticket == ticket.0 && p.done.is_none())
        else {
            return;
        };
        if i == 0 {
            if let Some(p) = self.pending.pop_front() {
                self.emit(&p, response);
            }
            self.drain();
        } else {
            self.pending[i].done = Some(response.to_vec());
        }
    }

    /// Writes every answered request at the front of the FIFO.
    fn drain(&mut self) {
        while self.pending.front().is_some_and(|p| p.done.is_some()) {
            let Some(mut p) = self.pending.pop_front() else {
                break;
            };
            let response = p.done.take().unwrap_or_default();
            self.emit(&p, &response);
        }
    }

    fn emit(&mut self, p: &Pending, response: &[u8]) {
        if self.sealed {
            return;
        }
        if p.respond {
            let topic = p.topic.as_deref().unwrap_or(&self.rs_topic);
            let corr = match self.version {
                Version::V5 => p.correlation.as_deref(),
                Version::V311 => None,
            };
            // A response over the client's Maximum Packet Size is dropped (MQTT-3.1.2-25).
            if mqtt::publish_len(self.version, topic, corr, response.len())
                <= self.client_max_packet
            {
                mqtt::write_publish(&mut self.out, self.version, topic, corr, response);
            }
        }
        if let Some((kind, id)) = p.ack {
            mqtt::write_ack(&mut self.out, self.version, kind, id, p.reason);
            if kind == AckKind::PubRec {
                self.qos2.push(id);
            }
        }
    }

    /// Appends a QoS 0 PUBLISH of `event` on `u/<uid>/<device>/ev` to `out` (events are
    /// serialized once and framed per connection). Nothing before the CONNECT is accepted,
    /// and nothing over the v5 client's Maximum Packet Size.
    pub fn write_event(&self, event: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Ready || self.sealed {
            return;
        }
        if mqtt::publish_len(self.version, &self.ev_topic, None, event.len())
            <= self.client_max_packet
        {
            mqtt::write_publish(out, self.version, &self.ev_topic, None, event);
        }
    }

    /// Queues the server-side close (v5 DISCONNECT with the reason code; nothing for 3.1.1).
    /// Later calls and later output are ignored.
    pub fn close(&mut self, why: CloseReason) {
        self.disconnect(why.code());
        self.state = State::Closed;
    }

    /// v5 and accepted: queue a DISCONNECT (once). Seals the output either way.
    fn disconnect(&mut self, code: u8) {
        if !self.sealed && self.state == State::Ready {
            mqtt::write_disconnect(&mut self.out, self.version, code);
        }
        self.sealed = true;
    }

    /// Appends every queued outgoing packet (CONNACK, SUBACK, PUBACK, responses, PINGRESP,
    /// DISCONNECT) to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        // A copy, so the caller keeps (and reuses) its own write buffer; a large response
        // does not leave a large buffer behind in an idle session.
        out.extend_from_slice(&self.out);
        self.out.clear();
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
    }

    /// When `handle_timeout` must next be called (keep alive; CONNECT deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitConnect | State::Connecting => Some(self.created + CONNECT_TIMEOUT),
            State::Ready => self.idle_timeout.map(|d| self.last_rx + d),
            State::Closed => None,
        }
    }

    /// Err(KeepAliveTimeout) once nothing arrived for 1.5 x keep alive (v5: DISCONNECT 0x8D
    /// queued), or no CONNECT within 10 s of the connection.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.poll_timeout() {
            Some(t) if now >= t => {
                self.disconnect(reason::KEEP_ALIVE_TIMEOUT);
                self.state = State::Closed;
                Err(SessionError::KeepAliveTimeout)
            }
            _ => Ok(()),
        }
    }

    /// Requests received whose answer has not been written yet (the task stops reading at
    /// Receive Maximum).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Closes for a violation: v5 (accepted) DISCONNECT with `code`, then the error.
    fn violation(&mut self, code: u8, err: SessionError) -> Result<(), SessionError> {
        self.disconnect(code);
        self.state = State::Closed;
        Err(err)
    }

    fn fail(&mut self, e: DecodeError) -> Result<(), SessionError> {
        let (code, err) = decode_error(e);
        self.violation(code, err)
    }

    fn packet(&mut self, frame: &Bytes) -> Result<(), SessionError> {
        if self.state == State::AwaitConnect {
            if mqtt::packet_kind(frame) != Some(mqtt::kind::CONNECT) {
                return self.violation(
                    reason::PROTOCOL_ERROR,
                    SessionError::Protocol("MQTT-3.1.0-1: first packet is not CONNECT"),
                );
            }
            return match mqtt::decode(frame, Version::V311) {
                Ok(Packet::Connect(c)) => self.on_connect(frame, *c),
                Ok(_) => self.violation(
                    reason::PROTOCOL_ERROR,
                    SessionError::Protocol("not a CONNECT"),
                ),
                Err(DecodeError::UnsupportedLevel(level)) => {
                    if level < 5 {
                        self.version = Version::V311;
                        self.refuse(reason::v3::UNACCEPTABLE_PROTOCOL_VERSION);
                    } else {
                        self.version = Version::V5;
                        self.refuse(reason::UNSUPPORTED_PROTOCOL_VERSION);
                    }
                    Err(SessionError::Refused)
                }
                Err(e) => self.fail(e),
            };
        }
        let pkt = match mqtt::decode(frame, self.version) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        match pkt {
            Packet::Connect(_) => self.violation(
                reason::PROTOCOL_ERROR,
                SessionError::Protocol("MQTT-3.1.0-2: second CONNECT"),
            ),
            Packet::Publish(p) => self.on_publish(frame, p),
            // The server publishes QoS 0 only: acknowledgements from the client are moot.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::PubRel(a) => self.on_pubrel(a.packet_id),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                let mut codes: SmallVec<[u8; 4]> = SmallVec::new();
                for f in u.filters() {
                    match self.filters.iter().position(|g| &**g == f) {
                        Some(i) => {
                            self.filters.swap_remove(i);
                            codes.push(reason::SUCCESS);
                        }
                        None => codes.push(reason::NO_SUBSCRIPTION_EXISTED),
                    }
                }
                if !self.sealed {
                    mqtt::write_unsuback(&mut self.out, self.version, u.packet_id, &codes);
                }
                self.update_subscribed();
                Ok(())
            }
            Packet::PingReq => {
                if !self.sealed {
                    mqtt::write_pingresp(&mut self.out);
                }
                Ok(())
            }
            Packet::Disconnect(_) => {
                self.state = State::Closed;
                self.events.push_back(SessionEvent::Disconnected);
                Ok(())
            }
            Packet::Auth(_) => self.violation(
                reason::PROTOCOL_ERROR,
                SessionError::Protocol("AUTH without an authentication exchange"),
            ),
        }
    }

    fn on_connect(&mut self, frame: &Bytes, c: mqtt::Connect<'_>) -> Result<(), SessionError> {
        self.version = c.version;
        if c.client_id.is_empty() {
            self.refuse(ConnectRefusal::BadClientId.code(c.version));
            return Err(SessionError::Refused);
        }
        if c.props.auth_method.is_some() {
            // Enhanced authentication is not supported (MQTT 5 §4.12).
            self.refuse(reason::BAD_AUTHENTICATION_METHOD);
            return Err(SessionError::Refused);
        }
        let cap = self.cfg.keepalive_max_secs;
        let ka = match (c.keep_alive, cap) {
            (k, 0) => k,
            (0, cap) => cap,
            (k, cap) => k.min(cap),
        };
        if ka != c.keep_alive {
            self.server_keep_alive = Some(ka);
        }
        self.idle_timeout = (ka > 0).then(|| Duration::from_millis(u64::from(ka) * 1500));
        if let Some(m) = c.props.maximum_packet_size {
            self.client_max_packet = usize::try_from(m).unwrap_or(usize::MAX);
        }
        self.session_expiry_asked = c.props.session_expiry.is_some_and(|s| s > 0);
        self.state = State::Connecting;
        self.events.push_back(SessionEvent::Connect {
            version: c.version,
            client_id: c.client_id.to_owned(),
            username: c.username.map(str::to_owned),
            password: c.password.map(|p| frame.slice_ref(p)),
            keep_alive: c.keep_alive,
        });
        Ok(())
    }

    /// QoS > 0 requests whose acknowledgement the client has not been sent yet.
    fn unacked(&self) -> usize {
        self.pending.iter().filter(|p| p.ack.is_some()).count() + self.qos2.len()
    }

    fn on_publish(&mut self, frame: &Bytes, p: mqtt::Publish<'_>) -> Result<(), SessionError> {
        let v5 = self.version == Version::V5;
        if p.props.topic_alias.is_some() {
            return self.violation(
                reason::TOPIC_ALIAS_INVALID,
                SessionError::Protocol("topic alias (Topic Alias Maximum is 0)"),
            );
        }
        if v5 && p.qos == 2 {
            return self.violation(
                reason::QOS_NOT_SUPPORTED,
                SessionError::Protocol("QoS 2 (Maximum QoS is 1)"),
            );
        }
        if p.retain {
            return self.violation(
                reason::RETAIN_NOT_SUPPORTED,
                SessionError::Protocol("retained PUBLISH (Retain Available is 0)"),
            );
        }
        if v5 && p.qos > 0 && self.unacked() >= usize::from(self.cfg.receive_maximum.max(1)) {
            return self.violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                SessionError::Protocol("receive maximum exceeded"),
            );
        }
        let ack = match (p.qos, p.packet_id) {
            (1, Some(id)) => Some((AckKind::PubAck, id)),
            (2, Some(id)) => {
                if self.qos2.contains(&id) {
                    // Resent before our PUBREC arrived: acknowledge again, process once.
                    if !self.sealed {
                        mqtt::write_ack(&mut self.out, self.version, AckKind::PubRec, id, 0);
                    }
                    return Ok(());
                }
                if self
                    .pending
                    .iter()
                    .any(|q| q.ack == Some((AckKind::PubRec, id)))
                {
                    return Ok(()); // already being processed; its PUBREC will follow
                }
                Some((AckKind::PubRec, id))
            }
            _ => None,
        };
        let method = p.topic.strip_prefix("rq/").and_then(Method::from_name);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let Some(method) = method else {
            // Not a request topic: refused, in order with the other acknowledgements.
            let refusal = if v5 {
                Pending {
                    ticket,
                    ack,
                    reason: reason::NOT_AUTHORIZED,
                    respond: false,
                    topic: None,
                    correlation: None,
                    done: Some(Vec::new()),
                }
            } else {
                let id = request_id(p.payload);
                let body = proto::encode_response(
                    id.as_deref(),
                    &Err(ApiError::forbidden(
                        "clients may publish only on rq/<method> with a known method",
                    )),
                );
                Pending {
                    ticket,
                    ack,
                    reason: 0,
                    respond: true,
                    topic: None,
                    correlation: None,
                    done: Some(body),
                }
            };
            if refusal.ack.is_some() || refusal.respond {
                self.pending.push_back(refusal);
                self.drain();
            }
            return Ok(());
        };
        let topic = match p.props.response_topic {
            Some(t) if v5 && t.starts_with(&self.prefix) => Some(Box::from(t)),
            _ => None,
        };
        let correlation = p.props.correlation_data.map(|c| frame.slice_ref(c));
        self.pending.push_back(Pending {
            ticket,
            ack,
            reason: 0,
            respond: true,
            topic,
            correlation,
            done: None,
        });
        self.events.push_back(SessionEvent::Request {
            ticket: Ticket(ticket),
            method,
            payload: frame.slice_ref(p.payload),
        });
        Ok(())
    }

    fn on_pubrel(&mut self, id: u16) -> Result<(), SessionError> {
        if let Some(i) = self.qos2.iter().position(|&q| q == id) {
            self.qos2.swap_remove(i);
            if !self.sealed {
                mqtt::write_ack(&mut self.out, self.version, AckKind::PubComp, id, 0);
            }
            return Ok(());
        }
        if self
            .pending
            .iter()
            .any(|q| q.ack == Some((AckKind::PubRec, id)))
        {
            return self.violation(
                reason::PROTOCOL_ERROR,
                SessionError::Protocol("PUBREL before PUBREC"),
            );
        }
        if !self.sealed {
            mqtt::write_ack(
                &mut self.out,
                self.version,
                AckKind::PubComp,
                id,
                reason::PACKET_ID_NOT_FOUND,
            );
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: mqtt::Subscribe<'_>) -> Result<(), SessionError> {
        let v5 = self.version == Version::V5;
        if v5 && s.props.subscription_id.is_some() {
            return self.violation(
                reason::SUBSCRIPTION_IDS_NOT_SUPPORTED,
                SessionError::Protocol("subscription identifier (not available)"),
            );
        }
        let refused = if v5 {
            reason::NOT_AUTHORIZED
        } else {
            reason::v3::SUBACK_FAILURE
        };
        let mut codes: SmallVec<[u8; 4]> = SmallVec::new();
        for (f, opts) in s.filters() {
            let code = if !mqtt::valid_filter(f) {
                if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::v3::SUBACK_FAILURE
                }
            } else if v5 && f.starts_with("$share/") {
                reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if !f.starts_with(&self.user_prefix) {
                refused
            } else if self.filters.iter().any(|g| &**g == f) {
                opts.qos.min(1)
            } else if self.filters.len() >= MAX_FILTERS {
                if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::v3::SUBACK_FAILURE
                }
            } else {
                self.filters.push(Box::from(f));
                opts.qos.min(1)
            };
            codes.push(code);
        }
        if !self.sealed {
            mqtt::write_suback(&mut self.out, self.version, s.packet_id, &codes);
        }
        self.update_subscribed();
        Ok(())
    }

    /// Emits `Subscribed` / `Unsubscribed` when whether some filter covers the event topic
    /// changes: the server publishes events only on a subscribed topic (MQTT-3.3.2: a
    /// PUBLISH goes to matching subscriptions).
    fn update_subscribed(&mut self) {
        let now = self
            .filters
            .iter()
            .any(|f| topic_matches(f, &self.ev_topic));
        if now != self.subscribed {
            self.subscribed = now;
            self.events.push_back(if now {
                SessionEvent::Subscribed
            } else {
                SessionEvent::Unsubscribed
            });
        }
    }
}

/// Whether topic filter `filter` (with `+` and `#` wildcards) matches topic name `topic`.
fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::header::write_bytes;
    use crate::mqtt::test_util::{connect_bytes, frame};

    const V3: Version = Version::V311;
    const V5: Version = Version::V5;

    fn cfg() -> SessionConfig {
        SessionConfig {
            max_packet_bytes: 4096,
            keepalive_max_secs: 60,
            receive_maximum: 4,
        }
    }

    struct T {
        s: Session,
        t0: Instant,
        now: Instant,
        buf: BytesMut,
        v: Version,
    }

    impl T {
        fn new() -> T {
            let t0 = Instant::now();
            T {
                s: Session::new(cfg(), t0),
                t0,
                now: t0,
                buf: BytesMut::new(),
                v: V3,
            }
        }

        fn feed(&mut self, b: &[u8]) -> Result<(), SessionError> {
            self.buf.extend_from_slice(b);
            self.s.handle_bytes(self.now, &mut self.buf)
        }

        fn out(&mut self) -> Vec<u8> {
            let mut o = Vec::new();
            self.s.poll_transmit(&mut o);
            o
        }

        fn events(&mut self) -> Vec<SessionEvent> {
            std::iter::from_fn(|| self.s.poll_event()).collect()
        }

        fn advance(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        /// Connected and accepted as alice/phone; CONNACK and events drained.
        fn connected(v: Version, keep_alive: u16) -> T {
            let mut t = T::new();
            t.v = v;
            t.feed(&connect(v, keep_alive)).unwrap();
            assert!(matches!(t.events()[..], [SessionEvent::Connect { .. }]));
            t.s.accept_connect("alice", "phone");
            t.feed(&[]).unwrap();
            assert_eq!(t.out()[0], 0x20);
            t
        }
    }

    fn connect(v: Version, keep_alive: u16) -> Vec<u8> {
        match v {
            V3 => connect_bytes(
                4,
                0xC2,
                keep_alive,
                &[],
                b"phone",
                None,
                Some("alice"),
                Some(b"tok"),
            ),
            V5 => connect_bytes(
                5,
                0xC2,
                keep_alive,
                &[0],
                b"phone",
                None,
                Some("alice"),
                Some(b"tok"),
            ),
        }
    }

    /// A client PUBLISH: v5 gets the property block `props` (empty when `None`).
    fn publish(
        v: Version,
        qos: u8,
        topic: &str,
        id: u16,
        props: Option<&PropWriter>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        write_bytes(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if v == V5 {
            match props {
                Some(p) => p.write(&mut body),
                None => body.push(0),
            }
        }
        body.extend_from_slice(payload);
        frame(0x30 | (qos << 1), &body)
    }

    fn subscribe(v: Version, id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        if v == V5 {
            body.push(0);
        }
        for (f, q) in filters {
            write_bytes(&mut body, f.as_bytes());
            body.push(*q);
        }
        frame(0x82, &body)
    }

    fn ack(v: Version, kind: AckKind, id: u16, reason: u8) -> Vec<u8> {
        let mut o = Vec::new();
        mqtt::write_ack(&mut o, v, kind, id, reason);
        o
    }

    fn resp(v: Version, topic: &str, corr: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        mqtt::write_publish(&mut o, v, topic, corr, payload);
        o
    }

    fn disconnect(code: u8) -> Vec<u8> {
        vec![0xE0, 2, code, 0]
    }

    fn tickets(evs: &[SessionEvent]) -> Vec<Ticket> {
        evs.iter()
            .filter_map(|e| match e {
                SessionEvent::Request { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .collect()
    }

    fn rm_v5(b: &[u8]) -> rmqtt_codec::v5::Packet {
        use tokio_util::codec::Decoder;
        let mut buf = BytesMut::from(b);
        rmqtt_codec::v5::Codec::new(0, 0)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn v311_connect_accept() {
        let mut t = T::new();
        t.feed(&connect(V3, 30)).unwrap();
        let evs = t.events();
        let [SessionEvent::Connect {
            version,
            client_id,
            username,
            password,
            keep_alive,
        }] = &evs[..]
        else {
            panic!("{evs:?}")
        };
        assert_eq!(
            (*version, client_id.as_str(), username.as_deref()),
            (V3, "phone", Some("alice"))
        );
        assert_eq!((password.as_deref(), *keep_alive), (Some(&b"tok"[..]), 30));
        assert!(t.out().is_empty());
        t.s.accept_connect("alice", "phone");
        assert_eq!(t.out(), [0x20, 2, 0, 0]);
        assert!(t.s.is_ready());
    }

    #[test]
    fn v5_connack_properties() {
        let mut t = T::new();
        t.feed(&connect(V5, 0)).unwrap();
        t.events();
        t.s.accept_connect("alice", "phone");
        let rmqtt_codec::v5::Packet::ConnectAck(a) = rm_v5(&t.out()) else {
            panic!()
        };
        assert_eq!(a.reason_code as u8, 0);
        assert!(!a.session_present);
        assert_eq!(a.receive_max.get(), 4);
        assert_eq!(a.max_qos.value(), 1);
        assert_eq!(a.max_packet_size, Some(4096));
        assert_eq!(a.topic_alias_max, 0);
        assert!(!a.retain_available && !a.shared_subscription_available);
        assert!(!a.subscription_identifiers_available);
        // Keep alive 0 asked: the cap is imposed and said.
        assert_eq!(a.server_keepalive_sec, Some(60));
        assert_eq!(a.session_expiry_interval_secs, None);
    }

    #[test]
    fn reject_per_version() {
        for (v, why, want) in [
            (V3, ConnectRefusal::BadCredentials, vec![0x20, 2, 0, 4]),
            (V3, ConnectRefusal::NotAuthorized, vec![0x20, 2, 0, 5]),
            (V3, ConnectRefusal::BadClientId, vec![0x20, 2, 0, 2]),
            (V3, ConnectRefusal::ServerUnavailable, vec![0x20, 2, 0, 3]),
            (
                V5,
                ConnectRefusal::BadCredentials,
                vec![0x20, 3, 0, 0x86, 0],
            ),
            (V5, ConnectRefusal::NotAuthorized, vec![0x20, 3, 0, 0x87, 0]),
            (V5, ConnectRefusal::BadClientId, vec![0x20, 3, 0, 0x85, 0]),
            (
                V5,
                ConnectRefusal::ServerUnavailable,
                vec![0x20, 3, 0, 0x89, 0],
            ),
        ] {
            let mut t = T::new();
            t.feed(&connect(v, 10)).unwrap();
            t.s.reject_connect(why);
            assert_eq!(t.out(), want);
            // Nothing more is decoded or written.
            t.feed(&[0xC0, 0]).unwrap();
            t.s.accept_connect("alice", "phone");
            t.s.close(CloseReason::Kicked);
            assert!(t.out().is_empty());
            assert_eq!(t.s.poll_timeout(), None);
        }
    }

    #[test]
    fn empty_client_id_refused() {
        let mut t = T::new();
        let b = connect_bytes(4, 0x02, 0, &[], b"", None, None, None);
        assert_eq!(t.feed(&b), Err(SessionError::Refused));
        assert_eq!(t.out(), [0x20, 2, 0, 2]);
        assert!(t.events().is_empty());
        let mut t = T::new();
        let b = connect_bytes(5, 0x02, 0, &[0], b"", None, None, None);
        assert_eq!(t.feed(&b), Err(SessionError::Refused));
        assert_eq!(t.out(), [0x20, 3, 0, 0x85, 0]);
    }

    #[test]
    fn mqtt_3_1_2_2_unsupported_level() {
        let mut t = T::new();
        let b = [
            0x10, 12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 0,
        ];
        assert_eq!(t.feed(&b), Err(SessionError::Refused));
        assert_eq!(t.out(), [0x20, 2, 0, 1]);
        let mut t = T::new();
        let mut b = connect(V5, 0);
        b[8] = 6;
        assert_eq!(t.feed(&b), Err(SessionError::Refused));
        assert_eq!(t.out(), [0x20, 3, 0, 0x84, 0]);
    }

    #[test]
    fn v5_auth_method_refused() {
        let mut t = T::new();
        let b = connect_bytes(5, 0x02, 0, &[4, 0x15, 0, 1, b'x'], b"d", None, None, None);
        assert_eq!(t.feed(&b), Err(SessionError::Refused));
        assert_eq!(t.out(), [0x20, 3, 0, 0x8C, 0]);
    }

    #[test]
    fn wills_accepted_never_published() {
        for (level, props) in [(4u8, &[][..]), (5, &[0][..])] {
            let mut t = T::new();
            let b = connect_bytes(
                level,
                0x2E,
                10,
                props,
                b"phone",
                Some((b"w/t", b"bye")),
                None,
                None,
            );
            t.feed(&b).unwrap();
            assert!(matches!(t.events()[..], [SessionEvent::Connect { .. }]));
            t.s.accept_connect("alice", "phone");
            t.out();
            t.feed(&[0xE0, 0]).unwrap();
            assert!(matches!(t.events()[..], [SessionEvent::Disconnected]));
            assert!(t.out().is_empty());
        }
    }

    #[test]
    fn mqtt_3_1_0_1_first_packet_connect() {
        let mut t = T::new();
        assert!(matches!(t.feed(&[0xC0, 0]), Err(SessionError::Protocol(_))));
        assert!(t.out().is_empty());
        // A malformed CONNECT closes without an answer.
        let mut t = T::new();
        assert!(matches!(
            t.feed(&[0x10, 2, 0, 0]),
            Err(SessionError::Malformed(_))
        ));
        assert!(t.out().is_empty());
    }

    #[test]
    fn mqtt_3_1_0_2_second_connect() {
        let mut t = T::connected(V5, 10);
        assert!(matches!(
            t.feed(&connect(V5, 10)),
            Err(SessionError::Protocol(_))
        ));
        assert_eq!(t.out(), disconnect(0x82));
        let mut t = T::connected(V3, 10);
        assert!(t.feed(&connect(V3, 10)).is_err());
        assert!(t.out().is_empty());
    }

    #[test]
    fn pipelined_packets_wait_for_accept() {
        let mut t = T::new();
        let mut b = connect(V3, 10);
        b.extend(subscribe(V3, 1, &[("u/alice/phone/#", 1)]));
        t.feed(&b).unwrap();
        assert_eq!(t.events().len(), 1);
        assert!(!t.buf.is_empty());
        t.s.accept_connect("alice", "phone");
        t.feed(&[]).unwrap();
        assert!(matches!(t.events()[..], [SessionEvent::Subscribed]));
        assert_eq!(t.out(), [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]);
    }

    #[test]
    fn request_answered_with_response_then_puback() {
        for v in [V3, V5] {
            let mut t = T::connected(v, 10);
            t.feed(&publish(v, 1, "rq/send", 7, None, br#"{"to":"bob"}"#))
                .unwrap();
            let evs = t.events();
            let [SessionEvent::Request {
                ticket,
                method,
                payload,
            }] = &evs[..]
            else {
                panic!("{evs:?}")
            };
            assert_eq!(
                (*method, &payload[..]),
                (Method::Send, &br#"{"to":"bob"}"#[..])
            );
            assert_eq!(t.s.in_flight(), 1);
            assert!(t.out().is_empty());
            t.s.complete(*ticket, b"{\"code\":0}");
            let mut want = resp(v, "u/alice/phone/rs", None, b"{\"code\":0}");
            want.extend(ack(v, AckKind::PubAck, 7, 0));
            assert_eq!(t.out(), want);
            assert_eq!(t.s.in_flight(), 0);
            // A second completion of the same ticket is ignored.
            t.s.complete(*ticket, b"x");
            assert!(t.out().is_empty());
        }
    }

    #[test]
    fn mqtt_4_6_0_2_pubacks_in_arrival_order() {
        let mut t = T::connected(V3, 10);
        for id in 1..=3 {
            t.feed(&publish(V3, 1, "rq/sync", id, None, b"{}")).unwrap();
        }
        t.feed(&publish(V3, 0, "rq/read", 0, None, b"{}")).unwrap();
        let tk = tickets(&t.events());
        assert_eq!(tk.len(), 4);
        t.s.complete(tk[2], b"r3");
        t.s.complete(tk[3], b"r4");
        t.s.complete(tk[1], b"r2");
        assert!(t.out().is_empty());
        assert_eq!(t.s.in_flight(), 4);
        t.s.complete(tk[0], b"r1");
        let mut want = Vec::new();
        for (i, r) in [b"r1", b"r2", b"r3"].iter().enumerate() {
            want.extend(resp(V3, "u/alice/phone/rs", None, *r));
            want.extend(ack(V3, AckKind::PubAck, i as u16 + 1, 0));
        }
        want.extend(resp(V3, "u/alice/phone/rs", None, b"r4"));
        assert_eq!(t.out(), want);
        assert_eq!(t.s.in_flight(), 0);
    }

    #[test]
    fn v5_response_topic_and_correlation_echoed() {
        let mut t = T::connected(V5, 10);
        let mut p = PropWriter::new();
        p.bytes(prop::RESPONSE_TOPIC, b"u/alice/phone/r1")
            .bytes(prop::CORRELATION_DATA, b"abc");
        t.feed(&publish(V5, 1, "rq/sync", 3, Some(&p), b"{}"))
            .unwrap();
        let tk = tickets(&t.events());
        t.s.complete(tk[0], b"ok");
        let mut want = resp(V5, "u/alice/phone/r1", Some(b"abc"), b"ok");
        want.extend(ack(V5, AckKind::PubAck, 3, 0));
        assert_eq!(t.out(), want);
    }

    #[test]
    fn foreign_response_topic_falls_back_to_rs() {
        for topic in [
            &b"u/bob/phone/rs"[..],
            b"u/alice/tablet/rs",
            b"u/alice/phonex/rs",
            b"rs",
        ] {
            let mut t = T::connected(V5, 10);
            let mut p = PropWriter::new();
            p.bytes(prop::RESPONSE_TOPIC, topic)
                .bytes(prop::CORRELATION_DATA, b"c");
            t.feed(&publish(V5, 0, "rq/sync", 0, Some(&p), b"{}"))
                .unwrap();
            let tk = tickets(&t.events());
            t.s.complete(tk[0], b"ok");
            assert_eq!(t.out(), resp(V5, "u/alice/phone/rs", Some(b"c"), b"ok"));
        }
    }

    #[test]
    fn publish_acl_v5() {
        let mut t = T::connected(V5, 10);
        t.feed(&publish(V5, 1, "rq/sync", 1, None, b"{}")).unwrap();
        for (i, topic) in ["chat/x", "rq/unknown", "rq/send/x"].iter().enumerate() {
            t.feed(&publish(V5, 1, topic, 10 + i as u16, None, b"{}"))
                .unwrap();
        }
        // QoS 0 refusals are dropped silently.
        for topic in ["u/alice/phone/rs", "rq", "x"] {
            t.feed(&publish(V5, 0, topic, 0, None, b"{}")).unwrap();
        }
        let tk = tickets(&t.events());
        assert_eq!(tk.len(), 1);
        // The refusals wait behind the pending request.
        assert!(t.out().is_empty());
        t.s.complete(tk[0], b"ok");
        let mut want = resp(V5, "u/alice/phone/rs", None, b"ok");
        want.extend(ack(V5, AckKind::PubAck, 1, 0));
        for i in 0..3 {
            want.extend(ack(V5, AckKind::PubAck, 10 + i, 0x87));
        }
        assert_eq!(t.out(), want);
    }

    #[test]
    fn publish_acl_v311_answers_403() {
        let mut t = T::connected(V3, 10);
        t.feed(&publish(V3, 1, "chat/x", 4, None, br#"{"id":"7"}"#))
            .unwrap();
        t.feed(&publish(V3, 0, "rq/nope", 0, None, b"not json"))
            .unwrap();
        assert!(t.events().is_empty());
        let e = ApiError::forbidden("clients may publish only on rq/<method> with a known method");
        let mut want = resp(
            V3,
            "u/alice/phone/rs",
            None,
            &proto::encode_response(Some("7"), &Err(e.clone())),
        );
        want.extend(ack(V3, AckKind::PubAck, 4, 0));
        want.extend(resp(
            V3,
            "u/alice/phone/rs",
            None,
            &proto::encode_response(None, &Err(e)),
        ));
        let out = t.out();
        assert_eq!(out, want);
        assert!(out.windows(10).any(|w| w == br#""code":403"#));
    }

    #[test]
    fn subscribe_acl() {
        let filters = [
            ("u/alice/phone/#", 1),
            ("u/bob/#", 1),
            ("#", 0),
            ("u/alice/+/ev", 2),
            ("a/#/b", 0),
            ("u/alice/#", 0),
            ("u/+/phone/#", 0),
            ("u/alice", 0),
        ];
        let mut t = T::connected(V3, 10);
        t.feed(&subscribe(V3, 9, &filters)).unwrap();
        let mut want = Vec::new();
        mqtt::write_suback(&mut want, V3, 9, &[1, 0x80, 0x80, 1, 0x80, 0, 0x80, 0x80]);
        assert_eq!(t.out(), want);
        assert!(matches!(t.events()[..], [SessionEvent::Subscribed]));
        // Subscribed only once.
        t.feed(&subscribe(V3, 10, &[("u/alice/x", 1)])).unwrap();
        assert!(t.events().is_empty());

        let mut t = T::connected(V5, 10);
        t.feed(&subscribe(V5, 9, &filters)).unwrap();
        let mut want = Vec::new();
        mqtt::write_suback(&mut want, V5, 9, &[1, 0x87, 0x87, 1, 0x8F, 0, 0x87, 0x87]);
        assert_eq!(t.out(), want);
        t.feed(&subscribe(V5, 10, &[("$share/g/u/alice/#", 0)]))
            .unwrap();
        let mut want = Vec::new();
        mqtt::write_suback(&mut want, V5, 10, &[0x9E]);
        assert_eq!(t.out(), want);
    }

    #[test]
    fn events_follow_subscriptions_covering_the_event_topic() {
        assert!(topic_matches("u/alice/phone/#", "u/alice/phone/ev"));
        assert!(topic_matches("u/alice/+/ev", "u/alice/phone/ev"));
        assert!(topic_matches("u/alice/#", "u/alice/phone/ev"));
        assert!(!topic_matches("u/alice/phone/rs", "u/alice/phone/ev"));
        assert!(!topic_matches("u/alice/other/#", "u/alice/phone/ev"));
        assert!(!topic_matches("u/alice/phone", "u/alice/phone/ev"));
        let mut t = T::connected(V5, 10);
        // Granted, but not covering this device's events: nothing is pushed yet.
        t.feed(&subscribe(V5, 1, &[("u/alice/phone/rs", 1)]))
            .unwrap();
        assert!(t.events().is_empty());
        t.feed(&subscribe(V5, 2, &[("u/alice/+/ev", 0)])).unwrap();
        assert!(matches!(t.events()[..], [SessionEvent::Subscribed]));
        let mut body = vec![0, 3, 0];
        write_bytes(&mut body, b"u/alice/+/ev");
        t.feed(&frame(0xA2, &body)).unwrap();
        assert!(matches!(t.events()[..], [SessionEvent::Unsubscribed]));
    }

    #[test]
    fn nothing_granted_no_subscribed_event() {
        let mut t = T::connected(V5, 10);
        t.feed(&subscribe(V5, 1, &[("u/bob/#", 1)])).unwrap();
        assert!(t.events().is_empty());
    }

    #[test]
    fn v5_subscription_identifier_refused() {
        let mut t = T::connected(V5, 10);
        let mut body = vec![0, 1, 2, 0x0b, 1];
        write_bytes(&mut body, b"u/alice/#");
        body.push(0);
        assert!(t.feed(&frame(0x82, &body)).is_err());
        assert_eq!(t.out(), disconnect(0xA1));
    }

    #[test]
    fn unsubscribe_v5_reason_codes() {
        let mut t = T::connected(V5, 10);
        t.feed(&subscribe(V5, 1, &[("u/alice/phone/#", 1)]))
            .unwrap();
        t.out();
        let mut body = vec![0, 2, 0];
        write_bytes(&mut body, b"u/alice/phone/#");
        write_bytes(&mut body, b"u/alice/other");
        t.feed(&frame(0xA2, &body)).unwrap();
        assert_eq!(t.out(), [0xB0, 5, 0, 2, 0, 0x00, 0x11]);
        let mut t = T::connected(V3, 10);
        let mut body = vec![0, 2];
        write_bytes(&mut body, b"u/alice/phone/#");
        t.feed(&frame(0xA2, &body)).unwrap();
        assert_eq!(t.out(), [0xB0, 2, 0, 2]);
    }

    #[test]
    fn mqtt_4_3_3_2_qos2_v311_processed_once() {
        let mut t = T::connected(V3, 10);
        let p = publish(V3, 2, "rq/send", 5, None, b"{}");
        t.feed(&p).unwrap();
        let tk = tickets(&t.events());
        assert_eq!(tk.len(), 1);
        // Resent (DUP) while processing: no second request.
        let mut dup = p.clone();
        dup[0] |= 8;
        t.feed(&dup).unwrap();
        assert!(t.events().is_empty());
        assert!(t.out().is_empty());
        t.s.complete(tk[0], b"ok");
        let mut want = resp(V3, "u/alice/phone/rs", None, b"ok");
        want.extend(ack(V3, AckKind::PubRec, 5, 0));
        assert_eq!(t.out(), want);
        // Resent after PUBREC: PUBREC again, still processed once.
        t.feed(&dup).unwrap();
        assert!(t.events().is_empty());
        assert_eq!(t.out(), ack(V3, AckKind::PubRec, 5, 0));
        t.feed(&[0x62, 2, 0, 5]).unwrap();
        assert_eq!(t.out(), ack(V3, AckKind::PubComp, 5, 0));
        // PUBREL again (unknown id): PUBCOMP all the same.
        t.feed(&[0x62, 2, 0, 5]).unwrap();
        assert_eq!(t.out(), ack(V3, AckKind::PubComp, 5, 0));
        // The id is free again: a new QoS 2 publish with it is a new request.
        t.feed(&p).unwrap();
        assert_eq!(tickets(&t.events()).len(), 1);
    }

    #[test]
    fn pubrel_before_pubrec_is_protocol_error() {
        let mut t = T::connected(V3, 10);
        t.feed(&publish(V3, 2, "rq/send", 5, None, b"{}")).unwrap();
        assert!(matches!(
            t.feed(&[0x62, 2, 0, 5]),
            Err(SessionError::Protocol(_))
        ));
    }

    #[test]
    fn mqtt5_3_2_2_11_qos2_above_maximum_qos() {
        let mut t = T::connected(V5, 10);
        assert!(t.feed(&publish(V5, 2, "rq/send", 5, None, b"{}")).is_err());
        assert_eq!(t.out(), disconnect(0x9B));
        assert!(t.events().is_empty());
    }

    #[test]
    fn mqtt5_3_2_2_14_retain_refused() {
        let mut t = T::connected(V5, 10);
        let mut p = publish(V5, 0, "rq/send", 0, None, b"{}");
        p[0] |= 1;
        assert!(t.feed(&p).is_err());
        assert_eq!(t.out(), disconnect(0x9A));
        let mut t = T::connected(V3, 10);
        let mut p = publish(V3, 1, "rq/send", 1, None, b"{}");
        p[0] |= 1;
        assert!(t.feed(&p).is_err());
        assert!(t.out().is_empty());
        assert!(t.events().is_empty());
    }

    #[test]
    fn mqtt5_3_3_2_9_topic_alias_refused() {
        let mut t = T::connected(V5, 10);
        let mut p = PropWriter::new();
        p.u16(prop::TOPIC_ALIAS, 1);
        assert!(t
            .feed(&publish(V5, 0, "rq/send", 0, Some(&p), b"{}"))
            .is_err());
        assert_eq!(t.out(), disconnect(0x94));
    }

    #[test]
    fn mqtt5_3_3_4_7_receive_maximum_exceeded() {
        let mut t = T::connected(V5, 10);
        for id in 1..=4 {
            t.feed(&publish(V5, 1, "rq/sync", id, None, b"{}")).unwrap();
        }
        assert_eq!(t.s.in_flight(), 4);
        assert!(t.feed(&publish(V5, 1, "rq/sync", 5, None, b"{}")).is_err());
        assert_eq!(t.out(), disconnect(0x93));
        // QoS 0 requests do not count against Receive Maximum.
        let mut t = T::connected(V5, 10);
        for _ in 0..10 {
            t.feed(&publish(V5, 0, "rq/sync", 0, None, b"{}")).unwrap();
        }
        assert_eq!(t.s.in_flight(), 10);
    }

    #[test]
    fn mqtt_3_1_2_24_keep_alive_v311() {
        let mut t = T::connected(V3, 10);
        assert_eq!(t.s.poll_timeout(), Some(t.t0 + Duration::from_secs(15)));
        t.advance(9_000);
        t.feed(&[0xC0, 0]).unwrap();
        assert_eq!(t.out(), [0xD0, 0]);
        let deadline = t.now + Duration::from_secs(15);
        assert_eq!(t.s.poll_timeout(), Some(deadline));
        t.advance(14_999);
        assert_eq!(t.s.handle_timeout(t.now), Ok(()));
        t.advance(1);
        assert_eq!(
            t.s.handle_timeout(t.now),
            Err(SessionError::KeepAliveTimeout)
        );
        assert!(t.out().is_empty());
        // 3.1.1 keep alive 0 (none): the cap still applies.
        let t = T::connected(V3, 0);
        assert_eq!(t.s.poll_timeout(), Some(t.t0 + Duration::from_secs(90)));
        let t = T::connected(V3, 600);
        assert_eq!(t.s.poll_timeout(), Some(t.t0 + Duration::from_secs(90)));
    }

    #[test]
    fn keep_alive_v5_capped_and_timeout_disconnect() {
        let mut t = T::new();
        t.feed(&connect(V5, 100)).unwrap();
        t.s.accept_connect("alice", "phone");
        let rmqtt_codec::v5::Packet::ConnectAck(a) = rm_v5(&t.out()) else {
            panic!()
        };
        assert_eq!(a.server_keepalive_sec, Some(60));
        assert_eq!(t.s.poll_timeout(), Some(t.t0 + Duration::from_secs(90)));
        t.advance(90_000);
        assert_eq!(
            t.s.handle_timeout(t.now),
            Err(SessionError::KeepAliveTimeout)
        );
        assert_eq!(t.out(), disconnect(0x8D));
        // Not capped: no Server Keep Alive.
        let mut t = T::new();
        t.feed(&connect(V5, 30)).unwrap();
        t.s.accept_connect("alice", "phone");
        let rmqtt_codec::v5::Packet::ConnectAck(a) = rm_v5(&t.out()) else {
            panic!()
        };
        assert_eq!(a.server_keepalive_sec, None);
    }

    #[test]
    fn connect_deadline() {
        let mut t = T::new();
        assert_eq!(t.s.poll_timeout(), Some(t.t0 + CONNECT_TIMEOUT));
        t.feed(&connect(V3, 10)[..5]).unwrap();
        t.advance(9_999);
        assert_eq!(t.s.handle_timeout(t.now), Ok(()));
        t.advance(1);
        assert_eq!(
            t.s.handle_timeout(t.now),
            Err(SessionError::KeepAliveTimeout)
        );
        // Also while the task has not accepted yet.
        let mut t = T::new();
        t.feed(&connect(V3, 10)).unwrap();
        t.advance(10_000);
        assert!(t.s.handle_timeout(t.now).is_err());
    }

    #[test]
    fn mqtt5_3_2_2_15_oversize_refused_before_buffering() {
        let mut t = T::connected(V5, 10);
        // Only the fixed header of a 5,000-byte PUBLISH has arrived.
        assert_eq!(
            t.feed(&[0x30, 0x88, 0x27]),
            Err(SessionError::TooLarge(5003))
        );
        assert_eq!(t.out(), disconnect(0x95));
        let mut t = T::connected(V3, 10);
        assert!(matches!(
            t.feed(&[0x30, 0x88, 0x27]),
            Err(SessionError::TooLarge(_))
        ));
        assert!(t.out().is_empty());
        let mut t = T::new();
        assert!(matches!(
            t.feed(&[0x10, 0xff, 0xff, 0x7f]),
            Err(SessionError::TooLarge(_))
        ));
        // Exactly at the limit is fine.
        let mut t = T::connected(V3, 10);
        let p = publish(V3, 0, "rq/send", 0, None, &vec![b' '; 4096 - 3 - 9]);
        assert_eq!(p.len(), 4096);
        t.feed(&p).unwrap();
        assert_eq!(tickets(&t.events()).len(), 1);
    }

    #[test]
    fn malformed_and_protocol_errors_v5() {
        // Reserved flags on PINGREQ: malformed.
        let mut t = T::connected(V5, 10);
        assert!(matches!(
            t.feed(&[0xC1, 0]),
            Err(SessionError::Malformed(_))
        ));
        assert_eq!(t.out(), disconnect(0x81));
        // AUTH without an exchange: protocol error.
        let mut t = T::connected(V5, 10);
        assert!(matches!(t.feed(&[0xF0, 0]), Err(SessionError::Protocol(_))));
        assert_eq!(t.out(), disconnect(0x82));
        // Later input is discarded; the DISCONNECT is not repeated.
        t.feed(&[0xC0, 0]).unwrap();
        t.s.close(CloseReason::Kicked);
        assert!(t.out().is_empty());
    }

    #[test]
    fn ping_and_client_disconnect() {
        let mut t = T::connected(V5, 10);
        let mut b = vec![0xC0, 0, 0xE0, 0];
        b.extend_from_slice(&[0xC0, 0]);
        t.feed(&b).unwrap();
        assert!(matches!(t.events()[..], [SessionEvent::Disconnected]));
        assert_eq!(t.out(), [0xD0, 0]);
        assert!(t.buf.is_empty());
    }

    #[test]
    fn mqtt_3_1_4_2_close_reasons_and_takeover() {
        for (why, code) in [
            (CloseReason::SessionTakenOver, 0x8E),
            (CloseReason::SlowConsumer, 0x97),
            (CloseReason::Kicked, 0x98),
            (CloseReason::ServerShuttingDown, 0x8B),
            (CloseReason::KeepAliveTimeout, 0x8D),
        ] {
            let mut t = T::connected(V5, 10);
            t.s.close(why);
            t.s.close(why);
            assert_eq!(t.out(), disconnect(code));
            let mut t = T::connected(V3, 10);
            t.s.close(why);
            assert!(t.out().is_empty());
        }
        // Completions after the close are not written.
        let mut t = T::connected(V5, 10);
        t.feed(&publish(V5, 1, "rq/sync", 1, None, b"{}")).unwrap();
        let tk = tickets(&t.events());
        t.s.close(CloseReason::Kicked);
        t.s.complete(tk[0], b"late");
        assert_eq!(t.out(), disconnect(0x98));
    }

    #[test]
    fn write_event_topic() {
        let t = T::new();
        let mut out = Vec::new();
        t.s.write_event(b"{}", &mut out);
        assert!(out.is_empty(), "nothing before accept");
        for v in [V3, V5] {
            let t = T::connected(v, 10);
            let mut out = Vec::new();
            t.s.write_event(b"{\"k\":\"msg\"}", &mut out);
            assert_eq!(out, resp(v, "u/alice/phone/ev", None, b"{\"k\":\"msg\"}"));
        }
    }

    #[test]
    fn client_maximum_packet_size_respected() {
        let mut t = T::new();
        t.feed(&connect_bytes(
            5,
            0x02,
            10,
            &[5, 0x27, 0, 0, 0, 40],
            b"phone",
            None,
            None,
            None,
        ))
        .unwrap();
        t.s.accept_connect("alice", "phone");
        t.out();
        let mut out = Vec::new();
        t.s.write_event(&[b'x'; 10], &mut out);
        assert_eq!(
            out.len(),
            resp(V5, "u/alice/phone/ev", None, &[b'x'; 10]).len()
        );
        out.clear();
        t.s.write_event(&[b'x'; 30], &mut out);
        assert!(out.is_empty());
        // An oversized response is dropped; its PUBACK still goes.
        t.feed(&publish(V5, 1, "rq/sync", 1, None, b"{}")).unwrap();
        let tk = tickets(&t.events());
        t.s.complete(tk[0], &[b'y'; 40]);
        assert_eq!(t.out(), ack(V5, AckKind::PubAck, 1, 0));
    }

    /// Everything the session does for a byte stream fed in the given pieces, the requests
    /// answered once all is fed.
    fn run(v: Version, pieces: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut t = T::connected(v, 10);
        let mut evs = Vec::new();
        for p in pieces {
            t.feed(p).unwrap();
            evs.extend(t.events());
        }
        for tk in tickets(&evs) {
            t.s.complete(tk, b"r");
        }
        (t.out(), evs.iter().map(|e| format!("{e:?}")).collect())
    }

    #[test]
    fn partial_packets_split_at_every_byte() {
        for v in [V3, V5] {
            let mut stream = subscribe(v, 1, &[("u/alice/phone/#", 1)]);
            let mut p = PropWriter::new();
            if v == V5 {
                p.bytes(prop::CORRELATION_DATA, b"cd").pair("k", "v");
            }
            stream.extend(publish(
                v,
                1,
                "rq/send",
                2,
                Some(&p),
                br#"{"to":"bob","body":"x"}"#,
            ));
            stream.extend([0xC0, 0]);
            stream.extend(publish(v, 0, "rq/sync", 0, None, b""));
            stream.extend(publish(v, 1, "other", 3, None, b"{}"));
            let (want_out, want_evs) = run(v, &[&stream]);
            assert_eq!(want_evs.len(), 3);
            for i in 0..=stream.len() {
                let (out, evs) = run(v, &[&stream[..i], &stream[i..]]);
                assert_eq!((&out, &evs), (&want_out, &want_evs), "split at {i}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(run(v, &bytes), (want_out, want_evs));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..3000 {
            let v = if round % 2 == 0 { V3 } else { V5 };
            let mut t = T::connected(v, 10);
            let n = (round % 64) + 1;
            let mut g = Vec::with_capacity(n);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g.push(x as u8);
            }
            let _ = t.feed(&g);
            for e in t.events() {
                if let SessionEvent::Request { ticket, .. } = e {
                    t.s.complete(ticket, b"r");
                }
            }
            let _ = t.s.handle_timeout(t.now + Duration::from_secs(100));
            t.out();
            // Garbage as the first packet too.
            let mut t = T::new();
            let _ = t.feed(&g);
            t.out();
        }
    }
}
