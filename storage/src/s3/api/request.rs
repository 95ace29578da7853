//! The parts of a request the S3 API decides on before touching the backend: addressing
//! ([`Addressing`]: path- or virtual-host-style), the operation ([`Op`]), the query
//! ([`Query`]), byte ranges ([`parse_range`]) and conditional headers ([`Conditions`]), plus
//! the HTTP date format ([`http_date`]). All pure, so the bucket-domain front end reuses them.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::HeaderMap;
use axum::http::{Method, StatusCode};

use super::error::{S3Error, S3Result};
use crate::s3::sigv4;
use crate::time::UtcDateTime;

/// Which bucket and key a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// Whether the bucket came from the `Host` header.
    pub virtual_host: bool,
}

impl Addressing {
    /// Splits a request into bucket and key: virtual-host style when `host` (port ignored)
    /// is `<bucket>.<suffix>` for one of `suffixes`, path style otherwise. The path is
    /// percent-decoded once; it must then be UTF-8.
    pub fn parse(host: Option<&str>, raw_path: &str, suffixes: &[String]) -> S3Result<Self> {
        let decoded = sigv4::percent_decode(raw_path, false);
        let path = std::str::from_utf8(&decoded).map_err(|_| {
            S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidURI",
                "Couldn't parse the specified URI.",
            )
        })?;
        let path = path.strip_prefix('/').unwrap_or(path);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if let Some(bucket) = host.and_then(|h| virtual_host_bucket(h, suffixes)) {
            return Ok(Addressing {
                bucket: Some(bucket),
                key: non_empty(path),
                virtual_host: true,
            });
        }
        let (bucket, key) = match path.split_once('/') {
            Some((b, k)) => (b, k),
            None => (path, ""),
        };
        Ok(Addressing {
            bucket: non_empty(bucket),
            key: non_empty(key),
            virtual_host: false,
        })
    }
}

/// `media` for `media.s3.example.com[:port]` with suffix `s3.example.com`.
fn virtual_host_bucket(host: &str, suffixes: &[String]) -> Option<String> {
    if host.starts_with('[') {
        return None; // An IPv6 literal never names a bucket.
    }
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    suffixes.iter().find_map(|suffix| {
        let suffix = suffix.trim_matches('.').to_ascii_lowercase();
        let bucket = host.strip_suffix(&suffix)?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_owned())
    })
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListBuckets,
    CreateBucket,
    HeadBucket,
    DeleteBucket,
    GetBucketLocation,
    GetBucketVersioning,
    GetBucketAcl,
    PutBucketAcl,
    ListObjectsV1,
    ListObjectsV2,
    ListMultipartUploads,
    DeleteObjects,
    PutObject,
    CopyObject,
    GetObject,
    HeadObject,
    DeleteObject,
    GetObjectAcl,
    PutObjectAcl,
    GetObjectTagging,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    /// A configuration sub-resource the bucket never has (S3's 404 code and message).
    NoSuchConfiguration(&'static str, &'static str),
    NotImplemented,
    MethodNotAllowed,
}

/// Query parameters that select a sub-resource (the rest are arguments).
const SUB_RESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "location",
    "logging",
    "metadataConfiguration",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "renameObject",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "session",
    "tagging",
    "torrent",
    "uploads",
    "versioning",
    "versions",
    "website",
];

impl Op {
    /// Chooses the operation from the method, what is addressed and the query.
    pub fn classify(
        method: &Method,
        has_bucket: bool,
        has_key: bool,
        query: &Query,
        copy_source: bool,
    ) -> Op {
        let sub = SUB_RESOURCES.iter().copied().find(|s| query.has(s));
        let m = method.as_str();
        if !has_bucket {
            return match m {
                "GET" => Op::ListBuckets,
                _ => Op::MethodNotAllowed,
            };
        }
        if !has_key {
            return match (m, sub) {
                ("GET", Some("location")) => Op::GetBucketLocation,
                ("GET", Some("versioning")) => Op::GetBucketVersioning,
                ("GET", Some("acl")) => Op::GetBucketAcl,
                ("PUT", Some("acl")) => Op::PutBucketAcl,
                ("GET", Some("uploads")) => Op::ListMultipartUploads,
                ("POST", Some("delete")) => Op::DeleteObjects,
                ("GET", Some("policy")) => Op::NoSuchConfiguration(
                    "NoSuchBucketPolicy",
                    "The bucket policy does not exist",
                ),
                ("GET", Some("cors")) => Op::NoSuchConfiguration(
                    "NoSuchCORSConfiguration",
                    "The CORS configuration does not exist",
                ),
                ("GET", Some("lifecycle")) => Op::NoSuchConfiguration(
                    "NoSuchLifecycleConfiguration",
                    "The lifecycle configuration does not exist",
                ),
                ("GET", Some("tagging")) => {
                    Op::NoSuchConfiguration("NoSuchTagSet", "The TagSet does not exist")
                }
                (_, Some(_)) => Op::NotImplemented,
                ("GET", None) if query.get("list-type") == Some("2") => Op::ListObjectsV2,
                ("GET", None) => Op::ListObjectsV1,
                ("PUT", None) => Op::CreateBucket,
                ("HEAD", None) => Op::HeadBucket,
                ("DELETE", None) => Op::DeleteBucket,
                ("POST", None) => Op::NotImplemented,
                _ => Op::MethodNotAllowed,
            };
        }
        if query.has("uploadId") {
            return match m {
                "PUT" if copy_source => Op::UploadPartCopy,
                "PUT" => Op::UploadPart,
                "POST" => Op::CompleteMultipartUpload,
                "DELETE" => Op::AbortMultipartUpload,
                "GET" => Op::ListParts,
                _ => Op::MethodNotAllowed,
            };
        }
        match (m, sub) {
            ("POST", Some("uploads")) => Op::CreateMultipartUpload,
            ("GET", Some("acl")) => Op::GetObjectAcl,
            ("PUT", Some("acl")) => Op::PutObjectAcl,
            ("GET", Some("tagging")) => Op::GetObjectTagging,
            (_, Some(_)) => Op::NotImplemented,
            ("PUT", None) if copy_source => Op::CopyObject,
            ("PUT", None) => Op::PutObject,
            ("GET", None) => Op::GetObject,
            ("HEAD", None) => Op::HeadObject,
            ("DELETE", None) => Op::DeleteObject,
            ("POST", None) => Op::NotImplemented,
            _ => Op::MethodNotAllowed,
        }
    }

