//! The Qiniu (Kodo) HTTP API over a [`Backend`]: what the official SDKs call on the upload
//! host (form upload, resumable v1 and v2) and on the rs/rsf hosts (stat, delete, list, move,
//! copy), as one axum [`Router`] ([`router`]), plus [`authorize_download`], the token check the
//! bucket-domain layer runs before serving a private object.
//!
//! ```text
//! POST /                                         form upload (multipart/form-data)   form.rs
//! POST /mkblk/<blockSize>                        resumable v1: first chunk of a block  v1.rs
//! POST /bput/<ctx>/<nextChunkOffset>             resumable v1: next chunk
//! POST /mkfile/<fileSize>[/key/<b64>]...         resumable v1: join the blocks
//! POST   /buckets/<b>/objects/<b64 key|~>/uploads            v2 init             v2.rs
//! PUT    /buckets/<b>/objects/<k>/uploads/<id>/<partNumber>  v2 part
//! POST   /buckets/<b>/objects/<k>/uploads/<id>               v2 complete
//! DELETE /buckets/<b>/objects/<k>/uploads/<id>               v2 abort
//! GET    /buckets/<b>/objects/<k>/uploads/<id>               v2 list parts
//! GET|POST /stat/<EncodedEntryURI>               management (QBox / Qiniu signed)  manage.rs
//! POST /delete/<EncodedEntryURI>
//! GET|POST /list?bucket=&prefix=&marker=&limit=&delimiter=
//! POST /move/<src>/<dst>[/force/true], /copy/<src>/<dst>[/force/true]
//! ```
//!
//! Every response carries `X-Reqid` (the Python SDK treats a 200 without it as "server is not
//! qiniu") and errors are Qiniu's `{"error":"..."}` with Qiniu's status codes ([`ApiError`]).
//!
//! # Where resumable uploads keep their data
//!
//! Qiniu blocks are 4 MiB and v2 parts may be 1 MiB, below the backend's 5 MiB multipart
//! minimum, and a v1 block does not even know its object key until `mkfile`. So blocks and
//! parts are staged on local disk under [`QiniuConfig::staging_dir`] (see `staging.rs`),
//! streamed in and out in chunks, never whole in memory; `mkfile` / complete streams them in
//! order into one [`Backend::put_object`], which makes the object appear atomically. Staged data
//! is removed after a successful join or abort, and anything untouched for
//! [`QiniuConfig::staging_ttl`] (Qiniu's 7 days by default) is swept.
//!
//! A v1 `ctx` is an opaque, MAC'd token (HMAC-SHA256 under a key derived from the uploading
//! access key's secret) naming the staged block, its size, how much of it has arrived, its
//! SHA-1 once complete, the access key, the bucket and an expiry: a client cannot forge one
//! pointing at other data, and ctxs survive a restart as long as the staged files do.
//!
//! # The qetag of stored objects
//!
//! `stat` and `list` report each object's qetag. Resumable uploads know it before the final
//! put (from the blocks' SHA-1s or a pass over the staged parts) and store it in the reserved
//! user-metadata entry [`QETAG_META`]. A form upload streams straight into the backend, so its
//! qetag (computed while streaming and returned as `hash`) is known only afterwards: it goes to
//! an in-process cache keyed by (bucket, key, ETag, size, mtime). Anything else (objects
//! written through S3, or after a restart) is computed by reading the object once and cached.
//! A backend that records the qetag itself (the `fs` backend does) can replace all three with
//! a field on `ObjectMeta`: `Api::qetag_of` is the one place to change.

mod form;
mod manage;
mod staging;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::QiniuError;
use super::etag::QEtag;
use super::magic::{default_return_body, expand_return_body, MagicVars};
use super::token::{
    uptoken_from_authorization, verify_download_url, verify_upload_token, DownloadGrant,
    DownloadRequest, PutPolicy, UploadToken,
};
use crate::backend::{Backend, ByteStream, ObjectMeta, PutOptions, StorageError};

