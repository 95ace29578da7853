//! The local-disk backend, Ember's embedded default: [`FsBackend`] stores each object as one
//! file under `data_dir`, behaving exactly like the [`memory`](super::memory) reference model
//! (same errors, listing pages and ETags) while surviving `kill -9` at any point.
//!
//! # Layout
//!
//! ```text
//! <data_dir>/
//!   .lock                 flock held while open: one process per data directory
//!   .tmp/                 buckets being created or deleted (emptied at open)
//!   <bucket>/             one directory per bucket (valid names never start with '.')
//!     .bucket             {"created": ...}; a directory without it is not a bucket
//!     .tmp/               writes in progress, finished uploads being removed (emptied at open)
//!     .uploads/<id>/      a multipart upload; id = 32 lowercase hex characters (random)
//!       upload.json       key, options, initiated
//!       <n>               part n (1..=10000), in the object file format
//!     00/ .. ff/          256 shards
//!       <62 hex>          the object whose key hashes (SHA-256, hex) to <shard><name>
//! ```
//!
//! An object's path depends only on the SHA-256 of its key, so any key — unicode, `//`, a
//! leading or trailing `/`, 1024 bytes, `a` next to `a/b` — maps to a fixed-length hex name
//! inside its bucket: nothing a client sends ever becomes a path component except validated
//! bucket names and validated upload ids. The real key is stored in the file and checked on
//! every read (a SHA-256 collision would be reported as an I/O error, never served).
//!
//! # Object file format and commit protocol
//!
//! One file holds an object's body followed by its metadata: `body ++ json ++ len(json) as
//! u32 LE ++ "EMBROBJ1"`, so data and metadata can only ever switch together. A write:
//!
//! 1. streams the body into a new file in the bucket's `.tmp/` (never whole in memory: at
//!    most `UPLOAD_BUDGET` bytes in flight), computing MD5 and the qetag and enforcing
//!    `max_size` as bytes arrive (see "The write path" below);
//! 2. appends the metadata trailer, `fdatasync`s the file;
//! 3. **commit**: `rename` onto the object's path (or `link`, which fails if the key exists,
//!    for `if_none_match`, then unlinks the temp name) — one atomic directory operation, done
//!    under the bucket's commit lock so the key index stays in step with the disk;
//! 4. `fsync`s the shard directory, and only then acknowledges.
//!
//! A crash before 3 leaves only a temp file (removed at [`FsBackend::open`]) and the old
//! object untouched; after 3 the new file is complete and synced. Readers open the file and
//! read metadata and body from that one descriptor, so a concurrent replace never mixes old
//! and new. Multipart parts are written the same way into the upload directory; completing
//! concatenates them (streamed) into a temp file and commits it like a PUT; the upload
//! directory is then renamed into `.tmp/` and removed (a crash in between leaves the upload
//! listed, never a lost object). Bucket creation builds the whole directory (marker, 256
//! shards) in `<data_dir>/.tmp/` and renames it into place; deletion renames it back out.
//!
//! # The write path
//!
//! Every body byte is hashed three times — SHA-256 (the S3 front end's
//! `x-amz-content-sha256` check), MD5 (the ETag) and SHA-1 (the qetag) — and written, on a
//! 2-core machine next to its client. So a large body is spread over three threads:
//!
//! ```text
//! request task (tokio): pulls the body (SHA-256), copies it into 1 MiB pooled buffers
//!   ├──> writer (blocking pool): qetag (SHA-1), write, writeback every 8 MiB
//!   └──> MD5 thread (bodies over 1 MiB): the ETag
//! + a sync thread (files over 8 MiB): fdatasync every 8 MiB, see `EarlySync`
//! ```
//!
//! The request task hands each chunk to both consumers, so a disk stall does not starve the
//! MD5 thread and vice versa; the shared `UPLOAD_BUDGET` stops it reading while either is
//! 4 MiB behind. Measured with `ember-bench storage` (3 x 256 MiB PUTs, `perf`), server CPU
//! per body byte went from 4.8 ns (MD5 2.2 on its own thread; SHA-256 0.7, SHA-1 0.6,
//! `write` 0.5, `recv` 0.4 on the tokio threads) to 3.7 ns: MD5 1.5 (`fast_md5`),
//! `write` 0.3 and `recv` 0.2 plus 0.1 for the copy (`ChunkData::Pooled`). With 2 cores
//! that is about 500 MB/s at most; the other gain is the ~0.25 s per 256 MiB object the
//! final `fdatasync` used to wait for the disk's cache flush (`SYNC_EVERY`).
//!
//! # Listing
//!
//! Listing needs keys in byte order, which hashed names do not give. Each bucket keeps an
//! in-memory sorted key index (`BTreeSet<String>`, about key length + 60 bytes per key),
//! built on the bucket's first listing by reading every object's trailer — O(n) once per
//! process, measured 180–260 ms for a bucket of 15 000 keys (12–17 µs per object, so about
//! 0.15 s per 10 000 keys) — and then kept in step by every commit and delete under the
//! commit lock. A page is then O(log n + keys scanned) plus one small read per returned
//! object for its metadata: 9–13 ms for a 1000-key page, under 1 ms for a page of common
//! prefixes. With a delimiter, the keys inside a common prefix already returned are skipped
//! in the index without allocation. The grouping and paging rules are the reference model's
//! own [`list_sorted`], run over windows of the index. A sorted on-disk index would avoid the
//! first-listing scan and the memory (about 100 MB per million keys); not needed yet.
//!
//! # qetag
//!
//! Every object also stores its qetag (Qiniu's hash, computed with [`QEtag`] as the body
//! streams in), read with [`FsBackend::qetag`] / [`FsBackend::head_object_qetag`]; copies
//! keep the source's.
//!
//! # Figures
//!
//! `cargo test --release -p ember-storage --test fs_backend -- --ignored --nocapture
//! perf_figures`, on the development VM (2 vCPUs, virtio disk, ext4; other builds running, so
//! ranges over several runs):
//!
//! | | |
//! |---|---|
//! | 4 KiB PUT, one at a time | 0.9–1.5 k ops/s (two fsyncs each: file, then directory) |
//! | 4 KiB PUT, 16 at a time | 1.5–4.3 k ops/s (the journal batches concurrent fsyncs) |
//! | 4 KiB GET, 1 / 16 at a time | 28–47 k / 32–58 k ops/s |
//! | 64 MiB PUT | 313–457 MB/s (was 160–306 MB/s before the write path above; load ~4.7) |
//! | same runs: plain file | `write`+`fdatasync` 346–511 MB/s, `cp`+`fdatasync` 323–478 MB/s |
//! | 64 MiB GET | 2.5–3.2 GB/s (page cache) |

use crate::s3::sigv4::hex_encode as hex;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::ops::{Bound, Range};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::memory::list_sorted;
use super::{
    validate_bucket, validate_key, Backend, BucketInfo, ByteStream, CopyMetadata, ListPage,
    ListQuery, ObjectMeta, PartInfo, PutOptions, Result, StandardHeaders, StorageError, UploadInfo,
    MAX_PART_NUMBER, MIN_PART_SIZE,
};
use crate::qiniu::etag::QEtag;
use fast_md5::Md5 as FastMd5;

mod fast_md5;

const LOCK_FILE: &str = ".lock";
const TMP_DIR: &str = ".tmp";
const BUCKET_FILE: &str = ".bucket";
const UPLOADS_DIR: &str = ".uploads";
const UPLOAD_FILE: &str = "upload.json";

