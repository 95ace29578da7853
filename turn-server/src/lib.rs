//! Ember's STUN/TURN relay.
//!
//! # Structure
//! - [`stun`]: the STUN/ChannelData codec (zero-allocation parsing, in-place framing).
//! - [`auth`]: long-term and REST credentials, nonces, the auth-failure limiter.
//! - [`client`]: the client side (requests with credentials, challenges), for `ember selftest`.
//! - [`policy`]: which peer addresses may be relayed to.
//! - [`core`]: the TURN state machine, driven with bytes; no sockets.
//! - [`server`]: the I/O shell: worker threads, batched UDP, TCP/TLS framing, metrics.

pub mod auth;
pub mod client;
pub mod core;
pub mod policy;
pub mod server;
pub mod stun;

pub use server::{StartError, TurnServer};

#[cfg(test)]
mod tests;
