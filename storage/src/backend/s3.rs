//! The `s3` gateway backend: [`S3Backend`] serves every [`Backend`] operation from an upstream
//! S3-compatible server (AWS S3, MinIO, ...) through `aws-sdk-s3`, so Ember's S3, Qiniu and
//! bucket-domain front ends can sit in front of storage that already exists. It behaves like
//! the [`memory`](super::memory) reference model wherever the upstream allows; the exceptions
//! are listed below.
//!
//! # Streaming
//!
//! No object is ever held whole. GET hands the upstream response body to the caller chunk by
//! chunk. PUT and UploadPart send the caller's stream as the upstream request body with its
//! length ([`PutOptions::content_length`], [`Backend::upload_part_with_length`]) through
//! `UploadBody`, which always holds back the latest chunk until the next one arrives, and the
//! last one until the caller's stream has *ended cleanly*. The front ends report a bad
//! signature, checksum or qetag as the final item of the stream, and the HTTP client stops
//! polling a body once Content-Length bytes are out: without the hold-back the upstream could
//! store an object whose verification failed. The same final step checks `expected_md5`
//! locally (Content-MD5 is sent too, for upstreams that check it) and the exact length.
//!
//! # Bodies of unknown length
//!
//! S3 needs a Content-Length. When the caller does not know it (a Qiniu form upload, an S3 PUT
//! with `Transfer-Encoding: chunked`), the body is read into memory up to [`BUFFER`] (8 MiB):
//! if it ends within that, it is one PutObject; otherwise it becomes an upstream multipart
//! upload of 8 MiB parts, each sent as soon as it is full. This was chosen over spooling to a
//! temp file because a gateway should not need local disk in proportion to object size (the
//! bytes live upstream), nothing is written twice, and memory stays at one part per upload.
//! The cost: such an object gets a multipart ETag (`<hex>-<parts>`) instead of its MD5 —
//! only Qiniu form uploads produce these, and Qiniu clients see the qetag, not the ETag. A
//! *part* of unknown length cannot be split further: up to 8 MiB is buffered, a longer one is
//! refused (S3 itself requires Content-Length on UploadPart).
//!
//! # Conditional create
//!
//! `if_none_match` sends `If-None-Match: *` with PutObject and CompleteMultipartUpload, which
//! is atomic on upstreams that support it (AWS S3 since 2024, MinIO, s3s-fs, moto). Because an
//! upstream that does not know the header would silently overwrite, the gateway also HEADs the
//! key first; on such an upstream that check is all there is, and it is **not atomic** (a
//! create racing between the HEAD and the PUT wins). A consequence of checking first: when the
//! key exists *and* the body fails, this backend reports `AlreadyExists` where the model
//! reports the body's error.
//!
//! # What the upstream cannot give, and what is done instead
//!
//! - User metadata travels as `x-amz-meta-*` headers, which carry only lowercase token names
//!   and printable ASCII values. Names outside that (uppercase, non-ASCII, ...) are stored as
//!   `ember-hex-<hex of the UTF-8 name>`, values outside it (non-ASCII, empty, leading or
//!   trailing blanks) as `ember-b64:<base64>`, and decoded on the way back; a value that merely
//!   looks encoded is encoded too, so every value round-trips exactly. RFC 2047 values
//!   written by other clients (`=?UTF-8?B?...?=`, what AWS suggests for non-ASCII) are decoded.
//! - ListObjectsV2 returns no headers or user metadata, which [`ObjectMeta`] carries (the Qiniu
//!   listing needs the stored qetag): when the query asks for them ([`ListQuery::metadata`]),
//!   each listed object is HEADed, [`LIST_HEADS`] at a time; S3 listings skip that.
//! - HeadBucket returns no creation date: [`Backend::head_bucket`] reports the Unix epoch
//!   (`list_buckets` has the real dates).
//! - The upstream does not remember a multipart upload's `max_size`, `if_none_match` and
//!   headers; they are kept in memory per upload id (at most [`MAX_TRACKED_UPLOADS`], oldest
//!   forgotten first). An upload unknown here (started before a restart) is completed without
//!   the size limit and the condition. Completion lists the parts first, so size limits,
//!   `EntityTooSmall` and `InvalidPart` are decided before anything is joined.
//! - Keys that [`validate_key`] refuses and invalid bucket names are never sent upstream
//!   (path normalisation on the way could address another object): reads find nothing,
//!   deletes succeed, writes fail as in the model.
//! - An object stored without a Content-Type gets the upstream's default
//!   (`binary/octet-stream` on AWS): the SDK's own `application/octet-stream` is not sent.
//! - A HEAD answers a miss with a bare 404, and some servers answer a GET in a missing bucket
//!   with `NoSuchKey`: a miss costs one HeadBucket more, to tell `NoSuchKey` from
//!   `NoSuchBucket`. The model also looks for the bucket before it reads a body: a body that
//!   fails on its way to a missing bucket is reported as `NoSuchBucket` (one HeadBucket).
//!
//! # Errors and time limits
//!
//! S3 error codes map to the matching [`StorageError`]; anything else, including an
//! unreachable upstream, is [`StorageError::Upstream`] with the operation, code, message and
//! HTTP status. A failed request body is [`StorageError::BodyError`] with the caller's own
//! error, whatever the upstream made of the aborted request. Connecting is bounded by 5 s;
//! requests without a streamed body by 120 s until the answer's headers; streamed uploads and
//! downloads by the SDK's stalled-stream protection (no progress for its grace period while
//! the upstream, not the client, is the slow side). Idempotent requests are tried up to three
//! times; a streamed body never is. An upstream multipart upload the gateway started for a
//! body of unknown length is aborted when the upload fails or the request goes away.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkStream, DateTime, SdkBody};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    MetadataDirective,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use ember_common::config::UpstreamConfig;
use futures::{StreamExt, TryStreamExt};
use http_body::{Frame, SizeHint};
use md5::{Digest, Md5};

use super::{
    validate_bucket, validate_key, Backend, BucketInfo, ByteStream, CopyMetadata, ListPage,
    ListQuery, ObjectMeta, PartInfo, PutOptions, Result, StandardHeaders, StorageError, UploadInfo,
    MAX_PART_NUMBER, MIN_PART_SIZE,
};
use crate::s3::sigv4::{hex_encode, uri_encode};

/// Memory for a body of unknown length: bodies up to this are one PutObject, longer ones an
/// upstream multipart upload of parts this size (10 000 parts: 78 GiB at most).
pub const BUFFER: usize = 8 * 1024 * 1024;
/// Listed objects HEADed at a time for their headers and user metadata.
pub const LIST_HEADS: usize = 16;
/// Multipart uploads whose options are remembered.
pub const MAX_TRACKED_UPLOADS: usize = 10_000;
/// Connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request without a streamed body to its answer's headers.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The reachability check at start, retries included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream attempts per idempotent request (streamed bodies are never retried).
const MAX_ATTEMPTS: u32 = 3;
/// Pages read for one call (ListParts, ListMultipartUploads, ListBuckets): bounds every loop.
const MAX_PAGES: usize = 10_000;
/// Attempts at a copy whose source changes between its HEAD and the copy.
const COPY_ATTEMPTS: usize = 3;
/// Encoded user-metadata names: `ember-hex-<hex of the UTF-8 name>`.
const META_NAME_PREFIX: &str = "ember-hex-";
/// Encoded user-metadata values: `ember-b64:<base64 of the UTF-8 value>`. Not RFC 2047,
/// which some servers decode on the way in and re-encode only non-ASCII on the way out (s3s),
/// losing leading and trailing blanks.
const META_VALUE_PREFIX: &str = "ember-b64:";
/// RFC 2047 encoded words, as other S3 clients and servers write non-ASCII values: decoded.
const RFC2047_PREFIX: &str = "=?UTF-8?B?";
const RFC2047_SUFFIX: &str = "?=";

