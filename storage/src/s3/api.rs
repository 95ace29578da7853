//! The S3 HTTP API as an axum [`Router`]: addressing (path-style and virtual-host-style),
//! SigV4 or SigV2 authentication and permissions on every request, CORS, streaming bodies
//! verified on the fly, and the S3 operations on top of a [`Backend`].
//!
//! [`router`] returns a fallback-style router that answers every path, so a caller can put
//! other routes (Qiniu, bucket domains) in front of it by `Host`.
//!
//! Request flow: [`Addressing`] splits the request into bucket and key (percent-decoded once,
//! so `//`, spaces, `+` and unicode in keys survive), [`sigv4::verify_request`] authenticates
//! it, or [`sigv2::verify_request`] when it carries `Authorization: AWS ...` or
//! `AWSAccessKeyId`/`Signature` query parameters (SigV2 signs no payload: its bodies are
//! trusted as sent, `Content-MD5` and `x-amz-checksum-*` still checked; the signed `x-amz-*`,
//! `Content-Type` and `Content-MD5` values of a SigV2 presigned URL's query apply as headers).
//! Anonymous requests are allowed only for reads of public buckets. The operation is
//! chosen from method, bucket, key and sub-resource ([`Op`]), and the access key's
//! [`Access`] is checked. Upload bodies are adapted into the backend's
//! [`ByteStream`](crate::backend::ByteStream) by [`VerifyingBody`], which decodes aws-chunked
//! bodies and checks `x-amz-content-sha256`, chunk signatures, `x-amz-checksum-*` headers or
//! trailers as the bytes pass; a failed check is the stream's last item (an error), so the
//! backend never commits the object. Only the XML bodies of multi-object delete, complete
//! multipart upload and create bucket are read whole, capped at [`MAX_XML_BODY`].
//!
//! Every response carries `x-amz-request-id`; every error is S3's XML error document with
//! S3's code and status ([`S3Error`]).
//!
//! CORS: an `OPTIONS` preflight (`Origin` + `Access-Control-Request-Method`) is answered for
//! any bucket and key without authentication (any origin, the S3 methods, the requested
//! headers, max age 3600), and every response to a request with `Origin` carries
//! `Access-Control-Allow-Origin` (the origin, echoed) and `Access-Control-Expose-Headers`
//! (`ETag`, `x-amz-request-id`, `x-amz-version-id`), so browser apps can use presigned URLs.
//! The signature still authorizes every real request; no credentials mode is offered.
//!
//! Submodules: `request` (addressing, operation, query, ranges, preconditions, HTTP dates:
//! pure and re-exported here for the bucket-domain front end), `body` ([`VerifyingBody`]),
//! `error` ([`S3Error`] and the mapping of auth and storage errors), `tests`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};

use super::checksum::ChecksumAlgorithm;
use super::sigv2;
use super::sigv4::{
    self, AuthMethod, Authenticated, Credential, PayloadHashCheck, PayloadMode, RequestView,
    Verified, VerifyConfig,
};
use super::xml::{self, DeleteError, ListObjectsResult, ListVersion, Owner};
use crate::backend::{
    validate_bucket, validate_key, Backend, CopyMetadata, ListQuery, ObjectMeta, PutOptions,
    StandardHeaders, StorageError, MAX_PART_NUMBER,
};

mod body;
mod error;
mod request;

pub use body::VerifyingBody;
use body::{drain_unread, take_body, BodySlot};
pub use error::{S3Error, S3Result};
use request::parse_u64_digits;
pub use request::{
    etag_list_matches, http_date, parse_range, Addressing, Conditions, Op, Precondition, Query,
    RangeSpec,
};

/// Largest XML request body accepted (multi-object delete, complete multipart upload,
/// create-bucket configuration).
pub const MAX_XML_BODY: usize = 4 << 20;
/// S3's limit on one object (5 TiB), the default `max_object_size`.
pub const S3_MAX_OBJECT_SIZE: u64 = 5 << 40;
/// S3's limit on user metadata (`x-amz-meta-*` names and values), in bytes.
pub const MAX_USER_METADATA: usize = 2048;
/// Most keys, parts or uploads in one listing page.
const MAX_LIST: usize = 1000;
/// Default `Content-Type` of an object stored without one (as S3).
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// What an access key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Only GET and HEAD requests (writes are refused with `AccessDenied`).
    pub read_only: bool,
    /// The buckets the key may use; `None` = all.
    pub buckets: Option<Vec<String>>,
}

impl Access {
    fn allows_bucket(&self, bucket: &str) -> bool {
        self.buckets
            .as_ref()
            .is_none_or(|list| list.iter().any(|b| b == bucket))
    }
}

/// Settings of the S3 API.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The region clients sign for (SigV4 credential scope; `GetBucketLocation`).
    pub region: String,
    /// Access key -> (secret key, permissions).
    pub credentials: HashMap<String, (String, Access)>,
    /// Buckets anyone may read (GET/HEAD objects, list, head bucket) without signing.
    pub public_buckets: Vec<String>,
    /// Largest object accepted, in bytes (`EntityTooLarge` above).
    pub max_object_size: u64,
    /// Host suffixes of virtual-host-style addressing: with `s3.example.com`, a request to
    /// `media.s3.example.com` addresses bucket `media`.
    pub virtual_host_suffixes: Vec<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            region: "us-east-1".to_owned(),
            credentials: HashMap::new(),
            public_buckets: Vec::new(),
            max_object_size: S3_MAX_OBJECT_SIZE,
            virtual_host_suffixes: Vec::new(),
        }
    }
}

