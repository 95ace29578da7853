//! Upload and download grants: what the messaging core hands its clients so they can move
//! media bytes straight to and from the object store, without the app's servers in the path.
//!
//! A [`Grants`] holds one access key of `[storage] credentials` and the public addresses of
//! the store, and signs, with pure functions and no I/O:
//! - a presigned S3 `PUT` URL ([`Grants::presigned_put`]) whose signature covers the exact
//!   `Content-Length` and the `Content-Type` (and `If-None-Match: *` for insert-only), so a
//!   client can upload only the object it asked for: S3 presigned URLs cannot express a
//!   maximum, so the grant is for the declared size (the way S3 itself enforces it);
//! - a Qiniu upload token ([`Grants::qiniu_upload`]) whose put policy pins the key (`scope`
//!   `bucket:key`), `deadline`, `fsizeMin`/`fsizeLimit` (the declared size), `mimeLimit`
//!   and `insertOnly`, with the upload host;
//! - the download URL of an object ([`Grants::download_url`]): on the bucket's download
//!   domain when `[storage] bucket_domains` has one (Qiniu-style `e`/`token` signature for
//!   private buckets), else path-style on the public URL (SigV4-presigned for private
//!   buckets); public buckets get plain, non-expiring URLs.
//!
//! The messaging core calls [`Grants`] in-process when storage runs in the same `ember up`
//! (or anywhere it knows the access key), and over HTTP otherwise: [`router`] serves
//! `POST /_ember/v1/grants/upload` and `POST /_ember/v1/grants/download` (JSON in and out;
//! see `docs/STORAGE-GRANTS.md`), authenticated with SigV4 header auth by one of the
//! configured access keys, and signs the grant with that same key (a read-only key gets
//! download URLs only). `_ember` can never be a bucket name, so the paths do not collide
//! with S3.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ember_common::config::{public_url_problem, StorageConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{validate_bucket, validate_key};
use crate::qiniu::api::now_unix;
use crate::qiniu::token::{sign_download_url, Credentials, PutPolicy};
use crate::s3::api::header_list;
use crate::s3::sigv4::{
    self, uri_encode, AuthMethod, Authenticated, Credential, PayloadMode, PresignRequest,
    RequestView, SigningCredentials, VerifyConfig,
};
use crate::time::UtcDateTime;

/// Path prefix of the HTTP grant API (`_` makes it an impossible bucket name).
pub const HTTP_PREFIX: &str = "/_ember/v1/grants/";
/// Longest validity of a grant: S3's limit on presigned URLs (7 days).
pub const MAX_EXPIRES_SECS: u64 = 604_800;
/// Validity when a request to the HTTP API names none.
pub const DEFAULT_EXPIRES_SECS: u64 = 900;
/// Largest JSON request body of the HTTP API.
const MAX_REQUEST_BODY: usize = 16 * 1024;
/// Longest `Content-Type` accepted in a grant.
const MAX_CONTENT_TYPE: usize = 255;

/// Why a grant cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the access key {0:?} is not in [storage] credentials")]
    UnknownAccessKey(String),
    #[error("[storage] credentials is empty: nothing to sign grants with")]
    NoCredentials,
    #[error("the access key is read-only: it cannot grant uploads")]
    ReadOnly,
    #[error("invalid bucket: {0}")]
    InvalidBucket(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("size {size} is larger than the store's limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("expiry must be 1..={MAX_EXPIRES_SECS} seconds, got {0}")]
    InvalidExpiry(u64),
    #[error("invalid content type {0:?}: expected type/subtype in visible ASCII")]
    InvalidContentType(String),
    #[error("invalid public URL: {0}")]
    InvalidPublicUrl(String),
}

/// What a client wants to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSpec<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// Pinned in the grant when set (the client must send exactly this).
    pub content_type: Option<&'a str>,
    /// The exact size in bytes the client declared; the upload must match it.
    pub size: u64,
    pub expires_secs: u64,
    /// Refuse to replace an existing object (S3 `If-None-Match: *`, Qiniu `insertOnly`).
    pub insert_only: bool,
}

/// A presigned S3 upload: `PUT url` with exactly these headers and a body of the declared size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresignedPut {
    pub method: &'static str,
    pub url: String,
    /// Headers the client must send (signed): `Content-Length`, `Content-Type`, ...
    pub headers: BTreeMap<String, String>,
    /// Unix time after which the URL is refused.
    pub expires_at: u64,
}

