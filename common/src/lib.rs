//! Shared infrastructure of every Ember service: config loading, TLS, the Prometheus
//! registry and its `/metrics` endpoint, graceful shutdown and logging. One place, so no
//! service copies it.

pub mod config;
