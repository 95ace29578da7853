//! Ember's messaging core: the server every app client keeps one connection to.
//!
//! - [`mqtt`]: sans-IO MQTT 3.1.1 / 5 codec (decode client packets, encode server packets).
//! - [`session`]: one connection's protocol state and topic ACL, bytes in / bytes out.
//! - [`proto`]: the JSON requests, responses and events of `docs/PROTOCOL.md`.
//! - [`engine`]: users, groups, timelines, messages; group commit into the store.
//! - [`router`]: who is online on which connection; fans committed events out.
//! - [`token`]: login tokens binding a user and a device.
//! - [`admin`]: the signed admin API for the app's back end (OpenAPI documented).
//! - [`http`]: the short-link HTTP API (`/api/version`, `/route`).
//! - [`server`]: the tokio shell: TCP / TLS / WebSocket listeners and connection tasks.
//! - [`metrics`]: Prometheus metrics of the messaging core.
//! - [`service`]: assembles all of the above from `[im]` for `ember im` / `ember up`.

pub mod admin;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod proto;
pub mod router;
pub mod server;
pub mod service;
pub mod session;
pub mod token;
