//! TURN over TCP and TLS: accepting connections, splitting the byte stream into STUN and
//! padded ChannelData frames (RFC 8656 §12.5), and a buffered writer per connection.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Worker;
use crate::auth;
use crate::core::{FiveTuple, Transport};
use crate::stun::{stream_frame_len, MAGIC_COOKIE};

/// Bytes a slow client may have queued before further frames to it are dropped.
const MAX_QUEUED: usize = 4 << 20;
/// Largest frame: a STUN message or ChannelData with a 16-bit length, plus header.
const MAX_FRAME: usize = 65535 + 20;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has not allocated within this time is closed.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);

/// The sending half of a client connection, fed by the worker.
pub struct ConnWriter {
    buf: RefCell<Vec<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

impl ConnWriter {
    pub fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.borrow_mut();
        if b.len() + bytes.len() <= MAX_QUEUED {
            b.extend_from_slice(bytes);
            self.notify.notify_one();
        }
    }
}

pub async fn accept_loop(
    worker: Rc<RefCell<Worker>>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let server = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (sock, client) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!("accept on {server}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let _ = sock.set_nodelay(true);
        let worker = Rc::clone(&worker);
        let shutdown = shutdown.clone();
        match &tls {
            None => {
                let tuple = FiveTuple {
                    client,
                    server,
                    transport: Transport::Tcp,
                };
                tokio::task::spawn_local(serve(worker, sock, tuple, shutdown));
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::task::spawn_local(async move {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(sock)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!("TLS handshake from {client}: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                    let tuple = FiveTuple {
                        client,
                        server,
                        transport: Transport::Tls,
                    };
                    serve(worker, stream, tuple, shutdown).await;
                });
            }
        }
    }
}

async fn serve<S>(
    worker: Rc<RefCell<Worker>>,
    stream: S,
    tuple: FiveTuple,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = Rc::new(ConnWriter {
        buf: RefCell::new(Vec::new()),
        notify: Notify::new(),
        closed: Cell::new(false),
    });
    {
        let mut w = worker.borrow_mut();
        w.conns.insert(tuple, Rc::clone(&writer));
        w.conn_counts[tuple.transport.index()] += 1;
    }
    let write_task = {
        let writer = Rc::clone(&writer);
        tokio::task::spawn_local(async move {
            let mut spare = Vec::new();
            loop {
                writer.notify.notified().await;
                loop {
                    std::mem::swap(&mut *writer.buf.borrow_mut(), &mut spare);
                    if spare.is_empty() {
                        break;
                    }
                    if wr.write_all(&spare).await.is_err() {
                        return;
                    }
                    spare.clear();
                }
                if writer.closed.get() {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        })
    };

    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let started = Instant::now();
    'conn: loop {
        let idle_deadline = started + IDLE_WITHOUT_ALLOCATION;
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(idle_deadline.into()), if worker.borrow().core.allocation_of(&tuple).is_none() => break,
            r = rd.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = Instant::now();
        let unix = auth::unix_now();
        let mut pos = 0;
        loop {
            let b = &buf[pos..];
            // Bytes that cannot be TURN close the connection now instead of waiting for a
            // frame that never completes (an HTTP request parses as a ChannelData header, a
            // TLS ClientHello as a STUN header): STUN carries the magic cookie, and
            // ChannelData means nothing before the connection has an allocation.
            if b.len() >= 8 && b[0] >> 6 == 0 && b[4..8] != MAGIC_COOKIE.to_be_bytes() {
                break 'conn;
            }
            if !b.is_empty()
                && b[0] >> 6 == 1
                && worker.borrow().core.allocation_of(&tuple).is_none()
            {
                break 'conn;
            }
            let frame_len = match stream_frame_len(b) {
                Ok(Some(n)) if n <= MAX_FRAME => n,
                Ok(Some(_)) | Err(_) => break 'conn, // not TURN framing: close
                Ok(None) => break,
            };
            if buf.len() - pos < frame_len {
                break;
            }
            worker
                .borrow_mut()
                .client_packet(now, unix, &tuple, &buf[pos..pos + frame_len]);
            pos += frame_len;
        }
        buf.drain(..pos);
        if buf.capacity() > 256 * 1024 && buf.len() < 4096 {
            buf.shrink_to(4096);
        }
    }
    {
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        w.core.connection_closed(&tuple, &mut w.relays);
        w.conns.remove(&tuple);
        w.conn_counts[tuple.transport.index()] -= 1;
    }
    writer.closed.set(true);
    writer.notify.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), write_task).await;
}
