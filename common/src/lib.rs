//! Shared infrastructure of every Ember service: config loading, TLS, the Prometheus
//! registry and its `/metrics` endpoint, graceful shutdown and logging. One place, so no
//! service copies it.
//!
//! # Structure
//! - [`config`]: the TOML config, `EMBER_<SECTION>__<KEY>` overrides, validation.
//! - [`template`]: the commented config file `ember init` writes.
//! - [`tls`]: rustls server config from PEM files (or self-signed), hot reload.
//! - [`metrics`]: the process-wide Prometheus registry and its HTTP endpoint.
//! - [`shutdown`]: a cancellation token fired by SIGINT/SIGTERM; SIGHUP for reloads.
//! - [`logging`]: the tracing subscriber (text or JSON on stderr).

#![warn(missing_docs)]

pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod template;
pub mod tls;