/// Trailer: `json ++ u32 LE json length ++ MAGIC`.
const MAGIC: &[u8; 8] = b"EMBROBJ1";
const FOOTER_LEN: u64 = 12;
/// Bytes read from a file's end to find its metadata (HEAD, listing, parts).
const HEAD_TAIL: u64 = 4096;
/// Bytes read from a file's end on GET: objects up to this size are served from that read.
const GET_TAIL: u64 = 64 * 1024;
/// Chunk size of GET streams.
const READ_CHUNK: u64 = 64 * 1024;
/// Buffer of the temp-file writer (small bodies and their trailer go out in one `write`).
const WRITE_BUFFER: usize = 64 * 1024;
/// Read size when concatenating parts.
const CONCAT_CHUNK: usize = 1024 * 1024;
/// Bodies longer than this have their MD5 computed on a thread of their own.
const PARALLEL_HASH_AFTER: u64 = 1024 * 1024;
/// Writeback of a large temp file is started every this many bytes.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// A large temp file is also `fdatasync`ed in the background every this many bytes (see
/// [`EarlySync`]). Measured (a writer at 400 MB/s, writeback started every 8 MiB, `/tmp` on
/// the development VM): the final `fdatasync` of a 64 MiB file took 71–94 ms without
/// background syncs, 33–41 ms with one every 32 MiB, 21–26 ms every 16 MiB and 12–13 ms
/// every 8 MiB (256 MiB: 227–356, 30–46, 22–24, 11–19 ms); no `write` took over 1.3 ms in
/// any of them.
const SYNC_EVERY: u64 = 8 << 20;
/// Index keys handed to `list_sorted` at a time.
const LIST_WINDOW: usize = 1000;
/// Length of upload ids and temp names (hex of 128 random bits).
const ID_LEN: usize = 32;

/// The local-disk store. Cheap to share behind an `Arc`; all disk work runs on tokio's
/// blocking pool.
pub struct FsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    buckets: RwLock<BTreeMap<String, Arc<BucketState>>>,
    /// Holds the data directory's flock for as long as the backend lives.
    _lock: File,
}

struct BucketState {
    name: String,
    dir: PathBuf,
    created: SystemTime,
    /// The commit lock: renames, links and unlinks of objects in this bucket happen under it,
    /// together with the index update.
    state: Mutex<BucketMut>,
}

#[derive(Default)]
struct BucketMut {
    deleted: bool,
    /// Every key, sorted; built on first listing.
    index: Option<BTreeSet<String>>,
}

// ---------------------------------------------------------------------------------------------
// On-disk records

/// Seconds and nanoseconds since the Unix epoch.
type Stamp = (u64, u32);

fn stamp(t: SystemTime) -> Stamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn from_stamp((secs, nanos): Stamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

#[derive(Serialize, Deserialize, Default)]
struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
}

impl From<StandardHeaders> for Headers {
    fn from(h: StandardHeaders) -> Headers {
        Headers {
            content_type: h.content_type,
            content_disposition: h.content_disposition,
            content_encoding: h.content_encoding,
            content_language: h.content_language,
            cache_control: h.cache_control,
            expires: h.expires,
        }
    }
}

impl From<Headers> for StandardHeaders {
    fn from(h: Headers) -> StandardHeaders {
        StandardHeaders {
            content_type: h.content_type,
            content_disposition: h.content_disposition,
            content_encoding: h.content_encoding,
            content_language: h.content_language,
            cache_control: h.cache_control,
            expires: h.expires,
        }
    }
}

/// An object's trailer.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    key: String,
    size: u64,
    etag: String,
    qetag: String,
    modified: Stamp,
    #[serde(default)]
    headers: Headers,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    user_meta: BTreeMap<String, String>,
}

impl StoredMeta {
    fn into_meta(self) -> (ObjectMeta, String) {
        let meta = ObjectMeta {
            key: self.key,
            size: self.size,
            etag: self.etag,
            last_modified: from_stamp(self.modified),
            headers: self.headers.into(),
            user_meta: self.user_meta,
        };
        (meta, self.qetag)
    }
}

/// A part's trailer.
#[derive(Serialize, Deserialize)]
struct StoredPart {
    part: u32,
    etag: String,
    size: u64,
    modified: Stamp,
}

impl StoredPart {
    fn info(&self) -> PartInfo {
        PartInfo {
            part_number: self.part,
            etag: self.etag.clone(),
            size: self.size,
            last_modified: from_stamp(self.modified),
        }
    }
}

/// `upload.json`.
#[derive(Serialize, Deserialize)]
struct StoredUpload {
    key: String,
    initiated: Stamp,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    user_meta: BTreeMap<String, String>,
    #[serde(default)]
    if_none_match: bool,
    #[serde(default)]
    max_size: Option<u64>,
}

/// `.bucket`.
#[derive(Serialize, Deserialize)]
struct StoredBucket {
    created: Stamp,
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// Disk full (or over quota) is [`StorageError::InsufficientStorage`]; the rest is I/O.
fn io_err(e: io::Error) -> StorageError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            StorageError::InsufficientStorage
        }
        _ => StorageError::Io(e),
    }
}

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// 128 random bits as 32 lowercase hex characters: upload ids and temp names.
fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An upload id as this backend makes them; anything else (`../x`, `/`, ...) is refused
/// before it gets near a path.
fn valid_upload_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Shard directory name (2 hex) and file name (62 hex) of `key`: its SHA-256.
fn key_location(key: &str) -> (String, String) {
    let h = hex(&Sha256::digest(key.as_bytes()));
    (h[..2].to_owned(), h[2..].to_owned())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` if missing and removes whatever is inside.
fn empty_dir(dir: &Path) -> io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                if e.file_type()?.is_dir() {
                    fs::remove_dir_all(e.path())?;
                } else {
                    fs::remove_file(e.path())?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir),
        Err(e) => Err(e),
    }
}

fn write_json_file(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    f.sync_data()
}

fn read_json_file<T: DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

/// The trailer bytes for `meta`.
fn trailer(meta: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let len = u32::try_from(out.len()).map_err(|_| corrupt("metadata too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(MAGIC);
    Ok(out)
}

/// A file read back: its trailer, body length, and the body itself when the tail read
/// covered the whole file.
struct Trailer<T> {
    meta: T,
    body_len: u64,
    small_body: Option<Bytes>,
}

/// Reads the trailer of an object or part file with one `pread` of up to `tail` bytes from
/// its end (two if the metadata is longer).
fn read_trailer<T: DeserializeOwned>(file: &File, tail: u64) -> io::Result<Trailer<T>> {
    let len = file.metadata()?.len();
    if len < FOOTER_LEN {
        return Err(corrupt("not an Ember object file (too short)"));
    }
    let tail_len = len.min(tail.max(FOOTER_LEN));
    let mut buf = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut buf, len - tail_len)?;
    let foot = &buf[buf.len() - FOOTER_LEN as usize..];
    if &foot[4..] != MAGIC {
        return Err(corrupt("not an Ember object file (bad magic)"));
    }
    let meta_len = u64::from(u32::from_le_bytes([foot[0], foot[1], foot[2], foot[3]]));
    if meta_len + FOOTER_LEN > len {
        return Err(corrupt("not an Ember object file (bad metadata length)"));
    }
    let body_len = len - FOOTER_LEN - meta_len;
    let parsed = if meta_len + FOOTER_LEN <= tail_len {
        let end = buf.len() - FOOTER_LEN as usize;
        serde_json::from_slice(&buf[end - meta_len as usize..end])
    } else {
        let mut m = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut m, body_len)?;
        serde_json::from_slice(&m)
    };
    let meta = parsed.map_err(|e| corrupt(format!("bad object metadata: {e}")))?;
    let small_body = (tail_len == len).then(|| {
        buf.truncate(body_len as usize);
        Bytes::from(buf)
    });
    Ok(Trailer {
        meta,
        body_len,
        small_body,
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io(io::Error::other(e))),
    }
}

// ---------------------------------------------------------------------------------------------
// Temp files and the streaming writer

/// A path in a `.tmp/` directory, removed when dropped unless kept.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Body bytes of one upload held between the request task and the two threads consuming
/// them (the writer and, for a large body, the MD5 thread): the request task stops reading
/// the body while either is this far behind, so an upload holds at most this plus one network
/// chunk (hyper reads at most ~408 KiB at a time) in memory. Not tuned: it lets either
/// consumer fall three [`COPY_BUFFER`]s (~8 ms at 400 MB/s) behind the other; the whole
/// server peaked at 23 MB RSS through a 1 GiB PUT with it.
const UPLOAD_BUDGET: u32 = 4 << 20;

/// Size of the buffers a large body is copied into (see [`ChunkData::Pooled`]): one
/// `write`, one hand-off to each consumer per MiB.
const COPY_BUFFER: usize = 1 << 20;

/// Buffers of one upload, for [`ChunkData::Pooled`] chunks to come back to.
type BufferPool = Arc<Mutex<Vec<Vec<u8>>>>;

/// A body chunk on its way to the writer and the MD5 thread; its share of
/// [`UPLOAD_BUDGET`] (and its buffer) comes back when both have dropped it.
struct Chunk {
    data: ChunkData,
    _budget: OwnedSemaphorePermit,
}

enum ChunkData {
    /// The bytes as the body yielded them (the first [`PARALLEL_HASH_AFTER`] bytes).
    Shared(Bytes),
    /// Copied out of the body's chunks into a [`COPY_BUFFER`]-byte buffer of the upload's
    /// pool (the rest of a large body).
    ///
    /// Why copy: the body's chunks are slices of hyper's read buffer, which hyper reuses
    /// only once no slice of it is alive. Holding a few MiB of them (while the writer and
    /// the MD5 thread catch up) made it allocate a fresh ~408 KiB buffer for every read, and
    /// the kernel fault in and zero its pages. With the copy, `recv` went from 0.47 to
    /// 0.21 ns per body byte and `madvise` (0.06 ns/B, where the buffers were freed) went
    /// away, for 0.12 ns/B of copying (perf, 3 x 256 MiB PUTs through `ember-bench
    /// storage`). Fewer, larger chunks also mean fewer hand-offs and 1 MiB `write`s.
    Pooled(Vec<u8>, BufferPool),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            ChunkData::Shared(b) => b,
            ChunkData::Pooled(v, _) => v,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let ChunkData::Pooled(buf, pool) = &mut self.data {
            let mut buf = std::mem::take(buf);
            buf.clear();
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        }
    }
}

