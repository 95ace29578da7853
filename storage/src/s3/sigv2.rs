//! AWS Signature Version 2 as S3 speaks it: server-side verification of the
//! `Authorization: AWS <AccessKeyId>:<Signature>` header and of query-string auth
//! (`AWSAccessKeyId`, `Signature`, `Expires`), plus a small client-side signer for tests.
//!
//! SigV2 is still what older SDKs, `s3cmd --signature-v2` and boto3's `generate_presigned_url`
//! (with a custom endpoint and no explicit `signature_version`) produce, and what MinIO and S3
//! accept. Sans-IO like [`super::sigv4`]: it reads the same [`RequestView`], looks keys up
//! through the same [`CredentialProvider`] and returns the same [`Authenticated`] result, so the
//! HTTP layer treats both versions alike. SigV2 signs no payload hash: a verified request's
//! body is [`PayloadMode::Unsigned`] (trusted as sent; the HTTP layer still checks
//! `Content-MD5` and `x-amz-checksum-*` when present), unless the client declares a SHA-256 or
//! an unsigned-trailer aws-chunked body with `x-amz-content-sha256` (then checked / decoded as
//! for SigV4; chunk-signed bodies need SigV4 and are refused).
//!
//! The string to sign (base64 of HMAC-SHA1 with the secret key):
//!
//! ```text
//! <METHOD>\n<Content-MD5>\n<Content-Type>\n<Date>\n<CanonicalizedAmzHeaders><CanonicalizedResource>
//! ```
//!
//! - `Date` is the `Date` header as sent, empty when `x-amz-date` is present (it is then among
//!   the amz headers), and the `Expires` parameter for query auth.
//! - CanonicalizedAmzHeaders: every `x-amz-*` header, names lowercased, sorted, values trimmed,
//!   repeated headers joined with `,`, each line ending in `\n`. For query auth, `x-amz-*`,
//!   `content-type` and `content-md5` query parameters stand in for absent headers (botocore
//!   moves them into presigned URLs that way); [`query_headers`] lists them for the HTTP layer,
//!   which applies them like headers.
//! - CanonicalizedResource: `/<bucket>` when the bucket came from the `Host` header, then the
//!   path exactly as received (still percent-encoded), then the sub-resources of
//!   [`SUB_RESOURCES`] present in the query, sorted by name, values percent-decoded, as
//!   `?acl&versionId=3`. A sub-resource with an empty value is written bare (`uploads`).
//!   A path-style request naming only a bucket (`/media?uploads`) verifies with `/media` as
//!   sent or with `/media/`, which botocore signs for every bucket operation.
//!
//! Timestamps: header auth needs `x-amz-date` or `Date` (RFC 1123 with `GMT` or a numeric zone,
//! RFC 850, asctime, or ISO 8601 basic) within the clock-skew window
//! ([`VerifyConfig::max_skew_secs`]); query auth is valid until `Expires` (Unix seconds).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::error::AuthError;
use super::sigv4::{
    percent_decode, uri_encode, AuthMethod, Authenticated, CredentialProvider, PayloadMode,
    RegionPolicy, RequestView, SigningCredentials, Verified, VerifyConfig,
};
use crate::time::UtcDateTime;

type HmacSha1 = Hmac<Sha1>;

/// The `Authorization` scheme of SigV2.
pub const SCHEME: &str = "AWS";

/// Query parameters that are part of the CanonicalizedResource. The union of the list in AWS's
/// SigV2 documentation (acl, lifecycle, location, logging, notification, partNumber, policy,
/// requestPayment, torrent, uploadId, uploads, versionId, versioning, versions, website, the
/// `response-*` overrides and `delete`) and the lists the common SigV2 clients sign (botocore,
/// minio-go); where they disagree it only concerns sub-resources Ember does not implement.
pub const SUB_RESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "defaultObjectAcl",
    "delete",
    "encryption",
    "inventory",
    "legal-hold",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "retention",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

const ONE_MECHANISM: &str = "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified";
const MISSING_QUERY_PARAMS: &str =
    "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters";
const BAD_HEADER: &str = "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature";
const NO_DATE: &str = "AWS authentication requires a valid Date or x-amz-date header";

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

/// Raw `(name, value)` segments of a query string (not decoded); `None` when there was no `=`.
fn raw_query_segments(raw_query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    raw_query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        })
}

