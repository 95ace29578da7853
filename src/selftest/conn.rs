//! The self-test's TURN client connection: one UDP, TCP or TLS connection to a server,
//! STUN transactions (with retransmission over UDP and the long-term credential challenge
//! through [`ClientAuth`]), and ChannelData / Data indications in and out. Protocol logic
//! stays in `ember_turn::client`; this is the socket shell.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_turn::client::{Answer, ClientAuth, ClientCredentials};
use ember_turn::stun::{
    attr, method, stream_frame_len, ChannelData, Class, Message, MessageWriter,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

/// First UDP retransmission interval; doubled each time (RFC 8489 §6.2.1, shortened: a
/// self-test wants an answer in seconds, not the 39.5 s of the RFC's defaults).
const RTO: Duration = Duration::from_millis(250);

/// Transport to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed; the text is rustls's exact reason.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// Why a transaction failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("error {code} {reason}")]
    Error { code: u16, reason: String },
    #[error("the response's MESSAGE-INTEGRITY does not match our credentials")]
    BadIntegrity,
    #[error("{0}")]
    Io(String),
    #[error("the server closed the connection")]
    Closed,
}

impl TxError {
    /// The STUN error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            TxError::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A received frame that was not the answer to the transaction in progress.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A STUN message (a Data indication, or a late response).
    Stun(Vec<u8>),
    /// ChannelData: channel number and payload.
    Channel(u16, Vec<u8>),
}

/// A successful response and how long it took from the first send.
pub struct Response {
    pub bytes: Vec<u8>,
    pub rtt: Duration,
}

impl Response {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("parsed when received")
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Io {
    Udp(UdpSocket),
    Stream {
        stream: Box<dyn Stream>,
        buf: Vec<u8>,
    },
}

/// One connection to a STUN/TURN server.
pub struct Conn {
    io: Io,
    pub proto: Proto,
    pub local: SocketAddr,
    auth: ClientAuth,
    /// Total time a transaction may take.
    timeout: Duration,
    pending: VecDeque<Frame>,
}

/// TLS client settings: which roots to trust, or none (to go on testing after a
/// certificate problem has been reported).
pub fn tls_config(ca: Option<&Path>, verify: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if verify {
        let mut roots = RootCertStore::empty();
        // Unreadable system certificates are not fatal: --ca may be all that is needed.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read --ca {}: {e}", path.display()))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("--ca {}: bad PEM: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                anyhow::bail!("--ca {}: no certificate in it", path.display());
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ember_common::tls::AcceptAnyServerCert(
                provider,
            )))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn unspecified_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

async fn tcp_connect(server: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(server)).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(ConnectError::Refused)
        }
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

impl Conn {
    /// A UDP "connection" (a connected socket on an ephemeral port).
    pub async fn udp(
        server: SocketAddr,
        creds: Option<ClientCredentials>,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let sock = UdpSocket::bind(unspecified_for(server)).await?;
        sock.connect(server).await?;
        let local = sock.local_addr()?;
        Ok(Conn::new(Io::Udp(sock), Proto::Udp, local, creds, timeout))
    }

    /// A TCP connection.
    pub async fn tcp(
        server: SocketAddr,
        creds: Option<ClientCredentials>,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let s = tcp_connect(server, timeout).await?;
        let local = s.local_addr()?;
        Ok(Conn::new(
            Io::Stream {
                stream: Box::new(s),
                buf: Vec::new(),
            },
            Proto::Tcp,
            local,
            creds,
            timeout,
        ))
    }