    /// Whether anonymous requests may perform this on a public bucket.
    pub(crate) fn public_read(self) -> bool {
        matches!(
            self,
            Op::GetObject
                | Op::HeadObject
                | Op::ListObjectsV1
                | Op::ListObjectsV2
                | Op::HeadBucket
                | Op::GetBucketLocation
        )
    }
}

/// Decoded query parameters, in order.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str) -> Query {
        Query(
            sigv4::query_pairs(raw)
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges and preconditions
// ---------------------------------------------------------------------------------------------

/// What a `Range` header asks of an object of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSpec {
    /// No range, an unparsable one or several ranges: the whole object (200).
    Full,
    /// These bytes (206).
    Partial(Range<u64>),
    /// 416 `InvalidRange`.
    Unsatisfiable,
}

pub(crate) fn parse_u64_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Interprets a `Range` header as S3 does: one range `bytes=a-b`, `bytes=a-` or `bytes=-n`;
/// anything else (several ranges, garbage) serves the whole object.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeSpec {
    let Some(value) = value else {
        return RangeSpec::Full;
    };
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| value[6..].trim())
    else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(n) = parse_u64_digits(last) else {
            return RangeSpec::Full;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(size - n.min(size)..size);
    }
    let Some(start) = parse_u64_digits(first) else {
        return RangeSpec::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_u64_digits(last) {
            Some(e) if e >= start => Some(e),
            _ => return RangeSpec::Full,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    let end_exclusive = end.map_or(size, |e| e.saturating_add(1).min(size));
    RangeSpec::Partial(start..end_exclusive)
}

/// The outcome of conditional request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    /// 304 (GET/HEAD only).
    NotModified,
    /// 412, with the header that failed.
    Failed(&'static str),
}

/// The four conditional headers of a request (or the `x-amz-copy-source-if-*` ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
}

/// Whether an `If-Match` / `If-None-Match` list names this ETag (`*` names any).
pub fn etag_list_matches(list: &str, etag: &str) -> bool {
    let etag = etag.trim_matches('"');
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || {
            let c = candidate.strip_prefix("W/").unwrap_or(candidate);
            c.trim_matches('"') == etag
        }
    })
}

impl Conditions<'_> {
    pub(crate) fn from_headers<'h>(headers: &'h HeaderMap, prefix: &str) -> Conditions<'h> {
        let get = |name: &str| -> Option<&'h str> {
            headers
                .get(format!("{prefix}{name}").as_str())
                .and_then(|v| v.to_str().ok())
        };
        Conditions {
            if_match: get("if-match"),
            if_none_match: get("if-none-match"),
            if_modified_since: get("if-modified-since"),
            if_unmodified_since: get("if-unmodified-since"),
        }
    }

    /// Evaluates the conditions against an object as RFC 9110 §13.2.2 orders them (which is
    /// what S3 documents): If-Match, else If-Unmodified-Since; then If-None-Match, else
    /// If-Modified-Since. Dates compare at one-second resolution; unparsable dates are
    /// ignored. `read` is true for GET/HEAD (a failed If-None-Match / If-Modified-Since is
    /// then 304, otherwise 412).
    pub fn evaluate(&self, etag: &str, last_modified: SystemTime, read: bool) -> Precondition {
        let modified = last_modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let date = |v: Option<&str>| v.and_then(|s| UtcDateTime::parse_http_date(s.trim()));
        if let Some(list) = self.if_match {
            if !etag_list_matches(list, etag) {
                return Precondition::Failed("If-Match");
            }
        } else if let Some(t) = date(self.if_unmodified_since) {
            if modified > t.unix() {
                return Precondition::Failed("If-Unmodified-Since");
            }
        }
        let not_modified = if let Some(list) = self.if_none_match {
            etag_list_matches(list, etag)
        } else if let Some(t) = date(self.if_modified_since) {
            read && modified <= t.unix()
        } else {
            false
        };
        match (not_modified, read) {
            (false, _) => Precondition::Proceed,
            (true, true) => Precondition::NotModified,
            (true, false) => Precondition::Failed("If-None-Match"),
        }
    }
}

/// The IMF-fixdate of a time (`Fri, 24 May 2013 00:00:00 GMT`).
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let d = UtcDateTime::from_unix(secs);
    let weekday = DAYS[(d.unix() / 86_400 % 7) as usize];
    format!(
        "{weekday}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        d.day,
        MONTHS[usize::from(d.month - 1)],
        d.year,
        d.hour,
        d.minute,
        d.second
    )
}