/// Decoded query parameter names equal to one of `names`.
fn query_has_any(raw_query: &str, names: &[&str]) -> bool {
    raw_query_segments(raw_query).any(|(k, _)| {
        let k = percent_decode(k, false);
        names.iter().any(|n| k.as_ref() == n.as_bytes())
    })
}

fn has_v2_query(raw_query: &str) -> bool {
    query_has_any(raw_query, &["AWSAccessKeyId", "Signature"])
}

fn has_v4_query(raw_query: &str) -> bool {
    query_has_any(
        raw_query,
        &["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"],
    )
}

/// The scheme of an `Authorization` value (its first word).
fn auth_scheme(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii_start();
    let end = value
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(value.len());
    &value[..end]
}

/// Whether a request uses SigV2: an `Authorization: AWS ...` header, or the `AWSAccessKeyId` /
/// `Signature` query parameters. Such requests go to [`verify_request`], which also refuses
/// them when they mix in a second mechanism; everything else goes to
/// [`super::sigv4::verify_request`].
pub fn uses_sigv2(req: &RequestView<'_>) -> bool {
    req.header("authorization")
        .is_some_and(|v| auth_scheme(v) == SCHEME.as_bytes())
        || has_v2_query(req.raw_query)
}

// ---------------------------------------------------------------------------------------------
// Canonicalization
// ---------------------------------------------------------------------------------------------

/// Where the request is authenticated, which decides the `Date` element and whether query
/// parameters stand in for headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMode<'a> {
    /// `Authorization` header: `Date` (empty when `x-amz-date` is present).
    Header,
    /// Query string: the `Expires` parameter as sent.
    Query { expires: &'a str },
}

/// `content-type`, `content-md5` and `x-amz-*` query parameters (names lowercased, values
/// decoded) whose header is absent: what query auth signs in their place. The HTTP layer
/// applies them as headers once the request verified (`x-amz-meta-*`, `Content-Type`, ...).
pub fn query_headers(req: &RequestView<'_>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in raw_query_segments(req.raw_query) {
        let name = percent_decode(k, false).to_ascii_lowercase();
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        let wanted = name.starts_with("x-amz-") || name == "content-type" || name == "content-md5";
        if !wanted || req.header(&name).is_some() {
            continue;
        }
        let value = percent_decode(v.unwrap_or(""), false).into_owned();
        out.push((name, value));
    }
    out
}

fn trim_value(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Appends a header value with folding whitespace (CR, LF and the blanks around them)
/// replaced by one space.
fn push_unfolded(out: &mut Vec<u8>, v: &[u8]) {
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' || v[i] == b'\n' {
            while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            while out.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                out.pop();
            }
            out.push(b' ');
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
}

/// The CanonicalizedAmzHeaders element (each line ends in `\n`; empty without `x-amz-*`).
/// `extra` are stand-in headers (query auth), used for names absent from the request.
fn canonicalized_amz_headers(req: &RequestView<'_>, extra: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut map: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for (name, value) in req.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-amz-") {
            map.entry(lower).or_default().push(trim_value(value));
        }
    }
    for (name, value) in extra {
        if name.starts_with("x-amz-") && !map.contains_key(name) {
            map.insert(name.clone(), vec![trim_value(value)]);
        }
    }
    let mut out = Vec::new();
    for (name, values) in map {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_unfolded(&mut out, v);
        }
        out.push(b'\n');
    }
    out
}

/// A sub-resource of the query: decoded name and value (`None` when empty).
type SubResource<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// The CanonicalizedResource: `/<virtual_host_bucket>` (when the bucket came from `Host`),
/// the raw path as received, then the sub-resources in the query, sorted by name.
pub fn canonicalized_resource(
    raw_path: &str,
    raw_query: &str,
    virtual_host_bucket: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw_path.len() + 16);
    if let Some(bucket) = virtual_host_bucket {
        out.push(b'/');
        out.extend_from_slice(bucket.as_bytes());
    }
    if raw_path.is_empty() {
        out.push(b'/');
    } else {
        out.extend_from_slice(raw_path.as_bytes());
    }
    let mut subs: Vec<SubResource<'_>> = raw_query_segments(raw_query)
        .filter_map(|(k, v)| {
            let name = percent_decode(k, false);
            SUB_RESOURCES
                .iter()
                .any(|s| s.as_bytes() == name.as_ref())
                .then(|| {
                    let value = v
                        .filter(|v| !v.is_empty())
                        .map(|v| percent_decode(v, false));
                    (name, value)
                })
        })
        .collect();
    // Stable: repeated names keep their order of arrival.
    subs.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, value)) in subs.iter().enumerate() {
        out.push(if i == 0 { b'?' } else { b'&' });
        out.extend_from_slice(name);
        if let Some(v) = value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out
}