/// A Qiniu upload: form or resumable upload to `upload_url` with `token` for `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QiniuUpload {
    pub upload_url: String,
    pub token: String,
    pub key: String,
    pub expires_at: u64,
}

/// Where to download an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadUrl {
    pub url: String,
    /// Unix time the signature expires; `None` for a public bucket's plain URL.
    pub expires_at: Option<u64>,
}

/// Signs grants with one access key (see the module documentation).
#[derive(Clone)]
pub struct Grants {
    /// `http(s)://host[:port]`, no trailing slash.
    public_url: String,
    region: String,
    access_key: String,
    secret_key: String,
    read_only: bool,
    /// Bucket -> `https://domain` of its download domain.
    domains: BTreeMap<String, String>,
    public_buckets: BTreeSet<String>,
    max_object_size: u64,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("public_url", &self.public_url)
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// `http://addr`, with an unspecified address replaced by loopback.
fn url_of_listener(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// Scheme, host as clients send it (default port dropped), of a `public_url` (the rule is
/// `[storage] public_url`'s, [`public_url_problem`]; a trailing `/` is already trimmed).
fn split_public_url(url: &str) -> Result<(&str, &str), GrantError> {
    let bad = || GrantError::InvalidPublicUrl(url.to_owned());
    if url.is_empty() || public_url_problem(url).is_err() {
        return Err(bad());
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let host = match scheme {
        "https" => rest.strip_suffix(":443").unwrap_or(rest),
        _ => rest.strip_suffix(":80").unwrap_or(rest),
    };
    Ok((scheme, host))
}

fn check_content_type(ct: &str) -> Result<(), GrantError> {
    let ok = ct.len() <= MAX_CONTENT_TYPE
        && ct.contains('/')
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !ct.starts_with(' ');
    if ok {
        Ok(())
    } else {
        Err(GrantError::InvalidContentType(ct.to_owned()))
    }
}

fn check_expiry(secs: u64) -> Result<(), GrantError> {
    if (1..=MAX_EXPIRES_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(GrantError::InvalidExpiry(secs))
    }
}

impl Grants {
    /// Grants signed with `access_key` (the first configured key when `None`). The public URL
    /// is `[storage] public_url`, else `http://` + `listener` (the address the store is bound
    /// to; an unspecified IP becomes loopback).
    pub fn from_config(
        cfg: &StorageConfig,
        access_key: Option<&str>,
        listener: Option<SocketAddr>,
    ) -> Result<Grants, GrantError> {
        let (ak, sk) = match access_key {
            Some(ak) => cfg
                .credentials
                .get_key_value(ak)
                .ok_or_else(|| GrantError::UnknownAccessKey(ak.to_owned()))?,
            None => cfg
                .credentials
                .iter()
                .next()
                .ok_or(GrantError::NoCredentials)?,
        };
        let public_url = if cfg.public_url.is_empty() {
            let addr = listener
                .or_else(|| cfg.listen.first().copied())
                .ok_or_else(|| GrantError::InvalidPublicUrl(String::new()))?;
            url_of_listener(addr)
        } else {
            cfg.public_url.trim_end_matches('/').to_owned()
        };
        split_public_url(&public_url)?;
        let https = match cfg.download_scheme.as_str() {
            "https" => true,
            "http" => false,
            _ => !cfg.tls_listen.is_empty(),
        };
        let scheme = if https { "https" } else { "http" };
        let mut domains = BTreeMap::new();
        for (domain, bucket) in &cfg.bucket_domains {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domains
                .entry(bucket.clone())
                .or_insert_with(|| format!("{scheme}://{domain}"));
        }
        Ok(Grants {
            public_url,
            region: cfg.region.clone(),
            access_key: ak.clone(),
            secret_key: sk.clone(),
            read_only: cfg.read_only_keys.iter().any(|k| k == ak),
            domains,
            public_buckets: cfg.public_buckets.iter().cloned().collect(),
            max_object_size: cfg.max_object_size,
        })
    }

    /// The same grants with another public URL (`http(s)://host[:port]`).
    pub fn with_public_url(mut self, url: &str) -> Result<Grants, GrantError> {
        let url = url.trim_end_matches('/');
        split_public_url(url)?;
        self.public_url = url.to_owned();
        Ok(self)
    }

    /// The base URL of the S3 API and the Qiniu upload host in issued grants.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The access key grants are signed with.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    fn check_upload(&self, spec: &UploadSpec<'_>) -> Result<(), GrantError> {
        if self.read_only {
            return Err(GrantError::ReadOnly);
        }
        validate_bucket(spec.bucket).map_err(|e| GrantError::InvalidBucket(e.to_string()))?;
        validate_key(spec.key).map_err(|e| GrantError::InvalidKey(e.to_string()))?;
        if spec.size > self.max_object_size {
            return Err(GrantError::TooLarge {
                size: spec.size,
                limit: self.max_object_size,
            });
        }
        check_expiry(spec.expires_secs)?;
        if let Some(ct) = spec.content_type {
            check_content_type(ct)?;
        }
        Ok(())
    }

    /// A presigned S3 `PUT` for exactly `spec` (see the module documentation).
    pub fn presigned_put(
        &self,
        spec: &UploadSpec<'_>,
        now_unix: u64,
    ) -> Result<PresignedPut, GrantError> {
        self.check_upload(spec)?;
        let (scheme, host) = split_public_url(&self.public_url)?;
        let length = spec.size.to_string();
        let mut headers: Vec<(&str, &str)> = vec![("content-length", &length)];
        if let Some(ct) = spec.content_type {
            headers.push(("content-type", ct));
        }
        if spec.insert_only {
            headers.push(("if-none-match", "*"));
        }
        let path = format!("/{}/{}", spec.bucket, spec.key);
        let url = sigv4::presign_url(&PresignRequest {
            method: "PUT",
            scheme,
            host,
            path: &path,
            query: &[],
            headers: &headers,
            credentials: self.signing(),
            region: &self.region,
            time: UtcDateTime::from_unix(now_unix),
            expires_secs: spec.expires_secs,
        })
        .map_err(|_| GrantError::InvalidExpiry(spec.expires_secs))?;
        Ok(PresignedPut {
            method: "PUT",
            url,
            headers: headers
                .iter()
                .map(|(n, v)| (canonical_header_name(n), (*v).to_owned()))
                .collect(),
            expires_at: now_unix.saturating_add(spec.expires_secs),
        })
    }

    /// A Qiniu upload token for exactly `spec` (see the module documentation).
    pub fn qiniu_upload(
        &self,
        spec: &UploadSpec<'_>,
        now_unix: u64,
    ) -> Result<QiniuUpload, GrantError> {
        self.check_upload(spec)?;
        let deadline = now_unix.saturating_add(spec.expires_secs);
        let mut policy = PutPolicy::new(&format!("{}:{}", spec.bucket, spec.key), deadline);
        let size = i64::try_from(spec.size).unwrap_or(i64::MAX);
        policy.fsize_limit = Some(size);
        policy.fsize_min = Some(size);
        policy.mime_limit = spec.content_type.map(str::to_owned);
        policy.insert_only = spec.insert_only.then_some(1);
        let token = policy.upload_token(Credentials {
            access_key: &self.access_key,
            secret_key: &self.secret_key,
        });
        Ok(QiniuUpload {
            upload_url: self.public_url.clone(),
            token,
            key: spec.key.to_owned(),
            expires_at: deadline,
        })
    }

    /// The URL to download `bucket/key` from, valid for `expires_secs` when the bucket is
    /// private (see the module documentation).
    pub fn download_url(
        &self,
        bucket: &str,
        key: &str,
        expires_secs: u64,
        now_unix: u64,
    ) -> Result<DownloadUrl, GrantError> {
        validate_bucket(bucket).map_err(|e| GrantError::InvalidBucket(e.to_string()))?;
        validate_key(key).map_err(|e| GrantError::InvalidKey(e.to_string()))?;
        let public = self.public_buckets.contains(bucket);
        if !public {
            check_expiry(expires_secs)?;
        }
        let deadline = now_unix.saturating_add(expires_secs);
        if let Some(base) = self.domains.get(bucket) {
            let url = format!("{base}/{}", uri_encode(key.as_bytes(), false));
            if public {
                return Ok(DownloadUrl {
                    url,
                    expires_at: None,
                });
            }
            let url = sign_download_url(
                Credentials {
                    access_key: &self.access_key,
                    secret_key: &self.secret_key,
                },
                &url,
                deadline,
            );
            return Ok(DownloadUrl {
                url,
                expires_at: Some(deadline),
            });
        }
        let path = format!("/{bucket}/{key}");
        if public {
            return Ok(DownloadUrl {
                url: format!("{}{}", self.public_url, uri_encode(path.as_bytes(), false)),
                expires_at: None,
            });
        }
        let (scheme, host) = split_public_url(&self.public_url)?;
        let url = sigv4::presign_url(&PresignRequest {
            method: "GET",
            scheme,
            host,
            path: &path,
            query: &[],
            headers: &[],
            credentials: self.signing(),
            region: &self.region,
            time: UtcDateTime::from_unix(now_unix),
            expires_secs,
        })
        .map_err(|_| GrantError::InvalidExpiry(expires_secs))?;
        Ok(DownloadUrl {
            url,
            expires_at: Some(deadline),
        })
    }

    fn signing(&self) -> SigningCredentials<'_> {
        SigningCredentials {
            access_key: &self.access_key,
            secret_key: &self.secret_key,
        }
    }
}

/// `content-length` -> `Content-Length`, for the client-facing header list.
fn canonical_header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map_or(String::new(), |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

// ---------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------

/// `POST /_ember/v1/grants/upload`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    bucket: String,
    key: String,
    #[serde(default)]
    content_type: Option<String>,
    size: u64,
    #[serde(default)]
    expires_secs: Option<u64>,
    #[serde(default)]
    insert_only: bool,
    /// "s3" (default) or "qiniu".
    #[serde(default)]
    dialect: Option<String>,
    /// Also return the object's download URL, valid this long (default: `expires_secs`).
    #[serde(default)]
    download_expires_secs: Option<u64>,
}

/// `POST /_ember/v1/grants/download`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadBody {
    bucket: String,
    key: String,
    #[serde(default)]
    expires_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
struct UploadReply {
    dialect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: Option<PresignedPut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qiniu: Option<QiniuUpload>,
    download: DownloadUrl,
}

/// What the HTTP API needs: the store's config (credentials, domains, public URL).
pub struct HttpGrants {
    cfg: StorageConfig,
    verify: VerifyConfig,
}

/// The HTTP grant API (see the module documentation); answers every path under
/// [`HTTP_PREFIX`].
pub fn router(cfg: &StorageConfig) -> Router {
    let state = Arc::new(HttpGrants {
        cfg: cfg.clone(),
        verify: VerifyConfig::new(&cfg.region),
    });
    Router::new().fallback(handle).with_state(state)
}

/// Whether a request is for the grant API.
pub fn is_grant_request(path: &str) -> bool {
    path.starts_with(HTTP_PREFIX)
}

/// An error of the HTTP API: `{"error": code, "message": ...}` with `status`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": self.code, "message": self.message }).to_string(),
        )
            .into_response()
    }
}

