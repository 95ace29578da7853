//! AWS Signature Version 4 as S3 speaks it: server-side verification of the `Authorization`
//! header and of presigned (query-string) URLs, and a small client-side signer for tests, the
//! upstream backend and presigned-URL generation.
//!
//! Sans-IO: a request is a [`RequestView`] (method, raw path and query as received, headers);
//! [`verify_request`] returns who signed it and what its body must satisfy ([`PayloadMode`]).
//! Bodies are checked afterwards, incrementally: a plain SHA-256 with [`PayloadHashCheck`],
//! aws-chunked uploads with [`super::chunked::AwsChunkedDecoder`], whose chunk signatures chain
//! from the seed signature verified here.
//!
//! Canonicalization follows S3 exactly: the path is percent-decoded once and re-encoded (S3
//! does not double-encode and does not normalize, so `//`, `./`, spaces and unicode in keys
//! survive), the query is sorted by encoded name then value (the signature parameter is
//! excluded for presigned URLs), header values are trimmed with inner whitespace runs
//! collapsed and repeated headers joined with `,`.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::checksum::ChecksumAlgorithm;
use super::chunked::{AwsChunkedDecoder, ChunkSignatureChain};
use super::error::AuthError;
use crate::time::UtcDateTime;

type HmacSha256 = Hmac<Sha256>;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name in the credential scope.
pub const SERVICE: &str = "s3";
/// The last component of the credential scope.
pub const TERMINATOR: &str = "aws4_request";
/// `x-amz-content-sha256` value for a body that is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// aws-chunked body with a signature per chunk.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// aws-chunked body with a signature per chunk and signed trailing headers.
pub const STREAMING_PAYLOAD_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
/// aws-chunked body without chunk signatures, with (unsigned) trailing headers.
pub const STREAMING_UNSIGNED_PAYLOAD_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// SHA-256 of the empty string, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Longest validity of a presigned URL (7 days), as S3 enforces.
pub const MAX_PRESIGNED_EXPIRES: u64 = 604_800;
/// S3's clock-skew window: 15 minutes.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 900;

const HEADER_PREFIX: &str = "The authorization header is malformed; ";
const CREDENTIAL_QUERY_PREFIX: &str = "Error parsing the X-Amz-Credential parameter; ";
const MISSING_QUERY_PARAMS: &str = "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.";
const UNSUPPORTED_MECHANISM: &str =
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.";
const BAD_CONTENT_SHA256: &str = "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.";

// ---------------------------------------------------------------------------------------------
// Request view
// ---------------------------------------------------------------------------------------------

/// An HTTP request as the auth layer needs it, independent of any HTTP library.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method as received (`GET`, `PUT`, ...).
    pub method: &'a str,
    /// Path as received, still percent-encoded, without the query (`/bucket/a%20b`).
    pub raw_path: &'a str,
    /// Query as received, without the leading `?` (empty when there is none).
    pub raw_query: &'a str,
    /// Every header in order of arrival; names compare case-insensitively, a name may repeat,
    /// values are raw bytes. HTTP/2's `:authority` must be passed as `host`.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> RequestView<'a> {
    /// All values of a header, in order of arrival.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// The first value of a header when it is UTF-8, trimmed.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|s| s.trim_matches([' ', '\t']))
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and hex
// ---------------------------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key `HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service),
/// "aws4_request")`. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    /// Derives the key for one day, region and service.
    pub fn derive(secret_key: &str, date_stamp: &str, region: &str, service: &str) -> Self {
        let mut k_secret = Vec::with_capacity(4 + secret_key.len());
        k_secret.extend_from_slice(b"AWS4");
        k_secret.extend_from_slice(secret_key.as_bytes());
        let k_date = hmac_sha256(&k_secret, date_stamp.as_bytes());
        let k_region = hmac_sha256(&k_date, region.as_bytes());
        let k_service = hmac_sha256(&k_region, service.as_bytes());
        SigningKey(hmac_sha256(&k_service, TERMINATOR.as_bytes()))
    }

    /// HMAC-SHA256 of a string to sign with this key: the raw signature.
    pub fn sign(&self, string_to_sign: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, string_to_sign)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
pub fn hex_decode_32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

/// Constant-time equality of two signatures.
pub(crate) fn signatures_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