/// The S3 API over `backend`: a router with a single fallback handler, so every path is
/// answered (put more specific routes in front of it).
pub fn router(backend: Arc<dyn Backend>, cfg: Arc<S3Config>) -> Router {
    let verify = VerifyConfig::new(&cfg.region);
    let owner = Owner {
        id: sigv4::hex_encode(&sha2::Sha256::digest(b"ember-s3-owner")),
        display_name: "ember".to_owned(),
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let state = Arc::new(S3State {
        backend,
        cfg,
        verify,
        owner,
        next_id: AtomicU64::new(seed),
    });
    Router::new().fallback(handle).with_state(state)
}

struct S3State {
    backend: Arc<dyn Backend>,
    cfg: Arc<S3Config>,
    verify: VerifyConfig,
    owner: Owner,
    next_id: AtomicU64,
}

impl S3State {
    fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A bijective mix so consecutive ids do not look consecutive.
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0x5DEE_CE66_D1A4_F87B;
        format!("{mixed:016X}")
    }
}

// ---------------------------------------------------------------------------------------------
// Request context
// ---------------------------------------------------------------------------------------------

const CHECKSUM_ALGORITHMS: [ChecksumAlgorithm; 5] = [
    ChecksumAlgorithm::Crc32,
    ChecksumAlgorithm::Crc32c,
    ChecksumAlgorithm::Crc64Nvme,
    ChecksumAlgorithm::Sha1,
    ChecksumAlgorithm::Sha256,
];

/// Everything one request needs besides its body.
struct Ctx<'a> {
    st: &'a S3State,
    method: Method,
    headers: &'a HeaderMap,
    raw_path: &'a str,
    raw_query: &'a str,
    query: Query,
    bucket: String,
    key: String,
    auth: Authenticated<Access>,
}

impl<'a> Ctx<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    fn verified(&self) -> Option<&Verified<Access>> {
        match &self.auth {
            Authenticated::Signed(v) => Some(v),
            Authenticated::Anonymous => None,
        }
    }

    fn max_object_size(&self) -> u64 {
        self.st.cfg.max_object_size
    }

    /// The payload length the client announced: `x-amz-decoded-content-length` for
    /// aws-chunked bodies, `Content-Length` otherwise.
    fn declared_length(&self) -> Option<u64> {
        let chunked = self.verified().is_some_and(|v| v.payload.is_aws_chunked());
        let name = if chunked {
            "x-amz-decoded-content-length"
        } else {
            "content-length"
        };
        self.header(name).and_then(parse_u64_digits)
    }

    /// Refuses a body announced larger than `limit` before reading it.
    fn check_declared_size(&self, limit: u64) -> S3Result<()> {
        match self.declared_length() {
            Some(n) if n > limit => Err(S3Error::entity_too_large(limit)),
            _ => Ok(()),
        }
    }

    /// The verifying stream of the request body, taken out of `body` once the request's
    /// checksum headers are known to be usable (before that, an error leaves it to drain).
    fn body_stream(&self, body: &mut BodySlot) -> S3Result<VerifyingBody> {
        let mut decoder = None;
        let mut sha256 = None;
        if let Some(v) = self.verified() {
            let headers = header_list(self.headers);
            let view = RequestView {
                method: self.method.as_str(),
                raw_path: self.raw_path,
                raw_query: self.raw_query,
                headers: &headers,
            };
            decoder = v.chunked_decoder_for(&view)?;
            if let PayloadMode::Sha256(expected) = v.payload {
                sha256 = Some(PayloadHashCheck::new(expected));
            }
        }
        let mut checksum = None;
        for alg in CHECKSUM_ALGORITHMS {
            if let Some(v) = self.headers.get(alg.header_name()) {
                let claimed = v.to_str().map_err(|_| {
                    S3Error::invalid_request(format!(
                        "Value for {} header is invalid.",
                        alg.header_name()
                    ))
                })?;
                checksum = Some((alg.hasher(), claimed.trim().to_owned()));
                break;
            }
        }
        Ok(VerifyingBody::new(
            take_body(body),
            decoder,
            sha256,
            checksum,
        ))
    }

    /// Reads a small (XML) body whole, verified, at most [`MAX_XML_BODY`] bytes; checks
    /// Content-MD5 when sent.
    async fn small_body(&self, body: &mut BodySlot) -> S3Result<Bytes> {
        self.check_declared_size(MAX_XML_BODY as u64)
            .map_err(|_| too_big_xml())?;
        let expected_md5 = self.content_md5()?;
        let mut stream = self.body_stream(body)?;
        let mut out = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| S3Error::from(StorageError::BodyError(e)))?;
            if out.len() + chunk.len() > MAX_XML_BODY {
                return Err(too_big_xml());
            }
            out.extend_from_slice(&chunk);
        }
        if let Some(md5) = expected_md5 {
            if <[u8; 16]>::from(Md5::digest(&out)) != md5 {
                return Err(StorageError::BadDigest.into());
            }
        }
        Ok(out.freeze())
    }

    /// `Content-MD5`, decoded (`InvalidDigest` when it is not base64 of 16 bytes).
    fn content_md5(&self) -> S3Result<Option<[u8; 16]>> {
        let Some(v) = self.header("content-md5") else {
            return Ok(None);
        };
        STANDARD
            .decode(v)
            .ok()
            .and_then(|d| <[u8; 16]>::try_from(d).ok())
            .map(Some)
            .ok_or_else(|| {
                S3Error::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidDigest",
                    "The Content-MD5 you specified is not valid.",
                )
            })
    }

    /// Standard headers and `x-amz-meta-*` of a new object, from the request.
    fn put_options(&self) -> S3Result<PutOptions> {
        let get = |name: &str| self.header(name).map(str::to_owned);
        let content_encoding = self.header("content-encoding").and_then(|v| {
            let rest: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
                .collect();
            (!rest.is_empty()).then(|| rest.join(","))
        });
        let headers = StandardHeaders {
            content_type: get("content-type"),
            content_disposition: get("content-disposition"),
            content_encoding,
            content_language: get("content-language"),
            cache_control: get("cache-control"),
            expires: get("expires"),
        };
        let mut user_meta = std::collections::BTreeMap::new();
        let mut meta_size = 0;
        for (name, value) in self.headers {
            if let Some(n) = name.as_str().strip_prefix("x-amz-meta-") {
                let value = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
                meta_size += n.len() + value.len();
                user_meta
                    .entry(n.to_owned())
                    .and_modify(|v: &mut String| {
                        v.push(',');
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
        }
        if meta_size > MAX_USER_METADATA {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "MetadataTooLarge",
                "Your metadata headers exceed the maximum allowed metadata size.",
            )
            .with("MaxSizeAllowed", MAX_USER_METADATA.to_string()));
        }
        let if_none_match = match self.header("if-none-match") {
            None => false,
            Some("*") => true,
            Some(_) => return Err(S3Error::not_implemented()),
        };
        Ok(PutOptions {
            headers,
            user_meta,
            if_none_match,
            expected_md5: self.content_md5()?,
            max_size: Some(self.max_object_size()),
            content_length: None,
        })
    }

    fn resource_path(&self) -> String {
        format!("/{}/{}", self.bucket, self.key)
    }
}

