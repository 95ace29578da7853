//! The commented `ember.toml` that `ember init` writes: every key of every section with
//! its default value and a one-line explanation, and freshly generated secrets.

use std::fmt::Display;
use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use crate::config::Config;

/// A fresh random secret: 24 random bytes as 32 base64url characters.
pub fn random_secret() -> String {
    random_token(24)
}

/// A random access key in the usual shape: 20 upper-case letters and digits.
pub fn random_access_key() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut buf = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter()
        .map(|b| CHARS[usize::from(b % 32)] as char)
        .collect()
}

/// `bytes` random bytes from the OS-seeded thread RNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Renders the config template. Defaults come from [`Config::default`], so the file and
/// the code cannot disagree; `turn.auth_secrets`, `selftest.token`, the storage key and
/// `im.admin_secret` / `im.token_key` get new random values on every call. The `[im]`
/// listeners are the standard ports (80, 1883, 8883, 8083, 8084) where the built-in
/// defaults use unprivileged ones (8080) and leave TLS off.
pub fn render_config_template() -> String {
    let d = Config::default();
    let t = &d.turn;
    let secret = random_secret();
    let password = random_token(18);
    let st = &d.selftest;
    format!(
        r#"# Ember configuration, written by `ember init`. Check it with `ember check-config`.
# Every key is shown with its default value. Each one can also be set from the environment
# as EMBER_<SECTION>__<KEY>=value, e.g. EMBER_TURN__REALM=example.org.
# This file holds secrets: keep it readable by the user running ember only (mode 0600).

[turn]
# Run the STUN/TURN relay under `ember up`.
enabled = {enabled}
# UDP and TCP listeners ("IP:PORT"); 3478 is the standard STUN/TURN port.
listen = {listen}
# TURN-over-TLS listeners (5349 is standard), certificate from [tls]; [] disables TLS.
tls_listen = {tls_listen}
# Local addresses relay sockets bind to (at most one IPv4, one IPv6); [] = derived from listen.
relay_ip = {relay_ip}
# Behind NAT, the public address clients are given: one for all, or "relay/public" pairs.
# e.g. external_ip = ["203.0.113.5"]
# e.g. external_ip = ["10.0.0.5/203.0.113.5", "fd00::5/2001:db8::5"]
external_ip = {external_ip}
# Relay port range, "MIN-MAX"; open it in the firewall (UDP and TCP). At least 10000 ports.
relay_ports = {relay_ports}
# Allow a relay_ports range smaller than 10000 ports (then only a warning).
allow_small_port_range = {allow_small_port_range}
# Realm of the long-term credential mechanism (usually your domain).
realm = {realm}
# Static long-term credentials, user name -> password.
# e.g. users = {{ alice = "{password}" }}
users = {{}}
# TURN REST API shared secrets (coturn's use-auth-secret); list several to rotate.
auth_secrets = ["{secret}"]
# Peer ranges to allow although they are private/loopback (reaching internal networks!).
# e.g. allowed_peers = ["10.0.0.0/8"]
allowed_peers = {allowed_peers}
# Extra peer ranges to deny on top of the built-in private/loopback/multicast denials.
# e.g. denied_peers = ["192.0.2.0/24"]
denied_peers = {denied_peers}
# Maximum concurrent allocations per user name (0 = unlimited).
user_quota = {user_quota}
# Maximum concurrent allocations on the server (0 = unlimited).
total_quota = {total_quota}
# Longest allocation lifetime a client may request, seconds.
max_lifetime = {max_lifetime}
# Per-allocation relay bandwidth cap in bytes/s, each direction (0 = none).
bandwidth_limit = {bandwidth_limit}
# Seconds a nonce stays valid before the server answers 438 Stale Nonce.
nonce_lifetime = {nonce_lifetime}
# Failed authentications per user and source IP per minute; past it that user gets 401
# without a check, and an IP failing 10x this across user names is ignored for the minute.
auth_failures_per_minute = {auth_failures_per_minute}
# Worker threads for the relay data path (0 = one per core).
threads = {threads}

[tls]
# Default PEM certificate chain and private key: served to clients that send no server
# name (SNI) or one no entry of `certificates` covers. Every certificate file is reloaded
# when it changes or on SIGHUP. Both empty: a self-signed certificate is generated at start
# (development only).
# e.g. cert = "/etc/ember/fullchain.pem"
cert = {cert}
# e.g. key = "/etc/ember/privkey.pem"
key = {key}
# More certificates, chosen per connection by SNI: each serves the DNS names in its own
# subjectAltName ("*.example.com" covers one label; an exact name beats a wildcard), so
# one Ember serves several domains with their own certificates. Adding or removing
# entries needs a restart. Also written as [[tls.certificates]] tables.
# e.g. certificates = [{{ cert = "/etc/ember/media.example.com.pem", key = "/etc/ember/media.example.com.key" }}]
certificates = []

[metrics]
# Address of the Prometheus endpoint (/metrics, /healthz); "" disables it.
listen = {metrics_listen}

[selftest]
# Serve the relay self-test page (http://HOST:PORT/selftest) whenever the relay runs.
enabled = {st_enabled}
# HTTP listeners of the page ("IP:PORT"); [] disables plain HTTP.
listen = {st_listen}
# HTTPS listeners, certificate from [tls].
# e.g. tls_listen = ["0.0.0.0:8443"]
tls_listen = {st_tls_listen}
# Bearer token for one-click tests: the page fetches short-lived TURN credentials with it.
# Keep it secret (free TURN credentials make an open relay); "" disables one-click.
token = "{st_token}"
# Lifetime of those credentials, seconds.
credential_ttl = {st_ttl}
# User name part of those credentials ("<expiry>:<credential_user>").
credential_user = {st_user}
# TURN URLs the page offers; [] derives them from the page's host name and [turn] ports.
# e.g. turn_urls = ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"]
turn_urls = {st_urls}

[storage]
# Run the object store (S3 and Qiniu APIs, bucket download domains) under `ember up`.
enabled = {sg_enabled}
# HTTP listeners; 9000 is the usual S3/MinIO port.
listen = {sg_listen}
# HTTPS listeners, certificate from [tls].
# e.g. tls_listen = ["0.0.0.0:443"]
tls_listen = {sg_tls_listen}
# Where objects live: "fs" (local disk, data_dir) or "s3" (the [storage.upstream] server).
backend = {sg_backend}
# Directory of the "fs" backend (relative paths are relative to the working directory).
data_dir = {sg_data_dir}
# Region S3 clients sign for.
region = {sg_region}
# Access key -> secret key, for S3 (SigV4) and Qiniu (AK/SK) clients alike.
credentials = {{ {sg_ak} = "{sg_sk}" }}
# Access keys that may only read.
read_only_keys = {sg_ro}
# Host-name suffixes for virtual-host-style S3: "media.s3.example.com" is bucket "media".
# e.g. s3_domains = ["s3.example.com"]
s3_domains = {sg_s3_domains}
# Download domains, domain -> bucket: GET https://media.example.com/<key> serves "media".
# e.g. bucket_domains = {{ "media.example.com" = "media" }}
bucket_domains = {{}}
# Buckets anyone may read without a signature.
# e.g. public_buckets = ["media"]
public_buckets = {sg_public}
# Largest object accepted, bytes (S3's single-PUT limit is 5 GiB).
max_object_size = {sg_max}
# Buckets created at start when missing.
# e.g. buckets = ["media", "files"]
buckets = {sg_buckets}
# Base URL clients reach the S3 API / Qiniu upload host on, used in the upload and download
# URLs Ember issues to apps. Empty = http:// + the first listen address (development only).
# e.g. public_url = "https://s3.example.com"
public_url = {sg_public_url}
# Scheme of issued bucket-domain download URLs: "auto" (https when tls_listen is set),
# "https" (TLS terminated in front of Ember) or "http".
download_scheme = {sg_download_scheme}

[storage.upstream]
# The S3/MinIO server behind backend = "s3".
# e.g. endpoint = "https://minio.internal:9000"
endpoint = {up_endpoint}
# Region to sign for upstream.
region = {up_region}
# Access key for the upstream server.
access_key = {up_ak}
# Secret key for the upstream server.
secret_key = {up_sk}
# Path-style requests (MinIO usually needs them).
path_style = {up_path_style}

[im]
# Run the messaging core (MQTT long connections, short-link HTTP, admin API) under `ember up`.
enabled = {im_enabled}
# "dev" or "production". Production refuses to start with empty, short (< 32 characters),
# equal or well-known secrets, with no_check_time = true, or without server_host.
# e.g. mode = "production"
mode = {im_mode}
# Domain clients connect to (returned by POST /route); use a domain, not an IP, so the
# server can move. Empty = 127.0.0.1 (dev only).
# e.g. server_host = "im.example.com"
server_host = {im_host}
# Short-link HTTP listeners (/api/version, /route); 80 is the standard port (needs root or
# CAP_NET_BIND_SERVICE). Open it to clients.
http_listen = {im_http}
# MQTT 3.1.1/5 over TCP listeners; open 1883 to clients.
mqtt_listen = {im_mqtt}
# MQTT over TLS listeners (8883), certificate from [tls]; [] disables.
mqtts_listen = {im_mqtts}
# MQTT over WebSocket listeners (web clients; any URL path, usually /mqtt); [] disables.
ws_listen = {im_ws}
# MQTT over secure WebSocket listeners (8084), certificate from [tls]; [] disables.
wss_listen = {im_wss}
# Signed admin API listeners; open the port to the app's back end only, never to clients.
# e.g. admin_listen = ["10.0.0.5:18080"]
admin_listen = {im_admin}
# Secret of the admin API request signatures (share it with the app's back end only).
admin_secret = "{im_admin_secret}"
# Key that signs login tokens; stays on this server. Changing it logs every device out.
token_key = "{im_token_key}"
# Accept admin requests whatever their timestamp (debugging only; refused in production).
no_check_time = {im_nct}
# The database: a SQLite file (relative paths are relative to the working directory).
# PostgreSQL ("postgres://...") is not supported yet.
database = {im_db}
# Other addresses of this node for clients, "host:short_port:long_port:ws_port" (e.g. an
# access point forwarding its ports here). An IPv6 host goes in brackets.
# e.g. backup_addresses = ["203.0.113.9:81:1881:8081"]
backup_addresses = {im_backup}
# Largest message body, bytes.
max_message_bytes = {im_max_msg}
# How long the sender may recall a message, seconds.
recall_window_secs = {im_recall}
# Bytes queued for one connection before it is dropped as a slow consumer (it resyncs).
send_queue_bytes = {im_queue}
# Requests per second and user (token bucket); over it the answer is code 429.
rate_limit_per_sec = {im_rate}
# Token bucket size per user: how many requests may come at once after a pause.
rate_limit_burst = {im_burst}
# Concurrent client connections; more are refused.
max_connections = {im_maxconn}
# Upper bound of a client's MQTT keep alive, seconds.
keepalive_max_secs = {im_keepalive}
# Largest clock difference accepted on signed admin requests, seconds.
admin_time_window_secs = {im_window}
# Admin signature schemes accepted: "hmac-sha256" (Ember's) and "wildfire-sha1" (Wildfire
# IM's server API); drop "wildfire-sha1" once every back end signs with HMAC.
admin_signatures = {im_sigs}
# Default lifetime of login tokens issued by the admin API, seconds (30 days).
token_ttl_secs = {im_ttl}
# Largest group, members.
group_max_members = {im_group_max}

[log]
# Log filter, e.g. "info" or "ember_turn=debug,info"; the RUST_LOG variable wins when set.
level = {level}
# "text" or "json" (one JSON object per line).
format = {format}
"#,
        enabled = t.enabled,
        listen = list(&t.listen),
        tls_listen = list(&t.tls_listen),
        relay_ip = list(&t.relay_ip),
        external_ip = list(&t.external_ip),
        relay_ports = string(&t.relay_ports),
        allow_small_port_range = t.allow_small_port_range,
        realm = string(&t.realm),
        allowed_peers = list(&t.allowed_peers),
        denied_peers = list(&t.denied_peers),
        user_quota = t.user_quota,
        total_quota = t.total_quota,
        max_lifetime = t.max_lifetime,
        bandwidth_limit = t.bandwidth_limit,
        nonce_lifetime = t.nonce_lifetime,
        auth_failures_per_minute = t.auth_failures_per_minute,
        threads = t.threads,
        cert = string(&d.tls.cert),
        key = string(&d.tls.key),
        metrics_listen = string(&d.metrics.listen),
        st_token = random_secret(),
        sg_enabled = d.storage.enabled,
        sg_listen = list(&d.storage.listen),
        sg_tls_listen = list(&d.storage.tls_listen),
        sg_backend = string(&d.storage.backend),
        sg_data_dir = string(&d.storage.data_dir.display()),
        sg_region = string(&d.storage.region),
        sg_ak = random_access_key(),
        sg_sk = random_token(30),
        sg_ro = list(&d.storage.read_only_keys),
        sg_s3_domains = list(&d.storage.s3_domains),
        sg_public = list(&d.storage.public_buckets),
        sg_max = d.storage.max_object_size,
        sg_buckets = list(&d.storage.buckets),
        sg_public_url = string(&d.storage.public_url),
        sg_download_scheme = string(&d.storage.download_scheme),
        up_endpoint = string(&d.storage.upstream.endpoint),
        up_region = string(&d.storage.upstream.region),
        up_ak = string(&d.storage.upstream.access_key),
        up_sk = string(&d.storage.upstream.secret_key),
        up_path_style = d.storage.upstream.path_style,
        st_enabled = st.enabled,
        st_listen = list(&st.listen),
        st_tls_listen = list(&st.tls_listen),
        st_ttl = st.credential_ttl,
        st_user = string(&st.credential_user),
        st_urls = list(&st.turn_urls),
        im_enabled = d.im.enabled,
        im_mode = string(&d.im.mode),
        im_host = string(&d.im.server_host),
        im_http = list(&[addr("0.0.0.0:80")]),
        im_mqtt = list(&[addr("0.0.0.0:1883")]),
        im_mqtts = list(&[addr("0.0.0.0:8883")]),
        im_ws = list(&[addr("0.0.0.0:8083")]),
        im_wss = list(&[addr("0.0.0.0:8084")]),
        im_admin = list(&d.im.admin_listen),
        im_admin_secret = random_token(32),
        im_token_key = random_token(32),
        im_nct = d.im.no_check_time,
        im_db = string(&d.im.database),
        im_backup = list(&d.im.backup_addresses),
        im_max_msg = d.im.max_message_bytes,
        im_recall = d.im.recall_window_secs,
        im_queue = d.im.send_queue_bytes,
        im_rate = d.im.rate_limit_per_sec,
        im_burst = d.im.rate_limit_burst,
        im_maxconn = d.im.max_connections,
        im_keepalive = d.im.keepalive_max_secs,
        im_window = d.im.admin_time_window_secs,
        im_sigs = list(&d.im.admin_signatures),
        im_ttl = d.im.token_ttl_secs,
        im_group_max = d.im.group_max_members,
        level = string(&d.log.level),
        format = string(&d.log.format),
    )
}

