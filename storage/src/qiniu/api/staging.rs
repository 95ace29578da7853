//! Local-disk staging of resumable uploads (and of form uploads whose key depends on their
//! hash): v1 blocks and v2 parts are streamed into files here, then streamed out in order into
//! one backend put.
//!
//! ```text
//! <staging_dir>/
//!   v1/<id>                 one v1 block (its id is named by the block's MAC'd ctx)
//!   v2/<id>/upload.json     a v2 upload: access key, bucket, key, initiated, expiry
//!   v2/<id>/<nnnnn>.<md5>   part nnnnn (zero-padded), named by its MD5 = the etag returned
//!   v2/<id>/<nnnnn>.tmp-*   a part being written (renamed into place when complete)
//!   form/<id>               a form upload whose final key needs its qetag
//! ```
//!
//! Ids are 128 random bits in hex and are validated before they get near a path; nothing a
//! client sends becomes a path component otherwise. Anything not modified for the TTL (plus
//! an hour, so a ctx never outlives its block) is removed by [`Staging::sweep`], which runs at
//! most every ten minutes, started by the requests that create staged data.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::ByteStream;

/// Length of a staging id (hex digits).
pub(crate) const ID_LEN: usize = 32;
/// How often a sweep may start.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Extra age before removal beyond the TTL.
const SWEEP_GRACE: Duration = Duration::from_secs(3600);
/// Read size when streaming staged files out.
const READ_CHUNK: usize = 256 * 1024;

/// A new random staging id.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `id` is one [`new_id`] could have made.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The staging area.
pub(crate) struct Staging {
    root: PathBuf,
    ttl: Duration,
    last_sweep: Mutex<Option<Instant>>,
}

impl Staging {
    pub(crate) fn new(root: PathBuf, ttl: Duration) -> Staging {
        Staging {
            root,
            ttl,
            last_sweep: Mutex::new(None),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn area(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The file of v1 block `id` (validated by the caller).
    pub(crate) fn v1_block(&self, id: &str) -> PathBuf {
        self.area("v1").join(id)
    }

    /// The directory of v2 upload `id` (validated by the caller).
    pub(crate) fn v2_upload(&self, id: &str) -> PathBuf {
        self.area("v2").join(id)
    }

    /// A file for a staged form upload.
    pub(crate) fn form_file(&self, id: &str) -> PathBuf {
        self.area("form").join(id)
    }

    /// Creates the area directories if needed and starts a sweep if one is due.
    pub(crate) async fn prepare(self: &Arc<Self>) -> io::Result<()> {
        for area in ["v1", "v2", "form"] {
            tokio::fs::create_dir_all(self.area(area)).await?;
        }
        let due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                match me.sweep(SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("qiniu: removed {n} expired staged uploads"),
                    Err(e) => tracing::warn!("qiniu: sweeping the staging area failed: {e}"),
                }
            });
        }
        Ok(())
    }

    /// Removes staged blocks, uploads and form files not modified for TTL + grace before
    /// `now`; returns how many.
    pub(crate) async fn sweep(&self, now: SystemTime) -> io::Result<usize> {
        let cutoff = now
            .checked_sub(self.ttl + SWEEP_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for area in ["v1", "v2", "form"] {
            let mut dir = match tokio::fs::read_dir(self.area(area)).await {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            while let Some(entry) = dir.next_entry().await? {
                let Ok(meta) = entry.metadata().await else {
                    continue;
                };
                let modified = meta.modified().unwrap_or(now);
                if modified >= cutoff {
                    continue;
                }
                let path = entry.path();
                let r = if meta.is_dir() {
                    tokio::fs::remove_dir_all(&path).await
                } else {
                    tokio::fs::remove_file(&path).await
                };
                match r {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("qiniu: removing {}: {e}", path.display()),
                }
            }
        }
        Ok(removed)
    }
}

/// Why [`write_body`] stopped.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// More than the limit arrived.
    TooLarge,
    /// The request body failed.
    Body(io::Error),
    /// The disk failed.
    Io(io::Error),
}

/// Appends `body` to `file` at its current position, at most `limit` bytes, calling
/// `on_chunk` with each chunk; flushes and returns the number of bytes written.
pub(crate) async fn write_body(
    file: &mut tokio::fs::File,
    mut body: ByteStream,
    limit: u64,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<u64, WriteError> {
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(WriteError::Body)?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(WriteError::TooLarge);
        }
        on_chunk(&chunk);
        file.write_all(&chunk).await.map_err(WriteError::Io)?;
    }
    file.flush().await.map_err(WriteError::Io)?;
    Ok(written)
}

/// Streams `files` in order, each expected to hold exactly its given length (an I/O error
/// otherwise, so a changed or truncated staged file never becomes part of an object).
pub(crate) fn read_files(files: Vec<(PathBuf, u64)>) -> ByteStream {
    struct State {
        files: std::vec::IntoIter<(PathBuf, u64)>,
        current: Option<(tokio::fs::File, u64)>,
        failed: bool,
    }
    let state = State {
        files: files.into_iter(),
        current: None,
        failed: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if st.current.is_none() {
                let (path, len) = st.files.next()?;
                match tokio::fs::File::open(&path).await {
                    Ok(f) => st.current = Some((f, len)),
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(missing(&path, e)), st));
                    }
                }
            }
            let Some((file, left)) = st.current.as_mut() else {
                continue;
            };
            let mut buf = vec![
                0u8;
                READ_CHUNK
                    .min(usize::try_from(*left).unwrap_or(READ_CHUNK))
                    .max(1)
            ];
            match file.read(&mut buf).await {
                Ok(0) if *left == 0 => {
                    st.current = None;
                }
                Ok(0) => {
                    st.failed = true;
                    return Some((
                        Err(io::Error::other("a staged file is shorter than expected")),
                        st,
                    ));
                }
                Ok(n) if n as u64 > *left => {
                    st.failed = true;
                    return Some((
                        Err(io::Error::other("a staged file is longer than expected")),
                        st,
                    ));
                }
                Ok(n) => {
                    *left -= n as u64;
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), st));
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

fn missing(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("staged data {}: {e}", path.display()))
}

/// Reads a whole staged file (a v1 block: at most 4 MiB) and returns its SHA-1.
pub(crate) async fn sha1_of_file(path: &Path) -> io::Result<[u8; 20]> {
    use sha1::{Digest, Sha1};
    let mut file = tokio::fs::File::open(path).await?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