// ---------------------------------------------------------------------------------------------
// Canonicalization
// ---------------------------------------------------------------------------------------------

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// SigV4 URI encoding: unreserved characters stay, everything else becomes `%XX` (uppercase);
/// `/` stays when `encode_slash` is false (paths) and is encoded otherwise (query parts).
pub fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
    for &b in bytes {
        if is_unreserved(b) || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// Percent-decodes; a `%` not followed by two hex digits is kept literally. With
/// `plus_as_space`, `+` decodes to a space (query strings).
pub fn percent_decode(s: &str, plus_as_space: bool) -> Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !(b.contains(&b'%') || (plus_as_space && b.contains(&b'+'))) {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_val);
            let lo = b.get(i + 2).copied().and_then(hex_val);
            if let (Some(h), Some(l)) = (hi, lo) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(if c == b'+' && plus_as_space { b' ' } else { c });
        i += 1;
    }
    Cow::Owned(out)
}

/// The canonical URI of a raw (percent-encoded) request path: decoded once, encoded once.
pub fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    uri_encode(&percent_decode(raw_path, false), false)
}

/// Decoded `(name, value)` pairs of a raw query string, in order; empty segments are skipped.
pub fn query_pairs(raw_query: &str) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    raw_query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k, true), percent_decode(v, true))
    })
}

/// The canonical query string: every parameter decoded then SigV4-encoded, sorted by name then
/// value; `X-Amz-Signature` is left out when `presigned`.
pub fn canonical_query_string(raw_query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(raw_query)
        .filter(|(k, _)| !(presigned && k.as_ref() == b"X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k, true), uri_encode(&v, true)))
        .collect();
    pairs.sort_unstable();
    join_pairs(&pairs)
}

fn join_pairs(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Appends one canonical header value: each value trimmed, runs of spaces/tabs collapsed to one
/// space, multiple values joined by `,`.
fn push_canonical_value<'v>(out: &mut Vec<u8>, values: impl Iterator<Item = &'v [u8]>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut pending_space = false;
        let mut started = false;
        for &b in v {
            if b == b' ' || b == b'\t' {
                pending_space = started;
            } else {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `SignedHeaders` (`host;range;x-amz-date`): names lowercased, sorted, deduplicated.
fn parse_signed_headers(s: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for name in s.split(';') {
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return None;
        }
        names.push(name.to_ascii_lowercase());
    }
    names.sort_unstable();
    names.dedup();
    Some(names)
}

/// Builds the canonical request of a request and the list of signed header names.
fn build_canonical_request(
    req: &RequestView<'_>,
    canonical_query: &str,
    signed_headers: &[String],
    payload_hash: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(req.raw_path).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query.as_bytes());
    out.push(b'\n');
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        push_canonical_value(&mut out, req.header_values(name));
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    out
}

/// `AWS4-HMAC-SHA256\n<time>\n<scope>\n<hex sha256(canonical request)>`.
pub fn string_to_sign(time: &UtcDateTime, scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        time.iso8601_basic(),
        hex_encode(&Sha256::digest(canonical_request))
    )
}

/// `YYYYMMDD/<region>/s3/aws4_request`.
pub fn credential_scope(time: &UtcDateTime, region: &str) -> String {
    format!("{}/{region}/{SERVICE}/{TERMINATOR}", time.date_stamp())
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// A secret and what its holder may do (`P` is the caller's permission type). Its `Debug`
/// output leaves the secret out.
#[derive(Clone)]
pub struct Credential<P> {
    pub secret_key: String,
    pub permissions: P,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Credential<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_key", &"[redacted]")
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// Looks up access keys. Implemented for closures `Fn(&str) -> Option<Credential<P>>`.
pub trait CredentialProvider {
    type Permissions;
    fn lookup(&self, access_key: &str) -> Option<Credential<Self::Permissions>>;
}

impl<F, P> CredentialProvider for F
where
    F: Fn(&str) -> Option<Credential<P>>,
{
    type Permissions = P;
    fn lookup(&self, access_key: &str) -> Option<Credential<P>> {
        self(access_key)
    }
}

/// Which regions the credential scope may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionPolicy {
    /// Only this region (S3's behaviour: anything else is `AuthorizationHeaderMalformed`).
    Exact(String),
    /// Any region (MinIO-style single-region deployments whose clients pick arbitrary ones).
    Any,
}

/// Server-side verification settings.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub region: RegionPolicy,
    /// Clock-skew window for header auth and for presigned URLs dated in the future.
    pub max_skew_secs: u64,
}

impl VerifyConfig {
    /// S3's settings for one region: exact region match, 15-minute skew.
    pub fn new(region: &str) -> Self {
        VerifyConfig {
            region: RegionPolicy::Exact(region.to_owned()),
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
        }
    }
}

/// What the request body must satisfy, from `x-amz-content-sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `UNSIGNED-PAYLOAD` (and every presigned URL without `X-Amz-Content-Sha256`).
    Unsigned,
    /// The body's SHA-256 must equal this (check with [`PayloadHashCheck`]).
    Sha256([u8; 32]),
    /// aws-chunked, each chunk signed.
    StreamingSigned,
    /// aws-chunked, each chunk signed, then signed trailers.
    StreamingSignedTrailer,
    /// aws-chunked without signatures, then trailers (usually a checksum).
    StreamingUnsignedTrailer,
}

impl PayloadMode {
    pub(crate) fn parse(value: &str) -> Result<Self, AuthError> {
        match value {
            UNSIGNED_PAYLOAD => Ok(PayloadMode::Unsigned),
            STREAMING_PAYLOAD => Ok(PayloadMode::StreamingSigned),
            STREAMING_PAYLOAD_TRAILER => Ok(PayloadMode::StreamingSignedTrailer),
            STREAMING_UNSIGNED_PAYLOAD_TRAILER => Ok(PayloadMode::StreamingUnsignedTrailer),
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
            | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => Err(AuthError::NotImplemented(
                Cow::Borrowed("SigV4a (AWS4-ECDSA-P256-SHA256) payload signing is not supported."),
            )),
            v => hex_decode_32(v.as_bytes()).map(PayloadMode::Sha256).ok_or(
                AuthError::InvalidArgument(Cow::Borrowed(BAD_CONTENT_SHA256)),
            ),
        }
    }

    /// Whether the body is aws-chunked encoded.
    pub fn is_aws_chunked(&self) -> bool {
        matches!(
            self,
            PayloadMode::StreamingSigned
                | PayloadMode::StreamingSignedTrailer
                | PayloadMode::StreamingUnsignedTrailer
        )
    }
}

/// How the request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: AWS4-HMAC-SHA256 ...`.
    Header,
    /// Query-string auth; the URL is valid until `expires_at` (Unix seconds).
    Presigned { expires_at: u64 },
    /// Signature Version 2 `Authorization: AWS <AccessKeyId>:<Signature>` ([`super::sigv2`]).
    V2Header,
    /// Signature Version 2 query-string auth, valid until `expires_at` (Unix seconds).
    V2Presigned { expires_at: u64 },
}