fn too_big_xml() -> S3Error {
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "MaxMessageLengthExceeded",
        "Your request was too big.",
    )
}

/// `headers` plus the stand-ins of a SigV2 presigned URL (names absent from `headers` only).
fn with_query_headers(headers: &HeaderMap, extra: Vec<(String, Vec<u8>)>) -> HeaderMap {
    let mut merged = headers.clone();
    for (name, value) in extra {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            if !merged.contains_key(&n) {
                merged.insert(n, v);
            }
        }
    }
    merged
}

pub(crate) fn header_list(headers: &HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

fn xml_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn empty_response(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    } else if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
        headers.insert(name, v);
    }
}

/// `response-content-type` and friends: GET-time overrides of the stored headers.
const RESPONSE_OVERRIDES: [(&str, HeaderName); 6] = [
    ("response-content-type", header::CONTENT_TYPE),
    ("response-content-language", header::CONTENT_LANGUAGE),
    ("response-expires", header::EXPIRES),
    ("response-cache-control", header::CACHE_CONTROL),
    ("response-content-disposition", header::CONTENT_DISPOSITION),
    ("response-content-encoding", header::CONTENT_ENCODING),
];

/// The object's headers: ETag, Last-Modified, Accept-Ranges, the stored standard headers
/// (with query overrides) and `x-amz-meta-*`.
fn object_headers(headers: &mut HeaderMap, meta: &ObjectMeta, query: &Query) {
    set_header(headers, header::ETAG, &xml::quote_etag(&meta.etag));
    set_header(
        headers,
        header::LAST_MODIFIED,
        &http_date(meta.last_modified),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let h = &meta.headers;
    set_header(
        headers,
        header::CONTENT_TYPE,
        h.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE),
    );
    for (name, value) in [
        (header::CONTENT_DISPOSITION, &h.content_disposition),
        (header::CONTENT_ENCODING, &h.content_encoding),
        (header::CONTENT_LANGUAGE, &h.content_language),
        (header::CACHE_CONTROL, &h.cache_control),
        (header::EXPIRES, &h.expires),
    ] {
        if let Some(v) = value {
            set_header(headers, name, v);
        }
    }
    for (k, v) in &meta.user_meta {
        if let Ok(name) = HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes()) {
            set_header(headers, name, v);
        }
    }
    for (param, name) in RESPONSE_OVERRIDES {
        if let Some(v) = query.get(param) {
            set_header(headers, name, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

async fn handle(State(st): State<Arc<S3State>>, req: Request) -> Response {
    let request_id = st.request_id();
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let head = parts.method == Method::HEAD;
    let raw_path = parts.uri.path();
    let resource = String::from_utf8_lossy(&sigv4::percent_decode(raw_path, false)).into_owned();
    let result = if parts.method == Method::OPTIONS {
        cors_preflight(&parts.headers)
    } else {
        serve(&st, &parts, &mut body).await
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(
                method = %parts.method,
                path = %resource,
                code = %e.code,
                "s3: {}",
                e.message
            );
            e.into_response(&resource, &request_id, head)
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amz-request-id", v.clone());
        h.insert("x-amz-id-2", v);
    }
    h.entry(header::SERVER)
        .or_insert(HeaderValue::from_static("Ember"));
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        if !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    // A body the operation did not read (refused request, body-less operation) is drained,
    // or the connection closes after this response: never reset under a waiting client.
    if let Some(unread) = body.take() {
        if !drain_unread(&parts.headers, unread).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

/// Methods a preflight may ask for.
const CORS_ALLOW_METHODS: &str = "GET, PUT, POST, HEAD, DELETE";
/// Response headers browser code may read.
const CORS_EXPOSE_HEADERS: &str = "ETag, x-amz-request-id, x-amz-version-id";
/// How long browsers may cache a preflight, in seconds.
const CORS_MAX_AGE: &str = "3600";

/// Answers an `OPTIONS` preflight for any bucket and key, without authentication: every
/// origin may send the S3 methods with any headers. This only lets the browser send the
/// request; the request's own signature (or a public bucket) still decides what it may do.
/// As S3: no `Origin` is `400 BadRequest`, a method other than those is `403`.
fn cors_preflight(headers: &HeaderMap) -> S3Result<Response> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Insufficient information. Origin request header needed.",
        ));
    };
    let Some(method) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) else {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid Access-Control-Request-Method: null",
        ));
    };
    if !CORS_ALLOW_METHODS
        .split(", ")
        .any(|m| method.as_bytes() == m.as_bytes())
    {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
        ));
    }
    let mut r = empty_response(StatusCode::OK);
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_ALLOW_METHODS),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(CORS_MAX_AGE),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
        ),
    );
    Ok(r)
}

