//! Ember's one TOML config file: the typed sections, their defaults, loading with
//! `EMBER_...` environment overrides, and errors that name the key and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole config file. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[turn]`: the STUN/TURN relay.
    pub turn: TurnConfig,
    /// `[tls]`: the certificate of every TLS listener.
    pub tls: TlsConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[selftest]`: the relay self-test page.
    pub selftest: SelftestConfig,
    /// `[storage]`: the object store (S3 / Qiniu dialects, bucket domains).
    pub storage: StorageConfig,
    /// `[log]`: log filter and format.
    pub log: LogConfig,
    /// `[im]`: the messaging core.
    pub im: ImConfig,
}

/// `[turn]`: the STUN/TURN relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Failed authentications allowed per user and source IP per minute; past it the user gets
    /// 401 without a credential check, and an IP failing ten times this across user names is
    /// ignored until the minute ends.
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
    /// The local relay address this entry applies to; `None`: every relay address.
    pub relay: Option<IpAddr>,
    /// The public address clients are told to use.
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

impl Serialize for ExternalIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
    /// Lowest port, at least 1.
    pub min: u16,
    /// Highest port, at least `min`.
    pub max: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }
    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!("invalid port range {s:?}: expected \"MIN-MAX\" with 1 <= MIN <= MAX <= 65535")
        };
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

/// `[tls]`: the certificates of every TLS listener. Each connection gets the certificate
/// for the server name its client asks for (SNI), chosen among `cert` and `certificates`
/// by the DNS names in each certificate itself; `cert` when none matches or no name is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the default certificate. Empty (with `key` empty): a
    /// self-signed certificate is generated at start (dev only; logged as a warning).
    pub cert: String,
    /// PEM private key of `cert`.
    pub key: String,
    /// More certificates (`[[tls.certificates]]`), each served for the DNS names of its
    /// subjectAltName (`*.example.com` covers one label). Their files are reloaded like
    /// `cert`/`key`; adding or removing entries needs a restart.
    pub certificates: Vec<TlsCertificate>,
}

/// One `[[tls.certificates]]` entry: a certificate chain and its key, both PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsCertificate {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

/// `[selftest]`: the relay self-test web page (`/selftest`) and its credential endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelftestConfig {
    /// Serve the page whenever the relay runs.
    pub enabled: bool,
    /// HTTP listeners ("IP:PORT").
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners, certificate from `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// Bearer token that unlocks one-click credentials (`POST /selftest/credentials`);
    /// empty disables that endpoint (the page's form still works with typed credentials).
    pub token: String,
    /// Lifetime of the TURN REST credentials the endpoint hands out, seconds.
    pub credential_ttl: u32,
    /// User name part of those credentials (`<expiry>:<credential_user>`).
    pub credential_user: String,
    /// TURN URLs the page offers; empty: derived from the page's host name and `[turn]`
    /// listen ports.
    pub turn_urls: Vec<String>,
}

impl Default for SelftestConfig {
    fn default() -> Self {
        SelftestConfig {
            enabled: true,
            listen: vec!["0.0.0.0:8088".parse().unwrap()],
            tls_listen: Vec::new(),
            token: String::new(),
            credential_ttl: 600,
            credential_user: "selftest".into(),
            turn_urls: Vec::new(),
        }
    }
}

/// `[storage]`: the object store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Run the object store under `ember up`.
    pub enabled: bool,
    /// HTTP listeners (S3 API, Qiniu upload/management API, bucket domains).
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners, certificates from `[tls]` (one per bucket domain, chosen by SNI).
    pub tls_listen: Vec<SocketAddr>,
    /// Where objects live: "fs" (local disk under `data_dir`) or "s3" (`[storage.upstream]`).
    pub backend: StorageBackend,
    /// Directory of the "fs" backend.
    pub data_dir: PathBuf,
    /// Region clients sign for (SigV4).
    pub region: String,
    /// Access keys: access key -> secret key (S3 SigV4 and Qiniu AK/SK alike).
    pub credentials: BTreeMap<String, String>,
    /// Access keys (from `credentials`) that may only read.
    pub read_only_keys: Vec<String>,
    /// Host-name suffixes for virtual-host-style S3 requests: with "s3.example.com",
    /// `media.s3.example.com` addresses bucket `media`.
    pub s3_domains: Vec<String>,
    /// Download domains, domain -> bucket: `GET https://media.example.com/<key>`.
    pub bucket_domains: BTreeMap<String, String>,
    /// Buckets anyone may read without a signature.
    pub public_buckets: Vec<String>,
    /// Largest object accepted, bytes.
    pub max_object_size: u64,
    /// Buckets created at start when missing.
    pub buckets: Vec<String>,
    /// Base URL clients reach the S3 API and the Qiniu upload host on, as put into the
    /// upload URLs, tokens and download URLs Ember issues (e.g. "https://s3.example.com");
    /// empty = `http://` + the first `listen` address (development).
    pub public_url: String,
    /// Scheme of issued bucket-domain download URLs: "auto" (https when `tls_listen` is set),
    /// "https" (TLS terminated in front of Ember) or "http".
    pub download_scheme: String,
    /// `[storage.upstream]`: the S3/MinIO server behind the "s3" backend.
    pub upstream: UpstreamConfig,
}

/// Why `[storage] public_url` is unusable: it must be empty or `http(s)://host[:port]`,
/// without a path, query or user info (issued URLs append `/<bucket>/<key>` to it).
pub fn public_url_problem(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?}: must start with https:// or http://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "{url:?}: only scheme://host[:port], without a path, query or user info"
        ));
    }
    Ok(())
}

/// `[storage] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Local disk.
    Fs,
    /// An upstream S3-compatible server.
    S3,
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageBackend::Fs => "fs",
            StorageBackend::S3 => "s3",
        })
    }
}

/// `[storage.upstream]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// e.g. "https://minio.internal:9000".
    pub endpoint: String,
    /// Region to sign for upstream.
    pub region: String,
    /// Access key for the upstream server.
    pub access_key: String,
    /// Secret key for the upstream server.
    pub secret_key: String,
    /// Path-style requests (MinIO usually needs it).
    pub path_style: bool,
}

/// S3's largest single PUT.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            enabled: true,
            listen: vec!["0.0.0.0:9000".parse().unwrap()],
            tls_listen: Vec::new(),
            backend: StorageBackend::Fs,
            data_dir: PathBuf::from("ember-data/storage"),
            region: "us-east-1".into(),
            credentials: BTreeMap::new(),
            read_only_keys: Vec::new(),
            s3_domains: Vec::new(),
            bucket_domains: BTreeMap::new(),
            public_buckets: Vec::new(),
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            buckets: Vec::new(),
            public_url: String::new(),
            download_scheme: "auto".into(),
            upstream: UpstreamConfig {
                path_style: true,
                region: "us-east-1".into(),
                ..UpstreamConfig::default()
            },
        }
    }
}