// ---------------------------------------------------------------------------------------------
// Request and answer helpers (macros: the SDK's builders and outputs share method names, not
// traits)

/// Sets the standard headers and (encoded) user metadata on a PutObject,
/// CreateMultipartUpload or CopyObject request. `Expires` goes as a raw header
/// ([`RawHeaders`]): the SDK's field takes only a parsed date.
macro_rules! with_headers {
    ($req:expr, $h:expr, $meta:expr) => {{
        let h: &StandardHeaders = $h;
        $req.set_content_type(h.content_type.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_language(h.content_language.clone())
            .set_cache_control(h.cache_control.clone())
            .set_metadata(Some(encode_meta($meta)))
    }};
}

/// The [`ObjectMeta`] of a HeadObject or GetObject answer.
macro_rules! object_meta {
    ($out:expr, $key:expr, $size:expr) => {{
        let out = &$out;
        ObjectMeta {
            key: $key.to_owned(),
            size: $size,
            etag: unquote(out.e_tag()),
            last_modified: time(out.last_modified()),
            headers: StandardHeaders {
                content_type: out.content_type().map(str::to_owned),
                content_disposition: out.content_disposition().map(str::to_owned),
                content_encoding: out.content_encoding().map(str::to_owned),
                content_language: out.content_language().map(str::to_owned),
                cache_control: out.cache_control().map(str::to_owned),
                expires: out.expires_string().map(str::to_owned),
            },
            user_meta: decode_meta(out.metadata()),
        }
    }};
}

/// Why the gateway cannot use its upstream (at start).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// `[storage.upstream]` cannot work as written.
    #[error("{0}")]
    Config(String),
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("the upstream does not answer: {0}")]
    Unreachable(String),
    /// The upstream refused `storage.upstream.access_key` / `secret_key`.
    #[error(
        "the upstream refused the credentials (storage.upstream.access_key / secret_key), \
         or they may not use {what}: {detail}"
    )]
    Credentials { what: String, detail: String },
    /// Any other error answer.
    #[error("the upstream answered {0}")]
    Other(String),
}