async fn serve(
    st: &S3State,
    parts: &axum::http::request::Parts,
    body: &mut BodySlot,
) -> S3Result<Response> {
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let addressing = Addressing::parse(host, raw_path, &st.cfg.virtual_host_suffixes)?;
    let query = Query::parse(raw_query);

    // Authentication (an absolute-form request target stands in for a missing Host).
    let mut view_headers = header_list(&parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            view_headers.push(("host", a.as_str().as_bytes()));
        }
    }
    let view = RequestView {
        method: parts.method.as_str(),
        raw_path,
        raw_query,
        headers: &view_headers,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let cfg = &st.cfg;
    let lookup = |ak: &str| {
        cfg.credentials.get(ak).map(|(secret, access)| Credential {
            secret_key: secret.clone(),
            permissions: access.clone(),
        })
    };
    let auth = if sigv2::uses_sigv2(&view) {
        let vhost_bucket = addressing
            .bucket
            .as_deref()
            .filter(|_| addressing.virtual_host);
        sigv2::verify_request(&view, vhost_bucket, &st.verify, &lookup, now)?
    } else {
        sigv4::verify_request(&view, &st.verify, &lookup, now)?
    };
    // SigV2 presigned URLs carry signed `x-amz-*`, `Content-Type` and `Content-MD5` values in
    // the query (botocore puts them there); they then apply as if sent as headers.
    let merged_headers;
    let headers = match &auth {
        Authenticated::Signed(v) if matches!(v.method, AuthMethod::V2Presigned { .. }) => {
            merged_headers = with_query_headers(&parts.headers, sigv2::query_headers(&view));
            &merged_headers
        }
        _ => &parts.headers,
    };

    let copy_source = headers.contains_key("x-amz-copy-source");
    let op = Op::classify(
        &parts.method,
        addressing.bucket.is_some(),
        addressing.key.is_some(),
        &query,
        copy_source,
    );
    let bucket = addressing.bucket.unwrap_or_default();
    let key = addressing.key.unwrap_or_default();

    // Permissions.
    match &auth {
        Authenticated::Anonymous => {
            let public = cfg.public_buckets.contains(&bucket);
            if !(public && op.public_read()) {
                return Err(S3Error::access_denied());
            }
        }
        Authenticated::Signed(v) => {
            let write = !matches!(parts.method, Method::GET | Method::HEAD);
            if write && v.permissions.read_only {
                return Err(S3Error::access_denied());
            }
            if !bucket.is_empty() && !v.permissions.allows_bucket(&bucket) {
                return Err(S3Error::access_denied());
            }
        }
    }

    if !bucket.is_empty() {
        validate_bucket(&bucket)?;
    }
    if !key.is_empty() {
        validate_key(&key)?;
    }
    if let Some(v) = query.get("versionId") {
        if v != "null" {
            return Err(S3Error::invalid_argument("Invalid version id specified"));
        }
    }

    let ctx = Ctx {
        st,
        method: parts.method.clone(),
        headers,
        raw_path,
        raw_query,
        query,
        bucket,
        key,
        auth,
    };
    let b = &*st.backend;
    match op {
        Op::ListBuckets => list_buckets(&ctx).await,
        Op::CreateBucket => create_bucket(&ctx, body).await,
        Op::HeadBucket => {
            b.head_bucket(&ctx.bucket).await?;
            let mut r = empty_response(StatusCode::OK);
            set_header(
                r.headers_mut(),
                HeaderName::from_static("x-amz-bucket-region"),
                &cfg.region,
            );
            Ok(r)
        }
        Op::DeleteBucket => {
            b.delete_bucket(&ctx.bucket).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Op::GetBucketLocation => {
            b.head_bucket(&ctx.bucket).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::location_constraint(&cfg.region),
            ))
        }
        Op::GetBucketVersioning => {
            b.head_bucket(&ctx.bucket).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::versioning_configuration(),
            ))
        }
        Op::GetBucketAcl => {
            b.head_bucket(&ctx.bucket).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::owner_full_control_acl(&st.owner),
            ))
        }
        Op::GetObjectAcl => {
            b.head_object(&ctx.bucket, &ctx.key).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::owner_full_control_acl(&st.owner),
            ))
        }
        Op::PutBucketAcl | Op::PutObjectAcl => put_acl(&ctx, body, op == Op::PutObjectAcl).await,
        Op::GetObjectTagging => {
            b.head_object(&ctx.bucket, &ctx.key).await?;
            Ok(xml_response(StatusCode::OK, xml::empty_tagging()))
        }
        Op::NoSuchConfiguration(code, message) => {
            b.head_bucket(&ctx.bucket).await?;
            Err(S3Error::new(StatusCode::NOT_FOUND, code, message)
                .with("BucketName", ctx.bucket.clone()))
        }
        Op::ListObjectsV1 | Op::ListObjectsV2 => list_objects(&ctx, op == Op::ListObjectsV2).await,
        Op::ListMultipartUploads => list_uploads(&ctx).await,
        Op::DeleteObjects => delete_objects(&ctx, body).await,
        Op::PutObject => put_object(&ctx, body).await,
        Op::CopyObject => copy_object(&ctx).await,
        Op::GetObject => get_object(&ctx, false).await,
        Op::HeadObject => get_object(&ctx, true).await,
        Op::DeleteObject => {
            b.delete_object(&ctx.bucket, &ctx.key).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Op::CreateMultipartUpload => {
            let opts = ctx.put_options()?;
            let id = b.create_multipart(&ctx.bucket, &ctx.key, opts).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::initiate_multipart(&ctx.bucket, &ctx.key, &id),
            ))
        }
        Op::UploadPart => upload_part(&ctx, body).await,
        Op::UploadPartCopy => upload_part_copy(&ctx).await,
        Op::CompleteMultipartUpload => complete_multipart(&ctx, body).await,
        Op::AbortMultipartUpload => {
            b.abort_multipart(&ctx.bucket, &ctx.key, upload_id(&ctx)?)
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Op::ListParts => list_parts(&ctx).await,
        Op::NotImplemented => Err(S3Error::not_implemented()),
        Op::MethodNotAllowed => Err(S3Error::method_not_allowed()),
    }
}

// ---------------------------------------------------------------------------------------------
// Buckets
// ---------------------------------------------------------------------------------------------