/// `[im]`: the messaging core (MQTT long connections, short-link HTTP, signed admin API).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImConfig {
    /// Run the messaging core under `ember up`.
    pub enabled: bool,
    /// "dev" (empty secrets allowed: random per-run ones are generated) or "production"
    /// (refuses to start with weak secrets, `no_check_time` or no `server_host`).
    pub mode: ImMode,
    /// Domain clients connect to, returned by `/route`. Empty: 127.0.0.1 (dev only).
    pub server_host: String,
    /// Short-link HTTP listeners (`/api/version`, `/route`); the standard port is 80.
    pub http_listen: Vec<SocketAddr>,
    /// MQTT over TCP listeners (1883).
    pub mqtt_listen: Vec<SocketAddr>,
    /// MQTT over TLS listeners (8883), certificate from `[tls]`.
    pub mqtts_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket listeners (8083).
    pub ws_listen: Vec<SocketAddr>,
    /// MQTT over secure WebSocket listeners (8084), certificate from `[tls]`.
    pub wss_listen: Vec<SocketAddr>,
    /// Signed admin API listeners (18080); open them to the app's back end only.
    pub admin_listen: Vec<SocketAddr>,
    /// Secret of the admin API signatures.
    pub admin_secret: String,
    /// Key that signs login tokens (HMAC-SHA256).
    pub token_key: String,
    /// Accept admin requests with any timestamp (debugging only; refused in production).
    pub no_check_time: bool,
    /// The database: a SQLite file path. `postgres://` URLs are reserved for later.
    pub database: String,
    /// Alternative addresses clients may use (`host:short_port:long_port:ws_port`).
    pub backup_addresses: Vec<BackupAddress>,
    /// Largest message body, bytes.
    pub max_message_bytes: u32,
    /// How long after sending a message its sender may recall it, seconds.
    pub recall_window_secs: u32,
    /// Bytes queued for one connection before it is disconnected as a slow consumer.
    pub send_queue_bytes: u32,
    /// Requests per second and user (token bucket rate); over it: 429.
    pub rate_limit_per_sec: u32,
    /// Token bucket size per user.
    pub rate_limit_burst: u32,
    /// Concurrent client connections; more are refused (CONNACK server unavailable).
    pub max_connections: u32,
    /// Upper bound of a client's MQTT keep alive, seconds.
    pub keepalive_max_secs: u16,
    /// Largest difference between an admin request's timestamp and the server clock, seconds.
    pub admin_time_window_secs: u32,
    /// Admin signature schemes accepted.
    pub admin_signatures: Vec<AdminSignature>,
    /// Default lifetime of login tokens issued by the admin API, seconds.
    pub token_ttl_secs: u32,
    /// Largest group.
    pub group_max_members: u32,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            enabled: true,
            mode: ImMode::Dev,
            server_host: String::new(),
            http_listen: vec!["0.0.0.0:8080".parse().unwrap()],
            mqtt_listen: vec!["0.0.0.0:1883".parse().unwrap()],
            mqtts_listen: Vec::new(),
            ws_listen: vec!["0.0.0.0:8083".parse().unwrap()],
            wss_listen: Vec::new(),
            admin_listen: vec!["127.0.0.1:18080".parse().unwrap()],
            admin_secret: String::new(),
            token_key: String::new(),
            no_check_time: false,
            database: "ember-data/im.sqlite3".into(),
            backup_addresses: Vec::new(),
            max_message_bytes: 16_384,
            recall_window_secs: 120,
            send_queue_bytes: 262_144,
            rate_limit_per_sec: 20,
            rate_limit_burst: 100,
            max_connections: 100_000,
            keepalive_max_secs: 300,
            admin_time_window_secs: 300,
            admin_signatures: vec![AdminSignature::HmacSha256, AdminSignature::WildfireSha1],
            token_ttl_secs: 2_592_000,
            group_max_members: 10_000,
        }
    }
}

/// `[im] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImMode {
    /// Development: empty secrets allowed (random per run), no host needed.
    Dev,
    /// Production: the go-live checks of [`Config::validate`] are errors.
    Production,
}

impl fmt::Display for ImMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImMode::Dev => "dev",
            ImMode::Production => "production",
        })
    }
}

/// An admin request signature scheme (`[im] admin_signatures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum AdminSignature {
    /// `authorization: Ember-HMAC-SHA256 <hex>` over method, path, timestamp, nonce, body.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// Wildfire's `sign` = hex SHA-1 of `nonce|secret|timestamp`.
    #[serde(rename = "wildfire-sha1")]
    WildfireSha1,
}

impl fmt::Display for AdminSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminSignature::HmacSha256 => "hmac-sha256",
            AdminSignature::WildfireSha1 => "wildfire-sha1",
        })
    }
}

/// A `backup_addresses` entry, `host:short_port:long_port:ws_port` (Wildfire's
/// `server.backup_address` format): another way to reach this node, e.g. an access point
/// that forwards its ports to it. An IPv6 host is written in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupAddress {
    /// Host name or IP address (IPv6 without the brackets).
    pub host: String,
    /// Port forwarded to the short-link HTTP listener.
    pub short_port: u16,
    /// Port forwarded to the MQTT listener.
    pub long_port: u16,
    /// Port forwarded to the WebSocket listener.
    pub ws_port: u16,
}

impl FromStr for BackupAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| {
            format!("invalid backup address {s:?}: {why}; expected \"host:short_port:long_port:ws_port\"")
        };
        let mut parts = s.rsplitn(4, ':');
        let mut port = |name: &str| -> Result<u16, String> {
            let p = parts.next().ok_or_else(|| err(&format!("no {name}")))?;
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(err(&format!("{name} {p:?} is not a port 1-65535"))),
                Ok(n) => Ok(n),
            }
        };
        let ws_port = port("ws_port")?;
        let long_port = port("long_port")?;
        let short_port = port("short_port")?;
        let host = parts.next().ok_or_else(|| err("no host"))?.trim();
        let host = match host.strip_prefix('[') {
            Some(rest) => {
                let inner = rest.strip_suffix(']').ok_or_else(|| err("unclosed '['"))?;
                inner
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| err("not an IPv6 address inside [ ]"))?;
                inner
            }
            None => host,
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()
            || host
                .chars()
                .any(|c| c.is_whitespace() || "/?#@[]".contains(c))
        {
            return Err(err("bad host"));
        }
        if host.contains(':') && !s.trim_start().starts_with('[') {
            return Err(err("write an IPv6 host in brackets"));
        }
        Ok(BackupAddress {
            host: host.to_owned(),
            short_port,
            long_port,
            ws_port,
        })
    }
}

impl fmt::Display for BackupAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        write!(
            f,
            ":{}:{}:{}",
            self.short_port, self.long_port, self.ws_port
        )
    }
}

impl Serialize for BackupAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Shortest `admin_secret` / `token_key` accepted in production.
pub const MIN_IM_SECRET_LEN: usize = 32;

/// Largest `[im] max_message_bytes` (the admin API's body limit is 1 MiB too).
pub const MAX_IM_MESSAGE_BYTES: u32 = 1024 * 1024;

/// Secrets that ship in well-known configs (Wildfire's `123456` and `testim`) or in
/// documentation: refused in production whatever their length, compared case-insensitively.
pub const KNOWN_DEFAULT_SECRETS: &[&str] = &[
    "123456",
    "testim",
    "secret",
    "changeme",
    "change-me",
    "replace-me-with-a-random-secret-of-32-chars",
];

