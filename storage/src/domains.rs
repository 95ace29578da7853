//! Bucket download domains: `GET|HEAD https://media.example.com/<key>` serves an object of
//! the bucket mapped to that host (`[storage] bucket_domains`), the way apps link images,
//! voice clips and files. Public buckets need nothing; private ones a Qiniu-style
//! `?e=<deadline>&token=<AK>:<sign>` (S3 presigned URLs are served on the S3 endpoint, not
//! here). Range, conditional requests and caching headers (ETag, Last-Modified,
//! Cache-Control, Accept-Ranges) as for S3 GET.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_ENCODING, CONTENT_LANGUAGE,
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, EXPIRES, LAST_MODIFIED,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::backend::{Backend, ObjectMeta, StorageError};
use crate::qiniu::api::{authorize_download, now_unix, QiniuConfig};
use crate::qiniu::token::DownloadRequest;
use crate::s3::api::{http_date, parse_range, Conditions, Precondition, RangeSpec};
use crate::s3::sigv4::percent_decode;

/// Host name (lowercase, without port) -> bucket.
pub type DomainMap = BTreeMap<String, String>;

/// What the download handler needs.
pub struct Domains {
    pub backend: Arc<dyn Backend>,
    pub map: DomainMap,
    /// Download-token verification and public buckets.
    pub qiniu: Arc<QiniuConfig>,
}

/// The host of a request (Host header, else the URI's authority), lowercase, port removed.
pub fn request_host(req: &Request) -> Option<String> {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

impl Domains {
    /// The bucket a request's host is the download domain of.
    pub fn bucket_for(&self, req: &Request) -> Option<String> {
        self.map.get(&request_host(req)?).cloned()
    }

    /// Serves a request to a download domain of `bucket`.
    pub async fn serve(&self, bucket: &str, req: Request) -> Response {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        let raw_path = req.uri().path().to_owned();
        let raw_query = req.uri().query().unwrap_or("").to_owned();
        let key =
            String::from_utf8(percent_decode(raw_path.trim_start_matches('/'), false).into_owned());
        let Ok(key) = key else {
            return plain(
                StatusCode::BAD_REQUEST,
                "bad percent-encoding in the path\n",
            );
        };
        if key.is_empty() {
            return plain(StatusCode::NOT_FOUND, "no such file\n");
        }
        let host = request_host(&req).unwrap_or_default();
        let scheme = if req.uri().scheme_str() == Some("https") {
            "https"
        } else {
            "http"
        };
        let download = DownloadRequest {
            scheme,
            host: &host,
            raw_path: &raw_path,
            raw_query: &raw_query,
        };
        let now = now_unix();
        let default_cache = match authorize_download(&self.qiniu, bucket, &download, now) {
            Ok(None) => DEFAULT_PUBLIC_CACHE.to_owned(),
            // A signed link expires: no shared cache may keep it, nor any cache past expiry.
            Ok(Some(grant)) => format!(
                "private, max-age={}",
                grant.deadline.saturating_sub(now).min(DEFAULT_MAX_AGE)
            ),
            Err(e) => {
                return (
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED),
                    [(CONTENT_TYPE, "application/json")],
                    serde_json::json!({ "error": e.message }).to_string(),
                )
                    .into_response();
            }
        };
        let meta = match self.backend.head_object(bucket, &key).await {
            Ok(m) => m,
            Err(e) => return storage_error(&e),
        };
        let conditions = Conditions {
            if_match: header(req.headers(), "if-match"),
            if_none_match: header(req.headers(), "if-none-match"),
            if_modified_since: header(req.headers(), "if-modified-since"),
            if_unmodified_since: header(req.headers(), "if-unmodified-since"),
        };
        match conditions.evaluate(&meta.etag, meta.last_modified, true) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                let mut r = StatusCode::NOT_MODIFIED.into_response();
                caching_headers(r.headers_mut(), &meta, &default_cache);
                return r;
            }
            Precondition::Failed(_) => {
                return plain(StatusCode::PRECONDITION_FAILED, "precondition failed\n")
            }
        }
        let range = match parse_range(header(req.headers(), "range"), meta.size) {
            RangeSpec::Full => None,
            RangeSpec::Partial(r) => Some(r),
            RangeSpec::Unsatisfiable => {
                let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                set(
                    r.headers_mut(),
                    CONTENT_RANGE,
                    &format!("bytes */{}", meta.size),
                );
                return r;
            }
        };
        let status = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let length = range.as_ref().map_or(meta.size, |r| r.end - r.start);
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            match self.backend.get_object(bucket, &key, range.clone()).await {
                Ok((_, stream)) => Body::from_stream(stream),
                Err(e) => return storage_error(&e),
            }
        };
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        caching_headers(h, &meta, &default_cache);
        set(h, CONTENT_LENGTH, &length.to_string());
        if let Some(range) = &range {
            set(
                h,
                CONTENT_RANGE,
                &format!("bytes {}-{}/{}", range.start, range.end - 1, meta.size),
            );
        }
        let std = &meta.headers;
        let content_type = std
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        set(h, CONTENT_TYPE, content_type);
        for (name, value) in [
            (CONTENT_DISPOSITION, &std.content_disposition),
            (CONTENT_ENCODING, &std.content_encoding),
            (CONTENT_LANGUAGE, &std.content_language),
            (EXPIRES, &std.expires),
        ] {
            if let Some(v) = value {
                set(h, name, v);
            }
        }
        r
    }
}

/// Cache lifetime of a download without its own Cache-Control: a day (media are immutable
/// by key); signed links get at most their remaining validity.
const DEFAULT_MAX_AGE: u64 = 86_400;
const DEFAULT_PUBLIC_CACHE: &str = "public, max-age=86400";

/// ETag, Last-Modified, Accept-Ranges and Cache-Control (the object's own, else `default`:
/// a day for public buckets' immutable-by-key media; private links expire, so `private`
/// for at most their remaining validity).
fn caching_headers(h: &mut HeaderMap, meta: &ObjectMeta, default: &str) {
    set(h, ETAG, &format!("\"{}\"", meta.etag));
    set(h, LAST_MODIFIED, &http_date(meta.last_modified));
    set(h, ACCEPT_RANGES, "bytes");
    let cache = meta.headers.cache_control.as_deref().unwrap_or(default);
    set(h, CACHE_CONTROL, cache);
}

fn set(h: &mut HeaderMap, name: axum::http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn storage_error(e: &StorageError) -> Response {
    match e {
        StorageError::NoSuchKey | StorageError::NoSuchBucket | StorageError::InvalidKey(_) => {
            plain(StatusCode::NOT_FOUND, "no such file\n")
        }
        StorageError::Upstream(_) => {
            tracing::warn!("storage: bucket-domain download failed: {e}");
            plain(StatusCode::BAD_GATEWAY, "storage upstream unavailable\n")
        }
        _ => {
            tracing::warn!("storage: bucket-domain download failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n")
        }
    }
}