async fn list_buckets(ctx: &Ctx<'_>) -> S3Result<Response> {
    let mut buckets = ctx.st.backend.list_buckets().await?;
    if let Some(v) = ctx.verified() {
        buckets.retain(|b| v.permissions.allows_bucket(&b.name));
    }
    Ok(xml_response(
        StatusCode::OK,
        xml::list_buckets(&ctx.st.owner, &buckets),
    ))
}

async fn create_bucket(ctx: &Ctx<'_>, body: &mut BodySlot) -> S3Result<Response> {
    let body = ctx.small_body(body).await?;
    let location =
        xml::parse_create_bucket(&body).map_err(|e| S3Error::malformed_xml(&e.to_string()))?;
    if let Some(l) = location {
        if l != ctx.st.cfg.region {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "IllegalLocationConstraintException",
                format!("The {l} location constraint is incompatible for the region specific endpoint this request was sent to."),
            ));
        }
    }
    ctx.st.backend.create_bucket(&ctx.bucket).await?;
    let mut r = empty_response(StatusCode::OK);
    set_header(
        r.headers_mut(),
        header::LOCATION,
        &format!("/{}", ctx.bucket),
    );
    Ok(r)
}

/// PutBucketAcl / PutObjectAcl. Ember keeps no ACLs: every bucket and object belongs to its
/// owner alone, as GetBucketAcl / GetObjectAcl answer (anonymous reads of `public_buckets`
/// come from the config, not from ACLs). Setting that same ACL is accepted and changes
/// nothing: the canned `private`, or a policy whose every grant is FULL_CONTROL for the
/// owner, which s3cmd sends back after each copy and move. Anything else would be a promise
/// Ember cannot keep: `NotImplemented`, as MinIO answers.
async fn put_acl(ctx: &Ctx<'_>, body: &mut BodySlot, object: bool) -> S3Result<Response> {
    if object {
        ctx.st.backend.head_object(&ctx.bucket, &ctx.key).await?;
    } else {
        ctx.st.backend.head_bucket(&ctx.bucket).await?;
    }
    if ctx
        .headers
        .keys()
        .any(|n| n.as_str().starts_with("x-amz-grant-"))
    {
        return Err(S3Error::not_implemented());
    }
    if let Some(canned) = ctx.header("x-amz-acl") {
        return if canned == "private" {
            Ok(empty_response(StatusCode::OK))
        } else {
            Err(S3Error::not_implemented())
        };
    }
    let body = ctx.small_body(body).await?;
    let grants = xml::parse_acl_grants(&body).map_err(|e| {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "MalformedACLError",
            format!("The XML you provided was not well-formed or did not validate against our published schema: {e}"),
        )
    })?;
    let owner_only = !grants.is_empty()
        && grants.iter().all(|g| {
            g.permission == "FULL_CONTROL" && g.grantee_id.as_deref() == Some(&ctx.st.owner.id)
        });
    if owner_only {
        Ok(empty_response(StatusCode::OK))
    } else {
        Err(S3Error::not_implemented())
    }
}

/// `max-keys`, `max-parts`, `max-uploads`: a non-negative integer, capped at 1000.
fn parse_max(query: &Query, name: &str) -> S3Result<usize> {
    match query.get(name) {
        None => Ok(MAX_LIST),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok((n as u64).min(MAX_LIST as u64) as usize),
            _ => Err(S3Error::invalid_argument(format!(
                "Provided {name} not an integer or within integer range"
            ))),
        },
    }
}

fn url_encoding(query: &Query) -> S3Result<bool> {
    match query.get("encoding-type") {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(S3Error::invalid_argument(
            "Invalid Encoding Method specified in Request",
        )),
    }
}

/// The opaque v2 continuation token of a key.
fn continuation_token(after: &str) -> String {
    URL_SAFE_NO_PAD.encode(after.as_bytes())
}

fn decode_continuation_token(token: &str) -> S3Result<String> {
    URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| S3Error::invalid_argument("The continuation token provided is incorrect"))
}

