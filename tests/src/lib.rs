//! Shared harness of Ember's end-to-end tests: the real `ember` binary runs as a child
//! process on loopback with ephemeral ports, and real clients drive it.
//!
//! # Structure
//! - [`process`]: locating (or building) the `ember` binary, writing a config into a temp
//!   dir, starting `ember turn`, reading its `ember: listening ...` lines, stopping it.
//! - [`im`]: the messaging core's admin API client (signed requests) and test secrets.
//! - [`metrics`]: scraping and parsing its Prometheus `/metrics` endpoint, with bounded polls.
//! - [`coturn`]: coturn's `turnutils_uclient` / `turnutils_peer`, uclient's summary output,
//!   and `turnserver` itself as a reference server ([`coturn::CoturnServer`]).
//! - [`stun_client`]: a small blocking STUN/TURN client over raw UDP/TCP sockets, built on
//!   `ember_turn::stun`, for malformed-input and error-code tests.
//! - [`turn_client`]: what webrtc-rs's `turn` client needs to run over TCP and TLS (a
//!   framing `Conn` adapter), TURN REST credentials, and TLS test certificates.
//!
//! Every wait in here is bounded; nothing uses a fixed port.

pub mod coturn;
pub mod im;
pub mod metrics;
pub mod process;
pub mod stun_client;
pub mod turn_client;

pub use process::{Ember, TlsMode, TurnOptions};