/// The header value, or for query auth the stand-in from the query.
fn positional<'a>(req: &RequestView<'a>, extra: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    req.header(name)
        .or_else(|| {
            extra
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        })
        .map(trim_value)
        .unwrap_or(&[])
}

/// The SigV2 string to sign of a request.
pub fn string_to_sign(
    req: &RequestView<'_>,
    virtual_host_bucket: Option<&str>,
    mode: SignatureMode<'_>,
) -> Vec<u8> {
    let mut out = string_to_sign_head(req, mode);
    out.extend_from_slice(&canonicalized_resource(
        req.raw_path,
        req.raw_query,
        virtual_host_bucket,
    ));
    out
}

/// Everything of the string to sign before the CanonicalizedResource.
fn string_to_sign_head(req: &RequestView<'_>, mode: SignatureMode<'_>) -> Vec<u8> {
    let extra = match mode {
        SignatureMode::Header => Vec::new(),
        SignatureMode::Query { .. } => query_headers(req),
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(positional(req, &extra, "content-md5"));
    out.push(b'\n');
    out.extend_from_slice(positional(req, &extra, "content-type"));
    out.push(b'\n');
    match mode {
        SignatureMode::Header => {
            if req.header("x-amz-date").is_none() {
                if let Some(date) = req.header("date") {
                    out.extend_from_slice(trim_value(date));
                }
            }
        }
        SignatureMode::Query { expires } => out.extend_from_slice(expires.as_bytes()),
    }
    out.push(b'\n');
    out.extend_from_slice(&canonicalized_amz_headers(req, &extra));
    out
}

/// A path-style path naming only a bucket (`/media`, no slash after the name).
fn is_bare_bucket_path(raw_path: &str) -> bool {
    raw_path
        .strip_prefix('/')
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = <HmacSha1 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Base64 of HMAC-SHA1(secret, string to sign): the signature as clients send it.
pub fn sign(secret_key: &str, string_to_sign: &[u8]) -> String {
    STANDARD.encode(hmac_sha1(secret_key.as_bytes(), string_to_sign))
}

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month_number(s: &str) -> Option<u8> {
    let s = s.to_ascii_lowercase();
    let idx = MONTHS
        .iter()
        .position(|m| s.len() >= 3 && s.starts_with(m))?;
    Some(idx as u8 + 1)
}

fn small_number<T: std::str::FromStr>(s: &str, max_len: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_clock(s: &str) -> Option<(u8, u8, u8)> {
    let mut it = s.split(':');
    let h = small_number(it.next()?, 2)?;
    let m = small_number(it.next()?, 2)?;
    let sec = small_number(it.next()?, 2)?;
    it.next().is_none().then_some((h, m, sec))
}

/// Seconds east of UTC of a zone token; `None` when it is not one.
fn zone_offset(s: &str) -> Option<i64> {
    if ["GMT", "UTC", "UT", "Z"]
        .iter()
        .any(|z| s.eq_ignore_ascii_case(z))
    {
        return Some(0);
    }
    let (sign, digits) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    (hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

fn full_year(y: u16, digits: usize) -> u16 {
    match digits {
        2 if y >= 70 => 1900 + y,
        2 => 2000 + y,
        _ => y,
    }
}

/// Unix seconds of a SigV2 `Date` / `x-amz-date` value: RFC 1123 (`Tue, 27 Mar 2007 19:36:42
/// +0000` or `GMT`), RFC 850 (`Tuesday, 27-Mar-07 19:36:42 GMT`), asctime
/// (`Tue Mar 27 19:36:42 2007`) or ISO 8601 basic (`20070327T193642Z`).
pub fn parse_date(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(t) = UtcDateTime::parse_iso8601_basic(s) {
        return Some(t.unix());
    }
    let mut tokens: Vec<&str> = s
        .split([' ', '\t', ','])
        .filter(|t| !t.is_empty())
        .collect();
    // A leading weekday name (checked for shape only, as HTTP dates are).
    if tokens
        .first()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_alphabetic()) && month_number(t).is_none())
    {
        tokens.remove(0);
    }
    let (year, month, day, clock, zone) = match tokens.as_slice() {
        // RFC 850: 27-Mar-07 19:36:42 GMT
        [dmy, clock, rest @ ..] if dmy.contains('-') => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            let year = full_year(small_number(y, 4)?, y.len());
            (year, month_number(m)?, small_number(d, 2)?, *clock, rest)
        }
        // asctime: Mar 27 19:36:42 2007
        [m, d, clock, y, rest @ ..] if month_number(m).is_some() => (
            small_number(y, 4)?,
            month_number(m)?,
            small_number(d, 2)?,
            *clock,
            rest,
        ),
        // RFC 1123: 27 Mar 2007 19:36:42 GMT
        [d, m, y, clock, rest @ ..] => (
            full_year(small_number(y, 4)?, y.len()),
            month_number(m)?,
            small_number(d, 2)?,
            *clock,
            rest,
        ),
        _ => return None,
    };
    let offset = match zone {
        [] => 0,
        [z] => zone_offset(z)?,
        _ => return None,
    };
    let (h, m, sec) = parse_clock(clock)?;
    let local = UtcDateTime::new(year, month, day, h, m, sec)?.unix() as i64;
    u64::try_from(local - offset).ok()
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// What the request claims before its signature is checked.
struct Claim<'a> {
    access_key: Cow<'a, str>,
    signature: Cow<'a, str>,
    method: AuthMethod,
    time: UtcDateTime,
}

fn header_claim<'a>(
    req: &RequestView<'a>,
    value: &'a [u8],
    config: &VerifyConfig,
    now_unix: u64,
) -> Result<Claim<'a>, AuthError> {
    let bad = || AuthError::InvalidArgument(Cow::Borrowed(BAD_HEADER));
    let value = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    let rest = value
        .strip_prefix(SCHEME)
        .filter(|r| r.starts_with([' ', '\t']))
        .ok_or_else(bad)?
        .trim();
    let (access_key, signature) = rest.rsplit_once(':').ok_or_else(bad)?;
    let (access_key, signature) = (access_key.trim(), signature.trim());
    if access_key.is_empty() || signature.is_empty() {
        return Err(bad());
    }
    let date = match req.header("x-amz-date") {
        Some(v) => std::str::from_utf8(v).ok(),
        None => req.header_str("date"),
    };
    let time = date
        .and_then(parse_date)
        .ok_or(AuthError::denied(NO_DATE))?;
    if time.abs_diff(now_unix) > config.max_skew_secs {
        return Err(AuthError::RequestTimeTooSkewed {
            request_time: UtcDateTime::from_unix(time).iso8601_extended(),
            server_time: UtcDateTime::from_unix(now_unix).iso8601_extended(),
            max_allowed_skew_ms: config.max_skew_secs.saturating_mul(1000),
        });
    }
    Ok(Claim {
        access_key: Cow::Borrowed(access_key),
        signature: Cow::Borrowed(signature),
        method: AuthMethod::V2Header,
        time: UtcDateTime::from_unix(time),
    })
}