    /// A TLS connection; `name` is what the certificate must be valid for.
    pub async fn tls(
        server: SocketAddr,
        name: ServerName<'static>,
        config: Arc<ClientConfig>,
        creds: Option<ClientCredentials>,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let s = tcp_connect(server, timeout).await?;
        let local = s.local_addr()?;
        let handshake = TlsConnector::from(config).connect(name, s);
        let tls = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err(ConnectError::Timeout(timeout)),
            Ok(Err(e)) => {
                // rustls wraps its error in io::Error; its text is the exact reason.
                let reason = e
                    .get_ref()
                    .map_or_else(|| e.to_string(), |inner| inner.to_string());
                return Err(ConnectError::Tls(reason));
            }
            Ok(Ok(tls)) => tls,
        };
        Ok(Conn::new(
            Io::Stream {
                stream: Box::new(tls),
                buf: Vec::new(),
            },
            Proto::Tls,
            local,
            creds,
            timeout,
        ))
    }

    fn new(
        io: Io,
        proto: Proto,
        local: SocketAddr,
        creds: Option<ClientCredentials>,
        timeout: Duration,
    ) -> Conn {
        Conn {
            io,
            proto,
            local,
            auth: ClientAuth::new(creds),
            timeout,
            pending: VecDeque::new(),
        }
    }

    /// The realm the server announced, once known.
    pub fn realm(&self) -> Option<&str> {
        self.auth.realm()
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.io {
            Io::Udp(s) => s.send(bytes).await.map(drop),
            Io::Stream { stream, .. } => stream.write_all(bytes).await,
        }
    }

    /// Sends application data to `channel` as ChannelData.
    pub async fn send_channel(&mut self, channel: u16, data: &[u8]) -> std::io::Result<()> {
        let stream = matches!(self.io, Io::Stream { .. });
        let pad = if stream { (4 - data.len() % 4) % 4 } else { 0 };
        let mut frame = Vec::with_capacity(4 + data.len() + pad);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(data);
        frame.resize(frame.len() + pad, 0);
        self.send(&frame).await
    }

    /// The next frame from the server (queued ones first), or `None` at `deadline`.
    pub async fn recv_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, TxError> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(Some(f));
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.read_frame()).await {
            Err(_) => Ok(None),
            Ok(r) => r.map(Some),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, TxError> {
        let io_err = |e: std::io::Error| TxError::Io(e.to_string());
        match &mut self.io {
            Io::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.recv(&mut buf).await.map_err(io_err)?;
                    if let Some(f) = to_frame(&buf[..n]) {
                        return Ok(f);
                    }
                }
            }
            Io::Stream { stream, buf } => loop {
                match stream_frame_len(buf) {
                    Err(_) => {
                        return Err(TxError::Io(
                            "the server sent bytes that are neither STUN nor ChannelData".into(),
                        ))
                    }
                    Ok(Some(len)) if buf.len() >= len => {
                        let frame: Vec<u8> = buf.drain(..len).collect();
                        if let Some(f) = to_frame(&frame) {
                            return Ok(f);
                        }
                    }
                    _ => {
                        let mut chunk = [0u8; 16384];
                        let n = stream.read(&mut chunk).await.map_err(io_err)?;
                        if n == 0 {
                            return Err(TxError::Closed);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            },
        }
    }

    /// One request/response exchange, following credential challenges. `attrs` writes
    /// the method's attributes (called again for each retry).
    pub async fn transact(
        &mut self,
        method: u16,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> Result<Response, TxError> {
        self.auth.start_request();
        let start = Instant::now();
        loop {
            let tid: [u8; 12] = rand::random();
            let req = self.auth.request(method, &tid, &attrs);
            let resp = self.exchange(&req, &tid, start).await?;
            let msg = Message::parse(&resp).expect("parsed when received");
            match self.auth.on_response(&msg) {
                Answer::Success => {
                    return Ok(Response {
                        bytes: resp,
                        rtt: start.elapsed(),
                    })
                }
                Answer::Retry => continue,
                Answer::Error { code, reason } => return Err(TxError::Error { code, reason }),
                Answer::BadIntegrity => return Err(TxError::BadIntegrity),
            }
        }
    }

    /// Sends `req` (retransmitting over UDP) until the response with `tid` arrives.
    async fn exchange(
        &mut self,
        req: &[u8],
        tid: &[u8; 12],
        start: Instant,
    ) -> Result<Vec<u8>, TxError> {
        let deadline = start + self.timeout;
        let udp = matches!(self.io, Io::Udp(_));
        let mut rto = RTO;
        loop {
            self.send(req)
                .await
                .map_err(|e| TxError::Io(e.to_string()))?;
            let resend_at = if udp {
                (Instant::now() + rto).min(deadline)
            } else {
                deadline
            };
            rto *= 2;
            loop {
                if Instant::now() >= resend_at {
                    break;
                }
                let frame = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(resend_at),
                    self.read_frame(),
                )
                .await;
                match frame {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(Frame::Stun(bytes))) => {
                        let m = Message::parse(&bytes).expect("checked by to_frame");
                        let response = matches!(m.class(), Class::Success | Class::Error);
                        if response && m.transaction_id() == *tid {
                            return Ok(bytes);
                        }
                        if !response {
                            self.pending.push_back(Frame::Stun(bytes));
                        }
                    }
                    Ok(Ok(f)) => self.pending.push_back(f),
                }
            }
            if Instant::now() >= deadline {
                return Err(TxError::Timeout(self.timeout));
            }
        }
    }

    /// Releases the allocation (Refresh with LIFETIME 0); errors are ignored.
    pub async fn release(&mut self) {
        let _ = self
            .transact(method::REFRESH, |w| {
                w.u32(attr::LIFETIME, 0);
            })
            .await;
    }
}

fn to_frame(b: &[u8]) -> Option<Frame> {
    if let Ok(cd) = ChannelData::parse(b) {
        return Some(Frame::Channel(cd.channel, cd.data.to_vec()));
    }
    Message::parse(b).ok().map(|_| Frame::Stun(b.to_vec()))
}

/// The payload of a Data indication: (peer, data).
pub fn data_indication(bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let m = Message::parse(bytes).ok()?;
    if m.method() != method::DATA || m.class() != Class::Indication {
        return None;
    }
    Some((
        m.get_xor_addr(attr::XOR_PEER_ADDRESS)?,
        m.get(attr::DATA)?.to_vec(),
    ))
}

/// A STUN Binding from an unconnected socket (the peer side of the data check): its
/// server-reflexive address.
pub async fn binding_from(
    sock: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    let auth = ClientAuth::new(None);
    let tid: [u8; 12] = rand::random();
    let req = auth.request(method::BINDING, &tid, |_| {});
    let deadline = Instant::now() + timeout;
    let mut rto = RTO;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        sock.send_to(&req, server).await.ok()?;
        let until = (Instant::now() + rto).min(deadline);
        rto *= 2;
        while let Ok(Ok((n, from))) = tokio::time::timeout_at(
            tokio::time::Instant::from_std(until),
            sock.recv_from(&mut buf),
        )
        .await
        {
            if from != server {
                continue;
            }
            if let Ok(m) = Message::parse(&buf[..n]) {
                if m.transaction_id() == tid && m.class() == Class::Success {
                    return ember_turn::client::mapped_address(&m);
                }
            }
        }
    }
    None
}