fn json_error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        code,
        message: message.to_owned(),
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> ApiError {
        let (status, code) = match e {
            GrantError::ReadOnly => (StatusCode::FORBIDDEN, "AccessDenied"),
            GrantError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"),
            GrantError::UnknownAccessKey(_) | GrantError::NoCredentials => {
                (StatusCode::FORBIDDEN, "InvalidAccessKeyId")
            }
            GrantError::InvalidPublicUrl(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            _ => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        };
        json_error(status, code, &e.to_string())
    }
}

async fn handle(State(st): State<Arc<HttpGrants>>, req: Request) -> Response {
    match serve(&st, req).await {
        Ok(json) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn serve(st: &HttpGrants, req: Request) -> Result<String, ApiError> {
    let (parts, body) = req.into_parts();
    let op = parts.uri.path().strip_prefix(HTTP_PREFIX).unwrap_or("");
    if op != "upload" && op != "download" {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such grant API",
        ));
    }
    if parts.method != Method::POST {
        return Err(json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "use POST",
        ));
    }
    let body = axum::body::to_bytes(Body::new(body), MAX_REQUEST_BODY)
        .await
        .map_err(|_| {
            json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "EntityTooLarge",
                "the request body is over 16 KiB",
            )
        })?;
    let access_key = authenticate(st, &parts, &body)?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut grants = Grants::from_config(&st.cfg, Some(&access_key), None)?;
    if st.cfg.public_url.is_empty() && !host.is_empty() {
        // Development: no public URL configured, so the caller's view of the store is used.
        grants = grants.with_public_url(&format!("http://{host}"))?;
    }
    let now = now_unix();
    if op == "upload" {
        upload(&grants, &body, now)
    } else {
        download(&grants, &body, now)
    }
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, "MalformedJSON", &e.to_string()))
}

