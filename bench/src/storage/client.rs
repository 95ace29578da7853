//! A minimal S3 client for the bench: one keep-alive HTTP/1.1 connection per worker
//! (hyper's connection-level client), path-style requests signed with SigV4 by
//! `ember_storage::s3::sigv4::authorization_header`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ember_storage::s3::sigv4::{self, RequestView, SigningCredentials};
use ember_storage::time::UtcDateTime;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

/// Where and as whom to send requests.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub bucket: String,
    /// Send `x-amz-content-sha256: UNSIGNED-PAYLOAD` instead of the body's SHA-256.
    pub unsigned: bool,
}

/// A request body: `chunk` repeated `left` times (a 4 KiB object is one chunk; a large
/// object streams the same 1 MiB chunk, so the client never holds the whole object).
pub struct RepeatBody {
    chunk: Bytes,
    left: usize,
}

impl RepeatBody {
    pub fn new(chunk: Bytes, times: usize) -> Self {
        RepeatBody { chunk, left: times }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.chunk.len() * self.left) as u64)
    }
}

/// Hex SHA-256 of `chunk` repeated `times` times (what the server will verify).
pub fn repeated_sha256(chunk: &[u8], times: usize) -> String {
    let mut h = Sha256::new();
    for _ in 0..times {
        h.update(chunk);
    }
    sigv4::hex_encode(&h.finalize())
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<RepeatBody>,
    t: Arc<Target>,
    host: String,
}

fn now_utc() -> UtcDateTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UtcDateTime::from_unix(secs)
}

impl Conn {
    pub async fn open(t: Arc<Target>) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {}", t.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = t.addr.to_string();
        Ok(Conn { sender, t, host })
    }

    fn request(
        &self,
        method: &str,
        key: &str,
        body: RepeatBody,
        payload_sha: &str,
    ) -> Result<hyper::Request<RepeatBody>> {
        let path = format!("/{}/{}", self.t.bucket, key);
        let time = now_utc();
        let date = time.iso8601_basic();
        let payload = if self.t.unsigned {
            sigv4::UNSIGNED_PAYLOAD
        } else {
            payload_sha
        };
        let len = body.size_hint().exact().unwrap_or(0);
        let headers: [(&str, &[u8]); 3] = [
            ("host", self.host.as_bytes()),
            ("x-amz-content-sha256", payload.as_bytes()),
            ("x-amz-date", date.as_bytes()),
        ];
        let view = RequestView {
            method,
            raw_path: &path,
            raw_query: "",
            headers: &headers,
        };
        let auth = sigv4::authorization_header(
            &view,
            SigningCredentials {
                access_key: &self.t.access_key,
                secret_key: &self.t.secret_key,
            },
            &self.t.region,
            &time,
            &["host", "x-amz-content-sha256", "x-amz-date"],
            payload,
        );
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header("host", &self.host)
            .header("x-amz-content-sha256", payload)
            .header("x-amz-date", &date)
            .header("authorization", auth);
        if method == "PUT" {
            b = b.header("content-length", len);
        }
        Ok(b.body(body)?)
    }

    /// PUT `body` as `key`; `sha` is its hex SHA-256.
    pub async fn put(&mut self, key: &str, body: RepeatBody, sha: &str) -> Result<()> {
        let req = self.request("PUT", key, body, sha)?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "PUT {key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(())
    }

    /// GET `key`, streaming the body; returns its length.
    pub async fn get(&mut self, key: &str) -> Result<u64> {
        let req = self.request(
            "GET",
            key,
            RepeatBody::new(Bytes::new(), 0),
            sigv4::EMPTY_SHA256,
        )?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut n = 0u64;
        let mut head = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f?.into_data() {
                n += d.len() as u64;
                if !status.is_success() && head.len() < 300 {
                    head.extend_from_slice(&d[..d.len().min(300)]);
                }
            }
        }
        if !status.is_success() {
            bail!(
                "GET {key}: HTTP {status}: {}",
                String::from_utf8_lossy(&head)
            );
        }
        Ok(n)
    }
}