impl ImConfig {
    /// The host clients are told to connect to: `server_host`, or 127.0.0.1 when empty (dev).
    pub fn effective_host(&self) -> &str {
        if self.server_host.is_empty() {
            "127.0.0.1"
        } else {
            &self.server_host
        }
    }

    /// Why a secret is too weak for production, if it is.
    pub fn secret_problem(secret: &str) -> Option<String> {
        if secret.is_empty() {
            Some("is empty".into())
        } else if KNOWN_DEFAULT_SECRETS
            .iter()
            .any(|d| d.eq_ignore_ascii_case(secret.trim()))
        {
            Some("is a well-known default value".into())
        } else if secret.chars().count() < MIN_IM_SECRET_LEN {
            Some(format!("is shorter than {MIN_IM_SECRET_LEN} characters"))
        } else {
            None
        }
    }

    fn validate(
        &self,
        tls: &TlsConfig,
        error: &mut impl FnMut(&str, String),
        warnings: &mut Vec<String>,
    ) {
        let prod = self.mode == ImMode::Production;
        let client_listeners = [
            ("im.mqtt_listen", &self.mqtt_listen),
            ("im.mqtts_listen", &self.mqtts_listen),
            ("im.ws_listen", &self.ws_listen),
            ("im.wss_listen", &self.wss_listen),
        ];
        if self.enabled && client_listeners.iter().all(|(_, l)| l.is_empty()) {
            error(
                "im.mqtt_listen",
                "no client listener: set im.mqtt_listen, im.mqtts_listen, im.ws_listen or \
                 im.wss_listen, or im.enabled = false"
                    .into(),
            );
        }
        let all = client_listeners.iter().copied().chain([
            ("im.http_listen", &self.http_listen),
            ("im.admin_listen", &self.admin_listen),
        ]);
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for (key, list) in all {
            for addr in list.iter() {
                if addr.port() == 0 {
                    continue;
                }
                if let Some((_, first)) = seen.iter().find(|(a, _)| a == addr) {
                    error(key, format!("{addr} is also in {first}"));
                } else {
                    seen.push((*addr, key));
                }
            }
        }

        let has_cert = !tls.cert.is_empty() || !tls.certificates.is_empty();
        for (key, list) in [
            ("im.mqtts_listen", &self.mqtts_listen),
            ("im.wss_listen", &self.wss_listen),
        ] {
            if self.enabled && prod && !list.is_empty() && !has_cert {
                error(
                    key,
                    "production needs a real certificate in [tls] (tls.cert / tls.key); \
                     clients refuse the self-signed development certificate"
                        .into(),
                );
            }
        }

        for (key, value) in [
            ("im.admin_secret", &self.admin_secret),
            ("im.token_key", &self.token_key),
        ] {
            match Self::secret_problem(value) {
                Some(why) if prod => error(
                    key,
                    format!("{why}: production needs a random secret (`ember init` writes one)"),
                ),
                Some(why) if !value.is_empty() => warnings.push(format!(
                    "{key}: {why}; mode = \"production\" would refuse it"
                )),
                _ => {}
            }
        }
        if !self.admin_secret.is_empty() && self.admin_secret == self.token_key {
            let msg = "must differ from im.admin_secret".to_owned();
            if prod {
                error("im.token_key", msg);
            } else {
                warnings.push(format!("im.token_key: {msg}"));
            }
        }
        if self.no_check_time {
            if prod {
                error(
                    "im.no_check_time",
                    "must be false in production: it lets captured admin requests be replayed"
                        .into(),
                );
            } else {
                warnings.push(
                    "im.no_check_time = true: admin request timestamps are not checked \
                     (debugging only)"
                        .into(),
                );
            }
        }
        let host = self.server_host.trim();
        if host != self.server_host
            || host.contains(['/', ':', '?', '#', '@'])
                && host.parse::<std::net::Ipv6Addr>().is_err()
        {
            error(
                "im.server_host",
                format!(
                    "{:?}: expected a bare host name, without scheme or port",
                    self.server_host
                ),
            );
        } else if host.is_empty() {
            if prod {
                error(
                    "im.server_host",
                    "must be set in production: the domain clients connect to".into(),
                );
            }
        } else if prod && host.parse::<IpAddr>().is_ok() {
            warnings.push(format!(
                "im.server_host: {host} is an IP address; use a domain so the server can move \
                 without updating clients"
            ));
        }

        let db = self.database.trim();
        if db.is_empty() {
            error("im.database", "must be set (a SQLite file path)".into());
        } else if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            error(
                "im.database",
                "PostgreSQL is not supported yet; use a SQLite file path".into(),
            );
        } else if db.contains("://") {
            error(
                "im.database",
                format!("{db:?}: expected a SQLite file path"),
            );
        }

        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_IM_MESSAGE_BYTES {
            error(
                "im.max_message_bytes",
                format!("must be 1..={MAX_IM_MESSAGE_BYTES}"),
            );
        }
        let one_push = u64::from(self.max_message_bytes) + 8192;
        if u64::from(self.send_queue_bytes) < one_push {
            error(
                "im.send_queue_bytes",
                format!(
                    "must hold at least one full message: max_message_bytes + 8192 = {one_push}"
                ),
            );
        }
        for (key, value) in [
            ("im.rate_limit_per_sec", self.rate_limit_per_sec),
            ("im.rate_limit_burst", self.rate_limit_burst),
            ("im.max_connections", self.max_connections),
            ("im.keepalive_max_secs", u32::from(self.keepalive_max_secs)),
            ("im.admin_time_window_secs", self.admin_time_window_secs),
            ("im.token_ttl_secs", self.token_ttl_secs),
            ("im.group_max_members", self.group_max_members),
        ] {
            if value == 0 {
                error(key, "must be at least 1".into());
            }
        }
        if self.admin_signatures.is_empty() && !self.admin_listen.is_empty() {
            error(
                "im.admin_signatures",
                "no scheme: every admin request would be refused; list \"hmac-sha256\" and/or \
                 \"wildfire-sha1\", or set im.admin_listen = []"
                    .into(),
            );
        }
    }
}

/// Longest lifetime of self-test credentials: they are for a test, not for calls.
pub const MAX_SELFTEST_CREDENTIAL_TTL: u32 = 86_400;

/// `[log]`: tracing output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

impl MetricsConfig {
    /// The address to serve `/metrics` on, `None` when disabled (`listen = ""`).
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let s = self.listen.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            format!("invalid socket address {s:?}: expected \"IP:PORT\" or \"\" to disable")
        })
    }
}

/// Relay port ranges smaller than this need `allow_small_port_range = true`: each
/// allocation holds a port, and the go-live checklists ask for at least 10,000.
pub const MIN_RELAY_PORTS: u32 = 10_000;

/// Prefix of environment variables that override config keys: `EMBER_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "EMBER_";