/// The reserved user-metadata entry holding an object's qetag (see the module documentation).
/// Clients cannot set it: `x-qn-meta-qetag` sent with an upload is dropped.
pub const QETAG_META: &str = "qetag";

/// Qiniu's default lifetime of resumable-upload state (v2 `expireAt` is 7 days after init).
pub const DEFAULT_STAGING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Configuration of the Qiniu front end.
#[derive(Clone)]
pub struct QiniuConfig {
    /// Access key -> secret key (the same table as the S3 dialect's).
    pub credentials: BTreeMap<String, String>,
    /// Access keys that may only read: their upload tokens and delete/move/copy are refused.
    pub read_only_keys: BTreeSet<String>,
    /// Buckets served without a download token.
    pub public_buckets: BTreeSet<String>,
    /// Largest object accepted, bytes (413 above it, whatever the token allows).
    pub max_object_size: u64,
    /// Upload hosts returned as `host` by mkblk/bput (e.g. `https://up.example.com`); empty:
    /// the scheme-less `Host` of the request, prefixed with `http://`.
    pub upload_hosts: Vec<String>,
    /// Where resumable-upload blocks and parts are staged (created when missing).
    pub staging_dir: PathBuf,
    /// Staged data untouched this long is removed; also the v1 ctx / v2 upload lifetime.
    pub staging_ttl: Duration,
}

impl std::fmt::Debug for QiniuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QiniuConfig")
            .field("access_keys", &self.credentials.keys().collect::<Vec<_>>())
            .field("read_only_keys", &self.read_only_keys)
            .field("public_buckets", &self.public_buckets)
            .field("max_object_size", &self.max_object_size)
            .field("upload_hosts", &self.upload_hosts)
            .field("staging_dir", &self.staging_dir)
            .field("staging_ttl", &self.staging_ttl)
            .finish()
    }
}

impl QiniuConfig {
    /// A configuration with these credentials, staging under `staging_dir`, no public
    /// buckets, a 5 GiB object limit and the default staging lifetime.
    pub fn new(credentials: BTreeMap<String, String>, staging_dir: impl Into<PathBuf>) -> Self {
        QiniuConfig {
            credentials,
            read_only_keys: BTreeSet::new(),
            public_buckets: BTreeSet::new(),
            max_object_size: 5 << 30,
            upload_hosts: Vec::new(),
            staging_dir: staging_dir.into(),
            staging_ttl: DEFAULT_STAGING_TTL,
        }
    }

    /// The secret key of `access_key`.
    pub fn secret_key(&self, access_key: &str) -> Option<&str> {
        self.credentials.get(access_key).map(String::as_str)
    }

    /// Whether `bucket` is served without a download token.
    pub fn is_public(&self, bucket: &str) -> bool {
        self.public_buckets.contains(bucket)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A failed request: Qiniu's HTTP status and the `error` text of its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 with this text.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, message)
    }

    /// 612: the object (or upload) does not exist.
    pub fn no_such_file() -> Self {
        ApiError::new(612, "no such file or directory")
    }

    /// 612 for v2 upload ids.
    pub fn no_such_upload() -> Self {
        ApiError::new(612, "no such uploadId")
    }

    /// 614: insert-only upload (or move/copy without force) onto an existing key.
    pub fn file_exists() -> Self {
        ApiError::new(614, "file exists")
    }

    /// 631: the bucket does not exist.
    pub fn no_such_bucket() -> Self {
        ApiError::new(631, "no such bucket")
    }

    /// 701: a v1 ctx that is forged, expired, for another token, or out of step.
    pub fn invalid_ctx(why: &str) -> Self {
        ApiError::new(701, format!("invalid ctx: {why}"))
    }

    /// 403 for writes with a read-only access key.
    pub fn read_only() -> Self {
        ApiError::new(403, "permission denied: the access key is read-only")
    }

