//! The messaging core's side of the harness: the secrets a test instance runs with, and a
//! small blocking client for its signed admin API (Ember-HMAC-SHA256, docs/PROTOCOL.md).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

/// The admin secret and token key a test instance was started with.
#[derive(Debug, Clone)]
pub struct ImSecrets {
    pub admin_secret: String,
    pub token_key: String,
}

fn random_secret() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

impl ImSecrets {
    pub fn generate() -> ImSecrets {
        ImSecrets {
            admin_secret: random_secret(),
            token_key: random_secret(),
        }
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Signed admin API calls over plain HTTP/1.1 (one connection per call).
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub secret: String,
}

/// An HTTP answer: status and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl Admin {
    /// The Ember-HMAC-SHA256 signature of a request.
    pub fn sign(&self, method: &str, path: &str, ts: i64, nonce: &str, body: &[u8]) -> String {
        let canonical = format!(
            "EMBER-HMAC-SHA256\n{method}\n{path}\n{ts}\n{nonce}\n{}",
            hex(&Sha256::digest(body))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).expect("any key");
        mac.update(canonical.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// A correctly signed call.
    pub fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let ts = unix_ms();
        let nonce = random_secret();
        let sig = self.sign(method, path, ts, &nonce, body.as_bytes());
        let headers = [
            ("nonce", nonce),
            ("timestamp", ts.to_string()),
            ("authorization", format!("Ember-HMAC-SHA256 {sig}")),
        ];
        self.raw(method, path, &headers, body.as_bytes())
    }

    /// A call with exactly these extra headers (for forged/stale/replayed signatures).
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
        http(self.addr, method, path, headers, body)
    }

    /// Like [`Admin::call`], panicking unless the status is 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> serde_json::Value {
        let a = self.call(method, path, body);
        assert!(
            (200..300).contains(&a.status),
            "admin {method} {path}: {} {}",
            a.status,
            a.json
        );
        a.json
    }

    /// Creates (or updates) users.
    pub fn users(&self, uids: &[&str]) {
        let users: Vec<_> = uids
            .iter()
            .map(|u| serde_json::json!({"uid": u, "name": u}))
            .collect();
        self.ok("POST", "/v1/users", Some(&serde_json::json!({ "users": users })));
    }

    /// A login token for `uid` on `device`.
    pub fn token(&self, uid: &str, device: &str) -> String {
        let v = self.ok(
            "POST",
            &format!("/v1/users/{uid}/tokens"),
            Some(&serde_json::json!({ "device": device })),
        );
        v["token"].as_str().expect("token in answer").to_string()
    }

    /// Creates a group with members.
    pub fn group(&self, gid: &str, owner: &str, members: &[&str]) {
        self.ok(
            "POST",
            "/v1/groups",
            Some(&serde_json::json!({"gid": gid, "name": gid, "owner": owner, "members": members})),
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One HTTP/1.1 request with `Connection: close`; bounded by a 10 s timeout.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // A chunked body: take the first chunk's data (answers here are small).
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.split_once("\r\n").map(|(_, b)| b).unwrap_or("").rsplit_once("\r\n0").map(|(b, _)| b).unwrap_or("")
    } else {
        body
    };
    Answer {
        status,
        json: serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    }
}
