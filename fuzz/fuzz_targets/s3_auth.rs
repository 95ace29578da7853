//! Fuzzes S3 request authentication (`ember_storage::s3::sigv4` and `s3::sigv2`).
//!
//! The first input byte picks a mode:
//!
//! - raw (half the inputs): the rest is a request in a line format (`method`, raw path, raw
//!   query, then `name:value` header lines) that goes through `sigv4::verify_request`,
//!   `sigv2::verify_request` and the canonicalization helpers with a fixed set of keys. Nothing
//!   may panic; every error has an S3 code and a 4xx/5xx status; a verified request names a
//!   known key, and its chunked decoder can be built.
//! - round trips: a request built from the input is signed by the crate's own signer
//!   (SigV4 `authorization_header` / `presign_url`, SigV2 `authorization_header` /
//!   `presign_url`) and must verify with the expected key, time, region, method and payload
//!   mode; the same request with one signature character changed must fail with
//!   `SignatureDoesNotMatch`. A SigV4 streaming upload additionally encodes a body with the
//!   chunk-signature chain seeded from the header's signature, and the verified request's
//!   decoder must accept it.
//!
//! Dates, times and the HTTP-date forms are checked along the way (parse ∘ format = id).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use ember_storage::s3::api::http_date;
use ember_storage::s3::chunked::{encode_aws_chunked, ChunkSignatureChain};
use ember_storage::s3::sigv2;
use ember_storage::s3::sigv4::{
    self, canonical_query_string, canonical_request, hex_decode_32, percent_decode, uri_encode,
    AuthMethod, Authenticated, Credential, PayloadMode, RegionPolicy, RequestView,
    SigningCredentials, SigningKey, VerifyConfig, SERVICE, STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER, UNSIGNED_PAYLOAD,
};
use ember_storage::s3::AuthError;
use ember_storage::time::{UtcDateTime, MAX_UNIX};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

/// 2013-05-24T00:00:00Z, the date of AWS's published examples (so they verify as seeds).
const NOW: u64 = 1_369_353_600;
const REGION: &str = "us-east-1";
const SKEW: u64 = 900;

/// Access key, secret key. The first is AWS's documentation key; the others have a `/` or a
/// `:` in the access key and an empty secret.
const KEYS: &[(&str, &str)] = &[
    (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    ("AK/with/slash", "secret+/="),
    ("ak:colon", ""),
];

fn lookup(ak: &str) -> Option<Credential<usize>> {
    KEYS.iter().position(|(k, _)| *k == ak).map(|i| Credential {
        secret_key: KEYS[i].1.to_owned(),
        permissions: i,
    })
}

fn check_error(e: &AuthError) {
    let status = e.status();
    assert!((400..=501).contains(&status), "{e:?} has status {status}");
    assert!(!e.code().is_empty());
    let _ = e.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0..=3 => raw(rest),
        4 => {
            let _ = v4_header_round_trip(&mut Unstructured::new(rest));
        }
        5 => {
            let _ = v4_presign_round_trip(&mut Unstructured::new(rest));
        }
        6 => {
            let _ = v2_header_round_trip(&mut Unstructured::new(rest));
        }
        _ => {
            let _ = v2_presign_round_trip(&mut Unstructured::new(rest));
        }
    }
});

// ---------------------------------------------------------------------------------------------
// Raw requests
// ---------------------------------------------------------------------------------------------