/// Moving a body's MD5 to its own thread: the writer sends the hash of the bytes it has seen
/// so far into `state`; the thread goes on with the chunks the request task sends it from
/// then on and hands the final hash back on `done` once that channel closes.
struct Md5HandOff {
    state: std::sync::mpsc::SyncSender<FastMd5>,
    done: std::sync::mpsc::Receiver<FastMd5>,
}

/// Starts the MD5 thread of a large body: the sender for its chunks and the writer's half of
/// the hand-off. `None` if no thread can be started (the writer then keeps hashing inline).
fn spawn_md5_thread() -> Option<(std::sync::mpsc::Sender<Arc<Chunk>>, Md5HandOff)> {
    let (chunks, chunks_rx) = std::sync::mpsc::channel::<Arc<Chunk>>();
    let (state, state_rx) = std::sync::mpsc::sync_channel::<FastMd5>(1);
    let (done_tx, done) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("ember-md5".into())
        .spawn(move || {
            // No state: the writer gave up before the hand-off.
            let Ok(mut h) = state_rx.recv() else {
                return;
            };
            for chunk in chunks_rx {
                h.update(chunk.bytes());
            }
            let _ = done_tx.send(h);
        })
        .ok()?;
    Some((chunks, Md5HandOff { state, done }))
}

/// Where a body's MD5 is computed.
enum Md5State {
    Off,
    /// By the writer, as it writes (small bodies: no thread to start).
    Inline(FastMd5),
    /// On the MD5 thread, which returns the hash here.
    Thread(std::sync::mpsc::Receiver<FastMd5>),
}

/// Background `fdatasync`s of a large temp file while it is being written, every
/// [`SYNC_EVERY`] bytes, skipped while the previous one still runs. They are only an early
/// start: the writer's own `fdatasync` at the end is what makes the file durable, and it
/// reports any writeback error itself, since the syncs here go through a file description of
/// their own (`fsync` errors are reported once per open file description); an error here
/// fails the write too.
///
/// Why: on the development VM the disk's cache flush that ends an `fdatasync` costs about as
/// much as the data not yet flushed — 240–290 ms at the end of a 256 MiB file written at
/// 300 MB/s with writeback started every 8 MiB, under 1 ms once a background `fdatasync` has
/// flushed it (`/tmp`, ext4). A PUT streams at the speed of its hashing, so flushing while
/// it streams takes that wait off the end of the request: in `ember-bench storage` with
/// 256 MiB objects the CPUs sat idle for ~0.25 s after each object's body, waiting for that
/// flush, against ~25 ms with background syncs.
struct EarlySync {
    start: std::sync::mpsc::SyncSender<()>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl EarlySync {
    fn spawn(path: &Path) -> io::Result<EarlySync> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let file = File::open(path)?;
        let (start, starts) = std::sync::mpsc::sync_channel::<()>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("ember-sync".into())
            .spawn(move || {
                for () in starts {
                    let synced = file.sync_data();
                    flag.store(false, Ordering::Release);
                    synced?;
                }
                Ok(())
            })?;
        Ok(EarlySync {
            start,
            busy,
            thread,
        })
    }

    /// Starts an `fdatasync` unless one is running.
    fn kick(&self) {
        use std::sync::atomic::Ordering;
        if !self.busy.swap(true, Ordering::AcqRel) {
            // Fails only if the thread stopped on an error, which `finish` returns.
            let _ = self.start.try_send(());
        }
    }

    /// Waits for a running `fdatasync`; its error, if one failed.
    fn finish(self) -> io::Result<()> {
        drop(self.start);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the sync thread failed")))
    }
}

/// Writes a body into a new temp file, computing its qetag (and, for small bodies, its MD5)
/// on the way. Large bodies are handed to the kernel for writeback every
/// [`WRITEBACK_EVERY`] bytes and synced in the background every [`SYNC_EVERY`] bytes
/// ([`EarlySync`]), so the final `fdatasync` has only the last few MiB to write and flush.
struct Sink {
    out: BufWriter<File>,
    path: TempPath,
    md5: Md5State,
    qetag: Option<QEtag>,
    size: u64,
    /// Bytes already handed to `sync_file_range`.
    writeback_started: u64,
    /// Bytes in the file when the last background sync was asked for.
    sync_asked: u64,
    early_sync: Option<EarlySync>,
}

