//! Where objects live: the [`Backend`] trait every front end (S3, Qiniu, bucket domains)
//! calls, and its implementations — [`memory`] (the reference model, for tests), [`fs`]
//! (local disk, the embedded default) and [`s3`] (a gateway to an upstream S3/MinIO via
//! aws-sdk-s3).
//!
//! Bodies are streams both ways, so no object is ever held in memory whole. Keys and bucket
//! names are validated here ([`validate_bucket`], [`validate_key`]) before any backend sees
//! them; every backend returns the same [`StorageError`]s, which the front ends map to their
//! dialect's error codes.

pub mod fs;
pub mod memory;
pub mod s3;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

/// A body: chunks of bytes, or the error that cut it short.
pub type ByteStream =
    Pin<Box<dyn Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send>>;

/// Longest object key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Smallest part of a multipart upload, except the last (S3's limit).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Highest part number (S3's limit).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// Why a storage operation failed. Front ends map these to S3 / Qiniu errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the bucket already exists")]
    BucketAlreadyExists,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    #[error("the multipart upload does not exist")]
    NoSuchUpload,
    #[error("a part is missing or its ETag does not match")]
    InvalidPart,
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    #[error("a part other than the last is smaller than 5 MiB")]
    EntityTooSmall,
    #[error("the object is larger than allowed ({limit} bytes)")]
    EntityTooLarge { limit: u64 },
    #[error("the body does not match the digest sent with it")]
    BadDigest,
    /// `if_none_match` was set and the key exists (S3: 412; Qiniu insertOnly: 614).
    #[error("the object already exists")]
    AlreadyExists,
    /// The disk is full (S3 has no code for it: 507 Insufficient Storage).
    #[error("no space left on the storage device")]
    InsufficientStorage,
    /// The body stream failed (client went away, bad chunk encoding): nothing was stored.
    #[error("the request body failed: {0}")]
    BodyError(std::io::Error),
    #[error("storage I/O error: {0}")]
    Io(std::io::Error),
    /// The upstream S3 server answered with an error the gateway passes on.
    #[error("upstream: {0}")]
    Upstream(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Object metadata: what HEAD returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Without quotes: hex MD5 for a single PUT, `<hex md5 of part md5s>-<parts>` for a
    /// multipart upload.
    pub etag: String,
    pub last_modified: SystemTime,
    /// Content-Type, Content-Disposition, Cache-Control, ... as given at upload.
    pub headers: StandardHeaders,
    /// `x-amz-meta-*` (name without the prefix, lowercase) / Qiniu `x-qn-meta-*`.
    pub user_meta: BTreeMap<String, String>,
}

/// The standard headers stored with an object and served back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandardHeaders {
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub expires: Option<String>,
}

/// How to store a new object.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub headers: StandardHeaders,
    pub user_meta: BTreeMap<String, String>,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists, atomically
    /// (`If-None-Match: *`, Qiniu `insertOnly`).
    pub if_none_match: bool,
    /// Content-MD5 sent by the client: checked, [`StorageError::BadDigest`] on mismatch.
    pub expected_md5: Option<[u8; 16]>,
    /// Refuse bodies longer than this ([`StorageError::EntityTooLarge`]); nothing stored.
    pub max_size: Option<u64>,
    /// The body's length, when the caller knows it (S3 `Content-Length` or
    /// `x-amz-decoded-content-length`, a staged Qiniu upload). The `s3` gateway streams a
    /// body of known length straight upstream (and refuses one of another length with
    /// [`StorageError::BodyError`]); the other backends ignore it.
    pub content_length: Option<u64>,
}

/// What to keep when copying.
#[derive(Debug, Clone)]
pub enum CopyMetadata {
    /// The source's headers and user metadata.
    Copy,
    /// These instead.
    Replace(Box<PutOptions>),
}

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created: SystemTime,
}