/// `AWSAccessKeyId`, `Signature` and `Expires` (first occurrence each, decoded; a literal `+`
/// in the signature stays a `+`).
struct QueryAuth {
    access_key: Option<String>,
    signature: Option<String>,
    expires: Option<String>,
}

fn parse_query_auth(raw_query: &str) -> QueryAuth {
    let mut q = QueryAuth {
        access_key: None,
        signature: None,
        expires: None,
    };
    for (k, v) in raw_query_segments(raw_query) {
        let slot = match percent_decode(k, false).as_ref() {
            b"AWSAccessKeyId" => &mut q.access_key,
            b"Signature" => &mut q.signature,
            b"Expires" => &mut q.expires,
            _ => continue,
        };
        if slot.is_none() {
            let value = percent_decode(v.unwrap_or(""), false);
            *slot = Some(String::from_utf8_lossy(&value).into_owned());
        }
    }
    q
}

fn query_claim(q: &QueryAuth, now_unix: u64) -> Result<Claim<'_>, AuthError> {
    let (Some(access_key), Some(signature), Some(expires)) = (
        q.access_key.as_deref(),
        q.signature.as_deref(),
        q.expires.as_deref(),
    ) else {
        return Err(AuthError::denied(MISSING_QUERY_PARAMS));
    };
    let expires_at: u64 = if !expires.is_empty() && expires.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than u64 holds is certainly in the future.
        expires.parse().unwrap_or(u64::MAX)
    } else {
        return Err(AuthError::AccessDenied(Cow::Owned(format!(
            "Invalid date (should be seconds since epoch): {}",
            expires.chars().take(64).collect::<String>()
        ))));
    };
    if now_unix > expires_at {
        return Err(AuthError::denied("Request has expired"));
    }
    if access_key.is_empty() {
        return Err(AuthError::InvalidAccessKeyId);
    }
    Ok(Claim {
        access_key: Cow::Borrowed(access_key),
        signature: Cow::Borrowed(signature),
        method: AuthMethod::V2Presigned { expires_at },
        time: UtcDateTime::from_unix(now_unix),
    })
}