impl Config {
    /// Reads `path`, applies `EMBER_<SECTION>__<KEY>` overrides from the process
    /// environment and deserializes. Does not [`validate`](Self::validate).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_with_env(&text, &path.display().to_string(), process_env())
    }

    /// Built-in defaults with overrides from `env` (pass [`process_env()`] in the binary,
    /// a fixed list in tests).
    pub fn defaults_with_env(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_str_with_env("", "built-in defaults", env)
    }

    /// Parses `text` (named `source_name` in errors), applies the `EMBER_...__...`
    /// overrides found in `env`, and deserializes. Errors name the key and where it was
    /// set: `file:line:column` or the environment variable.
    pub fn from_str_with_env(
        text: &str,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    location: Location::at(text, source_name, e.span()),
                    message: e.message().trim().to_owned(),
                })?;
        let overrides = apply_env(&mut table, env)?;
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| deserialize_error(e, text, source_name, &overrides))
    }

    /// Checks what the types cannot: returns the warnings worth logging, or every problem
    /// found (each naming its key) as [`ConfigError::Validation`].
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut errors: Vec<Problem> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let mut error = |key: &str, message: String| {
            errors.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let t = &self.turn;

        let ports = t.relay_ports.len();
        if ports < MIN_RELAY_PORTS {
            let msg = format!(
                "relay port range {} has {ports} ports, fewer than the {MIN_RELAY_PORTS} a \
                 production relay needs (one port per allocation)",
                t.relay_ports
            );
            if t.allow_small_port_range {
                warnings.push(format!("turn.relay_ports: {msg}"));
            } else {
                error(
                    "turn.relay_ports",
                    format!("{msg}; widen it or set turn.allow_small_port_range = true"),
                );
            }
        }
        for addr in t.listen.iter().chain(&t.tls_listen) {
            if t.relay_ports.contains(addr.port()) {
                warnings.push(format!(
                    "turn.relay_ports: listener port {} is inside the relay range {}",
                    addr.port(),
                    t.relay_ports
                ));
            }
        }
        if t.realm.trim().is_empty() {
            error("turn.realm", "must not be empty".into());
        }
        if t.enabled && t.listen.is_empty() && t.tls_listen.is_empty() {
            error(
                "turn.listen",
                "no listener: set turn.listen and/or turn.tls_listen, or turn.enabled = false"
                    .into(),
            );
        }
        let v4 = t.relay_ip.iter().filter(|ip| ip.is_ipv4()).count();
        if v4 > 1 || t.relay_ip.len() - v4 > 1 {
            error(
                "turn.relay_ip",
                "at most one IPv4 and one IPv6 address".into(),
            );
        }
        let bare = t.external_ip.iter().filter(|e| e.relay.is_none()).count();
        if bare > 1 || (bare == 1 && t.external_ip.len() > 1) {
            error(
                "turn.external_ip",
                "either one public address for every relay address, or \"relay/public\" pairs, \
                 not both"
                    .into(),
            );
        }
        for (i, e) in t.external_ip.iter().enumerate() {
            if e.relay.is_some() && t.external_ip[..i].iter().any(|p| p.relay == e.relay) {
                error(
                    "turn.external_ip",
                    format!("relay address of {e} is listed twice"),
                );
            }
        }
        for (user, password) in &t.users {
            if user.is_empty() || password.is_empty() {
                error(
                    &format!("turn.users.{user}"),
                    "user name and password must not be empty".into(),
                );
            }
        }
        for (i, secret) in t.auth_secrets.iter().enumerate() {
            if secret.is_empty() {
                error(
                    &format!("turn.auth_secrets[{i}]"),
                    "must not be empty".into(),
                );
            } else if secret.len() < 16 {
                warnings.push(format!(
                    "turn.auth_secrets[{i}]: shorter than 16 characters, easy to brute-force"
                ));
            }
        }
        if t.enabled && t.users.is_empty() && t.auth_secrets.is_empty() {
            warnings.push(
                "turn: no users and no auth_secrets, every allocation will be refused".into(),
            );
        }
        if t.max_lifetime == 0 {
            error("turn.max_lifetime", "must be at least 1 second".into());
        }
        if t.nonce_lifetime == 0 {
            error("turn.nonce_lifetime", "must be at least 1 second".into());
        }

        match (self.tls.cert.is_empty(), self.tls.key.is_empty()) {
            (false, true) => error("tls.key", "tls.cert is set but tls.key is not".into()),
            (true, false) => error("tls.cert", "tls.key is set but tls.cert is not".into()),
            (true, true) if !self.tls.certificates.is_empty() => warnings.push(
                "tls.cert: empty while tls.certificates is not: clients that send no server \
                 name, or one no certificate covers, get the self-signed development certificate"
                    .into(),
            ),
            _ => {}
        }
        for (i, c) in self.tls.certificates.iter().enumerate() {
            if c.cert.is_empty() {
                error(
                    &format!("tls.certificates[{i}].cert"),
                    "must be set (the PEM certificate chain)".into(),
                );
            }
            if c.key.is_empty() {
                error(
                    &format!("tls.certificates[{i}].key"),
                    "must be set (the PEM private key)".into(),
                );
            }
        }
        if let Err(e) = self.metrics.listen_addr() {
            error("metrics.listen", e);
        }
        self.storage.validate(&mut error, &mut warnings);
        self.im.validate(&self.tls, &mut error, &mut warnings);
        let st = &self.selftest;
        if st.credential_ttl == 0 || st.credential_ttl > MAX_SELFTEST_CREDENTIAL_TTL {
            error(
                "selftest.credential_ttl",
                format!("must be 1..={MAX_SELFTEST_CREDENTIAL_TTL} seconds"),
            );
        }
        if st.credential_user.is_empty() || st.credential_user.contains(':') {
            error(
                "selftest.credential_user",
                "must be non-empty and contain no ':'".into(),
            );
        }
        for (i, url) in st.turn_urls.iter().enumerate() {
            if !["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                error(
                    &format!("selftest.turn_urls[{i}]"),
                    format!("{url:?}: expected a turn:, turns: or stun: URL"),
                );
            }
        }
        if !st.token.is_empty() {
            if st.token.len() < 16 {
                warnings.push("selftest.token: shorter than 16 characters, easy to guess".into());
            }
            if t.auth_secrets.is_empty() {
                warnings.push(
                    "selftest.token is set but turn.auth_secrets is empty: the one-click test \
                     cannot issue credentials"
                        .into(),
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            error(
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            error(
                "log.format",
                format!("{:?}: expected \"text\" or \"json\"", self.log.format),
            );
        }

        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Validation(errors))
        }
    }
}