    /// 599 for server-side failures (the detail is logged, not sent).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::warn!("qiniu: server error: {detail}");
        ApiError::new(599, "server error")
    }

    /// `{"error":"<text>"}`.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<QiniuError> for ApiError {
    fn from(e: QiniuError) -> Self {
        ApiError::new(e.status(), e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NoSuchBucket => ApiError::no_such_bucket(),
            StorageError::NoSuchKey => ApiError::no_such_file(),
            StorageError::NoSuchUpload => ApiError::no_such_upload(),
            StorageError::AlreadyExists => ApiError::file_exists(),
            StorageError::EntityTooLarge { .. } => QiniuError::FileTooLarge.into(),
            StorageError::InvalidKey(why) => ApiError::bad_request(format!("invalid key: {why}")),
            StorageError::InvalidBucketName(why) => {
                ApiError::bad_request(format!("invalid bucket name: {why}"))
            }
            StorageError::BadDigest => ApiError::bad_request("content md5 mismatch"),
            StorageError::InvalidPart
            | StorageError::InvalidPartOrder
            | StorageError::EntityTooSmall
            | StorageError::BucketAlreadyExists
            | StorageError::BucketNotEmpty => ApiError::bad_request(e.to_string()),
            StorageError::InsufficientStorage => {
                ApiError::new(507, "insufficient storage: no space left on the server")
            }
            StorageError::BodyError(err) => {
                ApiError::bad_request(format!("reading the request body failed: {err}"))
            }
            StorageError::Io(err) => ApiError::internal(err),
            StorageError::Upstream(err) => ApiError::internal(format!("upstream: {err}")),
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(status_code(self.status), self.json_body())
    }
}

/// A JSON response with this status.
fn json_response(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn json_ok(value: serde_json::Value) -> Response {
    json_response(StatusCode::OK, value.to_string())
}

/// Adds `X-Reqid` (random, 16 hex digits) to every response.
async fn add_reqid(mut res: Response) -> Response {
    let id = format!("{:016x}", rand::random::<u64>());
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-reqid", v);
    }
    res
}

// ---------------------------------------------------------------------------------------------
// Shared state and helpers
// ---------------------------------------------------------------------------------------------

type QetagKey = (String, String, String, u64, SystemTime);

/// Qetags learnt from form uploads and computed on demand (see the module documentation).
#[derive(Default)]
struct QetagCache {
    map: Mutex<HashMap<QetagKey, String>>,
}

const QETAG_CACHE_MAX: usize = 100_000;

impl QetagCache {
    fn key(bucket: &str, meta: &ObjectMeta) -> QetagKey {
        (
            bucket.to_owned(),
            meta.key.clone(),
            meta.etag.clone(),
            meta.size,
            meta.last_modified,
        )
    }

    fn get(&self, bucket: &str, meta: &ObjectMeta) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&Self::key(bucket, meta)).cloned()
    }

    fn insert(&self, bucket: &str, meta: &ObjectMeta, qetag: String) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= QETAG_CACHE_MAX {
            map.clear();
        }
        map.insert(Self::key(bucket, meta), qetag);
    }
}