fn raw(data: &[u8]) {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let mut lines = text.split(|&b| b == b'\n');
    let method = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let raw_path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let raw_query = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let header_lines: Vec<(String, &[u8])> = lines
        .take(64)
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) => (String::from_utf8_lossy(&l[..i]).into_owned(), &l[i + 1..]),
            None => (String::from_utf8_lossy(l).into_owned(), &[][..]),
        })
        .collect();
    let headers: Vec<(&str, &[u8])> = header_lines.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let req = RequestView {
        method: &method,
        raw_path: &raw_path,
        raw_query: &raw_query,
        headers: &headers,
    };
    let config = VerifyConfig {
        region: if flags & 1 == 0 {
            RegionPolicy::Exact(REGION.to_owned())
        } else {
            RegionPolicy::Any
        },
        max_skew_secs: SKEW,
    };
    let vhb = (flags & 2 != 0).then_some(if flags & 64 != 0 {
        "johnsmith"
    } else {
        "examplebucket"
    });
    // NOW and the edges of the skew window and of a presigned URL's week, the time of AWS's
    // SigV2 examples (so they verify as seeds), and the extremes.
    let now = [
        NOW,
        NOW + 899,
        NOW + 86_400,
        NOW + 604_800,
        1_175_024_202,
        1_175_139_620,
        0,
        u64::MAX,
    ][usize::from(flags >> 2 & 7)];

    match sigv4::verify_request(&req, &config, &lookup, now) {
        Ok(Authenticated::Anonymous) => {}
        Ok(Authenticated::Signed(v)) => {
            assert!(lookup(&v.access_key).is_some());
            assert!(!matches!(
                v.method,
                AuthMethod::V2Header | AuthMethod::V2Presigned { .. }
            ));
            let _ = v.scope();
            let _ = v.chunk_signature_chain();
            match v.chunked_decoder_for(&req) {
                Ok(d) => assert_eq!(d.is_some(), v.payload.is_aws_chunked()),
                Err(e) => check_error(&e),
            }
        }
        Err(e) => check_error(&e),
    }
    let _ = sigv2::uses_sigv2(&req);
    match sigv2::verify_request(&req, vhb, &config, &lookup, now) {
        Ok(Authenticated::Anonymous) => {}
        Ok(Authenticated::Signed(v)) => {
            assert!(lookup(&v.access_key).is_some());
            assert!(matches!(
                v.method,
                AuthMethod::V2Header | AuthMethod::V2Presigned { .. }
            ));
            assert!(!matches!(
                v.payload,
                PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer
            ));
            if let Err(e) = v.chunked_decoder_for(&req) {
                check_error(&e);
            }
        }
        Err(e) => check_error(&e),
    }
    let _ = sigv2::query_headers(&req);
    let _ = sigv2::string_to_sign(&req, vhb, sigv2::SignatureMode::Header);
    let _ = sigv2::string_to_sign(&req, vhb, sigv2::SignatureMode::Query { expires: "1" });
    let _ = canonical_request(&req, &["host", "x-amz-date", "range"], UNSIGNED_PAYLOAD);
    let _ = canonical_query_string(&raw_query, flags & 32 != 0);
    for (_, v) in &headers {
        if let Ok(s) = std::str::from_utf8(v) {
            check_dates(s);
        }
    }
}

/// Every date parser: a parsed time is in range and formats back to itself.
fn check_dates(s: &str) {
    for t in [
        UtcDateTime::parse_iso8601_basic(s.trim()),
        UtcDateTime::parse_http_date(s.trim()),
    ]
    .into_iter()
    .flatten()
    {
        assert!(t.unix() <= MAX_UNIX);
        assert_eq!(UtcDateTime::from_unix(t.unix()), t);
        assert_eq!(
            UtcDateTime::parse_iso8601_basic(&t.iso8601_basic()),
            Some(t)
        );
    }
    if let Some(secs) = sigv2::parse_date(s) {
        let _ = UtcDateTime::from_unix(secs);
    }
}

// ---------------------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------------------

type R<T> = libfuzzer_sys::arbitrary::Result<T>;

