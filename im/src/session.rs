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

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::Method;

/// MQTT protocol level of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

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
    /// The client's first granted subscription: events may be pushed from now on.
    Subscribed,
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

/// The per-connection protocol state machine.
pub struct Session {
    _private: (),
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        let _ = (cfg, now);
        todo!("session")
    }

    /// Decodes every complete packet at the front of `buf` (consuming it; a partial packet
    /// stays). Refusals of ACL violations are answered inside the session (v5 PUBACK 0x87 /
    /// SUBACK 0x87; 3.1.1 PUBACK and a 403 response on `.../rs`, SUBACK 0x80).
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        let _ = (now, buf);
        todo!("session")
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        todo!("session")
    }

    /// Accepts the CONNECT for this user and device: queues CONNACK (v5: Maximum Packet
    /// Size, Receive Maximum, Topic Alias Maximum 0, Maximum QoS 1, Retain/Wildcard/Shared/
    /// Subscription-id unavailable, Server Keep Alive if capped).
    pub fn accept_connect(&mut self, user: &str, device: &str) {
        let _ = (user, device);
        todo!("session")
    }

    /// Refuses the CONNECT: queues CONNACK with the code; the task writes it and closes.
    pub fn reject_connect(&mut self, why: ConnectRefusal) {
        let _ = why;
        todo!("session")
    }

    /// Answers a request: queues its PUBACK (QoS 1; in arrival order, holding back answers
    /// that complete early) and a PUBLISH of `response` (JSON from
    /// `proto::encode_response`) on the v5 Response Topic with the Correlation Data, or on
    /// `u/<uid>/<device>/rs`.
    pub fn complete(&mut self, ticket: Ticket, response: &[u8]) {
        let _ = (ticket, response);
        todo!("session")
    }

    /// Appends a QoS 0 PUBLISH of `event` on `u/<uid>/<device>/ev` to `out` (events are
    /// serialized once and framed per connection).
    pub fn write_event(&self, event: &[u8], out: &mut Vec<u8>) {
        let _ = (event, out);
        todo!("session")
    }

    /// Queues the server-side close (v5 DISCONNECT with the reason code; nothing for 3.1.1).
    pub fn close(&mut self, why: CloseReason) {
        let _ = why;
        todo!("session")
    }

    /// Appends every queued outgoing packet (CONNACK, SUBACK, PUBACK, responses, PINGRESP,
    /// DISCONNECT) to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("session")
    }

    /// When `handle_timeout` must next be called (keep alive; CONNECT deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!("session")
    }

    /// Err(KeepAliveTimeout) once nothing arrived for 1.5 x keep alive, or no CONNECT
    /// within 10 s of the connection.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let _ = now;
        todo!("session")
    }

    /// Requests received but not yet answered (the task stops reading at Receive Maximum).
    pub fn in_flight(&self) -> usize {
        todo!("session")
    }
}