/// Verifies a request's SigV2 signature (header or query string). `virtual_host_bucket` is the
/// bucket named by the `Host` header for virtual-host-style requests (it leads the
/// CanonicalizedResource); `now_unix` is wall-clock time. `config` supplies the clock-skew
/// window and the region recorded in the result.
///
/// Returns [`Authenticated::Anonymous`] when the request carries no credentials at all.
pub fn verify_request<C: CredentialProvider>(
    req: &RequestView<'_>,
    virtual_host_bucket: Option<&str>,
    config: &VerifyConfig,
    credentials: &C,
    now_unix: u64,
) -> Result<Authenticated<C::Permissions>, AuthError> {
    let authorization = req.header("authorization");
    let v2_query = has_v2_query(req.raw_query);
    let v4_query = has_v4_query(req.raw_query);
    if (authorization.is_some() && (v2_query || v4_query)) || (v2_query && v4_query) {
        return Err(AuthError::InvalidArgument(Cow::Borrowed(ONE_MECHANISM)));
    }
    if req.header("x-amz-security-token").is_some()
        || query_has_any(req.raw_query, &["x-amz-security-token"])
    {
        return Err(AuthError::InvalidToken);
    }
    let query;
    let (claim, mode) = if let Some(value) = authorization {
        if auth_scheme(value) != SCHEME.as_bytes() {
            // Not SigV2: the caller should have sent it to SigV4.
            return Err(AuthError::InvalidArgument(Cow::Borrowed(
                "Unsupported Authorization Type",
            )));
        }
        (
            header_claim(req, value, config, now_unix)?,
            SignatureMode::Header,
        )
    } else if v2_query {
        query = parse_query_auth(req.raw_query);
        let claim = query_claim(&query, now_unix)?;
        let expires = query.expires.as_deref().unwrap_or("");
        (claim, SignatureMode::Query { expires })
    } else {
        return Ok(Authenticated::Anonymous);
    };

    let Some(credential) = credentials.lookup(&claim.access_key) else {
        return Err(AuthError::InvalidAccessKeyId);
    };
    let given = STANDARD
        .decode(claim.signature.as_bytes())
        .ok()
        .and_then(|d| <[u8; 20]>::try_from(d).ok())
        .ok_or(AuthError::SignatureDoesNotMatch)?;
    // The resource as received; for a path-style request naming only a bucket (`/media`)
    // also `/media/`, which is what botocore (like S3) signs for bucket operations.
    let mut resources = vec![canonicalized_resource(
        req.raw_path,
        req.raw_query,
        virtual_host_bucket,
    )];
    if virtual_host_bucket.is_none() && is_bare_bucket_path(req.raw_path) {
        resources.push(canonicalized_resource(
            &format!("{}/", req.raw_path),
            req.raw_query,
            None,
        ));
    }
    let head = string_to_sign_head(req, mode);
    let mut matched = false;
    for resource in resources {
        let mut sts = head.clone();
        sts.extend_from_slice(&resource);
        let computed = hmac_sha1(credential.secret_key.as_bytes(), &sts);
        matched |= bool::from(given.ct_eq(&computed));
    }
    if !matched {
        return Err(AuthError::SignatureDoesNotMatch);
    }
    let payload = payload_mode(req, mode)?;
    let region = match &config.region {
        RegionPolicy::Exact(r) => r.as_str(),
        RegionPolicy::Any => "us-east-1",
    };
    Ok(Authenticated::Signed(Verified::signature_v2(
        claim.access_key.into_owned(),
        credential.permissions,
        claim.method,
        claim.time,
        region,
        &credential.secret_key,
        payload,
    )))
}