/// A ListObjects request, after the front end decoded it (v1 marker and v2
/// continuation-token/start-after both become `after`).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: String,
    /// Group keys by the part after `prefix` up to this delimiter into common prefixes.
    pub delimiter: Option<String>,
    /// List keys (and common prefixes) strictly after this one.
    pub after: Option<String>,
    /// At most this many keys plus common prefixes (1..=1000).
    pub max_keys: usize,
    /// Fill each listed object's `headers` and `user_meta` (the Qiniu listing needs the
    /// stored qetag and type). When false they may come back empty: S3 listings need neither,
    /// and the gateway backend would otherwise HEAD every listed object.
    pub metadata: bool,
}

/// One page of a listing, keys in UTF-8 byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// More follow; continue after [`ListPage::next_after`].
    pub truncated: bool,
    /// The last key or common prefix returned, when truncated.
    pub next_after: Option<String>,
}

/// A stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    /// Hex MD5 of the part, without quotes.
    pub etag: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// The object store. Implementations are safe to call concurrently; a write is visible
/// only once complete (never partially), and an acknowledged write survives a crash.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>>;
    /// [`StorageError::BucketAlreadyExists`] if it exists.
    async fn create_bucket(&self, bucket: &str) -> Result<()>;
    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo>;
    /// [`StorageError::BucketNotEmpty`] while objects or uploads remain.
    async fn delete_bucket(&self, bucket: &str) -> Result<()>;

    /// Stores `body` under `key`, replacing any old object atomically.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta>;
    /// The object's metadata and its bytes `range` (inclusive start, exclusive end, already
    /// checked against the size by the caller), or all of it.
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<(ObjectMeta, ByteStream)>;
    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta>;
    /// Deleting a missing key succeeds (S3 semantics).
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<()>;
    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        metadata: CopyMetadata,
    ) -> Result<ObjectMeta>;
    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage>;

    /// Starts a multipart upload; returns its id.
    async fn create_multipart(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<String>;
    /// Stores one part (replacing an earlier part with the same number).
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        expected_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo>;
    /// [`Backend::upload_part`] with the body's length when the caller knows it (see
    /// [`PutOptions::content_length`]): the `s3` gateway streams such a part straight
    /// upstream. The default ignores the length.
    #[allow(clippy::too_many_arguments)]
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
        let _ = content_length;
        self.upload_part(bucket, key, upload_id, part_number, body, expected_md5)
            .await
    }
    /// Joins the listed parts (ascending numbers, ETags as returned by `upload_part`) into
    /// the object, atomically; the upload is gone afterwards.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta>;
    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()>;
    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>>;
    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>>;
}

/// S3's bucket naming rules (the same check `ember check-config` applies to configured
/// bucket names: `ember_common::config::bucket_name_problem`).
pub fn validate_bucket(name: &str) -> Result<()> {
    ember_common::config::bucket_name_problem(name)
        .map_err(|why| StorageError::InvalidBucketName(format!("{name:?}: {why}")))
}

/// Object keys: 1–1024 bytes of UTF-8. S3 allows almost anything; Ember refuses what no
/// client needs and what could confuse a file system: control characters (NUL, newline,
/// ...) and `.`/`..` path segments (which a file-system backend could otherwise resolve
/// outside the bucket).
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(StorageError::InvalidKey(why.to_owned()));
    if key.is_empty() {
        return bad("the key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("the key is longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("the key contains a control character (NUL, newline, ...)");
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return bad("the key contains a \".\" or \"..\" path segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.v2", "0media", "a".repeat(63).as_str()] {
            assert!(validate_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Media",
            "-abc",
            "abc-",
            "a..b",
            "a.-b",
            "192.168.1.1",
            "a_b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        for ok in [
            "a",
            "photos/2026/11/cat.jpg",
            "with space and ünïcødé/文件.png",
            "a//b",
            "dir/",
            ".hidden",
            "...",
            "a..b",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            "a/./b",
            ".",
            "a/..",
            "nul\0byte",
            "new\nline",
            &"k".repeat(1025),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