/// The outcome of [`verify_request`].
#[derive(Debug, Clone)]
pub enum Authenticated<P> {
    /// No credentials at all: the caller decides (public buckets).
    Anonymous,
    /// A valid signature by a known key.
    Signed(Verified<P>),
}

/// A request whose signature verified.
#[derive(Debug, Clone)]
pub struct Verified<P> {
    pub access_key: String,
    pub permissions: P,
    pub method: AuthMethod,
    /// The region named in the credential scope.
    pub region: String,
    /// The request time (`X-Amz-Date`).
    pub time: UtcDateTime,
    /// What the body must satisfy.
    pub payload: PayloadMode,
    signing_key: SigningKey,
    seed_signature: [u8; 32],
}

impl<P> Verified<P> {
    /// A request verified by Signature Version 2 ([`super::sigv2`]). SigV2 signs no payload
    /// hash, so `payload` is [`PayloadMode::Unsigned`] unless the client declared one with
    /// `x-amz-content-sha256` (never a signed-chunk mode: there is no chunk-signature chain).
    /// The signing key is still derived from the secret (never a value anyone could compute)
    /// and the seed signature is zero.
    pub(crate) fn signature_v2(
        access_key: String,
        permissions: P,
        method: AuthMethod,
        time: UtcDateTime,
        region: &str,
        secret_key: &str,
        payload: PayloadMode,
    ) -> Self {
        debug_assert!(!matches!(
            payload,
            PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer
        ));
        Verified {
            access_key,
            permissions,
            method,
            region: region.to_owned(),
            time,
            payload,
            signing_key: SigningKey::derive(secret_key, &time.date_stamp(), region, SERVICE),
            seed_signature: [0; 32],
        }
    }

    /// `YYYYMMDD/<region>/s3/aws4_request`.
    pub fn scope(&self) -> String {
        credential_scope(&self.time, &self.region)
    }

