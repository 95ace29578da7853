//! Upload bodies: [`VerifyingBody`] adapts the axum request body into the backend's
//! [`ByteStream`](crate::backend::ByteStream), decoding aws-chunked framing and verifying
//! signatures and checksums as the bytes pass, with the final verdict as the stream's last
//! item.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::{Body, BodyDataStream};
use bytes::{Buf, Bytes};
use futures::Stream;

use crate::s3::checksum::Checksummer;
use crate::s3::chunked::AwsChunkedDecoder;
use crate::s3::error::AuthError;
use crate::s3::sigv4::PayloadHashCheck;

/// The request body as the backend's [`ByteStream`](crate::backend::ByteStream), decoded and verified on the fly: the
/// aws-chunked framing and its signatures ([`AwsChunkedDecoder`]), the plain body's
/// `x-amz-content-sha256` ([`PayloadHashCheck`]) and an `x-amz-checksum-*` header. The final
/// checks run when the body ends; a failure is yielded as the last item, an [`io::Error`]
/// wrapping the [`AuthError`], so the backend discards the upload.
pub struct VerifyingBody {
    inner: BodyDataStream,
    pending: Bytes,
    decoder: Option<AwsChunkedDecoder>,
    sha256: Option<PayloadHashCheck>,
    checksum: Option<(Checksummer, String)>,
    finished: bool,
}

/// An [`AuthError`] as the I/O error a body stream yields.
pub(crate) fn auth_io(e: AuthError) -> io::Error {
    io::Error::other(e)
}

/// The [`AuthError`] a [`VerifyingBody`] put into the stream, if this I/O error carries one.
pub(crate) fn auth_error_in(e: &io::Error) -> Option<&AuthError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<AuthError>())
}

impl VerifyingBody {
    /// Wraps `body`: decoded by `decoder` when it is aws-chunked, its raw bytes checked
    /// against `sha256` (`x-amz-content-sha256`), its payload against `checksum` (a hasher and
    /// the base64 value an `x-amz-checksum-*` header claimed).
    pub fn new(
        body: Body,
        decoder: Option<AwsChunkedDecoder>,
        sha256: Option<PayloadHashCheck>,
        checksum: Option<(Checksummer, String)>,
    ) -> Self {
        VerifyingBody {
            inner: body.into_data_stream(),
            pending: Bytes::new(),
            decoder,
            sha256,
            checksum,
            finished: false,
        }
    }
    /// Runs on the request's task, in parallel with the fs backend's writer and MD5 threads
    /// (`backend/fs.rs`, "The write path"): SHA-256 is 0.7 ns/B there, with SHA-NI (`sha2`
    /// picks it at run time), about a fifth of a large PUT's CPU.
    fn observe(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some((c, _)) = &mut self.checksum {
            c.update(data);
        }
    }

    fn finish(&mut self) -> Result<(), AuthError> {
        if let Some(d) = &mut self.decoder {
            d.finish()?;
        }
        if let Some(h) = self.sha256.take() {
            h.finish()?;
        }
        if let Some((c, claimed)) = self.checksum.take() {
            c.verify(&claimed)?;
        }
        Ok(())
    }
}

impl Stream for VerifyingBody {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(decoder) = &mut this.decoder {
                if !this.pending.is_empty() {
                    let step = match decoder.feed(&this.pending) {
                        Ok(step) => step,
                        Err(e) => {
                            this.finished = true;
                            return Poll::Ready(Some(Err(auth_io(e))));
                        }
                    };
                    let consumed = step.consumed;
                    // The payload is a sub-slice of `pending`: share it instead of copying.
                    let data = if step.data.is_empty() {
                        Bytes::new()
                    } else {
                        this.pending.slice_ref(step.data)
                    };
                    this.pending.advance(consumed);
                    if !data.is_empty() {
                        this.observe(&data);
                        return Poll::Ready(Some(Ok(data)));
                    }
                    continue;
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(bytes)) => {
                    if this.decoder.is_some() {
                        this.pending = bytes;
                    } else if !bytes.is_empty() {
                        this.observe(&bytes);
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                }
                Some(Err(e)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                None => {
                    this.finished = true;
                    return Poll::Ready(this.finish().err().map(|e| Err(auth_io(e))));
                }
            }
        }
    }
}

/// Most bytes of an unread request body [`drain_unread`] reads and discards.
pub const MAX_DRAIN: u64 = 1 << 20;
/// Longest [`drain_unread`] waits for them.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The request body, if no operation has taken it yet.
pub(crate) type BodySlot = Option<Body>;

/// Takes the body out of `slot` (an empty body if it was taken already).
pub(crate) fn take_body(slot: &mut BodySlot) -> Body {
    slot.take().unwrap_or_else(Body::empty)
}

/// Reads and discards a request body nobody read (the request failed, or its operation has
/// no body), so the connection can carry the next request: closing a socket with unread
/// data makes the kernel reset it, and a client that already sent its next request on the
/// kept-alive connection (s3cmd does) sees the reset instead of an answer. As Go's HTTP
/// server, only a small rest is drained: `false` when the body is larger than
/// [`MAX_DRAIN`], slower than [`DRAIN_TIMEOUT`], broken, or not sent yet because the client
/// waits for `100 Continue` (then the connection should close after the response).
pub(crate) async fn drain_unread(headers: &axum::http::HeaderMap, body: Body) -> bool {
    use futures::StreamExt;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        return false;
    }
    let declared = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = header("transfer-encoding").is_some();
    match declared {
        Some(0) if !chunked => return true,
        Some(n) if n > MAX_DRAIN => return false,
        None if !chunked => return true,
        _ => {}
    }
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    read += c.len() as u64;
                    if read > MAX_DRAIN {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .unwrap_or(false)
}