/// Whether `s` looks like a qetag: 28 characters of base64url, `F` (one block) or `l`.
pub fn is_qetag(s: &str) -> bool {
    s.len() == 28
        && (s.starts_with('F') || s.starts_with('l'))
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The qetag an object carries in [`QETAG_META`], if any.
pub fn stored_qetag(meta: &ObjectMeta) -> Option<&str> {
    meta.user_meta
        .get(QETAG_META)
        .map(String::as_str)
        .filter(|s| is_qetag(s))
}

/// Everything the handlers share.
pub(crate) struct Api {
    backend: Arc<dyn Backend>,
    cfg: Arc<QiniuConfig>,
    staging: Arc<staging::Staging>,
    qetags: QetagCache,
}

impl Api {
    fn new(backend: Arc<dyn Backend>, cfg: Arc<QiniuConfig>) -> Api {
        let staging = Arc::new(staging::Staging::new(
            cfg.staging_dir.clone(),
            cfg.staging_ttl,
        ));
        Api {
            backend,
            cfg,
            staging,
            qetags: QetagCache::default(),
        }
    }

    /// Verifies an upload token; read-only keys are refused.
    fn upload_token(&self, token: &str) -> Result<UploadToken, ApiError> {
        let t = verify_upload_token(token, |ak| self.cfg.secret_key(ak), now_unix())?;
        if self.cfg.read_only_keys.contains(&t.access_key) {
            return Err(ApiError::read_only());
        }
        Ok(t)
    }

    /// The upload token of an `Authorization: UpToken <token>` request.
    fn uptoken_header(&self, headers: &HeaderMap) -> Result<UploadToken, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(uptoken_from_authorization)
            .ok_or(QiniuError::TokenNotSpecified)?;
        self.upload_token(token)
    }

    /// 631 unless the bucket exists (checked before a body is read).
    async fn require_bucket(&self, bucket: &str) -> Result<(), ApiError> {
        self.backend.head_bucket(bucket).await?;
        Ok(())
    }

    /// The qetag of a stored object: [`QETAG_META`], else the cache, else computed by reading
    /// the object (and cached).
    async fn qetag_of(&self, bucket: &str, meta: &ObjectMeta) -> Result<String, ApiError> {
        if let Some(q) = stored_qetag(meta) {
            return Ok(q.to_owned());
        }
        if let Some(q) = self.qetags.get(bucket, meta) {
            return Ok(q);
        }
        let (current, mut body) = self.backend.get_object(bucket, &meta.key, None).await?;
        let mut h = QEtag::new();
        while let Some(chunk) = body.next().await {
            h.update(&chunk.map_err(ApiError::internal)?);
        }
        let q = h.finalize();
        self.qetags.insert(bucket, &current, q.clone());
        Ok(q)
    }

    /// Stores an upload. `body` must be a [`Guarded`] stream over `tally`, so a failure it
    /// detected is reported as such. An insert-only conflict whose existing object has the
    /// same content (qetag) is a success, as on Qiniu.
    async fn store(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
        tally: &Arc<Mutex<Tally>>,
    ) -> Result<ObjectMeta, ApiError> {
        match self.backend.put_object(bucket, key, body, opts).await {
            Ok(meta) => Ok(meta),
            Err(e) => {
                let (failure, ours) = {
                    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    let ours = t.complete.then(|| t.qetag.clone().finalize());
                    (t.failure.clone(), ours)
                };
                if let Some(f) = failure {
                    return Err(f);
                }
                if let (StorageError::AlreadyExists, Some(ours)) = (&e, ours) {
                    if let Ok(existing) = self.backend.head_object(bucket, key).await {
                        if self.qetag_of(bucket, &existing).await.ok() == Some(ours) {
                            return Ok(existing);
                        }
                    }
                }
                Err(e.into())
            }
        }
    }

    /// The `host` of mkblk/bput responses.
    fn upload_host(&self, headers: &HeaderMap) -> String {
        if let Some(h) = self.cfg.upload_hosts.first() {
            return h.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        format!("http://{host}")
    }
}

/// The [`PutOptions`] of an upload: content type, user metadata (reserved entry dropped),
/// insert-only from the policy, and the tighter of `fsizeLimit` and the server's maximum.
fn put_options(
    cfg: &QiniuConfig,
    policy: &PutPolicy,
    mime: &str,
    user_meta: BTreeMap<String, String>,
) -> PutOptions {
    let mut opts = PutOptions::default();
    opts.headers.content_type = Some(mime.to_owned());
    opts.user_meta = user_meta;
    opts.user_meta.remove(QETAG_META);
    opts.if_none_match = !policy.allows_overwrite();
    opts.max_size = Some(size_limit(cfg, policy));
    opts
}

/// The largest upload this policy and the server allow.
fn size_limit(cfg: &QiniuConfig, policy: &PutPolicy) -> u64 {
    policy
        .max_fsize()
        .map_or(cfg.max_object_size, |l| l.min(cfg.max_object_size))
}

/// `x-qn-meta-<name>` (any case) → `<name>` lowercase, as the backend keeps user metadata.
fn qn_meta_name(field: &str) -> Option<String> {
    let lower = field.to_ascii_lowercase();
    let name = lower.strip_prefix("x-qn-meta-")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// What the returnBody variables of an upload need, owned.
struct Uploaded {
    bucket: String,
    key: String,
    qetag: String,
    fsize: u64,
    mime: String,
    fname: Option<String>,
    custom: Vec<(String, String)>,
    upload_time: u64,
}

impl Uploaded {
    /// The success response: `returnBody` expanded (or `{"hash","key"}`); a policy with a
    /// `callbackUrl` gets 579, since Ember does not call back (the file *is* stored, which is
    /// what 579 means on Qiniu too). `returnUrl` (form uploads) redirects with `upload_ret`.
    fn response(&self, policy: &PutPolicy, form: bool) -> Response {
        let custom: Vec<(&str, &str)> = self
            .custom
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let vars = MagicVars {
            bucket: &self.bucket,
            key: &self.key,
            etag: &self.qetag,
            fsize: self.fsize,
            mime_type: &self.mime,
            end_user: policy.end_user.as_deref(),
            fname: self.fname.as_deref(),
            persistent_id: None,
            upload_time: self.upload_time,
            custom: &custom,
        };
        if policy.persistent_ops.is_some() {
            tracing::info!(
                bucket = %self.bucket, key = %self.key,
                "qiniu: persistentOps ignored (not supported)"
            );
        }
        if let Some(url) = policy.callback_url.as_deref().filter(|u| !u.is_empty()) {
            tracing::warn!(
                bucket = %self.bucket, key = %self.key, callback_url = url,
                "qiniu: upload stored but callbackUrl is not supported; answering 579"
            );
            return ApiError::new(
                579,
                "callback failed: upload callbacks (callbackUrl) are not supported by this \
                 server; the file was stored",
            )
            .into_response();
        }
        let body = match policy.return_body.as_deref() {
            Some(t) if !t.is_empty() => expand_return_body(t, &vars),
            _ => default_return_body(&self.key, &self.qetag),
        };
        if form {
            if let Some(url) = policy.return_url.as_deref().filter(|u| !u.is_empty()) {
                let sep = if url.contains('?') { '&' } else { '?' };
                let location = format!(
                    "{url}{sep}upload_ret={}",
                    super::urlsafe_b64_encode(body.as_bytes())
                );
                if let Ok(v) = HeaderValue::from_str(&location) {
                    let mut res = Response::new(Body::empty());
                    *res.status_mut() = StatusCode::SEE_OTHER;
                    res.headers_mut().insert(header::LOCATION, v);
                    return res;
                }
            }
        }
        json_response(StatusCode::OK, body)
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// What has passed through a [`Guarded`] stream.
#[derive(Default)]
pub(crate) struct Tally {
    pub qetag: QEtag,
    pub crc32: crc32fast::Hasher,
    pub size: u64,
    /// The stream reached its end (and the final check passed).
    pub complete: bool,
    /// Why the stream was cut short by the guard itself.
    pub failure: Option<ApiError>,
}

/// The check run at the end of a guarded stream (sizes, CRC32, expected qetag).
pub(crate) type FinalCheck = Box<dyn FnOnce(&Tally) -> Result<(), ApiError> + Send>;

/// A body wrapper that hashes (qetag, CRC32) and counts as bytes pass, cuts the stream with an
/// error past `limit` bytes (413) and runs a final check at the end, failing the stream so the
/// backend stores nothing. The reason is left in the [`Tally`].
pub(crate) struct Guarded {
    inner: ByteStream,
    tally: Arc<Mutex<Tally>>,
    limit: u64,
    check: Option<FinalCheck>,
    ended: bool,
}

impl Guarded {
    pub(crate) fn new(
        inner: ByteStream,
        limit: u64,
        check: Option<FinalCheck>,
    ) -> (Guarded, Arc<Mutex<Tally>>) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        (
            Guarded {
                inner,
                tally: Arc::clone(&tally),
                limit,
                check,
                ended: false,
            },
            tally,
        )
    }

    fn fail(&mut self, err: ApiError) -> Poll<Option<io::Result<Bytes>>> {
        self.ended = true;
        let text = err.message.clone();
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).failure = Some(err);
        Poll::Ready(Some(Err(io::Error::other(text))))
    }
}

impl Stream for Guarded {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let over = {
                    let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
                    t.size += chunk.len() as u64;
                    t.qetag.update(&chunk);
                    t.crc32.update(&chunk);
                    t.size > self.limit
                };
                if over {
                    return self.fail(QiniuError::FileTooLarge.into());
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                let check = self.check.take();
                let result = {
                    let t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
                    match check {
                        Some(check) => check(&t),
                        None => Ok(()),
                    }
                };
                match result {
                    Ok(()) => {
                        self.tally
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .complete = true;
                        Poll::Ready(None)
                    }
                    Err(e) => self.fail(e),
                }
            }
        }
    }
}