    /// The derived signing key (for chunk signatures).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The verified request signature, which seeds the chunk-signature chain.
    pub fn seed_signature(&self) -> [u8; 32] {
        self.seed_signature
    }

    /// The chunk-signature chain of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD*` upload.
    pub fn chunk_signature_chain(&self) -> ChunkSignatureChain {
        ChunkSignatureChain::new(
            self.signing_key.clone(),
            &self.time.iso8601_basic(),
            &self.scope(),
            self.seed_signature,
        )
    }

    /// The body decoder for an aws-chunked payload mode, `None` for plain bodies.
    pub fn chunked_decoder(&self) -> Option<AwsChunkedDecoder> {
        match self.payload {
            PayloadMode::StreamingSigned => Some(AwsChunkedDecoder::signed(
                self.chunk_signature_chain(),
                false,
            )),
            PayloadMode::StreamingSignedTrailer => Some(AwsChunkedDecoder::signed(
                self.chunk_signature_chain(),
                true,
            )),
            PayloadMode::StreamingUnsignedTrailer => Some(AwsChunkedDecoder::unsigned_trailer()),
            PayloadMode::Unsigned | PayloadMode::Sha256(_) => None,
        }
    }

    /// [`Self::chunked_decoder`] configured from the request's headers: the payload length
    /// from `x-amz-decoded-content-length` and the trailing checksum announced by
    /// `x-amz-trailer` (`x-amz-checksum-crc32`, ...), which the decoder then requires and
    /// checks. `None` for plain bodies.
    pub fn chunked_decoder_for(
        &self,
        req: &RequestView<'_>,
    ) -> Result<Option<AwsChunkedDecoder>, AuthError> {
        let Some(mut decoder) = self.chunked_decoder() else {
            return Ok(None);
        };
        if let Some(len) = req.header("x-amz-decoded-content-length") {
            let len = std::str::from_utf8(len)
                .ok()
                .map(|s| s.trim_matches([' ', '\t']))
                .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or(AuthError::InvalidArgument(Cow::Borrowed(
                    "x-amz-decoded-content-length must be a non-negative integer.",
                )))?;
            decoder = decoder.with_decoded_length(len);
        }
        if let Some(trailer) = req.header("x-amz-trailer") {
            let names = std::str::from_utf8(trailer).unwrap_or("");
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.to_ascii_lowercase().starts_with("x-amz-checksum-") {
                    continue;
                }
                let algorithm =
                    ChecksumAlgorithm::from_header_name(name).ok_or(AuthError::invalid_request(
                        "The value specified in the x-amz-trailer header is not supported",
                    ))?;
                decoder = decoder.with_trailer_checksum(algorithm);
            }
        }
        Ok(Some(decoder))
    }
}

/// Incremental check of a body against `x-amz-content-sha256`.
#[derive(Debug, Clone)]
pub struct PayloadHashCheck {
    expected: [u8; 32],
    hasher: Sha256,
}

impl PayloadHashCheck {
    pub fn new(expected: [u8; 32]) -> Self {
        PayloadHashCheck {
            expected,
            hasher: Sha256::new(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// `XAmzContentSHA256Mismatch` unless the body hashed to the expected value.
    pub fn finish(self) -> Result<(), AuthError> {
        let got: [u8; 32] = self.hasher.finalize().into();
        if signatures_equal(&got, &self.expected) {
            Ok(())
        } else {
            Err(AuthError::XAmzContentSha256Mismatch)
        }
    }
}

/// Where the credential came from, for error messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
}

impl Source {
    fn malformed(self, detail: &str) -> AuthError {
        match self {
            Source::Header => {
                AuthError::AuthorizationHeaderMalformed(format!("{HEADER_PREFIX}{detail}"))
            }
            Source::Query => AuthError::AuthorizationQueryParametersError(format!(
                "{CREDENTIAL_QUERY_PREFIX}{detail}"
            )),
        }
    }
}

/// The parts of a credential `AK/YYYYMMDD/REGION/s3/aws4_request`.
struct CredentialScope<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
}

fn parse_credential<'a>(
    credential: &'a str,
    source: Source,
    region_policy: &RegionPolicy,
) -> Result<CredentialScope<'a>, AuthError> {
    let mut parts = credential.rsplitn(5, '/');
    let (terminal, service, region, date, access_key) =
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(s), Some(r), Some(d), Some(a)) if !a.is_empty() && !r.is_empty() => {
                (t, s, r, d, a)
            }
            _ => {
                return Err(source.malformed(
                    "the Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".",
                ))
            }
        };
    let date_ok =
        date.len() == 8 && UtcDateTime::parse_iso8601_basic(&format!("{date}T000000Z")).is_some();
    if !date_ok {
        return Err(source.malformed(&format!(
            "incorrect date format \"{date}\". This date in the credential must be in the format \"yyyyMMdd\"."
        )));
    }
    if let RegionPolicy::Exact(expected) = region_policy {
        if region != expected {
            return Err(AuthError::WrongRegion {
                presigned: source == Source::Query,
                region: region.to_owned(),
                expected: expected.clone(),
            });
        }
    }
    if service != SERVICE {
        return Err(source.malformed(&format!(
            "incorrect service \"{service}\". This endpoint belongs to \"{SERVICE}\"."
        )));
    }
    if terminal != TERMINATOR {
        return Err(source.malformed(&format!(
            "incorrect terminal \"{terminal}\". This endpoint uses \"{TERMINATOR}\"."
        )));
    }
    Ok(CredentialScope {
        access_key,
        date,
        region,
    })
}