fn upload(grants: &Grants, body: &[u8], now: u64) -> Result<String, ApiError> {
    let req: UploadBody = parse_json(body)?;
    let spec = UploadSpec {
        bucket: &req.bucket,
        key: &req.key,
        content_type: req.content_type.as_deref(),
        size: req.size,
        expires_secs: req.expires_secs.unwrap_or(DEFAULT_EXPIRES_SECS),
        insert_only: req.insert_only,
    };
    let (dialect, s3, qiniu) = match req.dialect.as_deref().unwrap_or("s3") {
        "s3" => ("s3", Some(grants.presigned_put(&spec, now)?), None),
        "qiniu" => ("qiniu", None, Some(grants.qiniu_upload(&spec, now)?)),
        other => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                &format!("dialect {other:?}: expected \"s3\" or \"qiniu\""),
            ))
        }
    };
    let download = grants.download_url(
        &req.bucket,
        &req.key,
        req.download_expires_secs.unwrap_or(spec.expires_secs),
        now,
    )?;
    let reply = UploadReply {
        dialect,
        s3,
        qiniu,
        download,
    };
    Ok(serde_json::to_string(&reply).unwrap_or_default())
}

fn download(grants: &Grants, body: &[u8], now: u64) -> Result<String, ApiError> {
    let req: DownloadBody = parse_json(body)?;
    let url = grants.download_url(
        &req.bucket,
        &req.key,
        req.expires_secs.unwrap_or(DEFAULT_EXPIRES_SECS),
        now,
    )?;
    Ok(serde_json::to_string(&url).unwrap_or_default())
}

