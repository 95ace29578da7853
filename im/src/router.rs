//! Who is online where: the registry of connected devices, their outboxes, and which online
//! users are in which group; fans committed events out without blocking the engine.

use std::sync::Arc;

/// One online device, as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub device: Arc<str>,
    /// "tcp", "tls", "ws", "wss".
    pub transport: &'static str,
    /// "3.1.1" or "5".
    pub version: &'static str,
    pub remote: String,
    /// Unix milliseconds.
    pub since: i64,
}

/// What the admin API needs from the online registry.
pub trait Presence: Send + Sync + 'static {
    /// The online devices of a user.
    fn devices(&self, uid: &str) -> Vec<DeviceInfo>;
    /// Disconnects one device (or all of the user's when `device` is None); how many.
    fn kick(&self, uid: &str, device: Option<&str>) -> usize;
}