impl Sink {
    fn create(tmp_dir: &Path, md5: bool, qetag: bool) -> io::Result<Sink> {
        let path = tmp_dir.join(random_id());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Sink {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            path: TempPath { path, keep: false },
            md5: if md5 {
                Md5State::Inline(FastMd5::new())
            } else {
                Md5State::Off
            },
            qetag: qetag.then(QEtag::new),
            size: 0,
            writeback_started: 0,
            sync_asked: 0,
            early_sync: None,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if let Md5State::Inline(h) = &mut self.md5 {
            h.update(data);
        }
        if let Some(h) = &mut self.qetag {
            h.update(data);
        }
        self.out.write_all(data)?;
        self.size += data.len() as u64;
        let in_file = self.size - self.out.buffer().len() as u64;
        if in_file - self.writeback_started >= WRITEBACK_EVERY {
            start_writeback(self.out.get_ref(), self.writeback_started, in_file);
            self.writeback_started = in_file;
        }
        if in_file - self.sync_asked >= SYNC_EVERY {
            self.sync_asked = in_file;
            if self.early_sync.is_none() {
                // Without the thread, the final `fdatasync` does all the work as before.
                self.early_sync = EarlySync::spawn(&self.path.path).ok();
            }
            if let Some(s) = &self.early_sync {
                s.kick();
            }
        }
        Ok(())
    }

    /// Continues the MD5 on its own thread (see [`Md5HandOff`]).
    fn hand_off_md5(&mut self, to: Md5HandOff) {
        if let Md5State::Inline(h) = std::mem::replace(&mut self.md5, Md5State::Off) {
            // Fails only if the thread is gone, which `md5` then reports.
            let _ = to.state.send(h);
            self.md5 = Md5State::Thread(to.done);
        }
    }

    /// The body's MD5 (zero if not computed). With an MD5 thread, it waits for the thread to
    /// finish: call it once the request task has sent everything (after [`Feed::End`]).
    fn md5(&mut self) -> io::Result<[u8; 16]> {
        match std::mem::replace(&mut self.md5, Md5State::Off) {
            Md5State::Off => Ok([0; 16]),
            Md5State::Inline(h) => Ok(h.finalize()),
            Md5State::Thread(done) => done
                .recv()
                .map(FastMd5::finalize)
                .map_err(|_| io::Error::other("the MD5 thread failed")),
        }
    }

    fn qetag(&mut self) -> String {
        self.qetag.take().map(QEtag::finalize).unwrap_or_default()
    }

    /// Appends the trailer and makes the file durable; the temp file is ready to commit.
    fn finish(mut self, meta: &impl Serialize) -> io::Result<TempPath> {
        self.out.write_all(&trailer(meta)?)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        if let Some(s) = self.early_sync.take() {
            s.finish()?;
        }
        Ok(self.path)
    }
}

/// Starts writeback of bytes `from..to` of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); durability still comes from the `fdatasync`
/// at the end. A hint: failures are ignored (the `fdatasync` reports real I/O errors).
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain system call on a file descriptor `file` keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// What the request task sends the writer.
enum Feed {
    Data(Arc<Chunk>),
    /// The MD5 continues on its own thread from here on.
    Md5Thread(Md5HandOff),
    End,
}

/// The request task's end of an upload: hands chunks to the writer and the MD5 thread.
struct Fanout {
    tx: mpsc::UnboundedSender<Feed>,
    md5_thread: Option<std::sync::mpsc::Sender<Arc<Chunk>>>,
    budget: Arc<Semaphore>,
    pool: BufferPool,
    /// The pooled buffer being filled, with its share of the budget.
    filling: Option<(Vec<u8>, OwnedSemaphorePermit)>,
}

impl Fanout {
    /// `share` bytes of the budget, once the consumers are that far from its end (`None`
    /// cannot happen: the semaphore is never closed).
    async fn budget(&self, share: usize) -> Option<OwnedSemaphorePermit> {
        let share = u32::try_from(share)
            .unwrap_or(UPLOAD_BUDGET)
            .min(UPLOAD_BUDGET);
        Arc::clone(&self.budget)
            .acquire_many_owned(share)
            .await
            .ok()
    }

    /// `false` when the writer has stopped.
    fn send(&mut self, chunk: Chunk) -> bool {
        let chunk = Arc::new(chunk);
        if let Some(t) = &self.md5_thread {
            // Fails only if the thread is gone, which the writer then reports.
            let _ = t.send(Arc::clone(&chunk));
        }
        self.tx.send(Feed::Data(chunk)).is_ok()
    }

    /// Copies `data` into pooled buffers, sending each one that fills up; `false` when the
    /// writer has stopped.
    async fn copy(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.filling.is_none() {
                let Some(permit) = self.budget(COPY_BUFFER).await else {
                    return false;
                };
                let buf = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let buf = buf.unwrap_or_else(|| Vec::with_capacity(COPY_BUFFER));
                self.filling = Some((buf, permit));
            }
            let Some((buf, _)) = &mut self.filling else {
                continue;
            };
            let n = (COPY_BUFFER - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == COPY_BUFFER && !self.flush() {
                return false;
            }
        }
        true
    }

    /// Sends the pooled buffer being filled, if any.
    fn flush(&mut self) -> bool {
        match self.filling.take() {
            Some((buf, permit)) if !buf.is_empty() => self.send(Chunk {
                data: ChunkData::Pooled(buf, Arc::clone(&self.pool)),
                _budget: permit,
            }),
            _ => true,
        }
    }
}

/// Pulls `body` (on the request's task) and fans its chunks out to the writer and, once more
/// than [`PARALLEL_HASH_AFTER`] bytes have come and `md5` is wanted, to an MD5 thread,
/// enforcing `max` and [`UPLOAD_BUDGET`]. Returns `Ok` also when the writer stopped early
/// (its own result says why).
async fn feed(
    mut body: ByteStream,
    max: Option<u64>,
    mut md5: bool,
    tx: mpsc::UnboundedSender<Feed>,
) -> Result<()> {
    let mut out = Fanout {
        tx,
        md5_thread: None,
        budget: Arc::new(Semaphore::new(UPLOAD_BUDGET as usize)),
        pool: BufferPool::default(),
        filling: None,
    };
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StorageError::BodyError)?;
        let before = total;
        total += chunk.len() as u64;
        if let Some(limit) = max {
            if total > limit {
                return Err(StorageError::EntityTooLarge { limit });
            }
        }
        if chunk.is_empty() {
            continue;
        }
        let sent = if before < PARALLEL_HASH_AFTER {
            match out.budget(chunk.len()).await {
                Some(permit) => out.send(Chunk {
                    data: ChunkData::Shared(chunk),
                    _budget: permit,
                }),
                None => false,
            }
        } else {
            out.copy(&chunk).await
        };
        if !sent {
            return Ok(());
        }
        if md5 && out.md5_thread.is_none() && total >= PARALLEL_HASH_AFTER {
            match spawn_md5_thread() {
                Some((chunks, hand_off)) => {
                    if out.tx.send(Feed::Md5Thread(hand_off)).is_err() {
                        return Ok(());
                    }
                    out.md5_thread = Some(chunks);
                }
                None => md5 = false,
            }
        }
    }
    if !out.flush() {
        return Ok(());
    }
    // The MD5 thread finishes once its channel closes; the writer then collects the hash.
    out.md5_thread = None;
    let _ = out.tx.send(Feed::End);
    Ok(())
}

/// Runs `write` on the blocking pool with the chunks of `body` (see [`feed`]; `md5`: compute
/// the body's MD5, [`Sink::md5`]). If the body fails (or this future is dropped) the writer
/// sees the channel close without [`Feed::End`], gives up and removes its temp file; the
/// body's error is returned once it has.
async fn stream_into<T: Send + 'static>(
    body: ByteStream,
    max: Option<u64>,
    md5: bool,
    write: impl FnOnce(mpsc::UnboundedReceiver<Feed>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = blocking(move || write(rx));
    let (fed, written) = futures::join!(feed(body, max, md5, tx), writer);
    fed?;
    written
}

