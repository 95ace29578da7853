//! Support for webrtc-rs's `turn` client (0.10) over every transport Ember serves.
//!
//! The client talks through a `webrtc_util::Conn` (datagram semantics: `send_to` /
//! `recv_from`) and ships no TCP or TLS implementation, so [`StreamConn`] adapts a byte
//! stream: writes go out as they are (the client already pads ChannelData to 4 bytes), reads
//! are split back into STUN messages and padded ChannelData frames (RFC 8656 §12.5) and
//! reported as coming from the server.
//!
//! Also here: TURN REST credentials ([`rest_credentials`], the coturn `use-auth-secret`
//! scheme) and a throwaway self-signed certificate ([`TestCert`]) that Ember serves and
//! clients trust.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use rustls::pki_types::{CertificateDer, ServerName};
use sha1::Sha1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::stun_client::stream_frame_len;

/// `(username, password)` for the TURN REST scheme: username `"<expiry>:<user>"`, password
/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`, written as PEM files.
#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: Vec<u8>,
}

impl TestCert {
    /// Generates a certificate into `dir` (`cert.pem`, `key.pem`).
    pub fn generate(dir: &Path) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .expect("generate certificate");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, ck.cert.pem()).expect("write cert.pem");
        std::fs::write(&key_path, ck.key_pair.serialize_pem()).expect("write key.pem");
        TestCert {
            cert_path,
            key_path,
            cert_der: ck.cert.der().to_vec(),
        }
    }

    /// A rustls client config (ring) that trusts exactly this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert_der.clone()))
            .expect("add test certificate to the root store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// Connects TLS to `server`, verifying its certificate for the IP address `server` has.
pub async fn tls_connect(
    server: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(server.ip().into());
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Any async byte stream (TCP or TLS over TCP).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

type BoxStream = Box<dyn ByteStream>;

/// A stream connection to a TURN server, presented as a `webrtc_util::Conn` that sends and
/// receives whole STUN / ChannelData messages.
pub struct StreamConn {
    reader: Mutex<(ReadHalf<BoxStream>, Vec<u8>)>,
    writer: Mutex<WriteHalf<BoxStream>>,
    local: SocketAddr,
    server: SocketAddr,
}

impl StreamConn {
    /// Wraps a connected stream; `local` and `server` are its socket addresses.
    pub fn new(
        stream: impl ByteStream + 'static,
        local: SocketAddr,
        server: SocketAddr,
    ) -> StreamConn {
        let (rd, wr) = tokio::io::split(Box::new(stream) as BoxStream);
        StreamConn {
            reader: Mutex::new((rd, Vec::with_capacity(4096))),
            writer: Mutex::new(wr),
            local,
            server,
        }
    }

    /// TURN over TCP.
    pub async fn tcp(server: SocketAddr) -> io::Result<StreamConn> {
        let s = TcpStream::connect(server).await?;
        s.set_nodelay(true)?;
        let local = s.local_addr()?;
        Ok(StreamConn::new(s, local, server))
    }

    /// TURN over TLS, trusting `cfg`'s roots.
    pub async fn tls(server: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> io::Result<StreamConn> {
        let s = tls_connect(server, cfg).await?;
        let local = s.get_ref().0.local_addr()?;
        Ok(StreamConn::new(s, local, server))
    }
}

#[async_trait]
impl webrtc_util::Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, out: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut guard = self.reader.lock().await;
        let (rd, buf) = &mut *guard;
        loop {
            let want =
                stream_frame_len(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(n) = want {
                if buf.len() >= n {
                    if out.len() < n {
                        return Err(
                            io::Error::new(io::ErrorKind::InvalidInput, "short buffer").into()
                        );
                    }
                    out[..n].copy_from_slice(&buf[..n]);
                    buf.drain(..n);
                    return Ok((n, self.server));
                }
            }
            if rd.read_buf(buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if target != self.server {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("stream to {} cannot send to {target}", self.server),
            )
            .into());
        }
        let mut w = self.writer.lock().await;
        w.write_all(buf).await?;
        w.flush().await?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_is_base64_hmac_sha1() {
        // openssl: printf '1700000000:bob' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let (u, p) = rest_credentials("s3cret", "bob", 1_700_000_000);
        assert_eq!(u, "1700000000:bob");
        assert_eq!(p, "iqOUFv+P824wi/aW3liW77QZa80=");
    }
}