/// The gateway to one upstream S3 server, shared behind an `Arc`; every call is one or a few
/// upstream requests over a pooled connection.
pub struct S3Backend {
    /// Requests without a streamed body, each bounded by [`READ_TIMEOUT`] until its answer's
    /// headers.
    client: Client,
    /// PutObject and UploadPart: no such bound (the HTTP client's read timeout would cover the
    /// whole upload); a stalled upstream is caught by the SDK's stalled-stream protection.
    streaming: Client,
    /// Region for CreateBucket's location constraint.
    region: String,
    uploads: Mutex<TrackedUploads>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A gateway to `cfg`'s upstream. Sends nothing: see [`S3Backend::check`].
    pub fn new(cfg: &UpstreamConfig) -> std::result::Result<S3Backend, GatewayError> {
        let endpoint = cfg.endpoint.trim();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(GatewayError::Config(format!(
                "storage.upstream.endpoint {endpoint:?} is not an http:// or https:// URL"
            )));
        }
        if cfg.access_key.is_empty() || cfg.secret_key.is_empty() {
            return Err(GatewayError::Config(
                "storage.upstream.access_key and storage.upstream.secret_key must be set".into(),
            ));
        }
        let region = match cfg.region.trim() {
            "" => "us-east-1".to_owned(),
            r => r.to_owned(),
        };
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                cfg.access_key.clone(),
                cfg.secret_key.clone(),
                None,
                None,
                "storage.upstream",
            ))
            .force_path_style(cfg.path_style)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            // No aws-chunked checksum framing around streamed bodies (not every S3 server
            // takes it); Content-MD5 is sent when the client gave one.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let control = conf
            .to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .build();
        Ok(S3Backend {
            client: Client::from_conf(control),
            streaming: Client::from_conf(conf),
            region,
            uploads: Mutex::new(TrackedUploads::default()),
        })
    }

    /// [`S3Backend::new`], then [`S3Backend::check`].
    pub async fn connect(
        cfg: &UpstreamConfig,
        buckets: &[String],
    ) -> std::result::Result<S3Backend, GatewayError> {
        let backend = S3Backend::new(cfg)?;
        backend.check(buckets).await?;
        Ok(backend)
    }

    /// Whether the upstream answers and accepts the credentials: HeadBucket of each of
    /// `buckets` (missing ones are fine, they are created later), or ListBuckets when there are
    /// none. Bounded by a 30 s timeout.
    pub async fn check(&self, buckets: &[String]) -> std::result::Result<(), GatewayError> {
        let probe = async {
            if buckets.is_empty() {
                return match self.client.list_buckets().max_buckets(1).send().await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(probe_error("ListBuckets", &e, "ListBuckets")),
                };
            }
            for b in buckets {
                if let Err(e) = self.client.head_bucket().bucket(b).send().await {
                    if status_of(&e) != Some(404) {
                        return Err(probe_error("HeadBucket", &e, &format!("bucket {b:?}")));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(r) => r,
            Err(_) => Err(GatewayError::Unreachable(format!(
                "no answer within {} s",
                PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    fn tracked(&self) -> MutexGuard<'_, TrackedUploads> {
        self.uploads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The options of an upload started here, if remembered; `NoSuchUpload` if it belongs to
    /// another key.
    fn known_upload(&self, bucket: &str, key: &str, id: &str) -> Result<Option<UploadOpts>> {
        match self.tracked().get(id) {
            Some(u) if u.bucket != bucket || u.key != key => Err(StorageError::NoSuchUpload),
            other => Ok(other),
        }
    }

    /// `NoSuchUpload` unless the upstream knows the upload (one ListParts request).
    async fn require_upload(&self, bucket: &str, key: &str, id: &str) -> Result<()> {
        self.client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .max_parts(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::of("ListParts", &e).upload())
    }

    /// Whether `key` exists (HeadObject).
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool> {
        match self.head_object(bucket, key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NoSuchKey) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `NoSuchBucket` unless the bucket exists.
    async fn require_bucket(&self, bucket: &str) -> Result<()> {
        self.head_bucket(bucket).await.map(|_| ())
    }

    /// Every part of an upload, by ListParts pages.
    async fn all_parts(&self, bucket: &str, key: &str, id: &str) -> Result<Vec<PartInfo>> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| Failure::of("ListParts", &e).upload())?;
            for p in out.parts() {
                let Some(n) = p.part_number().and_then(|n| u32::try_from(n).ok()) else {
                    continue;
                };
                parts.push(PartInfo {
                    part_number: n,
                    etag: unquote(p.e_tag()),
                    size: p.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: time(p.last_modified()),
                });
            }
            let next = out.next_part_number_marker().map(str::to_owned);
            if out.is_truncated() != Some(true) || next.is_none() || next == marker {
                parts.sort_by_key(|p| p.part_number);
                parts.dedup_by_key(|p| p.part_number);
                return Ok(parts);
            }
            marker = next;
        }
        Err(StorageError::Upstream(format!(
            "ListParts: more than {MAX_PAGES} pages"
        )))
    }

    /// PutObject of `body`, `len` bytes; the ETag. `verdict` holds why the body stopped, if it
    /// did.
    async fn put_single(
        &self,
        bucket: &str,
        key: &str,
        body: SdkStream,
        len: u64,
        opts: &PutOptions,
        verdict: Option<&Verdict>,
    ) -> Result<String> {
        let raw = RawHeaders::of(&opts.headers)?;
        let mut req = self
            .streaming
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .content_length(to_i64(len)?);
        req = with_headers!(req, &opts.headers, &opts.user_meta);
        if opts.if_none_match {
            req = req.if_none_match("*");
        }
        if let Some(md5) = opts.expected_md5 {
            req = req.content_md5(b64(&md5));
        }
        let result = req
            .customize()
            .mutate_request(move |r| raw.apply(r))
            .send()
            .await;
        match result {
            Ok(out) => Ok(unquote(out.e_tag())),
            Err(e) => Err(body_failure(verdict).unwrap_or_else(|| {
                let f = Failure::of("PutObject", &e);
                if opts.if_none_match {
                    f.conditional()
                } else {
                    f.into()
                }
            })),
        }
    }

    /// A body of unknown length: one PutObject up to [`BUFFER`] bytes, an upstream multipart
    /// upload beyond.
    async fn put_unknown_length(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: &PutOptions,
    ) -> Result<(u64, String)> {
        let mut reader = Reader::new(body, opts.max_size, opts.expected_md5.is_some());
        let first = reader.fill(BUFFER).await?;
        if reader.at_end().await? {
            reader.check_md5(opts.expected_md5)?;
            let len = first.len;
            let etag = self
                .put_single(bucket, key, first.into_body(), len, opts, None)
                .await?;
            return Ok((len, etag));
        }
        let id = self.start_upload(bucket, key, opts).await?;
        // Aborts the upstream upload if this future is dropped (the client went away).
        let mut guard = AbortOnDrop {
            client: Some(self.client.clone()),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            id: id.clone(),
        };
        let result = async {
            let mut parts = Vec::new();
            let mut next = first;
            loop {
                let n = parts.len() as u32 + 1;
                if n > MAX_PART_NUMBER {
                    return Err(StorageError::Upstream(format!(
                        "a body of unknown length longer than {MAX_PART_NUMBER} parts of {BUFFER} bytes"
                    )));
                }
                let len = next.len;
                let out = self
                    .streaming
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n as i32)
                    .content_length(to_i64(len)?)
                    .body(next.into_body())
                    .send()
                    .await
                    .map_err(|e| Failure::of("UploadPart", &e).upload())?;
                parts.push((n, unquote(out.e_tag())));
                if reader.at_end().await? {
                    break;
                }
                next = reader.fill(BUFFER).await?;
            }
            reader.check_md5(opts.expected_md5)?;
            self.complete_upstream(bucket, key, &id, &parts, opts.if_none_match)
                .await
        }
        .await;
        guard.client = None;
        match result {
            Ok(etag) => Ok((reader.size, etag)),
            Err(e) => {
                self.abort_quietly(bucket, key, &id).await;
                Err(e)
            }
        }
    }

    /// CreateMultipartUpload with `opts`' headers and metadata; the upload id.
    async fn start_upload(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String> {
        let raw = RawHeaders::of(&opts.headers)?;
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key);
        req = with_headers!(req, &opts.headers, &opts.user_meta);
        let out = req
            .customize()
            .mutate_request(move |r| raw.apply(r))
            .send()
            .await
            .map_err(|e| StorageError::from(Failure::of("CreateMultipartUpload", &e)))?;
        out.upload_id()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                StorageError::Upstream("CreateMultipartUpload: no upload id in the answer".into())
            })
    }

    /// CompleteMultipartUpload; the ETag.
    async fn complete_upstream(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        parts: &[(u32, String)],
        if_none_match: bool,
    ) -> Result<String> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, etag)| {
                        CompletedPart::builder()
                            .part_number(*n as i32)
                            .e_tag(format!("\"{}\"", etag.trim_matches('"')))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(completed);
        if if_none_match {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(out) => Ok(unquote(out.e_tag())),
            Err(e) => {
                let f = Failure::of("CompleteMultipartUpload", &e);
                Err(if if_none_match {
                    f.conditional()
                } else {
                    f.upload()
                })
            }
        }
    }

    /// Aborts an upload the gateway started itself, logging a failure.
    async fn abort_quietly(&self, bucket: &str, key: &str, id: &str) {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await;
        if let Err(e) = r {
            tracing::warn!(
                bucket,
                key,
                upload_id = id,
                "s3 gateway: aborting an unfinished upstream upload failed: {}",
                error_chain(&e)
            );
        }
    }

    /// One UploadPart of `body`, `len` bytes (known).
    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        n: u32,
        body: ByteStream,
        len: u64,
        expected_md5: Option<[u8; 16]>,
    ) -> Result<String> {
        let verdict = Verdict::default();
        let sdk_body = if len == 0 {
            drain_empty(body, expected_md5).await?;
            SdkStream::from_static(b"")
        } else {
            upload_body(body, len, expected_md5, &verdict)
        };
        let mut req = self
            .streaming
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(n as i32)
            .content_length(to_i64(len)?)
            .body(sdk_body);
        if let Some(md5) = expected_md5 {
            req = req.content_md5(b64(&md5));
        }
        match req.send().await {
            Ok(out) => Ok(unquote(out.e_tag())),
            Err(e) => Err(body_failure(Some(&verdict))
                .unwrap_or_else(|| Failure::of("UploadPart", &e).upload())),
        }
    }

    /// [`Backend::put_object`] after the name checks: the size and ETag stored.
    async fn store(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: &PutOptions,
    ) -> Result<(u64, String)> {
        if let (Some(len), Some(limit)) = (opts.content_length, opts.max_size) {
            if len > limit {
                return Err(StorageError::EntityTooLarge { limit });
            }
        }
        if opts.if_none_match && self.exists(bucket, key).await? {
            return Err(StorageError::AlreadyExists);
        }
        match opts.content_length {
            Some(0) => {
                drain_empty(body, opts.expected_md5).await?;
                let etag = self
                    .put_single(bucket, key, SdkStream::from_static(b""), 0, opts, None)
                    .await?;
                Ok((0, etag))
            }
            Some(len) => {
                let verdict = Verdict::default();
                let body = upload_body(body, len, opts.expected_md5, &verdict);
                let etag = self
                    .put_single(bucket, key, body, len, opts, Some(&verdict))
                    .await?;
                Ok((len, etag))
            }
            None => self.put_unknown_length(bucket, key, body, opts).await,
        }
    }

    /// A failure of the body itself becomes `NoSuchBucket` when the bucket is missing: the
    /// model looks for the bucket before it reads a byte, an upstream may read the body first.
    async fn bucket_first(&self, bucket: &str, e: StorageError) -> StorageError {
        let from_body = matches!(
            e,
            StorageError::BodyError(_)
                | StorageError::EntityTooLarge { .. }
                | StorageError::BadDigest
        );
        if from_body {
            if let Err(StorageError::NoSuchBucket) = self.require_bucket(bucket).await {
                return StorageError::NoSuchBucket;
            }
        }
        e
    }

    /// HeadObject without the key checks of [`Backend::head_object`]; a 404 is resolved into
    /// `NoSuchKey` or `NoSuchBucket` with a HeadBucket.
    async fn head_raw(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let size = content_length_of(out.content_length(), "HeadObject")?;
                Ok(object_meta!(out, key, size))
            }
            Err(e) if status_of(&e) == Some(404) => {
                self.require_bucket(bucket).await?;
                Err(StorageError::NoSuchKey)
            }
            Err(e) => Err(Failure::of("HeadObject", &e).into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request helpers

/// What [`with_headers!`] cannot set through the SDK's fields, applied to the raw request.
#[derive(Default)]
struct RawHeaders {
    /// `Expires` as given (the SDK's field takes only a parsed date).
    expires: Option<String>,
    /// No Content-Type was given: drop the `application/octet-stream` the SDK adds to a
    /// PutObject, so the object has none of its own (the upstream's default applies, as an
    /// S3 server's would).
    drop_content_type: bool,
}

impl RawHeaders {
    fn of(h: &StandardHeaders) -> Result<RawHeaders> {
        if let Some(v) = &h.expires {
            if axum::http::HeaderValue::from_str(v).is_err() {
                return Err(StorageError::Upstream(format!(
                    "Expires {v:?} cannot be sent upstream as an HTTP header"
                )));
            }
        }
        Ok(RawHeaders {
            expires: h.expires.clone(),
            drop_content_type: h.content_type.is_none(),
        })
    }

    fn apply(&self, req: &mut aws_sdk_s3::config::http::HttpRequest) {
        if self.drop_content_type {
            req.headers_mut().remove("content-type");
        }
        if let Some(v) = &self.expires {
            if let Err(e) = req.headers_mut().try_insert("expires", v.clone()) {
                tracing::warn!("s3 gateway: Expires {v:?} not sent: {e}");
            }
        }
    }
}

fn b64(md5: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

fn to_i64(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| StorageError::EntityTooLarge {
        limit: i64::MAX as u64,
    })
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

fn time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(UNIX_EPOCH)
}

fn content_length_of(len: Option<i64>, op: &str) -> Result<u64> {
    len.and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| StorageError::Upstream(format!("{op}: no valid Content-Length")))
}

