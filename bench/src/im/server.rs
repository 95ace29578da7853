//! The broker under test as a child process: `ember im --config <generated>` or Debian's
//! `mosquitto -c <generated>`, each with a private temp directory, fresh ports and its log;
//! plus Ember's signed admin API (a small blocking HTTP/1.1 client) and token minting with the
//! `token_key` written into the generated config.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::turn::sys::{self, now_ns, ProcSample};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ember,
    Mosquitto,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ember => "ember",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// A running broker.
pub struct Broker {
    pub kind: Kind,
    pub mqtt: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub admin_secret: String,
    pub token_key: String,
    pub pid: u32,
    pub version: String,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

fn random_secret(n: usize) -> String {
    use rand::Rng;
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::thread_rng();
    (0..n).map(|_| A[r.gen_range(0..A.len())] as char).collect()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether something accepts TCP connections on `a`.
fn accepts(a: SocketAddr) -> bool {
    TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
}

impl Broker {
    /// Starts `mosquitto -c <tmp>/mosquitto.conf` and waits until it accepts connections.
    pub fn start_mosquitto(bin: &Path) -> Result<Broker> {
        if !bin.exists() {
            bail!(
                "{} not found (Debian: apt-get install mosquitto; or pass --mosquitto-bin)",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-bench-mosquitto-")
            .tempdir()?;
        let port = free_port()?;
        let conf = format!(
            "# written by ember-bench\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
             set_tcp_nodelay true\npersistence false\nmax_queued_messages 100000\n\
             max_inflight_messages 0\nmax_connections -1\nlog_dest stderr\n\
             log_type error\nlog_type warning\n"
        );
        let cfg = tmp.path().join("mosquitto.conf");
        std::fs::write(&cfg, conf)?;
        let log = tmp.path().join("mosquitto.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(tmp.path().join("mosquitto.stdout"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut b = Broker {
            kind: Kind::Mosquitto,
            mqtt: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: None,
            admin_secret: String::new(),
            token_key: String::new(),
            pid: child.id(),
            version: mosquitto_version(bin),
            child: Some(child),
            log,
            _tmp: tmp,
        };
        let until = now_ns() + 10_000_000_000;
        while !accepts(b.mqtt) {
            b.check_alive().context("mosquitto did not start")?;
            if now_ns() > until {
                bail!(
                    "mosquitto does not accept connections on {} after 10 s; log:\n{}",
                    b.mqtt,
                    b.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// Starts `ember im --config <tmp>/ember.toml` and waits for `ember: ready` (or, if the
    /// server prints nothing recognisable, for its MQTT and admin ports to accept).
    pub fn start_ember(bin: &Path, metrics: std::net::SocketAddr) -> Result<Broker> {
        if !bin.exists() {
            bail!(
                "Ember binary {} not found: `cargo build --release -p ember` (same \
                 CARGO_TARGET_DIR) or pass --ember-bin",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-bench-im-")
            .tempdir()?;
        let (mq, http, admin) = (free_port()?, free_port()?, free_port()?);
        let admin_secret = random_secret(40);
        let token_key = random_secret(40);
        let db = tmp.path().join("im.sqlite3");
        let cfg = format!(
            "# written by ember-bench\n[im]\nmode = \"dev\"\nmqtt_listen = [\"127.0.0.1:{mq}\"]\n\
             ws_listen = []\nhttp_listen = [\"127.0.0.1:{http}\"]\n\
             admin_listen = [\"127.0.0.1:{admin}\"]\nadmin_secret = \"{admin_secret}\"\n\
             token_key = \"{token_key}\"\ndatabase = {db:?}\nrate_limit_per_sec = 1000000\n\
             rate_limit_burst = 1000000\nmax_connections = 100000\n\n\
             [turn]\nenabled = false\n\n[storage]\nenabled = false\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n[selftest]\nenabled = false\n",
            db = db.display().to_string()
        );
        let cfg_path = tmp.path().join("ember.toml");
        std::fs::write(&cfg_path, cfg)?;
        let log = tmp.path().join("ember.log");
        let (child, rx) = crate::ember::spawn(bin, "im", &cfg_path, &log)?;
        let mut b = Broker {
            kind: Kind::Ember,
            mqtt: SocketAddr::from(([127, 0, 0, 1], mq)),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], admin))),
            admin_secret,
            token_key,
            pid: child.id(),
            version: version_of(bin),
            child: Some(child),
            log,
            _tmp: tmp,
        };
        let until = now_ns() + 30_000_000_000;
        let mut seen = Vec::new();
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                let ready = line.trim() == "ember: ready";
                seen.push(line);
                if ready {
                    break;
                }
            }
            b.check_alive()
                .with_context(|| format!("ember did not start (stdout: {:?})", seen.join(" | ")))?;
            if seen.is_empty() && accepts(b.mqtt) && b.admin.is_some_and(accepts) {
                break;
            }
            if now_ns() > until {
                bail!(
                    "ember not ready within 30 s (stdout: {:?}); log:\n{}",
                    seen.join(" | "),
                    b.log_tail(20)
                );
            }
        }
        let until = now_ns() + 10_000_000_000;
        while !accepts(b.mqtt) {
            b.check_alive()?;
            if now_ns() > until {
                bail!("ember: MQTT port {} does not accept connections", b.mqtt);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    pub fn sample(&self) -> Option<ProcSample> {
        sys::proc_sample(self.pid).ok()
    }

    /// Error with the log tail if the broker has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} is not running", self.kind.name());
        };
        if let Some(st) = c.try_wait()? {
            self.child = None;
            bail!(
                "{} exited ({st}); log tail:\n{}",
                self.kind.name(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, n: usize) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(s) => {
                let l: Vec<&str> = s.lines().collect();
                l[l.len().saturating_sub(n)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let until = now_ns() + 5_000_000_000;
        while now_ns() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// A login token for (uid, device), valid for a day.
    pub fn mint_token(&self, uid: &str, device: &str) -> String {
        let now = unix_secs() as i64;
        mint_token(self.token_key.as_bytes(), uid, device, now - 5, now + 86400)
    }

    /// One signed admin call; returns the response body (error unless 2xx).
    pub fn admin_call(&self, method: &str, path: &str, body: &serde_json::Value) -> Result<String> {
        let addr = self.admin.context("this broker has no admin API")?;
        let body = body.to_string();
        let ts = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis())
        .to_string();
        let nonce = random_secret(24);
        let sig = admin_signature(&self.admin_secret, method, path, &ts, &nonce, &body);
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nnonce: {nonce}\r\ntimestamp: {ts}\r\n\
             authorization: Ember-HMAC-SHA256 {sig}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("admin API {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .with_context(|| format!("admin {method} {path}: reading the response"))?;
        let (status, body) = parse_http(&resp)
            .with_context(|| format!("admin {method} {path}: bad HTTP response"))?;
        if !(200..300).contains(&status) {
            bail!(
                "admin {method} {path}: HTTP {status}: {}",
                trunc(&body, 300)
            );
        }
        Ok(body)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ember's login token: `EM1.` + base64url(claims JSON) + `.` + base64url(HMAC-SHA256(key,
/// everything before the last dot)). Ids are `[A-Za-z0-9_.@-]`, so no JSON escaping.
fn mint_token(key: &[u8], uid: &str, device: &str, iat: i64, exp: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = format!(r#"{{"u":"{uid}","d":"{device}","iat":{iat},"exp":{exp}}}"#);
    let head = format!("EM1.{}", b64.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(head.as_bytes());
    format!("{head}.{}", b64.encode(mac.finalize().into_bytes()))
}

/// The `Ember-HMAC-SHA256` admin signature (docs/PROTOCOL.md §11), lowercase hex.
fn admin_signature(
    secret: &str,
    method: &str,
    path: &str,
    ts: &str,
    nonce: &str,
    body: &str,
) -> String {
    let msg = format!(
        "EMBER-HMAC-SHA256\n{method}\n{path}\n{ts}\n{nonce}\n{}",
        hex(&Sha256::digest(body.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(msg.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn trunc(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Status and body of an HTTP/1.1 response read to the end (content-length or chunked).
fn parse_http(r: &[u8]) -> Option<(u16, String)> {
    let split = r.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&r[..split]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = r[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") {
            let size_s = std::str::from_utf8(&body[at..at + eol]).ok()?;
            let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
            at += eol + 2;
            if size == 0 || at + size > body.len() {
                break;
            }
            out.extend_from_slice(&body[at..at + size]);
            at += size + 2;
        }
        body = out;
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_default()
}

/// `mosquitto -h` prints "mosquitto version X.Y.Z" first (and exits non-zero).
fn mosquitto_version(bin: &Path) -> String {
    let Ok(o) = Command::new(bin).arg("-h").stdin(Stdio::null()).output() else {
        return "mosquitto".into();
    };
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    s.lines()
        .find(|l| l.contains("version"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "mosquitto".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/PROTOCOL.md §11.
    #[test]
    fn signature_matches_the_protocol_example() {
        let sig = admin_signature(
            "0123456789abcdef0123456789abcdef",
            "POST",
            "/v1/users/alice/tokens",
            "1700000000000",
            "4f1c2a9e7b3d8c60a5e2f1d4",
            r#"{"device":"phone","ttl_secs":86400}"#,
        );
        assert_eq!(
            sig,
            "d223324dadcabc6db5b0dedd98e8fc4508f50566e5137bd518ff7f8833775111"
        );
    }

    /// The fixed vector of im/src/token.rs.
    #[test]
    fn token_matches_the_server_vector() {
        assert_eq!(
            mint_token(b"k", "a", "b", 1, 2),
            "EM1.eyJ1IjoiYSIsImQiOiJiIiwiaWF0IjoxLCJleHAiOjJ9.\
             A2_WBnT_TWCHZamLf9Z2ruphlmC9sBhXG2XHOq09RJk"
        );
    }

    #[test]
    fn http_parsing() {
        let (s, b) = parse_http(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let r =
            b"HTTP/1.1 401 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (s, b) = parse_http(r).unwrap();
        assert_eq!((s, b.as_str()), (401, "abcde"));
        assert!(parse_http(b"garbage").is_none());
    }
}