/// What the body must satisfy. SigV2 signs no payload, but a client may still declare one
/// with `x-amz-content-sha256` (signed here as an amz header): a SHA-256 is then checked and
/// an aws-chunked body with unsigned trailers decoded. Chunk signatures need SigV4, and an
/// aws-chunked `Content-Encoding` without a streaming mode would store the framing as data:
/// both are refused.
fn payload_mode(req: &RequestView<'_>, mode: SignatureMode<'_>) -> Result<PayloadMode, AuthError> {
    let declared = match mode {
        SignatureMode::Header => req.header_str("x-amz-content-sha256").map(Cow::Borrowed),
        SignatureMode::Query { .. } => query_headers(req)
            .into_iter()
            .find(|(n, _)| n == "x-amz-content-sha256")
            .map(|(_, v)| Cow::Owned(String::from_utf8_lossy(&v).trim().to_owned()))
            .or_else(|| req.header_str("x-amz-content-sha256").map(Cow::Borrowed)),
    };
    let payload = match declared.as_deref() {
        None => PayloadMode::Unsigned,
        Some(v) => PayloadMode::parse(v)?,
    };
    if matches!(
        payload,
        PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer
    ) {
        return Err(AuthError::invalid_request(
            "Chunk-signed aws-chunked uploads (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) require AWS Signature Version 4.",
        ));
    }
    let aws_chunked = req.header_values("content-encoding").any(|v| {
        String::from_utf8_lossy(v)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("aws-chunked"))
    });
    if aws_chunked && !payload.is_aws_chunked() {
        return Err(AuthError::invalid_request(
            "An aws-chunked body needs x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER.",
        ));
    }
    Ok(payload)
}

// ---------------------------------------------------------------------------------------------
// Signing (client side)
// ---------------------------------------------------------------------------------------------

/// Signs a request for header auth and returns the `Authorization` header value. The request's
/// headers must already hold `Date` (or `x-amz-date`) and every `x-amz-*` header it will send.
pub fn authorization_header(
    req: &RequestView<'_>,
    virtual_host_bucket: Option<&str>,
    credentials: SigningCredentials<'_>,
) -> String {
    let sts = string_to_sign(req, virtual_host_bucket, SignatureMode::Header);
    format!(
        "{SCHEME} {}:{}",
        credentials.access_key,
        sign(credentials.secret_key, &sts)
    )
}

/// What to presign with SigV2.
#[derive(Debug, Clone, Copy)]
pub struct PresignRequest<'a> {
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// Host as the client will send it (with the port when not the default).
    pub host: &'a str,
    /// Decoded path (`/bucket/my key.jpg` path-style, `/my key.jpg` virtual-host-style); it is
    /// percent-encoded here.
    pub path: &'a str,
    /// The bucket when `host` names it (virtual-host style).
    pub virtual_host_bucket: Option<&'a str>,
    /// Extra decoded query parameters (`response-content-type`, `x-amz-meta-*`, ...).
    pub query: &'a [(&'a str, &'a str)],
    pub credentials: SigningCredentials<'a>,
    /// Unix seconds after which the URL is refused.
    pub expires_at: u64,
}

/// Builds a SigV2 presigned URL.
pub fn presign_url(p: &PresignRequest<'_>) -> String {
    let path = if p.path.is_empty() { "/" } else { p.path };
    let encoded_path = uri_encode(path.as_bytes(), false);
    let expires = p.expires_at.to_string();
    let mut query = String::new();
    for (k, v) in p.query {
        query.push_str(&uri_encode(k.as_bytes(), true));
        query.push('=');
        query.push_str(&uri_encode(v.as_bytes(), true));
        query.push('&');
    }
    let headers: [(&str, &[u8]); 1] = [("host", p.host.as_bytes())];
    let view = RequestView {
        method: p.method,
        raw_path: &encoded_path,
        raw_query: query.trim_end_matches('&'),
        headers: &headers,
    };
    let sts = string_to_sign(
        &view,
        p.virtual_host_bucket,
        SignatureMode::Query { expires: &expires },
    );
    let signature = sign(p.credentials.secret_key, &sts);
    format!(
        "{}://{}{encoded_path}?{query}AWSAccessKeyId={}&Expires={expires}&Signature={}",
        p.scheme,
        p.host,
        uri_encode(p.credentials.access_key.as_bytes(), true),
        uri_encode(signature.as_bytes(), true)
    )
}

#[cfg(test)]
mod tests;