/// The three fields of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct HeaderAuth<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<HeaderAuth<'_>, AuthError> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = match value.find([' ', '\t']) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    if scheme != ALGORITHM {
        return Err(if scheme == "AWS" {
            AuthError::invalid_request(UNSUPPORTED_MECHANISM)
        } else if scheme == "AWS4-ECDSA-P256-SHA256" {
            AuthError::NotImplemented(Cow::Borrowed(
                "SigV4a (AWS4-ECDSA-P256-SHA256) is not supported.",
            ))
        } else {
            AuthError::InvalidArgument(Cow::Borrowed("Unsupported Authorization Type"))
        });
    }
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    let three = || {
        AuthError::AuthorizationHeaderMalformed(format!(
            "{HEADER_PREFIX}the authorization header requires three components: Credential, SignedHeaders, and Signature."
        ))
    };
    for item in rest.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(three)?;
        let slot = if k.eq_ignore_ascii_case("Credential") {
            &mut credential
        } else if k.eq_ignore_ascii_case("SignedHeaders") {
            &mut signed_headers
        } else if k.eq_ignore_ascii_case("Signature") {
            &mut signature
        } else {
            return Err(three());
        };
        if slot.replace(v).is_some() {
            return Err(three());
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(HeaderAuth {
            credential,
            signed_headers,
            signature,
        }),
        _ => Err(three()),
    }
}

/// The presigned-URL parameters, decoded.
#[derive(Default)]
struct QueryAuth {
    algorithm: Option<String>,
    credential: Option<String>,
    date: Option<String>,
    expires: Option<String>,
    signed_headers: Option<String>,
    signature: Option<String>,
    content_sha256: Option<String>,
    security_token: bool,
}

fn parse_query_auth(raw_query: &str) -> QueryAuth {
    let mut q = QueryAuth::default();
    for (k, v) in query_pairs(raw_query) {
        let slot = match k.as_ref() {
            b"X-Amz-Algorithm" => &mut q.algorithm,
            b"X-Amz-Credential" => &mut q.credential,
            b"X-Amz-Date" => &mut q.date,
            b"X-Amz-Expires" => &mut q.expires,
            b"X-Amz-SignedHeaders" => &mut q.signed_headers,
            b"X-Amz-Signature" => &mut q.signature,
            b"X-Amz-Content-Sha256" => &mut q.content_sha256,
            b"X-Amz-Security-Token" => {
                q.security_token = true;
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(&v).into_owned());
        }
    }
    q
}

fn has_query_auth(raw_query: &str) -> bool {
    query_pairs(raw_query).any(|(k, _)| {
        matches!(
            k.as_ref(),
            b"X-Amz-Algorithm" | b"X-Amz-Credential" | b"X-Amz-Signature"
        )
    })
}

fn has_sigv2_query(raw_query: &str) -> bool {
    query_pairs(raw_query).any(|(k, _)| k.as_ref() == b"AWSAccessKeyId")
}

fn skewed(time: &UtcDateTime, now_unix: u64, max_skew_secs: u64) -> AuthError {
    AuthError::RequestTimeTooSkewed {
        request_time: time.iso8601_extended(),
        server_time: UtcDateTime::from_unix(now_unix).iso8601_extended(),
        max_allowed_skew_ms: max_skew_secs.saturating_mul(1000),
    }
}