/// A socket address literal of the template.
fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid template address")
}

/// A TOML string literal.
fn string(v: &impl Display) -> String {
    toml::Value::String(v.to_string()).to_string()
}

/// A TOML array of string literals.
fn list<T: Display>(items: &[T]) -> String {
    let items = items
        .iter()
        .map(|v| toml::Value::String(v.to_string()))
        .collect();
    toml::Value::Array(items).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImConfig;

    fn parse(text: &str) -> Config {
        Config::from_str_with_env(text, "template", Vec::new()).unwrap()
    }

    #[test]
    fn template_parses_back_to_defaults() {
        let text = render_config_template();
        let mut cfg = parse(&text);
        assert_eq!(cfg.turn.auth_secrets.len(), 1);
        assert_eq!(cfg.turn.auth_secrets[0].len(), 32);
        cfg.turn.auth_secrets.clear();
        assert_eq!(cfg.selftest.token.len(), 32);
        cfg.selftest.token.clear();
        assert_eq!(cfg.storage.credentials.len(), 1);
        let (ak, sk) = cfg.storage.credentials.iter().next().unwrap();
        assert_eq!((ak.len(), sk.len()), (20, 40));
        cfg.storage.credentials.clear();
        assert_eq!(
            (cfg.im.admin_secret.len(), cfg.im.token_key.len()),
            (43, 43)
        );
        assert_ne!(cfg.im.admin_secret, cfg.im.token_key);
        assert!(ImConfig::secret_problem(&cfg.im.admin_secret).is_none());
        cfg.im.admin_secret.clear();
        cfg.im.token_key.clear();
        let port = |l: &[SocketAddr]| l.iter().map(SocketAddr::port).collect::<Vec<_>>();
        assert_eq!(port(&cfg.im.http_listen), [80]);
        assert_eq!(port(&cfg.im.mqtt_listen), [1883]);
        assert_eq!(port(&cfg.im.mqtts_listen), [8883]);
        assert_eq!(port(&cfg.im.ws_listen), [8083]);
        assert_eq!(port(&cfg.im.wss_listen), [8084]);
        assert_eq!(port(&cfg.im.admin_listen), [18080]);
        let d = ImConfig::default();
        cfg.im.http_listen = d.http_listen;
        cfg.im.mqtts_listen = d.mqtts_listen;
        cfg.im.wss_listen = d.wss_listen;
        assert_eq!(cfg, Config::default());
        assert_eq!(parse(&text).validate().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn every_key_is_written() {
        let text = render_config_template();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            assert!(line.contains(" = "), "not a key line: {line}");
            assert!(lines[i - 1].starts_with('#'), "no explanation above {line}");
        }
        // Every field the types know (serde lists them for an unknown key) is in the file.
        let doc: toml::Table = text.parse().unwrap();
        for section in ["turn", "tls", "metrics", "selftest", "storage", "im", "log"] {
            let probe = format!("[{section}]\nno_such_key = 1\n");
            let err = Config::from_str_with_env(&probe, "probe", Vec::new()).unwrap_err();
            let msg = err.to_string();
            let expected = msg.split("expected ").nth(1).unwrap();
            let expected = expected.trim_start_matches("one of ").replace(" or ", ", ");
            for field in expected.split(", ") {
                let field = field.trim_matches('`');
                assert!(
                    doc[section].get(field).is_some(),
                    "[{section}] {field} missing"
                );
            }
        }
    }

    #[test]
    fn commented_examples_are_valid() {
        let text = render_config_template();
        let mut section = "";
        for line in text.lines() {
            if line.starts_with('[') {
                section = line;
            } else if let Some(example) = line.strip_prefix("# e.g. ") {
                parse(&format!("{section}\n{example}\n"));
            }
        }
    }

    #[test]
    fn secrets_are_fresh() {
        let a = parse(&render_config_template()).turn.auth_secrets;
        let b = parse(&render_config_template()).turn.auth_secrets;
        assert_ne!(a, b);
        let a = parse(&render_config_template()).im;
        let b = parse(&render_config_template()).im;
        assert_ne!(a.admin_secret, b.admin_secret);
        assert_ne!(a.token_key, b.token_key);
    }

    #[test]
    fn template_in_production_mode_needs_only_the_host() {
        let text = render_config_template().replace("mode = \"dev\"", "mode = \"production\"");
        let mut cfg = parse(&text);
        cfg.tls.cert = "/etc/ember/fullchain.pem".into();
        cfg.tls.key = "/etc/ember/privkey.pem".into();
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("key im.server_host: must be set"), "{msg}");
        cfg.im.server_host = "im.example.com".into();
        assert_eq!(cfg.validate().unwrap(), Vec::<String>::new());
    }
}
