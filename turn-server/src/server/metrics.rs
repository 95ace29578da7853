//! The relay's Prometheus metrics. Workers count in plain integers on the data path and add
//! their deltas here once a second, so no atomic is touched per packet.

use ember_common::metrics::register as reg;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::core::{Gauges, Stats, Transport};

/// Shortest time between two "peer refused" log lines.
const DENIED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Registered metric handles, shared by every worker.
#[derive(Clone)]
pub struct TurnMetrics {
    denied_logged: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    allocations: IntGaugeVec,
    created: IntCounterVec,
    expired: IntCounterVec,
    deleted: IntCounterVec,
    failed: IntCounterVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    auth_failures: IntCounter,
    auth_throttled: IntCounter,
    quota_rejections: IntCounter,
    denied_peers: IntCounter,
    permissions_created: IntCounter,
    channels_bound: IntCounter,
    dropped: IntCounterVec,
    malformed: IntCounter,
    errors_sent: IntCounter,
    permissions: IntGauge,
    channels: IntGauge,
    connections: IntGaugeVec,
}

impl TurnMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let c = |name: &str, help: &str| reg(r, IntCounter::new(name, help)?);
        Ok(TurnMetrics {
            denied_logged: Default::default(),
            allocations: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ember_turn_allocations", "Active TURN allocations"),
                    &["transport"],
                )?,
            )?,
            created: cv("ember_turn_allocations_created_total", "Allocations created", &["transport"])?,
            expired: cv("ember_turn_allocations_expired_total", "Allocations that timed out", &["transport"])?,
            deleted: cv(
                "ember_turn_allocations_deleted_total",
                "Allocations deleted by the client (Refresh 0 or connection closed)",
                &["transport"],
            )?,
            failed: cv(
                "ember_turn_allocations_failed_total",
                "Allocate requests answered with an error after authentication",
                &["transport"],
            )?,
            packets: cv(
                "ember_turn_relayed_packets_total",
                "Packets relayed, by direction",
                &["direction"],
            )?,
            bytes: cv(
                "ember_turn_relayed_bytes_total",
                "Application bytes relayed, by direction",
                &["direction"],
            )?,
            auth_failures: c("ember_turn_auth_failures_total", "Failed authentications")?,
            auth_throttled: c(
                "ember_turn_auth_throttled_total",
                "Requests refused unchecked after repeated failures of their user from their address",
            )?,
            quota_rejections: c("ember_turn_quota_rejections_total", "Allocations refused by a quota (486)")?,
            denied_peers: c(
                "ember_turn_denied_peer_total",
                "Permissions or packets refused by the peer address policy (403)",
            )?,
            permissions_created: c("ember_turn_permissions_created_total", "Permissions installed")?,
            channels_bound: c("ember_turn_channels_bound_total", "Channels bound")?,
            dropped: cv(
                "ember_turn_dropped_packets_total",
                "Relay packets dropped, by reason",
                &["reason"],
            )?,
            malformed: c("ember_turn_malformed_packets_total", "Packets that were not valid STUN or ChannelData")?,
            errors_sent: c("ember_turn_error_responses_total", "STUN error responses sent")?,
            permissions: reg(r, IntGauge::new("ember_turn_permissions", "Active permissions")?)?,
            channels: reg(r, IntGauge::new("ember_turn_channels", "Active channel bindings")?)?,
            connections: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ember_turn_sessions", "Client sessions: open TCP/TLS connections, UDP 5-tuples with an allocation"),
                    &["transport"],
                )?,
            )?,
        })
    }

    /// Adds one worker's counters since its last flush.
    pub fn add(&self, s: &Stats) {
        for t in Transport::ALL {
            let i = t.index();
            let l = [t.as_str()];
            self.created
                .with_label_values(&l)
                .inc_by(s.allocations_created[i]);
            self.expired
                .with_label_values(&l)
                .inc_by(s.allocations_expired[i]);
            self.deleted
                .with_label_values(&l)
                .inc_by(s.allocations_deleted[i]);
            self.failed
                .with_label_values(&l)
                .inc_by(s.allocations_failed[i]);
        }
        self.packets
            .with_label_values(&["client_to_peer"])
            .inc_by(s.packets_to_peer);
        self.packets
            .with_label_values(&["peer_to_client"])
            .inc_by(s.packets_to_client);
        self.bytes
            .with_label_values(&["client_to_peer"])
            .inc_by(s.bytes_to_peer);
        self.bytes
            .with_label_values(&["peer_to_client"])
            .inc_by(s.bytes_to_client);
        self.auth_failures.inc_by(s.auth_failures);
        self.auth_throttled.inc_by(s.auth_throttled);
        self.quota_rejections.inc_by(s.quota_rejections);
        self.denied_peers.inc_by(s.denied_peers);
        if let Some(ip) = s.last_denied_peer {
            self.log_denied_peer(ip);
        }
        self.permissions_created.inc_by(s.permissions_created);
        self.channels_bound.inc_by(s.channels_bound);
        self.dropped
            .with_label_values(&["no_permission"])
            .inc_by(s.dropped_no_permission);
        self.dropped
            .with_label_values(&["bandwidth"])
            .inc_by(s.dropped_bandwidth);
        self.malformed.inc_by(s.malformed);
        self.errors_sent.inc_by(s.stun_errors_sent);
    }

    /// Says, at most once a minute, that peers were refused: a 403 to CreatePermission
    /// leaves WebRTC users with only "ICE failed", so ops need a trace in the log.
    fn log_denied_peer(&self, ip: std::net::IpAddr) {
        let now = std::time::Instant::now();
        let mut last = self.denied_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < DENIED_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        tracing::info!(
            peer = %ip,
            "turn: refused a peer address by policy (403; private, loopback and reserved \
             ranges are denied unless turn.allowed_peers lists them); \
             ember_turn_denied_peer_total counts them, this line repeats at most once a minute"
        );
    }

    /// Applies the change of one worker's gauges (`now - before`).
    pub fn gauge_delta(
        &self,
        before: &Gauges,
        now: &Gauges,
        conns_before: [i64; 3],
        conns_now: [i64; 3],
    ) {
        for t in Transport::ALL {
            let i = t.index();
            let d = now.allocations[i] as i64 - before.allocations[i] as i64;
            self.allocations.with_label_values(&[t.as_str()]).add(d);
            let sessions = if t == Transport::Udp {
                d
            } else {
                conns_now[i] - conns_before[i]
            };
            self.connections
                .with_label_values(&[t.as_str()])
                .add(sessions);
        }
        self.permissions
            .add(now.permissions as i64 - before.permissions as i64);
        self.channels
            .add(now.channels as i64 - before.channels as i64);
    }
}