/// Everything a verification needs once the auth form is parsed.
struct Claim<'a> {
    scope: CredentialScope<'a>,
    time: UtcDateTime,
    signed_headers: Vec<String>,
    signature: Option<[u8; 32]>,
    payload_hash: Cow<'a, str>,
    payload: PayloadMode,
    method: AuthMethod,
    presigned: bool,
}

/// Verifies a request's SigV4 signature (header or presigned). `now_unix` is wall-clock time.
///
/// Returns [`Authenticated::Anonymous`] when the request carries no credentials at all.
pub fn verify_request<C: CredentialProvider>(
    req: &RequestView<'_>,
    config: &VerifyConfig,
    credentials: &C,
    now_unix: u64,
) -> Result<Authenticated<C::Permissions>, AuthError> {
    let authorization = req.header("authorization");
    let query_auth = has_query_auth(req.raw_query);
    if authorization.is_some() && query_auth {
        return Err(AuthError::InvalidArgument(Cow::Borrowed(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        )));
    }
    if req.header("x-amz-security-token").is_some() {
        return Err(AuthError::InvalidToken);
    }
    // Owned storage the claim borrows from when the auth comes from the query.
    let query;
    let claim = if let Some(value) = authorization {
        let value = std::str::from_utf8(value).map_err(|_| {
            AuthError::AuthorizationHeaderMalformed(format!(
                "{HEADER_PREFIX}the authorization header requires three components: Credential, SignedHeaders, and Signature."
            ))
        })?;
        header_claim(req, value, config, now_unix)?
    } else if query_auth {
        query = parse_query_auth(req.raw_query);
        if query.security_token {
            return Err(AuthError::InvalidToken);
        }
        query_claim(&query, config, now_unix)?
    } else if has_sigv2_query(req.raw_query) {
        return Err(AuthError::invalid_request(UNSUPPORTED_MECHANISM));
    } else {
        return Ok(Authenticated::Anonymous);
    };

    let Some(credential) = credentials.lookup(claim.scope.access_key) else {
        return Err(AuthError::InvalidAccessKeyId);
    };
    let key = SigningKey::derive(
        &credential.secret_key,
        claim.scope.date,
        claim.scope.region,
        SERVICE,
    );
    let canonical_query = canonical_query_string(req.raw_query, claim.presigned);
    let canonical = build_canonical_request(
        req,
        &canonical_query,
        &claim.signed_headers,
        &claim.payload_hash,
    );
    let scope = format!(
        "{}/{}/{SERVICE}/{TERMINATOR}",
        claim.scope.date, claim.scope.region
    );
    let computed = key.sign(string_to_sign(&claim.time, &scope, &canonical).as_bytes());
    match claim.signature {
        Some(given) if signatures_equal(&computed, &given) => {}
        _ => return Err(AuthError::SignatureDoesNotMatch),
    }
    check_unsigned_amz_headers(req, &claim.signed_headers)?;
    Ok(Authenticated::Signed(Verified {
        access_key: claim.scope.access_key.to_owned(),
        permissions: credential.permissions,
        method: claim.method,
        region: claim.scope.region.to_owned(),
        time: claim.time,
        payload: claim.payload,
        signing_key: key,
        seed_signature: computed,
    }))
}

fn header_claim<'a>(
    req: &RequestView<'a>,
    value: &'a str,
    config: &VerifyConfig,
    now_unix: u64,
) -> Result<Claim<'a>, AuthError> {
    let auth = parse_authorization(value)?;
    let scope = parse_credential(auth.credential, Source::Header, &config.region)?;
    let signed_headers = parse_signed_headers(auth.signed_headers).ok_or_else(|| {
        AuthError::AuthorizationHeaderMalformed(format!(
            "{HEADER_PREFIX}the SignedHeaders are mal-formed."
        ))
    })?;
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::AuthorizationHeaderMalformed(format!(
            "{HEADER_PREFIX}the SignedHeaders must include 'host'."
        )));
    }
    let time = match req.header("x-amz-date") {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| UtcDateTime::parse_iso8601_basic(s.trim())),
        None => req
            .header_str("date")
            .and_then(UtcDateTime::parse_http_date),
    }
    .ok_or(AuthError::denied(
        "AWS authentication requires a valid Date or x-amz-date header",
    ))?;
    if time.date_stamp() != scope.date {
        return Err(AuthError::AuthorizationHeaderMalformed(format!(
            "{HEADER_PREFIX}Invalid credential date. Date is not the same as X-Amz-Date."
        )));
    }
    if time.unix().abs_diff(now_unix) > config.max_skew_secs {
        return Err(skewed(&time, now_unix, config.max_skew_secs));
    }
    let payload_hash = req
        .header_str("x-amz-content-sha256")
        .ok_or(AuthError::invalid_request(
            "Missing required header for this request: x-amz-content-sha256",
        ))?;
    let payload = PayloadMode::parse(payload_hash)?;
    Ok(Claim {
        scope,
        time,
        signed_headers,
        signature: hex_decode_32(auth.signature.as_bytes()),
        payload_hash: Cow::Borrowed(payload_hash),
        payload,
        method: AuthMethod::Header,
        presigned: false,
    })
}