impl StorageConfig {
    fn validate(&self, error: &mut impl FnMut(&str, String), warnings: &mut Vec<String>) {
        if self.enabled && self.listen.is_empty() && self.tls_listen.is_empty() {
            error(
                "storage.listen",
                "no listener: set storage.listen and/or storage.tls_listen, or storage.enabled = false"
                    .into(),
            );
        }
        if self.region.is_empty() {
            error("storage.region", "must not be empty".into());
        }
        for (ak, sk) in &self.credentials {
            if ak.is_empty() || sk.is_empty() || ak.contains(':') || ak.contains('/') {
                error(
                    &format!("storage.credentials.{ak}"),
                    "access and secret keys must be non-empty; access keys contain no ':' or '/'"
                        .into(),
                );
            } else if sk.len() < 16 {
                warnings.push(format!(
                    "storage.credentials.{ak}: secret key shorter than 16 characters"
                ));
            }
        }
        for ak in &self.read_only_keys {
            if !self.credentials.contains_key(ak) {
                error(
                    "storage.read_only_keys",
                    format!("{ak:?} is not in storage.credentials"),
                );
            }
        }
        let names = self
            .buckets
            .iter()
            .map(|b| ("storage.buckets", b))
            .chain(
                self.public_buckets
                    .iter()
                    .map(|b| ("storage.public_buckets", b)),
            )
            .chain(
                self.bucket_domains
                    .values()
                    .map(|b| ("storage.bucket_domains", b)),
            );
        for (key, name) in names {
            if let Err(why) = bucket_name_problem(name) {
                error(key, format!("bucket {name:?}: {why}"));
            }
        }
        if self.max_object_size == 0 {
            error("storage.max_object_size", "must be at least 1 byte".into());
        }
        if let Err(why) = public_url_problem(&self.public_url) {
            error("storage.public_url", why);
        }
        if !matches!(self.download_scheme.as_str(), "auto" | "https" | "http") {
            error(
                "storage.download_scheme",
                format!(
                    "{:?}: expected \"auto\", \"https\" or \"http\"",
                    self.download_scheme
                ),
            );
        }
        if self.backend == StorageBackend::S3 && self.upstream.endpoint.is_empty() {
            error(
                "storage.upstream.endpoint",
                "backend = \"s3\" needs the upstream server's URL".into(),
            );
        }
        if self.enabled && self.credentials.is_empty() {
            warnings.push(
                "storage: no credentials, only public buckets can be read and nothing written"
                    .into(),
            );
        }
    }
}

/// S3's bucket naming rules (3-63 of a-z 0-9 . -, letter or digit at both ends).
pub fn bucket_name_problem(name: &str) -> Result<(), &'static str> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        Err("must be 3 to 63 characters long")
    } else if !bytes.iter().all(|&b| ok_char(b)) {
        Err("only lowercase letters, digits, '-' and '.'")
    } else if !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        Err("must start and end with a letter or digit")
    } else if name.contains("..") || name.contains(".-") || name.contains("-.") {
        Err("no \"..\", \".-\" or \"-.\"")
    } else if name.parse::<std::net::Ipv4Addr>().is_ok() {
        Err("must not look like an IP address")
    } else {
        Ok(())
    }
}

/// The process environment as `(name, value)` pairs, for [`Config::defaults_with_env`].
/// Variables that are not valid UTF-8 are skipped, except `EMBER_...` ones, which are
/// converted lossily so that their error names them.
pub fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        match v.into_string() {
            Ok(v) => Some((k, v)),
            Err(v) if k.starts_with(ENV_PREFIX) => Some((k, v.to_string_lossy().into_owned())),
            Err(_) => None,
        }
    })
}

/// Why a config could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{location}: {message}")]
    Syntax {
        /// Where the parser stopped.
        location: Location,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown, or its value has the wrong type or format.
    #[error("{location}: key {key}: {message}")]
    Key {
        /// Where the key was set.
        location: Location,
        /// Dotted path of the key, e.g. `turn.relay_ports` or `turn.listen[0]`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Values that parse but do not make a working configuration ([`Config::validate`]).
    #[error("{}", format_problems(.0))]
    Validation(Vec<Problem>),
}

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `turn.relay_ports`.
    pub key: String,
    /// What is wrong, and usually how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}: {}", self.key, self.message)
    }
}

fn format_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid config: {one}"),
        _ => {
            let lines: Vec<String> = problems.iter().map(|p| format!("\n  {p}")).collect();
            format!("invalid config:{}", lines.concat())
        }
    }
}

/// Where a config value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a file, 1-based; displayed `name:line:column`.
    File {
        /// File name as given.
        name: String,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
    },
    /// A file or other source where the position is not known.
    Source(String),
    /// An `EMBER_<SECTION>__<KEY>` environment variable.
    Env(String),
}