/// Writes every chunk into `sink` until [`Feed::End`].
fn drain(rx: &mut mpsc::UnboundedReceiver<Feed>, sink: &mut Sink) -> Result<()> {
    loop {
        match rx.blocking_recv() {
            Some(Feed::Data(chunk)) => sink.write(chunk.bytes()).map_err(io_err)?,
            Some(Feed::Md5Thread(hand_off)) => sink.hand_off_md5(hand_off),
            Some(Feed::End) => return Ok(()),
            None => {
                return Err(StorageError::BodyError(io::Error::other(
                    "the body ended early",
                )))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Buckets

impl BucketState {
    fn lock(&self) -> MutexGuard<'_, BucketMut> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join(TMP_DIR)
    }

    fn uploads_dir(&self) -> PathBuf {
        self.dir.join(UPLOADS_DIR)
    }

    /// The shard directory and file of `key`.
    fn object_path(&self, key: &str) -> (PathBuf, PathBuf) {
        let (shard, name) = key_location(key);
        let shard = self.dir.join(shard);
        let file = shard.join(name);
        (shard, file)
    }

    fn info(&self) -> BucketInfo {
        BucketInfo {
            name: self.name.clone(),
            created: self.created,
        }
    }

    /// A temp-file writer in this bucket (a bucket deleted meanwhile is `NoSuchBucket`).
    fn sink(&self, md5: bool, qetag: bool) -> Result<Sink> {
        Sink::create(&self.tmp_dir(), md5, qetag).map_err(|e| self.gone_or(e))
    }

    fn gone_or(&self, e: io::Error) -> StorageError {
        if self.lock().deleted {
            StorageError::NoSuchBucket
        } else {
            io_err(e)
        }
    }

    /// The commit point: makes the finished temp file the object under `key`, replacing the
    /// old one atomically, or failing with `AlreadyExists` if `no_replace` and the key
    /// exists. Durable when this returns.
    fn commit(&self, mut tmp: TempPath, key: &str, no_replace: bool) -> Result<()> {
        let (shard, path) = self.object_path(key);
        {
            let mut st = self.lock();
            if st.deleted {
                return Err(StorageError::NoSuchBucket);
            }
            if no_replace {
                // link(2) fails if the name exists: an atomic create-if-absent. The temp name
                // is unlinked when `tmp` drops.
                fs::hard_link(&tmp.path, &path).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => StorageError::AlreadyExists,
                    _ => io_err(e),
                })?;
            } else {
                fs::rename(&tmp.path, &path).map_err(io_err)?;
                tmp.keep = true;
            }
            if let Some(index) = &mut st.index {
                index.insert(key.to_owned());
            }
        }
        fsync_dir(&shard).map_err(io_err)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (shard, path) = self.object_path(key);
        {
            let mut st = self.lock();
            if st.deleted {
                return Err(StorageError::NoSuchBucket);
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(e)),
            }
            if let Some(index) = &mut st.index {
                index.remove(key);
            }
        }
        fsync_dir(&shard).map_err(io_err)
    }

    /// Opens `key`'s file and reads its metadata.
    fn open_object(&self, key: &str, tail: u64) -> Result<OpenObject> {
        let (_, path) = self.object_path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NoSuchKey),
            Err(e) => return Err(io_err(e)),
        };
        let t: Trailer<StoredMeta> = read_trailer(&file, tail).map_err(io_err)?;
        if t.meta.key != key {
            return Err(StorageError::Io(corrupt(format!(
                "{} holds key {:?}, not {key:?} (SHA-256 collision?)",
                path.display(),
                t.meta.key
            ))));
        }
        if t.meta.size != t.body_len {
            return Err(StorageError::Io(corrupt(format!(
                "{}: size mismatch",
                path.display()
            ))));
        }
        Ok(OpenObject {
            file,
            meta: t.meta,
            small_body: t.small_body,
        })
    }

    /// Builds the key index if this is the first listing: reads every object's trailer.
    fn ensure_index<'a>(&self, st: &'a mut BucketMut) -> Result<&'a BTreeSet<String>> {
        if st.deleted {
            return Err(StorageError::NoSuchBucket);
        }
        let index = match st.index.take() {
            Some(index) => index,
            None => self.scan_keys()?,
        };
        Ok(st.index.insert(index))
    }

    /// Every key in the bucket, from the objects' trailers.
    fn scan_keys(&self) -> Result<BTreeSet<String>> {
        let mut keys = BTreeSet::new();
        for shard in 0..=255u8 {
            let shard = hex(&[shard]);
            let entries = match fs::read_dir(self.dir.join(&shard)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err)?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.len() != 62 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let file = match File::open(entry.path()) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e)),
                };
                let t: Trailer<StoredMeta> = read_trailer(&file, HEAD_TAIL).map_err(io_err)?;
                // Only files where a GET of their key would find them.
                if key_location(&t.meta.key) == (shard.clone(), name.to_owned()) {
                    keys.insert(t.meta.key);
                }
            }
        }
        Ok(keys)
    }

    /// The multipart upload `id`, if it exists for `key`.
    fn upload(&self, key: &str, id: &str) -> Result<(PathBuf, StoredUpload)> {
        if !valid_upload_id(id) {
            return Err(StorageError::NoSuchUpload);
        }
        let dir = self.uploads_dir().join(id);
        match read_json_file::<StoredUpload>(&dir.join(UPLOAD_FILE)) {
            Ok(u) if u.key == key => Ok((dir, u)),
            Ok(_) => Err(StorageError::NoSuchUpload),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NoSuchUpload),
            Err(e) => Err(io_err(e)),
        }
    }

    fn has_uploads(&self) -> Result<bool> {
        match fs::read_dir(self.uploads_dir()) {
            Ok(mut entries) => Ok(entries.next().is_some()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Moves a directory of this bucket into its `.tmp/` and removes it there.
    fn discard_dir(&self, dir: &Path) -> io::Result<()> {
        let trash = self.tmp_dir().join(random_id());
        fs::rename(dir, &trash)?;
        let _ = fs::remove_dir_all(&trash);
        Ok(())
    }
}

struct OpenObject {
    file: File,
    meta: StoredMeta,
    small_body: Option<Bytes>,
}

/// The body of `file` from `start` to `end`, read in [`READ_CHUNK`]s on the blocking pool.
fn file_stream(file: File, start: u64, end: u64) -> ByteStream {
    let file = Arc::new(file);
    Box::pin(futures::stream::try_unfold(start, move |pos| {
        let file = Arc::clone(&file);
        async move {
            if pos >= end {
                return Ok(None);
            }
            let n = (end - pos).min(READ_CHUNK) as usize;
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, pos).map(|()| buf)
            })
            .await
            .map_err(io::Error::other)??;
            Ok(Some((Bytes::from(chunk), pos + n as u64)))
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Listing

/// Up to [`LIST_WINDOW`] index keys for the listing to look at next: keys with `prefix`,
/// strictly after `after`; with a delimiter only the first key of each group (the others
/// could only repeat its common prefix). Also returns the last key scanned and whether the
/// scan reached the end of the prefix range.
fn window(
    index: &BTreeSet<String>,
    query: &ListQuery,
    after: Option<&str>,
) -> (Vec<String>, Option<String>, bool) {
    let prefix = query.prefix.as_str();
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    };
    let delim = query.delimiter.as_deref().filter(|d| !d.is_empty());
    let mut out = Vec::new();
    let mut group: Option<&str> = None;
    let mut last: Option<&String> = None;
    for key in index.range::<str, _>((start, Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            return (out, last.cloned(), true);
        }
        if group.is_some_and(|g| key.starts_with(g)) {
            last = Some(key);
            continue;
        }
        if out.len() == LIST_WINDOW {
            return (out, last.cloned(), false);
        }
        group = delim.and_then(|d| {
            key[prefix.len()..]
                .find(d)
                .map(|i| &key[..prefix.len() + i + d.len()])
        });
        last = Some(key);
        out.push(key.clone());
    }
    (out, last.cloned(), true)
}

/// A page from the index: [`list_sorted`] over successive windows, each resuming after the
/// last key scanned (exactly how a client resumes after `next_after`), then each returned
/// object's metadata read from its file.
fn list_page(b: &BucketState, query: &ListQuery) -> Result<ListPage> {
    let mut page = ListPage::default();
    let mut after = query.after.clone();
    let mut remaining = query.max_keys;
    let mut last_emitted: Option<String> = None;
    loop {
        let (keys, last_scanned, exhausted) = {
            let mut st = b.lock();
            let index = b.ensure_index(&mut st)?;
            window(index, query, after.as_deref())
        };
        let entries: Vec<(String, ObjectMeta)> = keys
            .into_iter()
            .map(|k| {
                let placeholder = ObjectMeta {
                    key: k.clone(),
                    size: 0,
                    etag: String::new(),
                    last_modified: UNIX_EPOCH,
                    headers: StandardHeaders::default(),
                    user_meta: BTreeMap::new(),
                };
                (k, placeholder)
            })
            .collect();
        let sub = list_sorted(
            entries.iter().map(|(k, m)| (k, m)),
            &ListQuery {
                prefix: query.prefix.clone(),
                delimiter: query.delimiter.clone(),
                after: after.clone(),
                max_keys: remaining,
                metadata: query.metadata,
            },
        );
        remaining -= sub.objects.len() + sub.common_prefixes.len();
        let last_key = sub.objects.last().map(|o| &o.key);
        let last_cp = sub.common_prefixes.last();
        if let Some(last) = last_key.max(last_cp) {
            last_emitted = Some(last.clone());
        }
        page.objects.extend(sub.objects);
        page.common_prefixes.extend(sub.common_prefixes);
        if sub.truncated {
            page.truncated = true;
            page.next_after = last_emitted;
            break;
        }
        if exhausted {
            break;
        }
        after = last_scanned;
    }
    let mut objects = Vec::with_capacity(page.objects.len());
    for o in page.objects {
        match b.open_object(&o.key, HEAD_TAIL) {
            Ok(found) => objects.push(found.meta.into_meta().0),
            // Deleted since the index was read.
            Err(StorageError::NoSuchKey) => {}
            Err(e) => return Err(e),
        }
    }
    page.objects = objects;
    Ok(page)
}

// ---------------------------------------------------------------------------------------------
// The backend

impl FsBackend {
    /// Opens (creating what is missing) the store in `data_dir`: takes the directory's lock
    /// (a second process, or a second `FsBackend` on the same directory, gets an I/O error),
    /// removes temp files left by a crash, and loads the bucket list. Blocking.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<FsBackend> {
        let root = data_dir.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(io_err)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(LOCK_FILE))
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Io(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("{} is in use by another storage backend", root.display()),
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        empty_dir(&root.join(TMP_DIR)).map_err(io_err)?;
        let mut buckets = BTreeMap::new();
        for entry in fs::read_dir(&root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if validate_bucket(name).is_err() || !entry.file_type().map_err(io_err)?.is_dir() {
                continue;
            }
            let dir = root.join(name);
            let stored: StoredBucket = match read_json_file(&dir.join(BUCKET_FILE)) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            };
            empty_dir(&dir.join(TMP_DIR)).map_err(io_err)?;
            fs::create_dir_all(dir.join(UPLOADS_DIR)).map_err(io_err)?;
            buckets.insert(
                name.to_owned(),
                Arc::new(BucketState {
                    name: name.to_owned(),
                    dir,
                    created: from_stamp(stored.created),
                    state: Mutex::default(),
                }),
            );
        }
        Ok(FsBackend {
            inner: Arc::new(Inner {
                root,
                buckets: RwLock::new(buckets),
                _lock: lock,
            }),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.root
    }

    /// The object's qetag (Qiniu's `hash`), stored with it at upload.
    pub async fn qetag(&self, bucket: &str, key: &str) -> Result<String> {
        Ok(self.head_object_qetag(bucket, key).await?.1)
    }

    /// HEAD and the qetag in one read (Qiniu `stat`).
    pub async fn head_object_qetag(&self, bucket: &str, key: &str) -> Result<(ObjectMeta, String)> {
        let b = self.inner.bucket(bucket)?;
        let key = key.to_owned();
        blocking(move || Ok(b.open_object(&key, HEAD_TAIL)?.meta.into_meta())).await
    }
}

impl Inner {
    fn bucket(&self, name: &str) -> Result<Arc<BucketState>> {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        buckets.get(name).cloned().ok_or(StorageError::NoSuchBucket)
    }

    fn create_bucket(&self, name: &str) -> Result<()> {
        // Build the whole bucket directory aside, then rename it into place.
        let tmp_root = self.root.join(TMP_DIR);
        let staged = tmp_root.join(random_id());
        let created = SystemTime::now();
        let build = || -> io::Result<()> {
            fs::create_dir(&staged)?;
            fs::create_dir(staged.join(TMP_DIR))?;
            fs::create_dir(staged.join(UPLOADS_DIR))?;
            for shard in 0..=255u8 {
                fs::create_dir(staged.join(hex(&[shard])))?;
            }
            write_json_file(
                &staged.join(BUCKET_FILE),
                &StoredBucket {
                    created: stamp(created),
                },
            )?;
            fsync_dir(&staged)
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&staged);
            return Err(io_err(e));
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        if buckets.contains_key(name) {
            drop(buckets);
            let _ = fs::remove_dir_all(&staged);
            return Err(StorageError::BucketAlreadyExists);
        }
        let dir = self.root.join(name);
        if let Err(e) = fs::rename(&staged, &dir).and_then(|()| fsync_dir(&self.root)) {
            drop(buckets);
            let _ = fs::remove_dir_all(&staged);
            return Err(io_err(e));
        }
        buckets.insert(
            name.to_owned(),
            Arc::new(BucketState {
                name: name.to_owned(),
                dir,
                created,
                state: Mutex::default(),
            }),
        );
        Ok(())
    }

    fn delete_bucket(&self, name: &str) -> Result<()> {
        let b = self.bucket(name)?;
        let check = |st: &mut BucketMut| -> Result<()> {
            if !b.ensure_index(st)?.is_empty() || b.has_uploads()? {
                return Err(StorageError::BucketNotEmpty);
            }
            Ok(())
        };
        // Build the index (maybe slow) before taking the bucket map's lock.
        check(&mut b.lock())?;
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let mut st = b.lock();
        check(&mut st)?;
        let trash = self.root.join(TMP_DIR).join(random_id());
        fs::rename(&b.dir, &trash)
            .and_then(|()| fsync_dir(&self.root))
            .map_err(io_err)?;
        st.deleted = true;
        buckets.remove(name);
        drop(st);
        drop(buckets);
        let _ = fs::remove_dir_all(&trash);
        Ok(())
    }
}

/// A byte range clamped to `size` as the memory model does.
fn clamp(range: Option<Range<u64>>, size: u64) -> (u64, u64) {
    match range {
        Some(r) => {
            let end = r.end.min(size);
            (r.start.min(end), end)
        }
        None => (0, size),
    }
}

fn put_meta(key: &str, size: u64, etag: String, qetag: String, opts: PutOptions) -> StoredMeta {
    StoredMeta {
        key: key.to_owned(),
        size,
        etag,
        qetag,
        modified: stamp(SystemTime::now()),
        headers: opts.headers.into(),
        user_meta: opts.user_meta,
    }
}

#[async_trait::async_trait]
impl Backend for FsBackend {
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        let buckets = self.inner.buckets.read().unwrap_or_else(|e| e.into_inner());
        Ok(buckets.values().map(|b| b.info()).collect())
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        if self.inner.bucket(bucket).is_ok() {
            return Err(StorageError::BucketAlreadyExists);
        }
        let inner = Arc::clone(&self.inner);
        let bucket = bucket.to_owned();
        blocking(move || inner.create_bucket(&bucket)).await
    }

    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo> {
        Ok(self.inner.bucket(bucket)?.info())
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let bucket = bucket.to_owned();
        blocking(move || inner.delete_bucket(&bucket)).await
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_key(key)?;
        let b = self.inner.bucket(bucket)?;
        let key = key.to_owned();
        let max = opts.max_size;
        stream_into(body, max, true, move |mut rx| {
            let mut sink = b.sink(true, true)?;
            drain(&mut rx, &mut sink)?;
            drop(rx);
            let md5 = sink.md5().map_err(io_err)?;
            if opts.expected_md5.is_some_and(|m| m != md5) {
                return Err(StorageError::BadDigest);
            }
            let no_replace = opts.if_none_match;
            let meta = put_meta(&key, sink.size, hex(&md5), sink.qetag(), opts);
            let tmp = sink.finish(&meta).map_err(io_err)?;
            b.commit(tmp, &key, no_replace)?;
            Ok(meta.into_meta().0)
        })
        .await
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectMeta, ByteStream)> {
        let b = self.inner.bucket(bucket)?;
        let key = key.to_owned();
        let o = blocking(move || b.open_object(&key, GET_TAIL)).await?;
        let (start, end) = clamp(range, o.meta.size);
        let body: ByteStream = match o.small_body {
            Some(all) => {
                let part = all.slice(start as usize..end as usize);
                Box::pin(futures::stream::once(async move { Ok(part) }))
            }
            None => file_stream(o.file, start, end),
        };
        Ok((o.meta.into_meta().0, body))
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        Ok(self.head_object_qetag(bucket, key).await?.0)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        let b = self.inner.bucket(bucket)?;
        let key = key.to_owned();
        blocking(move || b.delete(&key)).await
    }

    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        metadata: CopyMetadata,
    ) -> Result<ObjectMeta> {
        validate_key(dst_key)?;
        let src = self.inner.bucket(src_bucket)?;
        let inner = Arc::clone(&self.inner);
        let (src_key, dst_bucket, dst_key) = (
            src_key.to_owned(),
            dst_bucket.to_owned(),
            dst_key.to_owned(),
        );
        blocking(move || {
            let o = src.open_object(&src_key, HEAD_TAIL)?;
            let dst = inner.bucket(&dst_bucket)?;
            let (headers, user_meta) = match metadata {
                CopyMetadata::Copy => (o.meta.headers, o.meta.user_meta),
                CopyMetadata::Replace(opts) => (opts.headers.into(), opts.user_meta),
            };
            let meta = StoredMeta {
                key: dst_key.clone(),
                size: o.meta.size,
                etag: o.meta.etag,
                qetag: o.meta.qetag,
                modified: stamp(SystemTime::now()),
                headers,
                user_meta,
            };
            // Unbuffered file to file: io::copy uses copy_file_range (in-kernel, reflinks
            // where the file system can).
            let path = dst.tmp_dir().join(random_id());
            let tmp = TempPath {
                path: path.clone(),
                keep: false,
            };
            let write = || -> io::Result<()> {
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                let copied = io::copy(&mut (&o.file).take(o.meta.size), &mut out)?;
                if copied != o.meta.size {
                    return Err(corrupt("source object shorter than its metadata"));
                }
                out.write_all(&trailer(&meta)?)?;
                out.sync_data()
            };
            write().map_err(|e| dst.gone_or(e))?;
            dst.commit(tmp, &dst_key, false)?;
            Ok(meta.into_meta().0)
        })
        .await
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage> {
        let b = self.inner.bucket(bucket)?;
        let query = query.clone();
        blocking(move || list_page(&b, &query)).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<String> {
        validate_key(key)?;
        let b = self.inner.bucket(bucket)?;
        let upload = StoredUpload {
            key: key.to_owned(),
            initiated: stamp(SystemTime::now()),
            headers: opts.headers.into(),
            user_meta: opts.user_meta,
            if_none_match: opts.if_none_match,
            max_size: opts.max_size,
        };
        blocking(move || {
            let id = random_id();
            let staged = b.tmp_dir().join(random_id());
            let build = || -> io::Result<()> {
                fs::create_dir(&staged)?;
                write_json_file(&staged.join(UPLOAD_FILE), &upload)?;
                fsync_dir(&staged)
            };
            if let Err(e) = build() {
                let _ = fs::remove_dir_all(&staged);
                return Err(b.gone_or(e));
            }
            let uploads = b.uploads_dir();
            let renamed = {
                let st = b.lock();
                if st.deleted {
                    Err(StorageError::NoSuchBucket)
                } else {
                    fs::rename(&staged, uploads.join(&id)).map_err(io_err)
                }
            };
            if let Err(e) = renamed {
                let _ = fs::remove_dir_all(&staged);
                return Err(e);
            }
            fsync_dir(&uploads).map_err(io_err)?;
            Ok(id)
        })
        .await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        expected_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidPart);
        }
        let b = self.inner.bucket(bucket)?;
        let (key, id) = (key.to_owned(), upload_id.to_owned());
        let (b2, key2, id2) = (Arc::clone(&b), key.clone(), id.clone());
        let (dir, upload) = blocking(move || b2.upload(&key2, &id2)).await?;
        stream_into(body, upload.max_size, true, move |mut rx| {
            let mut sink = b.sink(true, false)?;
            drain(&mut rx, &mut sink)?;
            drop(rx);
            let md5 = sink.md5().map_err(io_err)?;
            if expected_md5.is_some_and(|m| m != md5) {
                return Err(StorageError::BadDigest);
            }
            let part = StoredPart {
                part: part_number,
                etag: hex(&md5),
                size: sink.size,
                modified: stamp(SystemTime::now()),
            };
            let mut tmp = sink.finish(&part).map_err(io_err)?;
            let not_found = |e: io::Error| match e.kind() {
                io::ErrorKind::NotFound => StorageError::NoSuchUpload,
                _ => io_err(e),
            };
            fs::rename(&tmp.path, dir.join(part_number.to_string())).map_err(not_found)?;
            tmp.keep = true;
            fsync_dir(&dir).map_err(not_found)?;
            Ok(part.info())
        })
        .await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta> {
        let b = self.inner.bucket(bucket)?;
        let (key, id, parts) = (key.to_owned(), upload_id.to_owned(), parts.to_vec());
        blocking(move || {
            let (dir, upload) = b.upload(&key, &id)?;
            if parts.is_empty() {
                return Err(StorageError::InvalidPart);
            }
            if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(StorageError::InvalidPartOrder);
            }
            // Check every part (in the model's order of checks) before writing anything.
            let mut files = Vec::with_capacity(parts.len());
            let mut md5s = Md5::new();
            let mut total = 0u64;
            for (i, (n, etag)) in parts.iter().enumerate() {
                let file = match File::open(dir.join(n.to_string())) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(StorageError::InvalidPart)
                    }
                    Err(e) => return Err(io_err(e)),
                };
                let t: Trailer<StoredPart> = read_trailer(&file, HEAD_TAIL).map_err(io_err)?;
                if t.meta.etag != etag.trim_matches('"') {
                    return Err(StorageError::InvalidPart);
                }
                if i + 1 < parts.len() && t.meta.size < MIN_PART_SIZE {
                    return Err(StorageError::EntityTooSmall);
                }
                let md5 = unhex16(&t.meta.etag)
                    .ok_or_else(|| StorageError::Io(corrupt("bad part etag")))?;
                md5s.update(md5);
                total += t.body_len;
                files.push((file, t.body_len));
            }
            if let Some(limit) = upload.max_size {
                if total > limit {
                    return Err(StorageError::EntityTooLarge { limit });
                }
            }
            if upload.if_none_match && b.object_path(&key).1.exists() {
                return Err(StorageError::AlreadyExists);
            }
            let mut sink = b.sink(false, true)?;
            let mut buf = vec![0u8; CONCAT_CHUNK];
            for (file, len) in &files {
                let mut pos = 0u64;
                while pos < *len {
                    let n = (*len - pos).min(CONCAT_CHUNK as u64) as usize;
                    file.read_exact_at(&mut buf[..n], pos).map_err(io_err)?;
                    sink.write(&buf[..n]).map_err(io_err)?;
                    pos += n as u64;
                }
            }
            let etag = format!("{}-{}", hex(&md5s.finalize()), parts.len());
            let opts = PutOptions {
                headers: upload.headers.into(),
                user_meta: upload.user_meta,
                ..PutOptions::default()
            };
            let meta = put_meta(&key, sink.size, etag, sink.qetag(), opts);
            let tmp = sink.finish(&meta).map_err(io_err)?;
            // The object is committed and durable before the upload goes away.
            b.commit(tmp, &key, upload.if_none_match)?;
            match b.discard_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
            Ok(meta.into_meta().0)
        })
        .await
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let b = self.inner.bucket(bucket)?;
        let (key, id) = (key.to_owned(), upload_id.to_owned());
        blocking(move || {
            let (dir, _) = b.upload(&key, &id)?;
            b.discard_dir(&dir).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StorageError::NoSuchUpload,
                _ => io_err(e),
            })
        })
        .await
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let b = self.inner.bucket(bucket)?;
        let (key, id) = (key.to_owned(), upload_id.to_owned());
        blocking(move || {
            let (dir, _) = b.upload(&key, &id)?;
            let mut parts = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io_err)? {
                let entry = entry.map_err(io_err)?;
                let name = entry.file_name();
                let Some(n) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let file = match File::open(entry.path()) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e)),
                };
                let t: Trailer<StoredPart> = read_trailer(&file, HEAD_TAIL).map_err(io_err)?;
                if t.meta.part == n {
                    parts.push(t.meta.info());
                }
            }
            parts.sort_by_key(|p| p.part_number);
            Ok(parts)
        })
        .await
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>> {
        let b = self.inner.bucket(bucket)?;
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut uploads = Vec::new();
            for entry in fs::read_dir(b.uploads_dir()).map_err(io_err)? {
                let entry = entry.map_err(io_err)?;
                let name = entry.file_name();
                let Some(id) = name.to_str().filter(|s| valid_upload_id(s)) else {
                    continue;
                };
                let u: StoredUpload = match read_json_file(&entry.path().join(UPLOAD_FILE)) {
                    Ok(u) => u,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e)),
                };
                if u.key.starts_with(&prefix) {
                    uploads.push(UploadInfo {
                        key: u.key,
                        upload_id: id.to_owned(),
                        initiated: from_stamp(u.initiated),
                    });
                }
            }
            uploads.sort_by(|a, b| {
                (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id))
            });
            Ok(uploads)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_are_fixed_hex_names_inside_the_bucket() {
        let keys = [
            "a".to_owned(),
            "a/".to_owned(),
            "a/b".to_owned(),
            "a//b".to_owned(),
            "/a".to_owned(),
            "//".to_owned(),
            "/".to_owned(),
            "..".to_owned(),
            "../../etc/passwd".to_owned(),
            "文件/ünïcødé.png".to_owned(),
            "k".repeat(1024),
            "a\u{0}b".to_owned(),
        ];
        let b = BucketState {
            name: "bkt".into(),
            dir: PathBuf::from("/data/bkt"),
            created: UNIX_EPOCH,
            state: Mutex::default(),
        };
        let mut seen = BTreeSet::new();
        for key in &keys {
            let (shard, file) = b.object_path(key);
            assert_eq!(file.parent(), Some(shard.as_path()));
            let rel = file.strip_prefix(&b.dir).unwrap();
            let parts: Vec<_> = rel.iter().map(|c| c.to_str().unwrap().to_owned()).collect();
            assert_eq!(parts.len(), 2, "{key:?} -> {rel:?}");
            assert_eq!(parts[0].len(), 2);
            assert_eq!(parts[1].len(), 62);
            assert!(parts
                .iter()
                .all(|p| p.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))));
            assert!(seen.insert(file.clone()), "{key:?} collides");
            // Deterministic.
            assert_eq!(b.object_path(key).1, file);
        }
        // sha256("a") = ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb
        assert_eq!(
            key_location("a"),
            (
                "ca".to_owned(),
                "978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb".to_owned()
            )
        );
    }

    #[test]
    fn upload_ids() {
        let id = random_id();
        assert!(valid_upload_id(&id), "{id}");
        assert_ne!(random_id(), id);
        for bad in [
            "",
            "../x",
            "..",
            "/",
            "0123456789abcdef0123456789abcde/",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdef0",
            "mem-1",
        ] {
            assert!(!valid_upload_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn trailer_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("ember-fs-unit-{}", random_id()));
        fs::create_dir_all(&dir).unwrap();
        let meta = StoredPart {
            part: 7,
            etag: "e".into(),
            size: 5,
            modified: (1, 2),
        };
        let path = dir.join("f");
        let mut bytes = b"hello".to_vec();
        bytes.extend(trailer(&meta).unwrap());
        fs::write(&path, &bytes).unwrap();
        for tail in [FOOTER_LEN, 13, 20, HEAD_TAIL] {
            let t: Trailer<StoredPart> = read_trailer(&File::open(&path).unwrap(), tail).unwrap();
            assert_eq!((t.meta.part, t.body_len), (7, 5), "tail {tail}");
            assert_eq!(
                t.small_body.as_deref(),
                (tail >= bytes.len() as u64).then_some(&b"hello"[..])
            );
        }
        for bad in [
            &b"short"[..],
            &bytes[..bytes.len() - 1],
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            fs::write(&path, bad).unwrap();
            let e = read_trailer::<StoredPart>(&File::open(&path).unwrap(), HEAD_TAIL);
            assert_eq!(e.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        }
        let mut huge_len = b"body".to_vec();
        huge_len.extend(u32::MAX.to_le_bytes());
        huge_len.extend(MAGIC);
        fs::write(&path, &huge_len).unwrap();
        assert!(read_trailer::<StoredPart>(&File::open(&path).unwrap(), HEAD_TAIL).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `data` as a stream, cut into pieces of these sizes in turn (1 byte up to more than a
    /// copy buffer), then `tail` as the last item.
    fn uneven_body(data: Bytes, tail: Option<io::Error>) -> ByteStream {
        let sizes = [1, 7, 4099, 65_536, 417_792, 3 << 20];
        let mut items = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            items.push(Ok(data.slice(at..at + n)));
            at += n;
            i += 1;
        }
        items.extend(tail.map(Err));
        Box::pin(futures::stream::iter(items))
    }

    fn pattern(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    /// Bodies on every path of the writer: inline MD5, the MD5 thread, pooled copies,
    /// background syncs, and the ways a body can fail on them.
    #[tokio::test]
    async fn large_bodies_hash_store_and_fail_like_small_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBackend::open(dir.path()).unwrap();
        fs.create_bucket("bkt").await.unwrap();
        let mib = 1 << 20;
        for len in [0, mib - 1, mib, mib + 1, 3 * mib + 5, 17 * mib + 3] {
            let data = pattern(len);
            let key = format!("k{len}");
            let meta = fs
                .put_object(
                    "bkt",
                    &key,
                    uneven_body(data.clone(), None),
                    PutOptions::default(),
                )
                .await
                .unwrap();
            assert_eq!(meta.etag, hex(&Md5::digest(&data)), "{len}");
            assert_eq!(meta.size, len as u64);
            let (m, qetag) = fs.head_object_qetag("bkt", &key).await.unwrap();
            assert_eq!(m, meta);
            assert_eq!(qetag, crate::qiniu::etag::qetag(&data), "{len}");
            let (_, mut s) = fs.get_object("bkt", &key, None).await.unwrap();
            let mut back = Vec::new();
            while let Some(chunk) = s.next().await {
                back.extend_from_slice(&chunk.unwrap());
            }
            assert!(back == data, "{len}: body differs");
        }

        let data = pattern(12 * mib + 1);
        let tmp = dir.path().join("bkt").join(TMP_DIR);
        let no_temp_files = || fs::read_dir(&tmp).unwrap().next().is_none();
        // A body that fails after 12 MiB: nothing stored, the old object stays.
        let cut = io::Error::new(io::ErrorKind::ConnectionReset, "client went away");
        let e = fs
            .put_object(
                "bkt",
                "k0",
                uneven_body(data.clone(), Some(cut)),
                PutOptions::default(),
            )
            .await;
        assert!(matches!(e, Err(StorageError::BodyError(_))), "{e:?}");
        assert_eq!(fs.head_object("bkt", "k0").await.unwrap().size, 0);
        assert!(no_temp_files());
        // Too long, found out past the copy buffers and the first background sync.
        let opts = PutOptions {
            max_size: Some(10 * mib as u64),
            ..PutOptions::default()
        };
        let e = fs
            .put_object("bkt", "new", uneven_body(data.clone(), None), opts)
            .await;
        assert!(
            matches!(e, Err(StorageError::EntityTooLarge { .. })),
            "{e:?}"
        );
        // Content-MD5 that does not match.
        let opts = PutOptions {
            expected_md5: Some(Md5::digest(b"something else").into()),
            ..PutOptions::default()
        };
        let e = fs
            .put_object("bkt", "new", uneven_body(data.clone(), None), opts)
            .await;
        assert!(matches!(e, Err(StorageError::BadDigest)), "{e:?}");
        assert!(matches!(
            fs.head_object("bkt", "new").await,
            Err(StorageError::NoSuchKey)
        ));
        assert!(no_temp_files());

        // A large part: its ETag is its MD5 too.
        let id = fs
            .create_multipart("bkt", "mp", PutOptions::default())
            .await
            .unwrap();
        let part = fs
            .upload_part("bkt", "mp", &id, 1, uneven_body(data.clone(), None), None)
            .await
            .unwrap();
        assert_eq!(part.etag, hex(&Md5::digest(&data)));
        let done = fs
            .complete_multipart("bkt", "mp", &id, &[(1, part.etag)])
            .await
            .unwrap();
        assert_eq!(done.size, data.len() as u64);
        let (_, qetag) = fs.head_object_qetag("bkt", "mp").await.unwrap();
        assert_eq!(qetag, crate::qiniu::etag::qetag(&data));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[0x00, 0x7f, 0xff]), "007fff");
        let d: [u8; 16] = Md5::digest(b"x").into();
        assert_eq!(unhex16(&hex(&d)), Some(d));
        assert_eq!(unhex16("zz"), None);
        assert_eq!(unhex16(&"g".repeat(32)), None);
    }
}