fn query_claim<'a>(
    q: &'a QueryAuth,
    config: &VerifyConfig,
    now_unix: u64,
) -> Result<Claim<'a>, AuthError> {
    let (
        Some(algorithm),
        Some(credential),
        Some(date),
        Some(expires),
        Some(signed),
        Some(signature),
    ) = (
        q.algorithm.as_deref(),
        q.credential.as_deref(),
        q.date.as_deref(),
        q.expires.as_deref(),
        q.signed_headers.as_deref(),
        q.signature.as_deref(),
    )
    else {
        return Err(AuthError::AuthorizationQueryParametersError(
            MISSING_QUERY_PARAMS.to_owned(),
        ));
    };
    let query_error = |m: &str| AuthError::AuthorizationQueryParametersError(m.to_owned());
    if algorithm != ALGORITHM {
        return Err(query_error(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
        ));
    }
    let time = UtcDateTime::parse_iso8601_basic(date).ok_or_else(|| {
        query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    })?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let expires: u64 = if all_digits(expires) {
        // Too many digits for u64 is certainly more than a week.
        expires.parse().unwrap_or(u64::MAX)
    } else if expires.strip_prefix('-').is_some_and(all_digits) {
        return Err(query_error("X-Amz-Expires must be non-negative"));
    } else {
        return Err(query_error("X-Amz-Expires should be a number"));
    };
    if expires > MAX_PRESIGNED_EXPIRES {
        return Err(query_error(
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        ));
    }
    let scope = parse_credential(credential, Source::Query, &config.region)?;
    if time.date_stamp() != scope.date {
        return Err(AuthError::AuthorizationQueryParametersError(format!(
            "Invalid credential date \"{}\". This date is not the same as X-Amz-Date: \"{}\".",
            scope.date,
            time.date_stamp()
        )));
    }
    let signed_headers = parse_signed_headers(signed)
        .ok_or_else(|| query_error("X-Amz-SignedHeaders is mal-formed."))?;
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(query_error("X-Amz-SignedHeaders must include 'host'."));
    }
    let start = time.unix();
    if start > now_unix.saturating_add(config.max_skew_secs) {
        return Err(AuthError::denied("Request is not valid yet"));
    }
    let expires_at = start + expires;
    if now_unix > expires_at {
        return Err(AuthError::denied("Request has expired"));
    }
    let (payload_hash, payload) = match q.content_sha256.as_deref() {
        Some(v) => (Cow::Borrowed(v), PayloadMode::parse(v)?),
        None => (Cow::Borrowed(UNSIGNED_PAYLOAD), PayloadMode::Unsigned),
    };
    Ok(Claim {
        scope,
        time,
        signed_headers,
        signature: hex_decode_32(signature.as_bytes()),
        payload_hash,
        payload,
        method: AuthMethod::Presigned { expires_at },
        presigned: true,
    })
}