async fn list_objects(ctx: &Ctx<'_>, v2: bool) -> S3Result<Response> {
    let q = &ctx.query;
    let max_keys = parse_max(q, "max-keys")?;
    let url_encoded = url_encoding(q)?;
    let prefix = q.get("prefix").unwrap_or("").to_owned();
    let delimiter = q.get("delimiter").filter(|d| !d.is_empty());
    let token = if v2 {
        q.get("continuation-token")
    } else {
        None
    };
    let after = if v2 {
        match token {
            Some(t) => Some(decode_continuation_token(t)?),
            None => q
                .get("start-after")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    } else {
        q.get("marker").filter(|s| !s.is_empty()).map(str::to_owned)
    };
    let page = if max_keys == 0 {
        ctx.st.backend.head_bucket(&ctx.bucket).await?;
        Default::default()
    } else {
        ctx.st
            .backend
            .list_objects(
                &ctx.bucket,
                &ListQuery {
                    prefix: prefix.clone(),
                    delimiter: delimiter.map(str::to_owned),
                    after,
                    max_keys,
                    metadata: false,
                },
            )
            .await?
    };
    let next = page.next_after.as_deref().filter(|_| page.truncated);
    let version = if v2 {
        ListVersion::V2 {
            continuation_token: token.map(str::to_owned),
            next_continuation_token: next.map(continuation_token),
            start_after: q.get("start-after").map(str::to_owned),
            fetch_owner: q.get("fetch-owner") == Some("true"),
        }
    } else {
        ListVersion::V1 {
            marker: q.get("marker").unwrap_or("").to_owned(),
            next_marker: next.filter(|_| delimiter.is_some()).map(str::to_owned),
        }
    };
    let doc = ListObjectsResult {
        bucket: &ctx.bucket,
        prefix: &prefix,
        delimiter,
        max_keys,
        url_encoded,
        truncated: page.truncated,
        objects: &page.objects,
        common_prefixes: &page.common_prefixes,
        owner: &ctx.st.owner,
        version,
    }
    .to_xml();
    Ok(xml_response(StatusCode::OK, doc))
}

async fn delete_objects(ctx: &Ctx<'_>, body: &mut BodySlot) -> S3Result<Response> {
    let body = ctx.small_body(body).await?;
    let req = xml::parse_delete(&body).map_err(|e| S3Error::malformed_xml(&e.to_string()))?;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for key in req.keys {
        let result = match validate_key(&key) {
            Ok(()) => ctx.st.backend.delete_object(&ctx.bucket, &key).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if !req.quiet {
                    deleted.push(key);
                }
            }
            Err(StorageError::NoSuchBucket) => return Err(S3Error::no_such_bucket(&ctx.bucket)),
            Err(e) => {
                let e = S3Error::from(e);
                errors.push(DeleteError {
                    key,
                    code: e.code.into_owned(),
                    message: e.message.into_owned(),
                });
            }
        }
    }
    Ok(xml_response(
        StatusCode::OK,
        xml::delete_result(&deleted, &errors),
    ))
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// Conditional writes: `If-Match` (the current object must have one of these ETags; a
/// missing object is `NoSuchKey`) and `If-None-Match: *` (no object yet). The check is not
/// atomic with the write, except `If-None-Match: *` on PutObject, which the backend enforces
/// itself ([`PutOptions::if_none_match`]).
async fn write_conditions(ctx: &Ctx<'_>) -> S3Result<()> {
    if let Some(list) = ctx.header("if-match") {
        let meta = ctx.st.backend.head_object(&ctx.bucket, &ctx.key).await?;
        if !etag_list_matches(list, &meta.etag) {
            return Err(S3Error::precondition_failed("If-Match"));
        }
    }
    match ctx.header("if-none-match") {
        None => Ok(()),
        Some("*") => match ctx.st.backend.head_object(&ctx.bucket, &ctx.key).await {
            Ok(_) => Err(S3Error::precondition_failed("If-None-Match")),
            Err(StorageError::NoSuchKey) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Some(_) => Err(S3Error::not_implemented()),
    }
}

async fn put_object(ctx: &Ctx<'_>, body: &mut BodySlot) -> S3Result<Response> {
    let mut opts = ctx.put_options()?;
    opts.content_length = ctx.declared_length();
    ctx.check_declared_size(ctx.max_object_size())?;
    if ctx.header("if-match").is_some() {
        write_conditions(ctx).await?;
    }
    let stream = ctx.body_stream(body)?;
    let meta = ctx
        .st
        .backend
        .put_object(&ctx.bucket, &ctx.key, Box::pin(stream), opts)
        .await?;
    let mut r = empty_response(StatusCode::OK);
    set_header(r.headers_mut(), header::ETAG, &xml::quote_etag(&meta.etag));
    Ok(r)
}

/// GetObject / HeadObject `partNumber`: S3 answers with that part of a multipart object,
/// and with the whole object for part 1 of any other (as a 206 range), refusing higher parts
/// with `InvalidPartNumber`. The backend keeps no part boundaries, so Ember answers every
/// object as a single-part one: part 1 is the whole object (without `x-amz-mp-parts-count`,
/// so clients that learn the part count from that answer download it in one piece), any
/// other part is `InvalidPartNumber` — never another part's bytes under its number.
/// With a `Range` header as well: `InvalidRequest`, as S3.
fn part_read(ctx: &Ctx<'_>) -> S3Result<Option<u32>> {
    if !ctx.query.has("partNumber") {
        return Ok(None);
    }
    let n = part_number(ctx)?;
    if ctx.header("range").is_some() {
        return Err(S3Error::invalid_request(
            "Cannot specify both Range header and partNumber query parameter.",
        ));
    }
    if n != 1 {
        return Err(S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidPartNumber",
            "The requested partnumber is not satisfiable",
        )
        .with("PartNumberRequested", n.to_string()));
    }
    Ok(Some(n))
}

async fn get_object(ctx: &Ctx<'_>, head: bool) -> S3Result<Response> {
    if ctx.verified().is_none() && RESPONSE_OVERRIDES.iter().any(|(p, _)| ctx.query.has(p)) {
        return Err(S3Error::invalid_request(
            "Request specific response headers cannot be used for anonymous GET requests.",
        ));
    }
    let backend = &ctx.st.backend;
    let conditions = Conditions::from_headers(ctx.headers, "");
    let range_header = ctx.header("range");
    let part = part_read(ctx)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let meta = backend.head_object(&ctx.bucket, &ctx.key).await?;
        match conditions.evaluate(&meta.etag, meta.last_modified, true) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                let mut r = empty_response(StatusCode::NOT_MODIFIED);
                let h = r.headers_mut();
                set_header(h, header::ETAG, &xml::quote_etag(&meta.etag));
                set_header(h, header::LAST_MODIFIED, &http_date(meta.last_modified));
                return Ok(r);
            }
            Precondition::Failed(which) => return Err(S3Error::precondition_failed(which)),
        }
        let range = match parse_range(range_header, meta.size) {
            // `partNumber=1`: the whole object, as the range it is (see `part_read`).
            RangeSpec::Full if part.is_some() && meta.size > 0 => Some(0..meta.size),
            RangeSpec::Full => None,
            RangeSpec::Partial(r) => Some(r),
            RangeSpec::Unsatisfiable => {
                return Err(S3Error::invalid_range(
                    meta.size,
                    range_header.unwrap_or(""),
                ))
            }
        };
        let (meta, body) = if head {
            (meta, Body::empty())
        } else {
            let (got, stream) = backend
                .get_object(&ctx.bucket, &ctx.key, range.clone())
                .await?;
            if (got.etag != meta.etag || got.size != meta.size) && attempts < 3 {
                // Replaced between HEAD and GET: evaluate again against the new object.
                continue;
            }
            (got, Body::from_stream(stream))
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        object_headers(h, &meta, &ctx.query);
        match &range {
            Some(rg) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                set_header(h, header::CONTENT_LENGTH, &(rg.end - rg.start).to_string());
                set_header(
                    h,
                    header::CONTENT_RANGE,
                    &format!("bytes {}-{}/{}", rg.start, rg.end - 1, meta.size),
                );
            }
            None => set_header(h, header::CONTENT_LENGTH, &meta.size.to_string()),
        }
        return Ok(r);
    }
}