/// The total size in `Content-Range: bytes a-b/total`.
fn range_total(content_range: Option<&str>) -> Result<u64> {
    content_range
        .and_then(|v| v.rsplit_once('/'))
        .and_then(|(_, total)| total.trim().parse().ok())
        .ok_or_else(|| {
            StorageError::Upstream(format!(
                "GetObject: no usable Content-Range in a ranged answer ({content_range:?})"
            ))
        })
}

/// The StartAfter of a listing continued after `query.after`. When that lies in (or is) a
/// common prefix, every key under the prefix is skipped, as in the model (which reports a
/// common prefix once, never at or before `after`); an upstream given `after` itself would
/// roll the keys after it up into that prefix again, so the listing starts past the prefix:
/// `<prefix>U+10FFFF`, above every key under it but those continuing with U+10FFFF, which
/// still roll up into the prefix and are dropped with it. C0 control characters cannot travel
/// (see `list_objects`): `after` is cut at the first.
fn upstream_start_after(query: &ListQuery, delimiter: Option<&str>) -> Option<String> {
    let after = query.after.as_deref()?;
    let after = &after[..after.find(is_c0).unwrap_or(after.len())];
    if let Some(d) = delimiter {
        if let Some(i) = after
            .strip_prefix(query.prefix.as_str())
            .and_then(|rest| rest.find(d))
        {
            let common = &after[..query.prefix.len() + i + d.len()];
            return Some(format!("{common}\u{10FFFF}"));
        }
    }
    Some(after.to_owned()).filter(|a| !a.is_empty())
}

fn is_c0(c: char) -> bool {
    c < ' '
}

fn has_c0(s: &str) -> bool {
    s.contains(is_c0)
}

/// A bucket name the upstream is never asked about: an invalid one.
fn bad_bucket(bucket: &str) -> bool {
    validate_bucket(bucket).is_err()
}

fn empty_stream() -> ByteStream {
    Box::pin(futures::stream::empty())
}

/// The upstream body as the backend's stream.
fn download(body: SdkStream) -> ByteStream {
    Box::pin(futures::stream::unfold(Some(body), |state| async move {
        let mut body = state?;
        match body.next().await {
            Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
            Some(Err(e)) => Some((Err(io::Error::other(e)), None)),
            None => None,
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// User metadata encoding

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(META_NAME_PREFIX)
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn is_plain_value(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.starts_with(META_VALUE_PREFIX)
        && !value.starts_with("=?")
}

/// User metadata as `x-amz-meta-*` names and values (see the module documentation).
pub fn encode_meta(meta: &BTreeMap<String, String>) -> HashMap<String, String> {
    meta.iter()
        .map(|(name, value)| {
            let name = if is_plain_name(name) {
                name.clone()
            } else {
                format!("{META_NAME_PREFIX}{}", hex_encode(name.as_bytes()))
            };
            let value = if is_plain_value(value) {
                value.clone()
            } else {
                format!(
                    "{META_VALUE_PREFIX}{}",
                    base64::engine::general_purpose::STANDARD.encode(value)
                )
            };
            (name, value)
        })
        .collect()
}

/// The inverse of [`encode_meta`]; names and values it did not produce pass unchanged.
pub fn decode_meta(meta: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    let Some(meta) = meta else {
        return BTreeMap::new();
    };
    meta.iter()
        .map(|(name, value)| {
            let name = name
                .strip_prefix(META_NAME_PREFIX)
                .and_then(hex_decode)
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| name.clone());
            (name, decode_value(value).unwrap_or_else(|| value.clone()))
        })
        .collect()
}

/// An `ember-b64:` value, or RFC 2047 encoded words (UTF-8, base64; one or more separated by
/// blanks), decoded; `None` for anything else.
fn decode_value(v: &str) -> Option<String> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    if let Some(encoded) = v.strip_prefix(META_VALUE_PREFIX) {
        return String::from_utf8(b64.decode(encoded).ok()?).ok();
    }
    let mut bytes = Vec::new();
    let mut words = 0;
    for word in v.split_ascii_whitespace() {
        let head = word.get(..RFC2047_PREFIX.len())?;
        if !head.eq_ignore_ascii_case(RFC2047_PREFIX) {
            return None;
        }
        let inner = word[RFC2047_PREFIX.len()..].strip_suffix(RFC2047_SUFFIX)?;
        bytes.extend(b64.decode(inner).ok()?);
        words += 1;
    }
    if words == 0 {
        return None;
    }
    String::from_utf8(bytes).ok()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Upstream errors

/// An upstream call's failure: what the S3 answer said, or why there was none.
struct Failure {
    code: Option<String>,
    status: Option<u16>,
    text: String,
}

/// An error and its sources, `: `-separated, without repeats (the SDK's own rendering adds
/// debug dumps).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn status_of<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl Failure {
    fn of<E>(op: &str, e: &SdkError<E>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = status_of(e);
        let code = e.code().map(str::to_owned);
        let text = match (&code, e.message(), status) {
            (Some(c), Some(m), Some(s)) => format!("{op}: {c}: {m} (HTTP {s})"),
            (Some(c), None, Some(s)) => format!("{op}: {c} (HTTP {s})"),
            (None, _, Some(s)) => format!("{op}: HTTP {s}"),
            (_, _, None) => format!("{op}: {}", error_chain(e)),
        };
        Failure { code, status, text }
    }

    fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }

    /// A 412 of a request sent with `If-None-Match: *` means the key exists.
    fn conditional(self) -> StorageError {
        if self.code() == "PreconditionFailed" || self.status == Some(412) {
            StorageError::AlreadyExists
        } else {
            self.upload()
        }
    }

    /// For requests naming an upload: a bare 404 means the upload is gone.
    fn upload(self) -> StorageError {
        if self.code.is_none() && self.status == Some(404) {
            StorageError::NoSuchUpload
        } else {
            self.into()
        }
    }
}

impl From<Failure> for StorageError {
    fn from(f: Failure) -> StorageError {
        match f.code() {
            "NoSuchKey" => StorageError::NoSuchKey,
            "NoSuchBucket" => StorageError::NoSuchBucket,
            "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" => StorageError::BucketAlreadyExists,
            "BucketNotEmpty" => StorageError::BucketNotEmpty,
            "NoSuchUpload" => StorageError::NoSuchUpload,
            "InvalidPart" => StorageError::InvalidPart,
            "InvalidPartOrder" => StorageError::InvalidPartOrder,
            "EntityTooSmall" => StorageError::EntityTooSmall,
            "BadDigest" => StorageError::BadDigest,
            _ => {
                tracing::debug!("s3 gateway: upstream error: {}", f.text);
                StorageError::Upstream(f.text)
            }
        }
    }
}

fn probe_error<E>(op: &str, e: &SdkError<E>, what: &str) -> GatewayError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = Failure::of(op, e);
    let denied = matches!(
        f.code(),
        "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
    );
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            GatewayError::Unreachable(error_chain(e))
        }
        _ if denied || matches!(f.status, Some(401 | 403)) => GatewayError::Credentials {
            what: what.to_owned(),
            detail: f.text,
        },
        _ => GatewayError::Other(f.text),
    }
}