/// S3 refuses `x-amz-*` headers that were sent but not signed (`x-amz-content-sha256` aside,
/// whose value is part of the canonical request anyway).
fn check_unsigned_amz_headers(req: &RequestView<'_>, signed: &[String]) -> Result<(), AuthError> {
    for (name, _) in req.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-amz-")
            && lower != "x-amz-content-sha256"
            && signed.binary_search(&lower).is_err()
        {
            return Err(AuthError::denied(
                "There were headers present in the request which were not signed",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signing (client side)
// ---------------------------------------------------------------------------------------------

/// An access key and its secret, for signing.
#[derive(Clone, Copy)]
pub struct SigningCredentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
}

impl std::fmt::Debug for SigningCredentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCredentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// The canonical request of `req` for the given signed headers and payload hash (header auth),
/// exactly as the verifier builds it. Exposed for tests and debugging.
pub fn canonical_request(
    req: &RequestView<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Vec<u8> {
    let names = normalize_names(signed_headers);
    build_canonical_request(
        req,
        &canonical_query_string(req.raw_query, false),
        &names,
        payload_hash,
    )
}

fn normalize_names(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Signs a request for header auth and returns the `Authorization` header value. The request's
/// headers must already hold every header in `signed_headers` (at least `host`, and normally
/// `x-amz-date` = `time` and `x-amz-content-sha256` = `payload_hash`).
pub fn authorization_header(
    req: &RequestView<'_>,
    credentials: SigningCredentials<'_>,
    region: &str,
    time: &UtcDateTime,
    signed_headers: &[&str],
    payload_hash: &str,
) -> String {
    let names = normalize_names(signed_headers);
    let canonical = build_canonical_request(
        req,
        &canonical_query_string(req.raw_query, false),
        &names,
        payload_hash,
    );
    let scope = credential_scope(time, region);
    let key = SigningKey::derive(credentials.secret_key, &time.date_stamp(), region, SERVICE);
    let signature = key.sign(string_to_sign(time, &scope, &canonical).as_bytes());
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={}",
        credentials.access_key,
        names.join(";"),
        hex_encode(&signature)
    )
}

/// What to presign.
#[derive(Debug, Clone, Copy)]
pub struct PresignRequest<'a> {
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// Host as the client will send it (with the port when not the default).
    pub host: &'a str,
    /// Decoded path (`/bucket/my key.jpg`); it is SigV4-encoded here.
    pub path: &'a str,
    /// Extra decoded query parameters (`partNumber`, `uploadId`, `response-content-type`, ...).
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers the URL's user must send, signed along with `host` (`content-type`, ...).
    pub headers: &'a [(&'a str, &'a str)],
    pub credentials: SigningCredentials<'a>,
    pub region: &'a str,
    pub time: UtcDateTime,
    /// Validity in seconds, at most [`MAX_PRESIGNED_EXPIRES`].
    pub expires_secs: u64,
}

/// Builds a presigned URL (query-string auth, `UNSIGNED-PAYLOAD`).
pub fn presign_url(p: &PresignRequest<'_>) -> Result<String, AuthError> {
    if p.expires_secs > MAX_PRESIGNED_EXPIRES {
        return Err(AuthError::AuthorizationQueryParametersError(
            "X-Amz-Expires must be less than a week (in seconds) that is 604800".to_owned(),
        ));
    }
    let mut header_names: Vec<&str> = vec!["host"];
    header_names.extend(p.headers.iter().map(|(n, _)| *n));
    let names = normalize_names(&header_names);
    let scope = credential_scope(&p.time, p.region);
    let credential = format!("{}/{scope}", p.credentials.access_key);
    let amz_date = p.time.iso8601_basic();
    let expires = p.expires_secs.to_string();
    let signed = names.join(";");
    let mut pairs: Vec<(String, String)> = p
        .query
        .iter()
        .map(|(k, v)| {
            (
                uri_encode(k.as_bytes(), true),
                uri_encode(v.as_bytes(), true),
            )
        })
        .collect();
    for (k, v) in [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", amz_date.as_str()),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", signed.as_str()),
    ] {
        pairs.push((k.to_owned(), uri_encode(v.as_bytes(), true)));
    }
    pairs.sort_unstable();
    let query = join_pairs(&pairs);
    let path = if p.path.is_empty() { "/" } else { p.path };
    let encoded_path = uri_encode(path.as_bytes(), false);

    let mut headers: Vec<(&str, &[u8])> = vec![("host", p.host.as_bytes())];
    headers.extend(p.headers.iter().map(|(n, v)| (*n, v.as_bytes())));
    let view = RequestView {
        method: p.method,
        raw_path: &encoded_path,
        raw_query: &query,
        headers: &headers,
    };
    let canonical = build_canonical_request(&view, &query, &names, UNSIGNED_PAYLOAD);
    let key = SigningKey::derive(
        p.credentials.secret_key,
        &p.time.date_stamp(),
        p.region,
        SERVICE,
    );
    let signature = key.sign(string_to_sign(&p.time, &scope, &canonical).as_bytes());
    Ok(format!(
        "{}://{}{encoded_path}?{query}&X-Amz-Signature={}",
        p.scheme,
        p.host,
        hex_encode(&signature)
    ))
}

#[cfg(test)]
pub(crate) mod tests;