/// SigV4 header auth by a configured key (S3 signers and generic SigV4 signers such as
/// `curl --aws-sigv4` alike); returns the access key. The body is small and already read, so
/// a signed payload hash is checked here.
fn authenticate(
    st: &HttpGrants,
    parts: &axum::http::request::Parts,
    body: &[u8],
) -> Result<String, ApiError> {
    let mut headers: Vec<(&str, &[u8])> = header_list(&parts.headers);
    // Generic SigV4 signers (not S3's) send no `x-amz-content-sha256`: their payload hash is
    // the body's, which is known here, so it stands in (a signature over another body fails).
    let digest: [u8; 32] = Sha256::digest(body).into();
    let body_hash = crate::s3::sigv4::hex_encode(&digest);
    if !parts.headers.contains_key("x-amz-content-sha256") {
        headers.push(("x-amz-content-sha256", body_hash.as_bytes()));
    }
    let view = RequestView {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &headers,
    };
    let lookup = |ak: &str| {
        st.cfg.credentials.get(ak).map(|sk| Credential {
            secret_key: sk.clone(),
            permissions: (),
        })
    };
    let auth = sigv4::verify_request(&view, &st.verify, &lookup, now_unix()).map_err(|e| {
        json_error(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN),
            e.code(),
            &e.to_string(),
        )
    })?;
    let verified = match auth {
        Authenticated::Signed(v) => v,
        Authenticated::Anonymous => {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "sign the request with SigV4 (an access key of [storage] credentials)",
            ))
        }
    };
    if !matches!(verified.method, AuthMethod::Header) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "presigned URLs cannot call the grant API; use the Authorization header",
        ));
    }
    match verified.payload {
        PayloadMode::Sha256(expected) => {
            if digest != expected {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "XAmzContentSHA256Mismatch",
                    "the body does not match x-amz-content-sha256",
                ));
            }
        }
        PayloadMode::Unsigned => {}
        _ => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "aws-chunked bodies are not accepted by the grant API",
            ))
        }
    }
    Ok(verified.access_key)
}

#[cfg(test)]
mod tests;