/// `x-amz-copy-source`: `[/]bucket/key[?versionId=...]`, URL-encoded.
fn parse_copy_source(value: &str) -> S3Result<(String, String)> {
    let invalid = || S3Error::invalid_argument("Invalid copy source object key");
    let (path, version) = match value.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (value, None),
    };
    if let Some(q) = version {
        let q = Query::parse(q);
        if q.get("versionId").is_some_and(|v| v != "null") {
            return Err(S3Error::invalid_argument("Invalid version id specified"));
        }
    }
    let decoded = sigv4::percent_decode(path, false);
    let decoded = std::str::from_utf8(&decoded).map_err(|_| invalid())?;
    let decoded = decoded.strip_prefix('/').unwrap_or(decoded);
    let (bucket, key) = decoded.split_once('/').ok_or_else(invalid)?;
    if bucket.is_empty() || key.is_empty() {
        return Err(invalid());
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// The source of a copy, checked: permissions, names and `x-amz-copy-source-if-*`.
async fn copy_source(ctx: &Ctx<'_>) -> S3Result<(String, String, ObjectMeta)> {
    let (bucket, key) = parse_copy_source(ctx.header("x-amz-copy-source").unwrap_or(""))?;
    if let Some(v) = ctx.verified() {
        if !v.permissions.allows_bucket(&bucket) {
            return Err(S3Error::access_denied());
        }
    }
    validate_bucket(&bucket)?;
    validate_key(&key)?;
    let meta = ctx.st.backend.head_object(&bucket, &key).await?;
    let conditions = Conditions::from_headers(ctx.headers, "x-amz-copy-source-");
    // Evaluated as for a GET, but what would be 304 is 412 here.
    let failed = match conditions.evaluate(&meta.etag, meta.last_modified, true) {
        Precondition::Proceed => None,
        Precondition::Failed(which) => Some(which),
        Precondition::NotModified if conditions.if_none_match.is_some() => Some("If-None-Match"),
        Precondition::NotModified => Some("If-Modified-Since"),
    };
    if let Some(which) = failed {
        return Err(S3Error::precondition_failed(&format!(
            "x-amz-copy-source-{which}"
        )));
    }
    Ok((bucket, key, meta))
}

/// Headers with which a copy of an object onto itself is legal even without
/// `x-amz-metadata-directive: REPLACE`: S3 lets such a copy change the storage class (the
/// documented way to do it, `rclone settier` does), the website redirect location or the
/// encryption. Ember has one storage class and no per-object encryption, so such a copy
/// rewrites the object with its data and metadata unchanged.
const SELF_COPY_CHANGES: [&str; 5] = [
    "x-amz-storage-class",
    "x-amz-website-redirect-location",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-customer-algorithm",
];

/// Whether a copy onto the source itself asks for a change S3 allows (see
/// [`SELF_COPY_CHANGES`]); otherwise S3 refuses it with `InvalidRequest`.
fn self_copy_changes_something(headers: &HeaderMap, replace_metadata: bool) -> bool {
    replace_metadata || SELF_COPY_CHANGES.iter().any(|h| headers.contains_key(*h))
}

async fn copy_object(ctx: &Ctx<'_>) -> S3Result<Response> {
    let (src_bucket, src_key, _) = copy_source(ctx).await?;
    let replace = match ctx.header("x-amz-metadata-directive") {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("COPY") => false,
        Some(d) if d.eq_ignore_ascii_case("REPLACE") => true,
        Some(_) => return Err(S3Error::invalid_argument("Unknown metadata directive.")),
    };
    if src_bucket == ctx.bucket
        && src_key == ctx.key
        && !self_copy_changes_something(ctx.headers, replace)
    {
        return Err(S3Error::invalid_request(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let metadata = if replace {
        CopyMetadata::Replace(Box::new(ctx.put_options()?))
    } else {
        CopyMetadata::Copy
    };
    let meta = ctx
        .st
        .backend
        .copy_object(&src_bucket, &src_key, &ctx.bucket, &ctx.key, metadata)
        .await?;
    Ok(xml_response(
        StatusCode::OK,
        xml::copy_result("CopyObjectResult", &meta.etag, meta.last_modified),
    ))
}

// ---------------------------------------------------------------------------------------------
// Multipart uploads
// ---------------------------------------------------------------------------------------------

fn upload_id<'c>(ctx: &'c Ctx<'_>) -> S3Result<&'c str> {
    ctx.query
        .get("uploadId")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
            )
        })
}

fn part_number(ctx: &Ctx<'_>) -> S3Result<u32> {
    ctx.query
        .get("partNumber")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

async fn upload_part(ctx: &Ctx<'_>, body: &mut BodySlot) -> S3Result<Response> {
    let upload_id = upload_id(ctx)?;
    let number = part_number(ctx)?;
    ctx.check_declared_size(ctx.max_object_size())?;
    let md5 = ctx.content_md5()?;
    let stream = ctx.body_stream(body)?;
    let part = ctx
        .st
        .backend
        .upload_part_with_length(
            &ctx.bucket,
            &ctx.key,
            upload_id,
            number,
            Box::pin(stream),
            md5,
            ctx.declared_length(),
        )
        .await?;
    let mut r = empty_response(StatusCode::OK);
    set_header(r.headers_mut(), header::ETAG, &xml::quote_etag(&part.etag));
    Ok(r)
}

/// `x-amz-copy-source-range: bytes=first-last` (both required, within the source).
fn parse_copy_range(value: &str, size: u64) -> S3Result<Range<u64>> {
    let bad = || {
        S3Error::invalid_argument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        parse_u64_digits(a.trim()).ok_or_else(bad)?,
        parse_u64_digits(b.trim()).ok_or_else(bad)?,
    );
    if a > b {
        return Err(bad());
    }
    if b >= size {
        return Err(S3Error::invalid_range(size, value));
    }
    Ok(a..b + 1)
}

async fn upload_part_copy(ctx: &Ctx<'_>) -> S3Result<Response> {
    let upload_id = upload_id(ctx)?;
    let number = part_number(ctx)?;
    let (src_bucket, src_key, meta) = copy_source(ctx).await?;
    let range = ctx
        .header("x-amz-copy-source-range")
        .map(|v| parse_copy_range(v, meta.size))
        .transpose()?;
    let backend = &ctx.st.backend;
    let len = range.as_ref().map_or(meta.size, |r| r.end - r.start);
    let (got, stream) = backend.get_object(&src_bucket, &src_key, range).await?;
    if got.etag != meta.etag {
        return Err(S3Error::precondition_failed("x-amz-copy-source"));
    }
    let part = backend
        .upload_part_with_length(
            &ctx.bucket,
            &ctx.key,
            upload_id,
            number,
            stream,
            None,
            Some(len),
        )
        .await?;
    Ok(xml_response(
        StatusCode::OK,
        xml::copy_result("CopyPartResult", &part.etag, part.last_modified),
    ))
}

async fn complete_multipart(ctx: &Ctx<'_>, body: &mut BodySlot) -> S3Result<Response> {
    let upload_id = upload_id(ctx)?;
    let body = ctx.small_body(body).await?;
    let parts =
        xml::parse_complete_multipart(&body).map_err(|e| S3Error::malformed_xml(&e.to_string()))?;
    write_conditions(ctx).await?;
    let meta = ctx
        .st
        .backend
        .complete_multipart(&ctx.bucket, &ctx.key, upload_id, &parts)
        .await?;
    let location = sigv4::uri_encode(ctx.resource_path().as_bytes(), false);
    Ok(xml_response(
        StatusCode::OK,
        xml::complete_multipart(&location, &ctx.bucket, &ctx.key, &meta.etag),
    ))
}

async fn list_parts(ctx: &Ctx<'_>) -> S3Result<Response> {
    let upload_id = upload_id(ctx)?;
    let max_parts = parse_max(&ctx.query, "max-parts")?;
    let marker = match ctx.query.get("part-number-marker") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| S3Error::invalid_argument("Invalid part-number-marker"))?,
    };
    let all = ctx
        .st
        .backend
        .list_parts(&ctx.bucket, &ctx.key, upload_id)
        .await?;
    let mut rest: Vec<_> = all.into_iter().filter(|p| p.part_number > marker).collect();
    let truncated = rest.len() > max_parts;
    rest.truncate(max_parts);
    let next = rest.last().map(|p| p.part_number).filter(|_| truncated);
    let doc = xml::ListPartsResult {
        bucket: &ctx.bucket,
        key: &ctx.key,
        upload_id,
        owner: &ctx.st.owner,
        part_number_marker: marker,
        next_part_number_marker: next,
        max_parts,
        truncated,
        parts: &rest,
    }
    .to_xml();
    Ok(xml_response(StatusCode::OK, doc))
}