fn string(u: &mut Unstructured<'_>, max: usize) -> R<String> {
    let n = u.int_in_range(0..=max)?;
    let b = u.bytes(n.min(u.len()))?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn bytes(u: &mut Unstructured<'_>, max: usize) -> R<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

const TOKEN_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const HEADER_NAMES: &[&str] = &[
    "x-amz-meta-a",
    "X-Amz-Meta-A",
    "content-type",
    "Content-MD5",
    "range",
    "x-amz-acl",
    "Host",
    "x-amz-date",
    "date",
    "x-amz-content-sha256",
    "content-encoding",
    "x-amz-decoded-content-length",
    "x-amz-trailer",
    "x-amz-security-token",
    "authorization",
];

/// A header name made of token characters (what `SignedHeaders` can list).
fn header_name(u: &mut Unstructured<'_>) -> R<String> {
    if u.ratio(1, 2)? {
        return Ok((*u.choose(HEADER_NAMES)?).to_owned());
    }
    let n = u.int_in_range(1..=12)?;
    let mut s = String::new();
    for _ in 0..n {
        s.push(char::from(*u.choose(TOKEN_CHARS)?));
    }
    Ok(s)
}

fn extra_headers(u: &mut Unstructured<'_>, excluded: &[&str]) -> R<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let name = header_name(u)?;
        let value = bytes(u, 40)?;
        if !excluded.iter().any(|x| x.eq_ignore_ascii_case(&name)) {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// A region without the separators of a credential or an `Authorization` header.
fn region(u: &mut Unstructured<'_>, policy: &RegionPolicy) -> R<String> {
    if let RegionPolicy::Exact(r) = policy {
        return Ok(r.clone());
    }
    let r: String = string(u, 16)?
        .chars()
        .filter(|c| !matches!(c, '/' | ',' | ' ' | '\t'))
        .collect();
    Ok(if r.is_empty() {
        "eu-west-3".to_owned()
    } else {
        r
    })
}

/// A time between 1970 and 9999, and a "now" that the verifier accepts for it.
fn time_and_now(u: &mut Unstructured<'_>) -> R<(u64, u64)> {
    let t = if u.ratio(1, 2)? {
        NOW + u64::from(u.arbitrary::<u16>()?)
    } else {
        u.int_in_range(0..=MAX_UNIX)?
    };
    let now = t.saturating_add(u.int_in_range(0..=SKEW)?);
    let now = now.saturating_sub(u.int_in_range(0..=SKEW)?);
    Ok((t, now))
}

fn decoded_names_contain(raw_query: &str, names: &[&str], plus_as_space: bool) -> bool {
    raw_query.split('&').filter(|p| !p.is_empty()).any(|p| {
        let k = p.split_once('=').map_or(p, |(k, _)| k);
        let k = percent_decode(k, plus_as_space);
        names.iter().any(|n| k.as_ref() == n.as_bytes())
    })
}

/// `hex` with the digit at `idx % 64` replaced by another hex digit.
fn flip_hex(hex: &str, u: &mut Unstructured<'_>) -> R<String> {
    let idx = u.choose_index(hex.len())?;
    let mut b = hex.as_bytes().to_vec();
    let v = (b[idx] as char).to_digit(16).expect("hex");
    let nv = (v + u.int_in_range(1..=15)?) % 16;
    b[idx] = char::from_digit(nv, 16).expect("digit") as u8;
    Ok(String::from_utf8(b).expect("ascii"))
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A base64 signature with one character replaced by another base64 character.
fn flip_b64(sig: &str, u: &mut Unstructured<'_>) -> R<String> {
    let data_len = sig.trim_end_matches('=').len();
    let idx = u.choose_index(data_len)?;
    let mut b = sig.as_bytes().to_vec();
    let cur = B64.iter().position(|&c| c == b[idx]).expect("base64");
    b[idx] = B64[(cur + u.int_in_range(1..=63)?) % 64];
    Ok(String::from_utf8(b).expect("ascii"))
}

fn as_view(h: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    h.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect()
}

fn config(u: &mut Unstructured<'_>) -> R<VerifyConfig> {
    Ok(VerifyConfig {
        region: if u.arbitrary()? {
            RegionPolicy::Exact(REGION.to_owned())
        } else {
            RegionPolicy::Any
        },
        max_skew_secs: SKEW,
    })
}

fn signed<P: std::fmt::Debug>(
    r: Result<Authenticated<P>, AuthError>,
    what: &str,
) -> sigv4::Verified<P> {
    match r {
        Ok(Authenticated::Signed(v)) => v,
        other => panic!("{what}: a request the crate signed did not verify: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4 round trips
// ---------------------------------------------------------------------------------------------

fn v4_header_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let (ak, sk) = *u.choose(KEYS)?;
    let config = config(u)?;
    let region = region(u, &config.region)?;
    let (t, now) = time_and_now(u)?;
    let time = UtcDateTime::from_unix(t);
    let method = string(u, 10)?;
    let raw_path = string(u, 40)?;
    let raw_query = string(u, 40)?;
    let host = bytes(u, 30)?;
    let (payload_hash, payload) = match u.int_in_range(0..=4)? {
        0 => (UNSIGNED_PAYLOAD.to_owned(), PayloadMode::Unsigned),
        1 => (STREAMING_PAYLOAD.to_owned(), PayloadMode::StreamingSigned),
        2 => (
            STREAMING_PAYLOAD_TRAILER.to_owned(),
            PayloadMode::StreamingSignedTrailer,
        ),
        3 => (
            STREAMING_UNSIGNED_PAYLOAD_TRAILER.to_owned(),
            PayloadMode::StreamingUnsignedTrailer,
        ),
        _ => {
            let h: [u8; 32] = u.arbitrary()?;
            (sigv4::hex_encode(&h), PayloadMode::Sha256(h))
        }
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("Host".to_owned(), host),
        ("X-Amz-Date".to_owned(), time.iso8601_basic().into_bytes()),
        (
            "x-amz-content-sha256".to_owned(),
            payload_hash.clone().into_bytes(),
        ),
    ];
    headers.extend(extra_headers(
        u,
        &["authorization", "x-amz-security-token"],
    )?);
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let view_headers = as_view(&headers);
    let req = RequestView {
        method: &method,
        raw_path: &raw_path,
        raw_query: &raw_query,
        headers: &view_headers,
    };
    let creds = SigningCredentials {
        access_key: ak,
        secret_key: sk,
    };
    let auth = sigv4::authorization_header(&req, creds, &region, &time, &names, &payload_hash);
    let conflict = decoded_names_contain(
        &raw_query,
        &["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"],
        true,
    );

    let verify = |auth: &str| {
        let mut h = view_headers.clone();
        h.push(("Authorization", auth.as_bytes()));
        let req = RequestView { headers: &h, ..req };
        sigv4::verify_request(&req, &config, &lookup, now)
    };
    if conflict {
        assert!(verify(&auth).is_err());
        return Ok(());
    }
    let v = signed(verify(&auth), "SigV4 header");
    assert_eq!(v.access_key, ak);
    assert_eq!(v.region, region);
    assert_eq!(v.time, time);
    assert_eq!(v.method, AuthMethod::Header);
    assert_eq!(v.payload, payload);

    // The signature is the last 64 characters of the header.
    let (head, sig) = auth.split_at(auth.len() - 64);
    let bad = format!("{head}{}", flip_hex(sig, u)?);
    assert_eq!(
        verify(&bad).unwrap_err(),
        AuthError::SignatureDoesNotMatch,
        "{bad}"
    );

    // Streaming uploads: a client chain seeded from the header's signature.
    if let Some(mut decoder) = v.chunked_decoder() {
        let seed = hex_decode_32(sig.as_bytes()).expect("hex signature");
        assert_eq!(v.seed_signature(), seed);
        let key = SigningKey::derive(sk, &time.date_stamp(), &region, SERVICE);
        let mut chain = ChunkSignatureChain::new(
            key,
            &time.iso8601_basic(),
            &sigv4::credential_scope(&time, &region),
            seed,
        );
        let body = bytes(u, 200)?;
        let chunk = u.int_in_range(1..=64)?;
        let trailers: &[(&str, &str)] = &[("x-amz-meta-t", "v")];
        let (chain, trailers) = match payload {
            PayloadMode::StreamingSigned => (Some(&mut chain), None),
            PayloadMode::StreamingSignedTrailer => (Some(&mut chain), Some(trailers)),
            _ => (None, Some(trailers)),
        };
        let encoded = encode_aws_chunked(chain, &body, chunk, trailers);
        let mut out = Vec::new();
        decoder
            .decode(&encoded, &mut out)
            .expect("own chunked body decodes");
        decoder.finish().expect("own chunked body verifies");
        assert_eq!(out, body);
    }
    Ok(())
}

fn v4_presign_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let (ak, sk) = *u.choose(KEYS)?;
    let config = config(u)?;
    let region = region(u, &config.region)?;
    let t = if u.arbitrary()? {
        NOW + u64::from(u.arbitrary::<u16>()?)
    } else {
        u.int_in_range(0..=MAX_UNIX)?
    };
    let expires = u.int_in_range(0..=sigv4::MAX_PRESIGNED_EXPIRES)?;
    // Valid from SKEW before t (clock skew) to t + expires.
    let now = (t + u.int_in_range(0..=expires)?).saturating_sub(u.int_in_range(0..=SKEW)?);
    let method = string(u, 10)?;
    let scheme = if u.arbitrary()? { "https" } else { "http" };
    let host = string(u, 30)?;
    let path = string(u, 40)?;
    let mut query: Vec<(String, String)> = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let k = string(u, 12)?;
        let v = string(u, 20)?;
        // The X-Amz-* parameters are the presigner's own.
        if !k.starts_with("X-Amz-") {
            query.push((k, v));
        }
    }
    let extra = extra_headers(u, &["authorization", "x-amz-security-token"])?;
    let extra_str: Vec<(String, String)> = extra
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let query_ref: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let headers_ref: Vec<(&str, &str)> = extra_str
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = sigv4::presign_url(&sigv4::PresignRequest {
        method: &method,
        scheme,
        host: &host,
        path: &path,
        query: &query_ref,
        headers: &headers_ref,
        credentials: SigningCredentials {
            access_key: ak,
            secret_key: sk,
        },
        region: &region,
        time: UtcDateTime::from_unix(t),
        expires_secs: expires,
    })
    .expect("expiry within a week");

    let prefix = format!("{scheme}://{host}");
    let rest = url
        .strip_prefix(&prefix)
        .expect("URL starts with scheme and host");
    let (raw_path, raw_query) = rest.split_once('?').expect("presigned URLs have a query");
    let mut headers: Vec<(&str, &[u8])> = vec![("host", host.as_bytes())];
    headers.extend(extra_str.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let verify = |raw_query: &str| {
        let req = RequestView {
            method: &method,
            raw_path,
            raw_query,
            headers: &headers,
        };
        sigv4::verify_request(&req, &config, &lookup, now)
    };
    let v = signed(verify(raw_query), &format!("SigV4 presigned {url}"));
    assert_eq!(v.access_key, ak);
    assert_eq!(v.region, region);
    assert_eq!(v.time, UtcDateTime::from_unix(t));
    assert_eq!(
        v.method,
        AuthMethod::Presigned {
            expires_at: t + expires
        }
    );
    assert_eq!(v.payload, PayloadMode::Unsigned);

    let (head, sig) = raw_query.split_at(raw_query.len() - 64);
    assert!(head.ends_with("&X-Amz-Signature="));
    let bad = format!("{head}{}", flip_hex(sig, u)?);
    assert_eq!(
        verify(&bad).unwrap_err(),
        AuthError::SignatureDoesNotMatch,
        "{bad}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SigV2 round trips
// ---------------------------------------------------------------------------------------------

fn v2_header_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let (ak, sk) = *u.choose(KEYS)?;
    let config = config(u)?;
    let (t, now) = time_and_now(u)?;
    let method = string(u, 10)?;
    let raw_path = string(u, 40)?;
    let raw_query = string(u, 40)?;
    let vhb_name = string(u, 12)?;
    let vhb = u.arbitrary::<bool>()?.then_some(vhb_name.as_str());
    let http = http_date(UNIX_EPOCH + Duration::from_secs(t));
    let iso = UtcDateTime::from_unix(t).iso8601_basic();
    assert_eq!(sigv2::parse_date(&http), Some(t), "{http}");
    assert_eq!(sigv2::parse_date(&iso), Some(t), "{iso}");
    let (date_name, date_value) = *u.choose(&[
        ("x-amz-date", &iso),
        ("X-Amz-Date", &http),
        ("Date", &http),
        ("date", &iso),
    ])?;
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("Host".to_owned(), bytes(u, 30)?),
        (date_name.to_owned(), date_value.clone().into_bytes()),
    ];
    let payload = match u.int_in_range(0..=3)? {
        0 => PayloadMode::Unsigned,
        1 => {
            headers.push(("x-amz-content-sha256".to_owned(), UNSIGNED_PAYLOAD.into()));
            PayloadMode::Unsigned
        }
        2 => {
            let h: [u8; 32] = u.arbitrary()?;
            headers.push((
                "X-Amz-Content-Sha256".to_owned(),
                sigv4::hex_encode(&h).into(),
            ));
            PayloadMode::Sha256(h)
        }
        _ => {
            headers.push((
                "x-amz-content-sha256".to_owned(),
                STREAMING_UNSIGNED_PAYLOAD_TRAILER.into(),
            ));
            headers.push(("Content-Encoding".to_owned(), b"aws-chunked".to_vec()));
            PayloadMode::StreamingUnsignedTrailer
        }
    };
    headers.extend(extra_headers(
        u,
        &[
            "authorization",
            "x-amz-security-token",
            "x-amz-date",
            "date",
            "x-amz-content-sha256",
            "content-encoding",
        ],
    )?);
    let view_headers = as_view(&headers);
    let req = RequestView {
        method: &method,
        raw_path: &raw_path,
        raw_query: &raw_query,
        headers: &view_headers,
    };
    let auth = sigv2::authorization_header(
        &req,
        vhb,
        SigningCredentials {
            access_key: ak,
            secret_key: sk,
        },
    );
    let verify = |auth: &str| {
        let mut h = view_headers.clone();
        h.push(("Authorization", auth.as_bytes()));
        let req = RequestView { headers: &h, ..req };
        sigv2::verify_request(&req, vhb, &config, &lookup, now)
    };
    let conflict = decoded_names_contain(
        &raw_query,
        &[
            "AWSAccessKeyId",
            "Signature",
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Signature",
            "x-amz-security-token",
        ],
        false,
    );
    if conflict {
        assert!(verify(&auth).is_err());
        return Ok(());
    }
    let v = signed(verify(&auth), &format!("SigV2 header {auth}"));
    assert_eq!(v.access_key, ak);
    assert_eq!(v.method, AuthMethod::V2Header);
    assert_eq!(v.time, UtcDateTime::from_unix(t));
    assert_eq!(v.payload, payload);

    let (head, sig) = auth.rsplit_once(':').expect("AWS ak:sig");
    let bad = format!("{head}:{}", flip_b64(sig, u)?);
    assert_eq!(
        verify(&bad).unwrap_err(),
        AuthError::SignatureDoesNotMatch,
        "{bad}"
    );
    Ok(())
}

fn v2_presign_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let (ak, sk) = *u.choose(KEYS)?;
    let config = config(u)?;
    let now: u64 = if u.arbitrary()? { NOW } else { u.arbitrary()? };
    let expires_at = now.saturating_add(u.arbitrary::<u32>()?.into());
    let method = string(u, 10)?;
    let scheme = if u.arbitrary()? { "https" } else { "http" };
    let host = string(u, 30)?;
    let path = string(u, 40)?;
    let vhb_name = string(u, 12)?;
    let vhb = u.arbitrary::<bool>()?.then_some(vhb_name.as_str());
    let mut query: Vec<(String, String)> = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let k = if u.ratio(1, 3)? {
            (*u.choose(&[
                "uploads",
                "uploadId",
                "partNumber",
                "versionId",
                "acl",
                "response-content-type",
                "x-amz-meta-a",
                "X-Amz-Meta-B",
                "Content-Type",
                "content-md5",
            ])?)
            .to_owned()
        } else {
            string(u, 12)?
        };
        let v = string(u, 20)?;
        // The presigner's own parameters, other mechanisms, and a declared payload are left out.
        let reserved = [
            "AWSAccessKeyId",
            "Signature",
            "Expires",
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Signature",
            "x-amz-security-token",
        ];
        if !reserved.contains(&k.as_str()) && !k.eq_ignore_ascii_case("x-amz-content-sha256") {
            query.push((k, v));
        }
    }
    let query_ref: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = sigv2::presign_url(&sigv2::PresignRequest {
        method: &method,
        scheme,
        host: &host,
        path: &path,
        virtual_host_bucket: vhb,
        query: &query_ref,
        credentials: SigningCredentials {
            access_key: ak,
            secret_key: sk,
        },
        expires_at,
    });
    let prefix = format!("{scheme}://{host}");
    let rest = url
        .strip_prefix(&prefix)
        .expect("URL starts with scheme and host");
    let (raw_path, raw_query) = rest.split_once('?').expect("presigned URLs have a query");
    let headers: Vec<(&str, &[u8])> = vec![("host", host.as_bytes())];
    let verify = |raw_query: &str| {
        let req = RequestView {
            method: &method,
            raw_path,
            raw_query,
            headers: &headers,
        };
        sigv2::verify_request(&req, vhb, &config, &lookup, now)
    };
    let v = signed(verify(raw_query), &format!("SigV2 presigned {url}"));
    assert_eq!(v.access_key, ak);
    assert_eq!(v.method, AuthMethod::V2Presigned { expires_at });
    assert_eq!(v.payload, PayloadMode::Unsigned);

    let (head, sig) = raw_query
        .rsplit_once("&Signature=")
        .expect("Signature last");
    let sig = String::from_utf8(percent_decode(sig, false).into_owned()).expect("base64");
    let bad = format!(
        "{head}&Signature={}",
        uri_encode(flip_b64(&sig, u)?.as_bytes(), true)
    );
    assert_eq!(
        verify(&bad).unwrap_err(),
        AuthError::SignatureDoesNotMatch,
        "{bad}"
    );
    Ok(())
}