/// Aborts an upstream multipart upload from a task when dropped with a client still set.
struct AbortOnDrop {
    client: Option<Client>,
    bucket: String,
    key: String,
    id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (bucket, key, id) = (
            std::mem::take(&mut self.bucket),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
        );
        runtime.spawn(async move {
            let r = client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(
                    bucket,
                    key,
                    upload_id = id,
                    "s3 gateway: aborting an abandoned upstream upload failed: {}",
                    error_chain(&e)
                );
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Upload bodies

/// Why an upload body stopped early, recorded by the body (the HTTP client only passes on a
/// stand-in error).
#[derive(Default, Clone)]
struct Verdict(Arc<Mutex<Option<StorageError>>>);

impl Verdict {
    fn set(&self, e: StorageError) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    fn take(&self) -> Option<StorageError> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

fn body_failure(verdict: Option<&Verdict>) -> Option<StorageError> {
    verdict.and_then(Verdict::take)
}

/// The caller's stream as the body of an upstream request of `len` bytes (see the module
/// documentation: the last chunk waits for a clean end of the stream).
fn upload_body(
    body: ByteStream,
    len: u64,
    expected_md5: Option<[u8; 16]>,
    verdict: &Verdict,
) -> SdkStream {
    SdkStream::new(SdkBody::from_body_1_x(UploadBody {
        inner: Mutex::new(body),
        held: None,
        len,
        seen: 0,
        sent: 0,
        md5: expected_md5.map(|m| (Md5::new(), m)),
        verdict: verdict.clone(),
        done: false,
    }))
}

/// See [`upload_body`].
struct UploadBody {
    /// Only ever used through `&mut` (the mutex makes the body `Sync`, as the SDK needs).
    inner: Mutex<ByteStream>,
    /// The latest chunk, sent when the next arrives or the stream ends cleanly.
    held: Option<Bytes>,
    len: u64,
    seen: u64,
    sent: u64,
    md5: Option<(Md5, [u8; 16])>,
    verdict: Verdict,
    done: bool,
}

type FrameResult = Option<std::result::Result<Frame<Bytes>, io::Error>>;

impl UploadBody {
    fn fail(&mut self, e: StorageError) -> Poll<FrameResult> {
        let text = e.to_string();
        self.verdict.set(e);
        self.done = true;
        self.held = None;
        Poll::Ready(Some(Err(io::Error::other(format!(
            "the upload body stopped: {text}"
        )))))
    }

    fn send(&mut self, chunk: Bytes) -> Poll<FrameResult> {
        self.sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl http_body::Body for UploadBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FrameResult> {
        let this = self.get_mut();
        loop {
            if this.done {
                return match this.held.take() {
                    Some(chunk) => this.send(chunk),
                    None => Poll::Ready(None),
                };
            }
            let stream = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
            match stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    this.seen += chunk.len() as u64;
                    if this.seen > this.len {
                        let len = this.len;
                        return this.fail(StorageError::BodyError(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the body is longer than its declared length ({len} bytes)"),
                        )));
                    }
                    if let Some((h, _)) = &mut this.md5 {
                        h.update(&chunk);
                    }
                    if let Some(previous) = this.held.replace(chunk) {
                        return this.send(previous);
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(StorageError::BodyError(e)),
                Poll::Ready(None) => {
                    if this.seen < this.len {
                        let (seen, len) = (this.seen, this.len);
                        return this.fail(StorageError::BodyError(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the body ended after {seen} of its declared {len} bytes"),
                        )));
                    }
                    if let Some((h, want)) = this.md5.take() {
                        if h.finalize()[..] != want[..] {
                            return this.fail(StorageError::BadDigest);
                        }
                    }
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len.saturating_sub(self.sent))
    }
}

/// A body declared empty: read to its end (it may still fail or carry bytes).
async fn drain_empty(mut body: ByteStream, expected_md5: Option<[u8; 16]>) -> Result<()> {
    while let Some(chunk) = body.next().await {
        if !chunk.map_err(StorageError::BodyError)?.is_empty() {
            return Err(StorageError::BodyError(io::Error::new(
                io::ErrorKind::InvalidData,
                "the body is longer than its declared length (0 bytes)",
            )));
        }
    }
    if expected_md5.is_some_and(|m| m[..] != Md5::digest(b"")[..]) {
        return Err(StorageError::BadDigest);
    }
    Ok(())
}

/// Part of a body, as the chunks it arrived in (not copied together).
#[derive(Default)]
struct Piece {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Piece {
    fn into_stream(self) -> ByteStream {
        Box::pin(futures::stream::iter(self.chunks.into_iter().map(Ok)))
    }

    /// As the body of an upstream request (its length is known now).
    fn into_body(self) -> SdkStream {
        if self.len == 0 {
            return SdkStream::from_static(b"");
        }
        let len = self.len;
        upload_body(self.into_stream(), len, None, &Verdict::default())
    }
}

/// Reads a body of unknown length in pieces, counting (`max_size`) and hashing.
struct Reader {
    body: ByteStream,
    /// Read but not yet handed out.
    pending: Option<Bytes>,
    ended: bool,
    size: u64,
    max: Option<u64>,
    md5: Option<Md5>,
}

impl Reader {
    fn new(body: ByteStream, max: Option<u64>, hash: bool) -> Reader {
        Reader {
            body,
            pending: None,
            ended: false,
            size: 0,
            max,
            md5: hash.then(Md5::new),
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.body.next().await {
                None => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(Err(e)) => return Err(StorageError::BodyError(e)),
                Some(Ok(c)) if c.is_empty() => continue,
                Some(Ok(c)) => {
                    self.size += c.len() as u64;
                    if let Some(limit) = self.max.filter(|&m| self.size > m) {
                        return Err(StorageError::EntityTooLarge { limit });
                    }
                    if let Some(h) = &mut self.md5 {
                        h.update(&c);
                    }
                    return Ok(Some(c));
                }
            }
        }
    }

    /// Up to `limit` bytes: fewer only at the end of the body.
    async fn fill(&mut self, limit: usize) -> Result<Piece> {
        let mut piece = Piece::default();
        while piece.len < limit as u64 {
            let Some(mut c) = self.next_chunk().await? else {
                break;
            };
            let room = (limit as u64 - piece.len) as usize;
            if c.len() > room {
                self.pending = Some(c.split_off(room));
            }
            piece.len += c.len() as u64;
            piece.chunks.push(c);
        }
        Ok(piece)
    }

    /// Whether the body has ended (reads at most one more chunk, kept for later).
    async fn at_end(&mut self) -> Result<bool> {
        if self.pending.is_some() {
            return Ok(false);
        }
        match self.next_chunk().await? {
            Some(c) => {
                self.pending = Some(c);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    fn check_md5(&mut self, expected: Option<[u8; 16]>) -> Result<()> {
        if let (Some(want), Some(h)) = (expected, self.md5.take()) {
            if h.finalize()[..] != want[..] {
                return Err(StorageError::BadDigest);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Multipart uploads started here

#[derive(Debug, Clone)]
struct UploadOpts {
    bucket: String,
    key: String,
    headers: StandardHeaders,
    user_meta: BTreeMap<String, String>,
    if_none_match: bool,
    max_size: Option<u64>,
}

/// Upload id -> options, the oldest forgotten beyond [`MAX_TRACKED_UPLOADS`].
#[derive(Default)]
struct TrackedUploads {
    next: u64,
    by_id: HashMap<String, (u64, UploadOpts)>,
    order: BTreeMap<u64, String>,
}

impl TrackedUploads {
    fn insert(&mut self, id: String, opts: UploadOpts) {
        self.remove(&id);
        while self.by_id.len() >= MAX_TRACKED_UPLOADS {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&old);
        }
        self.next += 1;
        self.order.insert(self.next, id.clone());
        self.by_id.insert(id, (self.next, opts));
    }

    fn get(&self, id: &str) -> Option<UploadOpts> {
        self.by_id.get(id).map(|(_, o)| o.clone())
    }

    fn remove(&mut self, id: &str) {
        if let Some((seq, _)) = self.by_id.remove(id) {
            self.order.remove(&seq);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Backend

#[async_trait::async_trait]
impl Backend for S3Backend {
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        let mut buckets = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .list_buckets()
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| StorageError::from(Failure::of("ListBuckets", &e)))?;
            buckets.extend(out.buckets().iter().filter_map(|b| {
                Some(BucketInfo {
                    name: b.name()?.to_owned(),
                    created: time(b.creation_date()),
                })
            }));
            let next = out.continuation_token().map(str::to_owned);
            if next.is_none() || next == token {
                buckets.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(buckets);
            }
            token = next;
        }
        Err(StorageError::Upstream(format!(
            "ListBuckets: more than {MAX_PAGES} pages"
        )))
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        // AWS answers 200 to a CreateBucket of a bucket one already owns in us-east-1. A 403
        // (someone else's bucket, on AWS) is left to CreateBucket to name.
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Err(StorageError::BucketAlreadyExists),
            Err(e) if matches!(status_of(&e), Some(404 | 403)) => {}
            Err(e) => return Err(Failure::of("HeadBucket", &e).into()),
        }
        let mut req = self.client.create_bucket().bucket(bucket);
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::of("CreateBucket", &e).into())
    }

    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(BucketInfo {
                name: bucket.to_owned(),
                created: UNIX_EPOCH,
            }),
            Err(e) if status_of(&e) == Some(404) => Err(StorageError::NoSuchBucket),
            Err(e) => Err(Failure::of("HeadBucket", &e).into()),
        }
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        // As the model: unfinished uploads keep a bucket (AWS would drop them with it).
        match self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .max_uploads(1)
            .send()
            .await
        {
            Ok(out) if !out.uploads().is_empty() => return Err(StorageError::BucketNotEmpty),
            Ok(_) => {}
            Err(e) => {
                let f = Failure::of("ListMultipartUploads", &e);
                if f.code() != "NotImplemented" {
                    return Err(f.into());
                }
            }
        }
        self.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::of("DeleteBucket", &e).into())
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_key(key)?;
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        let (size, etag) = match self.store(bucket, key, body, &opts).await {
            Ok(stored) => stored,
            Err(e) => return Err(self.bucket_first(bucket, e).await),
        };
        Ok(ObjectMeta {
            key: key.to_owned(),
            size,
            etag,
            last_modified: SystemTime::now(),
            headers: opts.headers,
            user_meta: opts.user_meta,
        })
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectMeta, ByteStream)> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            self.require_bucket(bucket).await?;
            return Err(StorageError::NoSuchKey);
        }
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            return Ok((self.head_object(bucket, key).await?, empty_stream()));
        }
        let mut req = self.client.get_object().bucket(bucket).key(key);
        if let Some(r) = &range {
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        match req.send().await {
            Ok(out) => {
                let size = if range.is_some() && out.content_range().is_some() {
                    range_total(out.content_range())?
                } else {
                    content_length_of(out.content_length(), "GetObject")?
                };
                let meta = object_meta!(out, key, size);
                Ok((meta, download(out.body)))
            }
            // The object shrank below the range since the caller looked.
            Err(e) if status_of(&e) == Some(416) => {
                Ok((self.head_object(bucket, key).await?, empty_stream()))
            }
            Err(e) => match StorageError::from(Failure::of("GetObject", &e)) {
                // Not every server looks for the bucket first (s3s-fs does not).
                StorageError::NoSuchKey => {
                    self.require_bucket(bucket).await?;
                    Err(StorageError::NoSuchKey)
                }
                other => Err(other),
            },
        }
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            self.require_bucket(bucket).await?;
            return Err(StorageError::NoSuchKey);
        }
        self.head_raw(bucket, key).await
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            return self.require_bucket(bucket).await;
        }
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::of("DeleteObject", &e).into())
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
        for attempt in 1..=COPY_ATTEMPTS {
            let src = self.head_object(src_bucket, src_key).await?;
            if bad_bucket(dst_bucket) {
                return Err(StorageError::NoSuchBucket);
            }
            let (headers, user_meta, replace) = match &metadata {
                CopyMetadata::Copy => (
                    src.headers.clone(),
                    src.user_meta.clone(),
                    // S3 refuses to copy an object onto itself unchanged: the same metadata,
                    // replaced, is the same result.
                    src_bucket == dst_bucket && src_key == dst_key,
                ),
                CopyMetadata::Replace(o) => (o.headers.clone(), o.user_meta.clone(), true),
            };
            let mut req = self
                .client
                .copy_object()
                .copy_source(format!(
                    "{src_bucket}/{}",
                    uri_encode(src_key.as_bytes(), false)
                ))
                .copy_source_if_match(format!("\"{}\"", src.etag))
                .bucket(dst_bucket)
                .key(dst_key);
            let raw = if replace {
                req = req.metadata_directive(MetadataDirective::Replace);
                req = with_headers!(req, &headers, &user_meta);
                RawHeaders::of(&headers)?
            } else {
                RawHeaders::default()
            };
            let result = req
                .customize()
                .mutate_request(move |r| raw.apply(r))
                .send()
                .await;
            match result {
                Ok(out) => {
                    let etag = out
                        .copy_object_result()
                        .and_then(|r| r.e_tag())
                        .map_or_else(|| src.etag.clone(), |e| unquote(Some(e)));
                    return Ok(ObjectMeta {
                        key: dst_key.to_owned(),
                        size: src.size,
                        etag,
                        last_modified: SystemTime::now(),
                        headers,
                        user_meta,
                    });
                }
                Err(e) => {
                    let f = Failure::of("CopyObject", &e);
                    // The source changed between its HEAD and the copy: look again.
                    if (f.code() == "PreconditionFailed" || f.status == Some(412))
                        && attempt < COPY_ATTEMPTS
                    {
                        continue;
                    }
                    return Err(f.into());
                }
            }
        }
        Err(StorageError::Upstream(
            "CopyObject: the source kept changing".into(),
        ))
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        // C0 control characters cannot travel in the XML answer (which echoes the request);
        // no key contains one (validate_key), so none is needed: a prefix with one matches
        // nothing, a delimiter with one never groups, and keys after a marker with one are
        // exactly the keys after its part before it.
        if has_c0(&query.prefix) {
            self.require_bucket(bucket).await?;
            return Ok(ListPage::default());
        }
        let delimiter = query
            .delimiter
            .as_deref()
            .filter(|d| !d.is_empty() && !has_c0(d));
        let after = query.after.as_deref();
        let start_after = upstream_start_after(query, delimiter);
        let req = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix(Some(query.prefix.clone()).filter(|p| !p.is_empty()))
            .set_delimiter(delimiter.map(str::to_owned))
            .set_start_after(start_after)
            // Asked for none: one entry tells whether any follow (the model's page).
            .max_keys(query.max_keys.clamp(1, 1000) as i32);
        let out = req
            .send()
            .await
            .map_err(|e| StorageError::from(Failure::of("ListObjectsV2", &e)))?;
        let not_before_after = |k: &str| after.is_none_or(|a| k > a);
        // What the listing says; headers and user metadata come from a HEAD of each.
        let listed: Vec<ObjectMeta> = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    etag: unquote(o.e_tag()),
                    last_modified: time(o.last_modified()),
                    headers: StandardHeaders::default(),
                    user_meta: BTreeMap::new(),
                })
            })
            .filter(|o| not_before_after(&o.key))
            .collect();
        let prefixes: Vec<String> = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .filter(|p| not_before_after(p))
            .collect();
        let mut page = ListPage::default();
        if query.max_keys == 0 {
            page.truncated = !listed.is_empty() || !prefixes.is_empty();
            return Ok(page);
        }
        page.truncated = out.is_truncated() == Some(true);
        page.next_after = listed
            .last()
            .map(|o| o.key.clone())
            .into_iter()
            .chain(prefixes.last().cloned())
            .max();
        if page.truncated && page.next_after.is_none() {
            return Err(StorageError::Upstream(
                "ListObjectsV2: a truncated page without entries".into(),
            ));
        }
        if !page.truncated {
            page.next_after = None;
        }
        page.common_prefixes = prefixes;
        if !query.metadata {
            page.objects = listed;
            return Ok(page);
        }
        // Headers and user metadata need one HEAD each; an object deleted meanwhile is left
        // out, a key the gateway would never send is reported from the listing alone.
        let heads = futures::stream::iter(listed.into_iter().map(|listed| async move {
            if validate_key(&listed.key).is_err() {
                return Ok(Some(listed));
            }
            match self.head_raw(bucket, &listed.key).await {
                Ok(meta) => Ok(Some(meta)),
                Err(StorageError::NoSuchKey) => Ok(None),
                Err(e) => Err(e),
            }
        }))
        .buffered(LIST_HEADS);
        let metas: Vec<Option<ObjectMeta>> = heads.try_collect().await?;
        page.objects = metas.into_iter().flatten().collect();
        Ok(page)
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<String> {
        validate_key(key)?;
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        let id = self.start_upload(bucket, key, &opts).await?;
        self.tracked().insert(
            id.clone(),
            UploadOpts {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                headers: opts.headers,
                user_meta: opts.user_meta,
                if_none_match: opts.if_none_match,
                max_size: opts.max_size,
            },
        );
        Ok(id)
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
        self.upload_part_with_length(
            bucket,
            key,
            upload_id,
            part_number,
            body,
            expected_md5,
            None,
        )
        .await
    }

    async fn upload_part_with_length(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        expected_md5: Option<[u8; 16]>,
        content_length: Option<u64>,
    ) -> Result<PartInfo> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidPart);
        }
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            return Err(StorageError::NoSuchUpload);
        }
        let max_size = match self.known_upload(bucket, key, upload_id)? {
            Some(u) => u.max_size,
            // Started elsewhere or forgotten: make sure it exists before reading the body.
            None => {
                self.require_upload(bucket, key, upload_id).await?;
                None
            }
        };
        let (size, etag) = match content_length {
            Some(len) => {
                if let Some(limit) = max_size.filter(|&m| len > m) {
                    return Err(StorageError::EntityTooLarge { limit });
                }
                let etag = self
                    .send_part(bucket, key, upload_id, part_number, body, len, expected_md5)
                    .await?;
                (len, etag)
            }
            None => {
                let mut reader = Reader::new(body, max_size, expected_md5.is_some());
                let piece = reader.fill(BUFFER).await?;
                if !reader.at_end().await? {
                    return Err(StorageError::BodyError(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "a part without Content-Length is limited to {BUFFER} bytes by the \
                             s3 gateway"
                        ),
                    )));
                }
                reader.check_md5(expected_md5)?;
                let len = piece.len;
                let etag = self
                    .send_part(
                        bucket,
                        key,
                        upload_id,
                        part_number,
                        piece.into_stream(),
                        len,
                        None,
                    )
                    .await?;
                (len, etag)
            }
        };
        Ok(PartInfo {
            part_number,
            etag,
            size,
            last_modified: SystemTime::now(),
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            return Err(StorageError::NoSuchUpload);
        }
        let known = self.known_upload(bucket, key, upload_id)?;
        let stored = self.all_parts(bucket, key, upload_id).await?;
        if parts.is_empty() {
            return Err(StorageError::InvalidPart);
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StorageError::InvalidPartOrder);
        }
        let stored: HashMap<u32, &PartInfo> = stored.iter().map(|p| (p.part_number, p)).collect();
        let mut total = 0u64;
        for (i, (n, etag)) in parts.iter().enumerate() {
            let p = stored.get(n).ok_or(StorageError::InvalidPart)?;
            // Some servers (s3s-fs) list parts without their ETag: the upstream checks then.
            if !p.etag.is_empty() && p.etag != etag.trim_matches('"') {
                return Err(StorageError::InvalidPart);
            }
            if i + 1 < parts.len() && p.size < MIN_PART_SIZE {
                return Err(StorageError::EntityTooSmall);
            }
            total = total.saturating_add(p.size);
        }
        if let Some(limit) = known.as_ref().and_then(|u| u.max_size) {
            if total > limit {
                return Err(StorageError::EntityTooLarge { limit });
            }
        }
        let if_none_match = known.as_ref().is_some_and(|u| u.if_none_match);
        if if_none_match && self.exists(bucket, key).await? {
            return Err(StorageError::AlreadyExists);
        }
        let etag = self
            .complete_upstream(bucket, key, upload_id, parts, if_none_match)
            .await?;
        self.tracked().remove(upload_id);
        match known {
            Some(u) => Ok(ObjectMeta {
                key: key.to_owned(),
                size: total,
                etag,
                last_modified: SystemTime::now(),
                headers: u.headers,
                user_meta: u.user_meta,
            }),
            None => self.head_raw(bucket, key).await,
        }
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            return Err(StorageError::NoSuchUpload);
        }
        if self.known_upload(bucket, key, upload_id)?.is_none() {
            // Not every server says NoSuchUpload to an abort of an unknown upload.
            self.require_upload(bucket, key, upload_id).await?;
        }
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| Failure::of("AbortMultipartUpload", &e).upload())?;
        self.tracked().remove(upload_id);
        Ok(())
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if validate_key(key).is_err() {
            return Err(StorageError::NoSuchUpload);
        }
        self.known_upload(bucket, key, upload_id)?;
        self.all_parts(bucket, key, upload_id).await
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>> {
        if bad_bucket(bucket) {
            return Err(StorageError::NoSuchBucket);
        }
        if has_c0(prefix) {
            self.require_bucket(bucket).await?;
            return Ok(Vec::new());
        }
        let mut uploads = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .set_prefix(Some(prefix.to_owned()).filter(|p| !p.is_empty()))
                .set_key_marker(markers.0.clone())
                .set_upload_id_marker(markers.1.clone())
                .send()
                .await
                .map_err(|e| StorageError::from(Failure::of("ListMultipartUploads", &e)))?;
            uploads.extend(out.uploads().iter().filter_map(|u| {
                Some(UploadInfo {
                    key: u.key()?.to_owned(),
                    upload_id: u.upload_id()?.to_owned(),
                    initiated: time(u.initiated()),
                })
            }));
            let next = (
                out.next_key_marker().map(str::to_owned),
                out.next_upload_id_marker().map(str::to_owned),
            );
            if out.is_truncated() != Some(true) || next.0.is_none() || next == markers {
                uploads.retain(|u| u.key.starts_with(prefix));
                uploads.sort_by(|a, b| {
                    (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id))
                });
                uploads.dedup_by(|a, b| a.upload_id == b.upload_id && a.key == b.key);
                return Ok(uploads);
            }
            markers = next;
        }
        Err(StorageError::Upstream(format!(
            "ListMultipartUploads: more than {MAX_PAGES} pages"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_header_safe_form() {
        let mut meta = BTreeMap::new();
        for (k, v) in [
            ("owner", "u1"),
            ("名字", "值 \"quoted\""),
            ("Upper", "x"),
            ("empty", ""),
            ("spaces", " padded "),
            ("looks-encoded", "=?UTF-8?B?eA==?="),
            ("looks-ours", "ember-b64:eA=="),
            ("ember-hex-6b", "literal prefix"),
            ("", "empty name"),
            ("qetag", "FgAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ("tab", "a\tb"),
        ] {
            meta.insert(k.to_owned(), v.to_owned());
        }
        let wire = encode_meta(&meta);
        for (name, value) in &wire {
            assert!(
                is_plain_name(name) || name.starts_with(META_NAME_PREFIX),
                "{name}"
            );
            assert!(
                axum::http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()).is_ok(),
                "{name}"
            );
            assert!(
                value
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) || b == b' ')
                    && !value.starts_with(' ')
                    && !value.ends_with(' ')
                    && !value.is_empty(),
                "{value:?}"
            );
        }
        assert_eq!(wire["owner"], "u1");
        assert_eq!(wire["qetag"], "FgAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(decode_meta(Some(&wire)), meta);
        // Foreign entries pass unchanged, RFC 2047 values from elsewhere are decoded.
        let mut foreign = HashMap::new();
        foreign.insert("ember-hex-zz".to_owned(), "=?utf-8?b?w6k=?=".to_owned());
        foreign.insert("plain".to_owned(), "=?UTF-8?B?not base64?=".to_owned());
        // s3s splits long values into several encoded words, even inside a character.
        foreign.insert(
            "words".to_owned(),
            "=?UTF-8?B?5paH5Lu2?= =?UTF-8?B?5Lu2?=\t=?UTF-8?B?4g==?= =?UTF-8?B?nJM=?=".to_owned(),
        );
        foreign.insert("mixed".to_owned(), "=?UTF-8?B?5paH?= tail".to_owned());
        let got = decode_meta(Some(&foreign));
        assert_eq!(got["ember-hex-zz"], "é");
        assert_eq!(got["plain"], "=?UTF-8?B?not base64?=");
        assert_eq!(got["words"], "文件件✓");
        assert_eq!(got["mixed"], "=?UTF-8?B?5paH?= tail");
    }

    #[test]
    fn listings_continue_past_a_common_prefix() {
        let q = |prefix: &str, after: Option<&str>| ListQuery {
            prefix: prefix.into(),
            delimiter: None,
            after: after.map(Into::into),
            max_keys: 10,
            metadata: true,
        };
        assert_eq!(upstream_start_after(&q("", None), Some("/")), None);
        assert_eq!(
            upstream_start_after(&q("", Some("b")), Some("/")).as_deref(),
            Some("b")
        );
        for after in ["a/", "a/1", "a/b/c"] {
            assert_eq!(
                upstream_start_after(&q("", Some(after)), Some("/")).as_deref(),
                Some("a/\u{10FFFF}"),
                "{after}"
            );
        }
        assert_eq!(
            upstream_start_after(&q("a/", Some("a/b/c")), Some("/")).as_deref(),
            Some("a/b/\u{10FFFF}")
        );
        // Outside the prefix, or no delimiter: as given.
        assert_eq!(
            upstream_start_after(&q("x/", Some("a/1")), Some("/")).as_deref(),
            Some("a/1")
        );
        assert_eq!(
            upstream_start_after(&q("", Some("a/1")), None).as_deref(),
            Some("a/1")
        );
        // Cut at a control character (no key has one); nothing left: from the start.
        assert_eq!(
            upstream_start_after(&q("", Some("ab\0c/d")), Some("/")).as_deref(),
            Some("ab")
        );
        assert_eq!(upstream_start_after(&q("", Some("\n")), None), None);
    }

    #[test]
    fn tracked_uploads_forget_the_oldest() {
        let mut t = TrackedUploads::default();
        let opts = |k: &str| UploadOpts {
            bucket: "b".into(),
            key: k.into(),
            headers: StandardHeaders::default(),
            user_meta: BTreeMap::new(),
            if_none_match: false,
            max_size: None,
        };
        for i in 0..MAX_TRACKED_UPLOADS + 5 {
            t.insert(format!("id{i}"), opts("k"));
        }
        assert_eq!(t.by_id.len(), MAX_TRACKED_UPLOADS);
        assert_eq!(t.order.len(), MAX_TRACKED_UPLOADS);
        assert!(t.get("id0").is_none() && t.get("id4").is_none());
        assert!(t.get("id5").is_some());
        t.remove("id5");
        assert!(t.get("id5").is_none());
        assert_eq!(t.order.len(), MAX_TRACKED_UPLOADS - 1);
    }

    fn chunks(parts: Vec<std::io::Result<&'static [u8]>>) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts.into_iter().map(|p| p.map(Bytes::from_static)),
        ))
    }

    async fn drive(body: UploadBody) -> (Vec<u8>, Option<String>) {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        loop {
            match std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await {
                Some(Ok(f)) => out.extend_from_slice(f.data_ref().expect("data")),
                Some(Err(e)) => return (out, Some(e.to_string())),
                None => return (out, None),
            }
        }
    }

    fn body(stream: ByteStream, len: u64, md5: Option<[u8; 16]>, v: &Verdict) -> UploadBody {
        UploadBody {
            inner: Mutex::new(stream),
            held: None,
            len,
            seen: 0,
            sent: 0,
            md5: md5.map(|m| (Md5::new(), m)),
            verdict: v.clone(),
            done: false,
        }
    }

    #[tokio::test]
    async fn upload_body_holds_the_last_chunk_until_a_clean_end() {
        // A verdict at the end of the stream: the last chunk never goes out.
        let v = Verdict::default();
        let failing = chunks(vec![
            Ok(b"abc"),
            Ok(b"def"),
            Err(io::Error::other("bad signature")),
        ]);
        let (sent, err) = drive(body(failing, 6, None, &v)).await;
        assert_eq!(sent, b"abc");
        assert!(err.is_some());
        assert!(matches!(v.take(), Some(StorageError::BodyError(_))));

        // Clean: everything, in order.
        let v = Verdict::default();
        let md5: [u8; 16] = Md5::digest(b"abcdef").into();
        let (sent, err) = drive(body(
            chunks(vec![Ok(b"abc"), Ok(b""), Ok(b"def")]),
            6,
            Some(md5),
            &v,
        ))
        .await;
        assert_eq!((sent.as_slice(), err), (&b"abcdef"[..], None));
        assert!(v.take().is_none());

        // Wrong digest, too long, too short.
        let v = Verdict::default();
        let (sent, _) = drive(body(chunks(vec![Ok(b"abcdef")]), 6, Some([0; 16]), &v)).await;
        assert!(sent.is_empty());
        assert!(matches!(v.take(), Some(StorageError::BadDigest)));
        let v = Verdict::default();
        drive(body(chunks(vec![Ok(b"abc"), Ok(b"defg")]), 6, None, &v)).await;
        assert!(matches!(v.take(), Some(StorageError::BodyError(_))));
        let v = Verdict::default();
        let (sent, _) = drive(body(chunks(vec![Ok(b"abc")]), 6, None, &v)).await;
        assert!(sent.is_empty());
        assert!(matches!(v.take(), Some(StorageError::BodyError(_))));
    }

    #[tokio::test]
    async fn reader_splits_at_the_buffer_and_enforces_limits() {
        let mut r = Reader::new(
            chunks(vec![Ok(b"abcd"), Ok(b"efgh"), Ok(b"ij")]),
            None,
            true,
        );
        let mut fill = async |n| {
            let piece = r.fill(n).await.unwrap();
            let len = piece.len;
            let bytes: Vec<u8> = piece.chunks.concat();
            assert_eq!(len, bytes.len() as u64);
            bytes
        };
        assert_eq!(fill(3).await, b"abc");
        assert_eq!(fill(6).await, b"defghi");
        assert_eq!(fill(6).await, b"j");
        assert!(fill(6).await.is_empty());
        assert!(r.at_end().await.unwrap());
        assert_eq!(r.size, 10);
        let md5: [u8; 16] = Md5::digest(b"abcdefghij").into();
        assert!(r.check_md5(Some(md5)).is_ok());

        let mut r = Reader::new(chunks(vec![Ok(b"abcd"), Ok(b"efgh")]), Some(5), false);
        assert!(matches!(
            r.fill(100).await,
            Err(StorageError::EntityTooLarge { limit: 5 })
        ));
    }
}
