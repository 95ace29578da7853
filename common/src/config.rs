//! Ember's one TOML config file: the typed sections, their defaults, loading with
//! `EMBER_...` environment overrides, and errors that name the key and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole config file. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub turn: TurnConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// `[turn]`: the STUN/TURN relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the relay under `ember up`.
    pub enabled: bool,
    /// UDP and TCP listeners ("ip:port"); port 0 picks an ephemeral port (tests).
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (TURN over TLS), certificate from `[tls]`. Empty list disables TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// Local addresses relay sockets bind to (at most one IPv4 and one IPv6). Empty: derived
    /// from `listen` when that is a concrete address, else the first non-loopback interface.
    pub relay_ip: Vec<IpAddr>,
    /// Public address advertised in XOR-RELAYED-ADDRESS when behind NAT: either one address
    /// for every relay address, or "relay/public" pairs.
    pub external_ip: Vec<ExternalIp>,
    /// Relay port range, inclusive.
    pub relay_ports: PortRange,
    /// Allow a relay port range smaller than 10,000 ports (logged as a warning).
    pub allow_small_port_range: bool,
    /// Realm of the long-term credential mechanism.
    pub realm: String,
    /// Long-term credentials: user name -> password.
    pub users: BTreeMap<String, String>,
    /// TURN REST API shared secrets (coturn's `use-auth-secret`); several for rotation.
    pub auth_secrets: Vec<String>,
    /// Peer ranges explicitly allowed even when the default policy denies them.
    pub allowed_peers: Vec<IpNet>,
    /// Extra peer ranges to deny on top of the default policy.
    pub denied_peers: Vec<IpNet>,
    /// Maximum concurrent allocations per user name (0 = unlimited).
    pub user_quota: u32,
    /// Maximum concurrent allocations on the server (0 = unlimited).
    pub total_quota: u32,
    /// Longest allocation lifetime a client may request, seconds.
    pub max_lifetime: u32,
    /// Per-allocation relay bandwidth cap in bytes/s, each direction (0 = none).
    pub bandwidth_limit: u64,
    /// Seconds a nonce stays valid before the server answers 438 Stale Nonce.
    pub nonce_lifetime: u32,
    /// Failed authentications allowed per source IP per minute before requests are dropped.
    pub auth_failures_per_minute: u32,
    /// Worker threads for the data path (0 = one per core).
    pub threads: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            listen: vec!["0.0.0.0:3478".parse().unwrap()],
            tls_listen: vec!["0.0.0.0:5349".parse().unwrap()],
            relay_ip: Vec::new(),
            external_ip: Vec::new(),
            relay_ports: PortRange {
                min: 49152,
                max: 65535,
            },
            allow_small_port_range: false,
            realm: "ember".into(),
            users: BTreeMap::new(),
            auth_secrets: Vec::new(),
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            user_quota: 0,
            total_quota: 0,
            max_lifetime: 3600,
            bandwidth_limit: 0,
            nonce_lifetime: 600,
            auth_failures_per_minute: 30,
            threads: 0,
        }
    }
}

/// `external_ip` entry: `"203.0.113.5"` (for every relay address) or `"10.0.0.5/203.0.113.5"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    pub relay: Option<IpAddr>,
    pub public: IpAddr,
}

impl FromStr for ExternalIp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |p: &str| format!("invalid IP address {p:?} in external_ip {s:?}");
        match s.split_once('/') {
            Some((relay, public)) => Ok(ExternalIp {
                relay: Some(relay.trim().parse().map_err(|_| bad(relay))?),
                public: public.trim().parse().map_err(|_| bad(public))?,
            }),
            None => Ok(ExternalIp {
                relay: None,
                public: s.trim().parse().map_err(|_| bad(s))?,
            }),
        }
    }
}

impl fmt::Display for ExternalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.relay {
            Some(r) => write!(f, "{r}/{}", self.public),
            None => write!(f, "{}", self.public),
        }
    }
}

impl<'de> Deserialize<'de> for ExternalIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Inclusive port range written `"49152-65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("invalid port range {s:?}: expected \"MIN-MAX\" with 1 <= MIN <= MAX <= 65535");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let min: u16 = a.trim().parse().map_err(|_| err())?;
        let max: u16 = b.trim().parse().map_err(|_| err())?;
        if min == 0 || min > max {
            return Err(err());
        }
        Ok(PortRange { min, max })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[tls]`: the certificate used by every TLS listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Empty (with `key` empty): a self-signed certificate is generated
    /// at start (dev only; logged as a warning).
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server that serves `/metrics` (empty string disables it).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "ember_turn=debug,info"; `RUST_LOG` wins when set.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}
