//! Prometheus metrics of the messaging core: connections by transport, connects, requests
//! by method (sync requests included), deliveries and their latency, queue drops and
//! slow-consumer disconnects, request latency (which includes the store's commit), and the
//! store's group commits (latency, batch size, queue depth).

use ember_common::metrics::register as reg;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Registered metric handles, shared by every connection and the router.
#[derive(Debug)]
pub struct ImMetrics {
    /// `ember_im_connections{transport}`.
    pub connections: IntGaugeVec,
    /// `ember_im_connects_total{result}`: ok, bad_credentials, not_authorized, bad_client_id,
    /// unavailable.
    pub connects: IntCounterVec,
    pub takeovers: IntCounter,
    /// `ember_im_requests_total{method}`.
    pub requests: IntCounterVec,
    /// `ember_im_request_errors_total{method,code}`.
    pub request_errors: IntCounterVec,
    /// `ember_im_request_seconds{method}`: request received to answer ready.
    pub request_seconds: HistogramVec,
    /// Events handed to a connection's outbox.
    pub deliveries: IntCounter,
    /// `ember_im_delivery_seconds`: commit to written to the socket.
    pub delivery_seconds: Histogram,
    /// Connections closed because their outbox overflowed (their queue is dropped).
    pub slow_consumers: IntCounter,
    /// Connections closed for protocol errors.
    pub protocol_errors: IntCounter,
    /// `ember_im_store_commit_seconds`: one group commit (transaction + fsync).
    pub store_commit_seconds: Histogram,
    /// `ember_im_store_maintain_seconds`: work between commits (a timeline index slice).
    pub store_maintain_seconds: Histogram,
    /// `ember_im_store_batch_commands`: commands per group commit.
    pub store_batch_commands: Histogram,
    /// `ember_im_store_queue_depth`: commands waiting for the writer after the last commit.
    pub store_queue_depth: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl ImMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<ImMetrics> {
        let c = |name: &str, help: &str| reg(r, IntCounter::new(name, help)?);
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        Ok(ImMetrics {
            connections: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ember_im_connections", "Open client connections"),
                    &["transport"],
                )?,
            )?,
            connects: cv(
                "ember_im_connects_total",
                "MQTT CONNECTs by result",
                &["result"],
            )?,
            takeovers: c(
                "ember_im_takeovers_total",
                "Connections replaced by a new connection of the same device",
            )?,
            requests: cv(
                "ember_im_requests_total",
                "Client requests by method",
                &["method"],
            )?,
            request_errors: cv(
                "ember_im_request_errors_total",
                "Client requests answered with an error, by method and code",
                &["method", "code"],
            )?,
            request_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ember_im_request_seconds",
                        "Request received to answer ready (sends: durable in the store)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["method"],
                )?,
            )?,
            deliveries: c(
                "ember_im_deliveries_total",
                "Events queued to online devices",
            )?,
            delivery_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ember_im_delivery_seconds",
                        "Event committed to written to the recipient's socket",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            slow_consumers: c(
                "ember_im_slow_consumer_disconnects_total",
                "Connections closed because their send queue overflowed (queue dropped)",
            )?,
            protocol_errors: c(
                "ember_im_protocol_errors_total",
                "Connections closed for malformed packets or protocol violations",
            )?,
            store_commit_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ember_im_store_commit_seconds",
                        "One group commit of the message store (transaction and fsync)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            store_maintain_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ember_im_store_maintain_seconds",
                        "Store work between two commits (writing a slice of the timeline index)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            store_batch_commands: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ember_im_store_batch_commands",
                        "Commands committed together in one group commit",
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ]),
                )?,
            )?,
            store_queue_depth: reg(
                r,
                IntGauge::new(
                    "ember_im_store_queue_depth",
                    "Commands waiting for the store writer after its last commit",
                )?,
            )?,
        })
    }
}