async fn list_uploads(ctx: &Ctx<'_>) -> S3Result<Response> {
    let q = &ctx.query;
    let max_uploads = parse_max(q, "max-uploads")?;
    let url_encoded = url_encoding(q)?;
    let prefix = q.get("prefix").unwrap_or("");
    let delimiter = q.get("delimiter").filter(|d| !d.is_empty());
    let key_marker = q.get("key-marker").unwrap_or("");
    let upload_id_marker = q.get("upload-id-marker").filter(|_| !key_marker.is_empty());
    let all = ctx
        .st
        .backend
        .list_multipart_uploads(&ctx.bucket, prefix)
        .await?;
    let mut uploads = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    let mut last: Option<(String, String)> = None;
    // With an upload-id-marker, uploads of the marker key up to and including that id are
    // skipped; without one, every upload of the marker key is.
    let mut before_marker_id = upload_id_marker.is_some();
    for u in all {
        if !key_marker.is_empty() {
            match u.key.as_str().cmp(key_marker) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => match upload_id_marker {
                    None => continue,
                    Some(m) if before_marker_id => {
                        before_marker_id = u.upload_id != m;
                        continue;
                    }
                    Some(_) => {}
                },
                std::cmp::Ordering::Greater => {}
            }
        }
        let Some(after_prefix) = u.key.strip_prefix(prefix) else {
            continue;
        };
        let group = delimiter.and_then(|d| {
            after_prefix
                .find(d)
                .map(|i| u.key[..prefix.len() + i + d.len()].to_owned())
        });
        if let Some(g) = &group {
            if prefixes.last() == Some(g) || g.as_str() <= key_marker {
                continue;
            }
        }
        if uploads.len() + prefixes.len() == max_uploads {
            truncated = true;
            break;
        }
        match group {
            Some(g) => {
                last = Some((g.clone(), String::new()));
                prefixes.push(g);
            }
            None => {
                last = Some((u.key.clone(), u.upload_id.clone()));
                uploads.push(u);
            }
        }
    }
    let next = last.as_ref().filter(|_| truncated);
    let doc = xml::ListUploadsResult {
        bucket: &ctx.bucket,
        prefix,
        delimiter,
        key_marker,
        upload_id_marker: upload_id_marker.unwrap_or(""),
        next_markers: next.map(|(k, u)| (k.as_str(), u.as_str())),
        max_uploads,
        truncated,
        url_encoded,
        uploads: &uploads,
        common_prefixes: &prefixes,
        owner: &ctx.st.owner,
    }
    .to_xml();
    Ok(xml_response(StatusCode::OK, doc))
}

#[cfg(test)]
mod tests;