impl Location {
    fn at(text: &str, name: &str, span: Option<Range<usize>>) -> Location {
        let Some(span) = span else {
            return Location::Source(name.to_owned());
        };
        let start = span.start.min(text.len());
        let before = text.get(..start).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location::File {
            name: name.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The line, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Location::File { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { name, line, column } => write!(f, "{name}:{line}:{column}"),
            Location::Source(name) => f.write_str(name),
            Location::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// An `EMBER_...` variable applied to the config table.
struct EnvOverride {
    var: String,
    path: Vec<String>,
    /// Parsed as a TOML value other than a string (a number, array, ...).
    typed: bool,
}

/// Sets every `EMBER_<SECTION>__<KEY>=value` in `table`. The value is read as TOML
/// (`x = <value>`) when that parses, else taken as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    let mut applied = Vec::with_capacity(vars.len());
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let fail = |message: String| ConfigError::Key {
            location: Location::Env(var.clone()),
            key: path.join("."),
            message,
        };
        let Some((last, parents)) = path.split_last().filter(|(_, p)| !p.is_empty()) else {
            return Err(fail(ENV_SHAPE.into()));
        };
        if path.iter().any(String::is_empty) {
            return Err(fail(ENV_SHAPE.into()));
        }
        let (value, typed) = parse_env_value(&raw);
        let mut t = &mut *table;
        for (i, seg) in parents.iter().enumerate() {
            let entry = t
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry.as_table_mut().ok_or_else(|| {
                fail(format!(
                    "cannot set a key inside {}: it is not a table",
                    path[..=i].join(".")
                ))
            })?;
        }
        t.insert(last.clone(), value);
        applied.push(EnvOverride { var, path, typed });
    }
    Ok(applied)
}

const ENV_SHAPE: &str = "expected EMBER_<SECTION>__<KEY>, e.g. EMBER_TURN__REALM";

fn parse_env_value(raw: &str) -> (toml::Value, bool) {
    if let Ok(mut t) = format!("x = {raw}").parse::<toml::Table>() {
        if t.len() == 1 {
            if let Some(v) = t.remove("x") {
                let typed = !v.is_str();
                return (v, typed);
            }
        }
    }
    (toml::Value::String(raw.to_owned()), false)
}

/// Turns a deserialization error into one naming the key and where it was set.
fn deserialize_error(
    err: serde_path_to_error::Error<toml::de::Error>,
    text: &str,
    source_name: &str,
    overrides: &[EnvOverride],
) -> ConfigError {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    let mut keys: Vec<&str> = Vec::new();
    for seg in err.path().iter() {
        match seg {
            Segment::Map { key: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
                keys.push(k);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    let mut message = err.inner().message().trim().to_owned();
    let unknown = message.starts_with("unknown field");

    let set_by =
        |o: &&EnvOverride| o.path.len() <= keys.len() && o.path.iter().eq(&keys[..o.path.len()]);
    let created_by =
        |o: &&EnvOverride| o.path.len() > keys.len() && o.path[..keys.len()].iter().eq(&keys);
    let env = overrides.iter().find(set_by);
    let location = match env {
        Some(o) => {
            if o.typed && message.starts_with("invalid type") {
                message.push_str(&format!(
                    " ({} was read as a TOML value; quote it to pass a string)",
                    o.var
                ));
            }
            Location::Env(o.var.clone())
        }
        None => match locate(text, err.path(), unknown) {
            Some(span) => Location::at(text, source_name, Some(span)),
            None => match overrides.iter().find(created_by) {
                Some(o) => Location::Env(o.var.clone()),
                None => Location::Source(source_name.to_owned()),
            },
        },
    };
    ConfigError::Key {
        location,
        key,
        message,
    }
}

/// The span in `text` of the key at `path` (of its value unless `want_key`), or of the
/// deepest ancestor found.
fn locate(text: &str, path: &serde_path_to_error::Path, want_key: bool) -> Option<Range<usize>> {
    use serde_path_to_error::Segment;
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: Option<&toml_edit::Item> = Some(doc.as_item());
    let mut best = None;
    for seg in path.iter() {
        let Some(cur) = item.take() else { break };
        match seg {
            Segment::Map { key } => {
                let Some((k, v)) = cur.as_table_like().and_then(|t| t.get_key_value(key)) else {
                    break;
                };
                best = if want_key { k.span() } else { v.span() }
                    .or_else(|| k.span())
                    .or(best);
                item = Some(v);
            }
            Segment::Seq { index } => {
                if let Some(v) = cur.as_array().and_then(|a| a.get(*index)) {
                    best = v.span().or(best);
                }
                break;
            }
            Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with_env(text, "ember.toml", env(&[]))
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(
            Config::defaults_with_env(env(&[])).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn values_are_read() {
        let cfg = parse(
            "[turn]\nrealm = \"example.org\"\nrelay_ports = \"50000-60000\"\n\
             external_ip = [\"10.0.0.5/203.0.113.5\"]\nusers = { alice = \"pw\" }\n\
             [metrics]\nlisten = \"\"\n",
        )
        .unwrap();
        assert_eq!(cfg.turn.realm, "example.org");
        assert_eq!(
            cfg.turn.relay_ports,
            PortRange {
                min: 50000,
                max: 60000
            }
        );
        assert_eq!(cfg.turn.external_ip[0].to_string(), "10.0.0.5/203.0.113.5");
        assert_eq!(cfg.turn.users["alice"], "pw");
        assert_eq!(cfg.metrics.listen_addr(), Ok(None));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "# comment\n[turn]\nrealm = \"x\"\nrelay_prots = \"1-2\"\n";
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("ember.toml:4:1: key turn.relay_prots: unknown field `relay_prots`"),
            "{msg}"
        );
        assert!(msg.contains("expected one of"), "{msg}");
        assert!(matches!(err, ConfigError::Key { ref location, .. } if location.line() == Some(4)));
    }

    #[test]
    fn unknown_section_names_line() {
        let msg = parse("\n[trun]\nrealm = \"x\"\n").unwrap_err().to_string();
        assert!(msg.starts_with("ember.toml:2:"), "{msg}");
        assert!(msg.contains("key trun: unknown field `trun`"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let text = "[turn]\n\nrelay_ports = \"65000-1000\"\n";
        let msg = parse(text).unwrap_err().to_string();
        assert!(
            msg.starts_with("ember.toml:3:15: key turn.relay_ports: invalid port range"),
            "{msg}"
        );

        let msg = parse("[turn]\nlisten = [\"0.0.0.0:3478\",\n  \"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("ember.toml:3:3: key turn.listen[1]:"),
            "{msg}"
        );

        let msg = parse("[turn]\nmax_lifetime = \"long\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("ember.toml:2:16: key turn.max_lifetime: invalid type"),
            "{msg}"
        );

        // Inline and dotted tables are located too.
        let msg = parse("turn.realm = 5\n").unwrap_err().to_string();
        assert!(
            msg.starts_with("ember.toml:1:14: key turn.realm: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = parse("[turn]\nrealm = \"unterminated\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("ember.toml:2:"), "{msg}");
    }

    #[test]
    fn env_overrides() {
        let cfg = Config::from_str_with_env(
            "[turn]\nrealm = \"file\"\n",
            "ember.toml",
            env(&[
                ("EMBER_TURN__REALM", "example.org"),
                ("EMBER_TURN__LISTEN", "[\"127.0.0.1:3478\"]"),
                ("EMBER_TURN__USER_QUOTA", "7"),
                ("EMBER_METRICS__LISTEN", "127.0.0.1:0"),
                ("EMBER_LOG", "ignored"),
                ("OTHER__THING", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.turn.realm, "example.org");
        assert_eq!(cfg.turn.listen, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(cfg.turn.user_quota, 7);
        assert_eq!(cfg.metrics.listen, "127.0.0.1:0");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = |vars: &[(&str, &str)]| {
            Config::from_str_with_env("[turn]\nrealm = \"x\"\n", "ember.toml", env(vars))
                .unwrap_err()
                .to_string()
        };
        let msg = err(&[("EMBER_TURN__RELAY_PORTS", "5-1")]);
        assert!(msg.starts_with("environment variable EMBER_TURN__RELAY_PORTS: key turn.relay_ports: invalid port range"), "{msg}");
        let msg = err(&[("EMBER_TURN__RELAY_PROTS", "1-2")]);
        assert!(
            msg.starts_with(
                "environment variable EMBER_TURN__RELAY_PROTS: key turn.relay_prots: unknown field"
            ),
            "{msg}"
        );
        let msg = err(&[("EMBER_TRUN__REALM", "x")]);
        assert!(
            msg.starts_with("environment variable EMBER_TRUN__REALM: key trun: unknown field"),
            "{msg}"
        );
        let msg = err(&[("EMBER_TURN__REALM", "42")]);
        assert!(
            msg.contains("EMBER_TURN__REALM") && msg.contains("quote it"),
            "{msg}"
        );
        let msg = err(&[("EMBER_TURN__REALM__X", "1")]);
        assert!(
            msg.starts_with("environment variable EMBER_TURN__REALM__X:"),
            "{msg}"
        );
        let msg = err(&[("EMBER_TURN__", "1")]);
        assert!(
            msg.starts_with("environment variable EMBER_TURN__:"),
            "{msg}"
        );
    }

    #[test]
    fn validate_storage() {
        let mut cfg = Config::default();
        cfg.turn.auth_secrets = vec!["0123456789abcdef0123".into()];
        let w = cfg.validate().unwrap();
        assert!(
            w.iter().any(|w| w.starts_with("storage: no credentials")),
            "{w:?}"
        );
        cfg.storage
            .credentials
            .insert("AK".into(), "0123456789abcdef0123".into());
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());

        cfg.storage.buckets = vec!["Bad_Name".into()];
        cfg.storage
            .bucket_domains
            .insert("media.example.com".into(), "ok-bucket".into());
        cfg.storage.read_only_keys = vec!["nope".into()];
        cfg.storage.backend = StorageBackend::S3;
        let Err(ConfigError::Validation(p)) = cfg.validate() else {
            panic!("expected problems")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.read_only_keys",
                "storage.buckets",
                "storage.upstream.endpoint"
            ]
        );
    }

    #[test]
    fn validate_relay_port_range() {
        let mut cfg = Config::default();
        cfg.turn.auth_secrets = vec!["0123456789abcdef0123".into()];
        cfg.storage.enabled = false;
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());

        cfg.turn.relay_ports = PortRange {
            min: 50000,
            max: 50100,
        };
        let err = cfg.validate().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("key turn.relay_ports:"), "{msg}");
        assert!(msg.contains("allow_small_port_range"), "{msg}");

        cfg.turn.allow_small_port_range = true;
        let warnings = cfg.validate().unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("turn.relay_ports:"), "{warnings:?}");
    }

    #[test]
    fn tls_certificates_parse_and_validate() {
        let tables = "[tls]\ncert = \"/d.pem\"\nkey = \"/d.key\"\n\
                      [[tls.certificates]]\ncert = \"/a.pem\"\nkey = \"/a.key\"\n\
                      [[tls.certificates]]\ncert = \"/b.pem\"\nkey = \"/b.key\"\n";
        let inline = "[tls]\ncert = \"/d.pem\"\nkey = \"/d.key\"\ncertificates = [\
                      { cert = \"/a.pem\", key = \"/a.key\" }, { cert = \"/b.pem\", key = \"/b.key\" }]\n";
        let cfg = parse(tables).unwrap();
        assert_eq!(cfg.tls, parse(inline).unwrap().tls);
        assert_eq!(
            cfg.tls.certificates,
            [
                TlsCertificate {
                    cert: "/a.pem".into(),
                    key: "/a.key".into()
                },
                TlsCertificate {
                    cert: "/b.pem".into(),
                    key: "/b.key".into()
                }
            ]
        );
        let env_cfg = Config::from_str_with_env(
            "",
            "ember.toml",
            env(&[(
                "EMBER_TLS__CERTIFICATES",
                "[{ cert = \"/a.pem\", key = \"/a.key\" }]",
            )]),
        )
        .unwrap();
        assert_eq!(env_cfg.tls.certificates, cfg.tls.certificates[..1]);

        let msg = parse("[[tls.certificates]]\ncert = \"/a.pem\"\nkye = \"/a.key\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tls.certificates"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");

        let mut cfg = Config::default();
        cfg.turn.auth_secrets = vec!["0123456789abcdef0123".into()];
        cfg.storage.enabled = false;
        cfg.tls.certificates = vec![
            TlsCertificate {
                cert: "/a.pem".into(),
                key: "/a.key".into(),
            },
            TlsCertificate {
                cert: "/b.pem".into(),
                key: String::new(),
            },
            TlsCertificate::default(),
        ];
        let Err(ConfigError::Validation(p)) = cfg.validate() else {
            panic!("expected problems")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.certificates[1].key",
                "tls.certificates[2].cert",
                "tls.certificates[2].key"
            ]
        );
        // Extra certificates without a default one: allowed, with a warning.
        cfg.tls.certificates.truncate(1);
        let w = cfg.validate().unwrap();
        assert!(
            w.len() == 1 && w[0].starts_with("tls.cert: empty while tls.certificates"),
            "{w:?}"
        );
        cfg.tls.cert = "/d.pem".into();
        cfg.tls.key = "/d.key".into();
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn validate_reports_every_problem() {
        let cfg = parse(
            "[turn]\nrealm = \"\"\nrelay_ip = [\"10.0.0.1\", \"10.0.0.2\"]\n\
             external_ip = [\"203.0.113.1\", \"203.0.113.2\"]\n\
             [tls]\ncert = \"/etc/ember/cert.pem\"\n\
             [metrics]\nlisten = \"localhost\"\n[log]\nformat = \"xml\"\n",
        )
        .unwrap();
        let ConfigError::Validation(problems) = cfg.validate().unwrap_err() else {
            panic!("expected validation errors");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "turn.realm",
                "turn.relay_ip",
                "turn.external_ip",
                "tls.key",
                "metrics.listen",
                "log.format"
            ]
        );
    }

    #[test]
    fn validate_warns_without_credentials() {
        let warnings = Config::default().validate().unwrap();
        assert!(warnings
            .iter()
            .any(|w| w.contains("no users and no auth_secrets")));
    }

    /// A production `[im]` that passes every check.
    fn im_prod() -> Config {
        let mut cfg = Config::default();
        cfg.turn.auth_secrets = vec!["0123456789abcdef0123".into()];
        cfg.storage.enabled = false;
        cfg.im.mode = ImMode::Production;
        cfg.im.server_host = "im.example.com".into();
        cfg.im.admin_secret = "a".repeat(20) + "Bq3xZ9kLmN0p";
        cfg.im.token_key = "t".repeat(20) + "Vw8yR2sTuJ4h";
        cfg
    }

    fn problem_keys(cfg: &Config) -> Vec<String> {
        match cfg.validate() {
            Err(ConfigError::Validation(p)) => p.into_iter().map(|p| p.key).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn im_defaults_and_parsing() {
        let d = ImConfig::default();
        assert_eq!(d.mode, ImMode::Dev);
        assert_eq!(d.http_listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(d.admin_listen, vec!["127.0.0.1:18080".parse().unwrap()]);
        assert!(d.mqtts_listen.is_empty() && d.wss_listen.is_empty());
        assert_eq!(d.effective_host(), "127.0.0.1");
        assert_eq!(
            d.admin_signatures,
            [AdminSignature::HmacSha256, AdminSignature::WildfireSha1]
        );
        let cfg = parse(
            "[im]\nmode = \"production\"\nserver_host = \"im.example.com\"\n\
             admin_signatures = [\"hmac-sha256\"]\n\
             backup_addresses = [\"10.1.2.3:81:1881:8081\", \"[2001:db8::1]:82:1882:8082\"]\n\
             max_message_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(cfg.im.mode, ImMode::Production);
        assert_eq!(cfg.im.effective_host(), "im.example.com");
        assert_eq!(cfg.im.admin_signatures, [AdminSignature::HmacSha256]);
        assert_eq!(
            cfg.im.backup_addresses,
            [
                BackupAddress {
                    host: "10.1.2.3".into(),
                    short_port: 81,
                    long_port: 1881,
                    ws_port: 8081
                },
                BackupAddress {
                    host: "2001:db8::1".into(),
                    short_port: 82,
                    long_port: 1882,
                    ws_port: 8082
                }
            ]
        );
        assert_eq!(
            cfg.im.backup_addresses[1].to_string(),
            "[2001:db8::1]:82:1882:8082"
        );
        assert_eq!(cfg.im.max_message_bytes, 4096);

        let msg = parse("[im]\nmode = \"prod\"\n").unwrap_err().to_string();
        assert!(msg.starts_with("ember.toml:2:8: key im.mode:"), "{msg}");
        let msg = parse("[im]\nadmin_signatures = [\"md5\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key im.admin_signatures[0]"), "{msg}");

        let env_cfg = Config::from_str_with_env(
            "",
            "ember.toml",
            env(&[
                ("EMBER_IM__ADMIN_SECRET", "from-env"),
                ("EMBER_IM__MODE", "production"),
            ]),
        )
        .unwrap();
        assert_eq!(env_cfg.im.admin_secret, "from-env");
        assert_eq!(env_cfg.im.mode, ImMode::Production);
    }

    #[test]
    fn im_backup_address_format() {
        let ok = |s: &str| s.parse::<BackupAddress>().unwrap();
        assert_eq!(ok("im.example.com:80:1883:8083").host, "im.example.com");
        assert_eq!(
            ok("im.example.com:80:1883:8083").to_string(),
            "im.example.com:80:1883:8083"
        );
        for bad in [
            "",
            "host",
            "host:80:1883",
            ":80:1883:8083",
            "host:0:1883:8083",
            "host:80:1883:70000",
            "host:80:x:8083",
            "2001:db8::1:80:1883:8083",
            "[2001:db8::1:80:1883:8083",
            "[nope]:80:1883:8083",
            "a b:80:1883:8083",
            "http://h:80:1883:8083",
        ] {
            let err = bad.parse::<BackupAddress>().unwrap_err();
            assert!(
                err.contains("host:short_port:long_port:ws_port"),
                "{bad}: {err}"
            );
        }
        let msg = parse("[im]\nbackup_addresses = [\"h:1:2:3\", \"h:1:2\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("ember.toml:2:32: key im.backup_addresses[1]:"),
            "{msg}"
        );
    }

    #[test]
    fn im_production_passes_when_complete() {
        assert_eq!(im_prod().validate().unwrap(), Vec::<String>::new());
        // Dev defaults (empty secrets) pass silently: the runtime makes per-run ones.
        let mut dev = im_prod();
        dev.im = ImConfig::default();
        assert_eq!(dev.validate().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn im_production_refuses_weak_secrets() {
        for (secret, why) in [
            ("", "is empty"),
            ("123456", "well-known default"),
            ("TestIM", "well-known default"),
            (
                "replace-me-with-a-random-secret-of-32-chars",
                "well-known default",
            ),
            ("short-but-random-9f8e7d", "shorter than 32"),
        ] {
            let mut cfg = im_prod();
            cfg.im.admin_secret = secret.into();
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(
                msg.contains("key im.admin_secret:") && msg.contains(why),
                "{secret}: {msg}"
            );
            let mut cfg = im_prod();
            cfg.im.token_key = secret.into();
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(
                msg.contains("key im.token_key:") && msg.contains(why),
                "{secret}: {msg}"
            );
        }
        let mut cfg = im_prod();
        cfg.im.token_key = cfg.im.admin_secret.clone();
        assert_eq!(problem_keys(&cfg), ["im.token_key"]);
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must differ"));
        // Dev mode: the same values are only warnings (empty ones not even that).
        cfg.im.mode = ImMode::Dev;
        let w = cfg.validate().unwrap();
        assert!(
            w.len() == 1 && w[0].starts_with("im.token_key: must differ"),
            "{w:?}"
        );
        cfg.im.admin_secret = "testim".into();
        cfg.im.token_key = String::new();
        let w = cfg.validate().unwrap();
        assert!(
            w.len() == 1 && w[0].contains("im.admin_secret: is a well-known default"),
            "{w:?}"
        );
    }

    #[test]
    fn im_no_check_time() {
        let mut cfg = im_prod();
        cfg.im.no_check_time = true;
        assert_eq!(problem_keys(&cfg), ["im.no_check_time"]);
        cfg.im.mode = ImMode::Dev;
        let w = cfg.validate().unwrap();
        assert!(
            w.len() == 1 && w[0].starts_with("im.no_check_time = true"),
            "{w:?}"
        );
    }

    #[test]
    fn im_server_host() {
        let mut cfg = im_prod();
        cfg.im.server_host = String::new();
        assert_eq!(problem_keys(&cfg), ["im.server_host"]);
        cfg.im.server_host = "https://im.example.com".into();
        assert_eq!(problem_keys(&cfg), ["im.server_host"]);
        cfg.im.server_host = "im.example.com:80".into();
        assert_eq!(problem_keys(&cfg), ["im.server_host"]);
        cfg.im.server_host = "203.0.113.7".into();
        let w = cfg.validate().unwrap();
        assert!(
            w.len() == 1 && w[0].starts_with("im.server_host: 203.0.113.7 is an IP"),
            "{w:?}"
        );
        cfg.im.server_host = "2001:db8::7".into();
        assert_eq!(cfg.validate().unwrap().len(), 1);
        // Dev: empty is fine (127.0.0.1), an IP is not worth a warning.
        cfg.im.mode = ImMode::Dev;
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
        cfg.im.server_host = String::new();
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn im_tls_listeners_need_a_certificate_in_production() {
        let mut cfg = im_prod();
        cfg.im.mqtts_listen = vec!["0.0.0.0:8883".parse().unwrap()];
        cfg.im.wss_listen = vec!["0.0.0.0:8084".parse().unwrap()];
        assert_eq!(problem_keys(&cfg), ["im.mqtts_listen", "im.wss_listen"]);
        cfg.tls.cert = "/etc/ember/fullchain.pem".into();
        cfg.tls.key = "/etc/ember/privkey.pem".into();
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
        // Dev: the self-signed certificate is generated at start, like turn.tls_listen.
        cfg.tls = TlsConfig::default();
        cfg.im.mode = ImMode::Dev;
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn im_database() {
        let mut cfg = im_prod();
        for (db, ok) in [
            ("ember-data/im.sqlite3", true),
            ("/var/lib/ember/im.db", true),
            ("", false),
            ("postgres://ember@db/im", false),
            ("postgresql://ember@db/im", false),
            ("mysql://root@db/im", false),
        ] {
            cfg.im.database = db.into();
            if ok {
                assert!(cfg.validate().is_ok(), "{db}");
            } else {
                assert_eq!(problem_keys(&cfg), ["im.database"], "{db}");
            }
        }
        cfg.im.database = "postgres://x/y".into();
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("not supported yet"), "{msg}");
    }

    #[test]
    fn im_limits_and_listeners() {
        let mut cfg = im_prod();
        cfg.im.max_message_bytes = 0;
        cfg.im.rate_limit_per_sec = 0;
        cfg.im.rate_limit_burst = 0;
        cfg.im.max_connections = 0;
        cfg.im.keepalive_max_secs = 0;
        cfg.im.admin_time_window_secs = 0;
        cfg.im.token_ttl_secs = 0;
        cfg.im.group_max_members = 0;
        assert_eq!(
            problem_keys(&cfg),
            [
                "im.max_message_bytes",
                "im.rate_limit_per_sec",
                "im.rate_limit_burst",
                "im.max_connections",
                "im.keepalive_max_secs",
                "im.admin_time_window_secs",
                "im.token_ttl_secs",
                "im.group_max_members"
            ]
        );
        let mut cfg = im_prod();
        cfg.im.max_message_bytes = MAX_IM_MESSAGE_BYTES + 1;
        cfg.im.send_queue_bytes = 2 * MAX_IM_MESSAGE_BYTES;
        assert_eq!(problem_keys(&cfg), ["im.max_message_bytes"]);
        cfg.im.max_message_bytes = 65_536;
        cfg.im.send_queue_bytes = 65_536;
        assert_eq!(problem_keys(&cfg), ["im.send_queue_bytes"]);

        let mut cfg = im_prod();
        cfg.im.admin_signatures.clear();
        assert_eq!(problem_keys(&cfg), ["im.admin_signatures"]);
        cfg.im.admin_listen.clear();
        assert!(cfg.validate().is_ok());

        let mut cfg = im_prod();
        cfg.im.mqtt_listen.clear();
        cfg.im.ws_listen.clear();
        assert_eq!(problem_keys(&cfg), ["im.mqtt_listen"]);
        cfg.im.enabled = false;
        assert!(cfg.validate().is_ok());

        let mut cfg = im_prod();
        cfg.im.ws_listen = vec!["0.0.0.0:1883".parse().unwrap()];
        assert_eq!(problem_keys(&cfg), ["im.ws_listen"]);
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("also in im.mqtt_listen"), "{msg}");
    }
}