/// An axum body as a [`ByteStream`].
fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map(|r| r.map_err(io::Error::other)))
}

/// Reads a whole (small) body, at most `limit` bytes (400 beyond).
async fn read_small_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::bad_request(format!(
                "request body larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Current Unix time, seconds.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A time in Qiniu's `putTime` unit (100 ns since the epoch).
pub(crate) fn put_time(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Router and download glue
// ---------------------------------------------------------------------------------------------

/// The Qiniu upload and management API over `backend`.
pub fn router(backend: Arc<dyn Backend>, cfg: Arc<QiniuConfig>) -> Router {
    let api = Arc::new(Api::new(backend, cfg));
    let uploads = "/buckets/{bucket}/objects/{object}/uploads";
    Router::new()
        .route("/", post(form::form_upload))
        .route("/mkblk/{size}", post(v1::mkblk))
        .route("/bput/{ctx}/{offset}", post(v1::bput))
        .route("/mkfile/{*rest}", post(v1::mkfile))
        .route(uploads, post(v2::init))
        .route(
            &format!("{uploads}/{{upload_id}}"),
            post(v2::complete).delete(v2::abort).get(v2::list_parts),
        )
        .route(
            &format!("{uploads}/{{upload_id}}/{{part}}"),
            put(v2::upload_part),
        )
        .route("/stat/{entry}", get(manage::stat).post(manage::stat))
        .route("/delete/{entry}", post(manage::delete))
        .route("/list", get(manage::list).post(manage::list))
        .route("/move/{*rest}", post(manage::move_object))
        .route("/copy/{*rest}", post(manage::copy_object))
        .layer(axum::middleware::map_response(add_reqid))
        .with_state(api)
}

/// Whether a request on a shared port belongs to the Qiniu dialect rather than S3: an
/// `UpToken`, `QBox` or `Qiniu` authorization, or a multipart form POSTed to `/` (S3's browser
/// POST goes to `/<bucket>`).
pub fn is_qiniu_request(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let scheme = auth.split(' ').next().unwrap_or("");
        if ["UpToken", "QBox", "Qiniu"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return true;
        }
    }
    *method == Method::POST
        && path == "/"
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            })
}

/// Authorizes a download from `bucket` on a bucket domain: public buckets need nothing;
/// private ones a valid `?e=<deadline>&token=<AK>:<sign>` (401 `download token not specified`
/// / `download token auth failed` / `token out of date`). Returns the grant for a private
/// bucket, `None` for a public one.
pub fn authorize_download(
    cfg: &QiniuConfig,
    bucket: &str,
    req: &DownloadRequest<'_>,
    now_unix: u64,
) -> Result<Option<DownloadGrant>, ApiError> {
    if cfg.is_public(bucket) {
        return Ok(None);
    }
    let grant = verify_download_url(req, |ak| cfg.secret_key(ak), now_unix)?;
    Ok(Some(grant))
}
