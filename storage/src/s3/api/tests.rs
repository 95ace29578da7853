//! Unit tests of the S3 API's pure parts: addressing, operation choice, ranges,
//! preconditions, dates, copy sources, error mapping and the verifying body stream.

use super::body::{auth_error_in, auth_io};
use super::*;
use crate::s3::chunked::AwsChunkedDecoder;
use crate::s3::error::AuthError;
use crate::time::UtcDateTime;
use std::io;
use std::time::Duration;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn ranges() {
    use RangeSpec::*;
    let r = |v: &str, size| parse_range(Some(v), size);
    assert_eq!(parse_range(None, 10), Full);
    assert_eq!(r("bytes=0-4", 10), Partial(0..5));
    assert_eq!(r("bytes=2-2", 10), Partial(2..3));
    assert_eq!(r("bytes=5-", 10), Partial(5..10));
    assert_eq!(r("bytes=5-100", 10), Partial(5..10));
    assert_eq!(r("bytes=-3", 10), Partial(7..10));
    assert_eq!(r("bytes=-30", 10), Partial(0..10));
    assert_eq!(r("BYTES= 1 - 2 ", 10), Partial(1..3));
    assert_eq!(r("bytes=10-", 10), Unsatisfiable);
    assert_eq!(r("bytes=10-20", 10), Unsatisfiable);
    assert_eq!(r("bytes=-0", 10), Unsatisfiable);
    assert_eq!(r("bytes=0-", 0), Unsatisfiable);
    assert_eq!(r("bytes=-1", 0), Unsatisfiable);
    // Several ranges and garbage: the whole object.
    assert_eq!(r("bytes=0-1,3-4", 10), Full);
    assert_eq!(r("bytes=5-2", 10), Full);
    assert_eq!(r("bytes=a-b", 10), Full);
    assert_eq!(r("items=0-1", 10), Full);
    assert_eq!(r("bytes=", 10), Full);
    assert_eq!(r("bytes=-", 10), Full);
    assert_eq!(r("bytes=99999999999999999999999-", 10), Full);
    assert_eq!(
        r("bytes=18446744073709551614-18446744073709551615", u64::MAX),
        Partial(u64::MAX - 1..u64::MAX)
    );
}

#[test]
fn etag_lists() {
    assert!(etag_list_matches("\"abc\"", "abc"));
    assert!(etag_list_matches("abc", "abc"));
    assert!(etag_list_matches("\"x\", W/\"abc\"", "abc"));
    assert!(etag_list_matches("*", "abc"));
    assert!(!etag_list_matches("\"abcd\"", "abc"));
    assert!(!etag_list_matches("", "abc"));
}

#[test]
fn preconditions_follow_s3_precedence() {
    let etag = "abc";
    let lm = at(1_700_000_000);
    let before = "Mon, 13 Nov 2023 00:00:00 GMT"; // earlier than lm
    let after = "Wed, 15 Nov 2023 00:00:00 GMT"; // later than lm
    let exact = http_date(lm);
    let c = |m, nm, ms, us| Conditions {
        if_match: m,
        if_none_match: nm,
        if_modified_since: ms,
        if_unmodified_since: us,
    };
    use Precondition::*;
    let eval = |cond: Conditions<'_>| cond.evaluate(etag, lm, true);
    assert_eq!(eval(c(None, None, None, None)), Proceed);
    assert_eq!(eval(c(Some("\"abc\""), None, None, None)), Proceed);
    assert_eq!(
        eval(c(Some("\"zzz\""), None, None, None)),
        Failed("If-Match")
    );
    assert_eq!(
        eval(c(None, None, None, Some(before))),
        Failed("If-Unmodified-Since")
    );
    assert_eq!(eval(c(None, None, None, Some(after))), Proceed);
    assert_eq!(eval(c(None, None, None, Some(&exact))), Proceed);
    // If-Match true + If-Unmodified-Since false: 200.
    assert_eq!(eval(c(Some("abc"), None, None, Some(before))), Proceed);
    assert_eq!(eval(c(None, Some("\"abc\""), None, None)), NotModified);
    assert_eq!(eval(c(None, Some("\"zzz\""), None, None)), Proceed);
    assert_eq!(eval(c(None, None, Some(after), None)), NotModified);
    assert_eq!(eval(c(None, None, Some(&exact), None)), NotModified);
    assert_eq!(eval(c(None, None, Some(before), None)), Proceed);
    // If-None-Match false (matches) + If-Modified-Since true: 304.
    assert_eq!(eval(c(None, Some("abc"), Some(before), None)), NotModified);
    // If-None-Match true (differs): If-Modified-Since is ignored.
    assert_eq!(eval(c(None, Some("zzz"), Some(after), None)), Proceed);
    // If-Match failing beats If-None-Match.
    assert_eq!(
        eval(c(Some("zzz"), Some("abc"), None, None)),
        Failed("If-Match")
    );
    // Unparsable dates are ignored.
    assert_eq!(
        eval(c(None, None, Some("yesterday"), Some("garbage"))),
        Proceed
    );
    // Writes (and copy sources): a matching If-None-Match is 412; If-Modified-Since is
    // not a write condition.
    assert_eq!(
        c(None, Some("*"), None, None).evaluate(etag, lm, false),
        Failed("If-None-Match")
    );
    assert_eq!(
        c(None, None, Some(after), None).evaluate(etag, lm, false),
        Proceed
    );
}

#[test]
fn http_dates() {
    assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        http_date(at(1_369_353_600)),
        "Fri, 24 May 2013 00:00:00 GMT"
    );
    assert_eq!(http_date(at(951_825_600)), "Tue, 29 Feb 2000 12:00:00 GMT");
    for secs in [0, 1, 86_399, 951_825_600, 1_700_000_000, 4_102_444_800] {
        let s = http_date(at(secs));
        assert_eq!(
            UtcDateTime::parse_http_date(&s).unwrap().unix(),
            secs,
            "{s}"
        );
    }
    // Sub-second times print the whole second.
    assert_eq!(
        http_date(at(1_369_353_600) + Duration::from_millis(999)),
        "Fri, 24 May 2013 00:00:00 GMT"
    );
}

#[test]
fn addressing() {
    let suffixes = vec!["s3.example.com".to_owned(), "localhost".to_owned()];
    let a = |host: Option<&str>, path: &str| Addressing::parse(host, path, &suffixes).unwrap();
    let pair = |x: Addressing| (x.bucket, x.key, x.virtual_host);
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(pair(a(Some("s3.example.com"), "/")), (None, None, false));
    assert_eq!(
        pair(a(Some("s3.example.com"), "/bkt")),
        (s("bkt"), None, false)
    );
    assert_eq!(
        pair(a(Some("s3.example.com"), "/bkt/")),
        (s("bkt"), None, false)
    );
    assert_eq!(
        pair(a(Some("127.0.0.1:9000"), "/bkt/a%20b/%E6%96%87+x//y")),
        (s("bkt"), s("a b/文+x//y"), false)
    );
    assert_eq!(
        pair(a(Some("Media.S3.Example.com:9000"), "/dir/k%2Bey")),
        (s("media"), s("dir/k+ey"), true)
    );
    assert_eq!(
        pair(a(Some("media.s3.example.com."), "/")),
        (s("media"), None, true)
    );
    assert_eq!(
        pair(a(Some("my.dotted.bucket.localhost:80"), "//k")),
        (s("my.dotted.bucket"), s("/k"), true)
    );
    // Not a suffix match: path style.
    assert_eq!(
        pair(a(Some("evils3.example.com"), "/b/k")),
        (s("b"), s("k"), false)
    );
    assert_eq!(pair(a(Some("[::1]:9000"), "/b/k")), (s("b"), s("k"), false));
    assert_eq!(pair(a(None, "/b/k")), (s("b"), s("k"), false));
    let e = Addressing::parse(None, "/b/%FF", &suffixes).unwrap_err();
    assert_eq!(e.code, "InvalidURI");
}

#[test]
fn operations() {
    let q = Query::parse;
    let op = |m: &str, b, k, query: &str, copy| {
        Op::classify(
            &Method::from_bytes(m.as_bytes()).unwrap(),
            b,
            k,
            &q(query),
            copy,
        )
    };
    assert_eq!(op("GET", false, false, "", false), Op::ListBuckets);
    assert_eq!(op("PUT", false, false, "", false), Op::MethodNotAllowed);
    assert_eq!(op("GET", true, false, "", false), Op::ListObjectsV1);
    assert_eq!(
        op("GET", true, false, "list-type=2&prefix=a", false),
        Op::ListObjectsV2
    );
    assert_eq!(
        op("GET", true, false, "location", false),
        Op::GetBucketLocation
    );
    assert_eq!(
        op("GET", true, false, "versioning", false),
        Op::GetBucketVersioning
    );
    assert_eq!(
        op("PUT", true, false, "versioning", false),
        Op::NotImplemented
    );
    assert_eq!(op("GET", true, false, "acl", false), Op::GetBucketAcl);
    assert_eq!(op("PUT", true, false, "acl", false), Op::PutBucketAcl);
    assert_eq!(
        op("GET", true, false, "uploads&prefix=x", false),
        Op::ListMultipartUploads
    );
    assert_eq!(op("POST", true, false, "delete", false), Op::DeleteObjects);
    assert_eq!(op("PUT", true, false, "", false), Op::CreateBucket);
    assert_eq!(op("HEAD", true, false, "", false), Op::HeadBucket);
    assert_eq!(op("DELETE", true, false, "", false), Op::DeleteBucket);
    assert_eq!(op("DELETE", true, false, "cors", false), Op::NotImplemented);
    assert!(matches!(
        op("GET", true, false, "policy", false),
        Op::NoSuchConfiguration("NoSuchBucketPolicy", _)
    ));
    assert_eq!(op("PUT", true, true, "", false), Op::PutObject);
    assert_eq!(op("PUT", true, true, "", true), Op::CopyObject);
    assert_eq!(
        op("GET", true, true, "response-content-type=x", false),
        Op::GetObject
    );
    assert_eq!(
        op("GET", true, true, "x-id=GetObject", false),
        Op::GetObject
    );
    assert_eq!(op("HEAD", true, true, "", false), Op::HeadObject);
    assert_eq!(op("DELETE", true, true, "", false), Op::DeleteObject);
    assert_eq!(
        op("POST", true, true, "uploads", false),
        Op::CreateMultipartUpload
    );
    assert_eq!(
        op("PUT", true, true, "partNumber=1&uploadId=u", false),
        Op::UploadPart
    );
    assert_eq!(
        op("PUT", true, true, "partNumber=1&uploadId=u", true),
        Op::UploadPartCopy
    );
    assert_eq!(
        op("POST", true, true, "uploadId=u", false),
        Op::CompleteMultipartUpload
    );
    assert_eq!(
        op("DELETE", true, true, "uploadId=u", false),
        Op::AbortMultipartUpload
    );
    assert_eq!(op("GET", true, true, "uploadId=u", false), Op::ListParts);
    assert_eq!(
        op("GET", true, true, "tagging", false),
        Op::GetObjectTagging
    );
    assert_eq!(op("PUT", true, true, "tagging", false), Op::NotImplemented);
    assert_eq!(op("GET", true, true, "acl", false), Op::GetObjectAcl);
    assert_eq!(op("PUT", true, true, "acl", false), Op::PutObjectAcl);
    assert_eq!(op("PUT", true, true, "acl", true), Op::PutObjectAcl);
    assert_eq!(op("POST", true, true, "", false), Op::NotImplemented);
    assert_eq!(op("PATCH", true, true, "", false), Op::MethodNotAllowed);
}

#[test]
fn copy_sources_and_ranges() {
    assert_eq!(
        parse_copy_source("/bkt/a%20b%2Bc/%E6%96%87").unwrap(),
        ("bkt".to_owned(), "a b+c/文".to_owned())
    );
    assert_eq!(
        parse_copy_source("bkt/k%3Fq?versionId=null").unwrap(),
        ("bkt".to_owned(), "k?q".to_owned())
    );
    assert!(parse_copy_source("bkt").is_err());
    assert!(parse_copy_source("/bkt/").is_err());
    assert!(parse_copy_source("bkt/k?versionId=123").is_err());
    assert_eq!(parse_copy_range("bytes=0-9", 10).unwrap(), 0..10);
    assert_eq!(parse_copy_range("bytes=3-3", 10).unwrap(), 3..4);
    assert_eq!(
        parse_copy_range("bytes=3-10", 10).unwrap_err().code,
        "InvalidRange"
    );
    assert_eq!(
        parse_copy_range("bytes=5-3", 10).unwrap_err().code,
        "InvalidArgument"
    );
    assert_eq!(
        parse_copy_range("bytes=-3", 10).unwrap_err().code,
        "InvalidArgument"
    );
}

#[test]
fn storage_errors_map_to_s3() {
    let e = |s: StorageError| {
        let e = S3Error::from(s);
        (e.status.as_u16(), e.code.into_owned())
    };
    assert_eq!(e(StorageError::NoSuchKey), (404, "NoSuchKey".into()));
    assert_eq!(e(StorageError::NoSuchBucket), (404, "NoSuchBucket".into()));
    assert_eq!(
        e(StorageError::BucketAlreadyExists),
        (409, "BucketAlreadyOwnedByYou".into())
    );
    assert_eq!(
        e(StorageError::BucketNotEmpty),
        (409, "BucketNotEmpty".into())
    );
    assert_eq!(
        e(StorageError::AlreadyExists),
        (412, "PreconditionFailed".into())
    );
    assert_eq!(
        e(StorageError::InsufficientStorage),
        (507, "InsufficientStorage".into())
    );
    assert_eq!(
        e(StorageError::EntityTooLarge { limit: 5 }),
        (400, "EntityTooLarge".into())
    );
    assert_eq!(
        e(validate_key(&"k".repeat(1025)).unwrap_err()),
        (400, "KeyTooLongError".into())
    );
    assert_eq!(
        e(validate_key("a/../b").unwrap_err()),
        (400, "InvalidArgument".into())
    );
    assert_eq!(
        e(validate_bucket("A").unwrap_err()),
        (400, "InvalidBucketName".into())
    );
    // An auth failure carried through the body stream keeps its own code.
    assert_eq!(
        e(StorageError::BodyError(auth_io(
            AuthError::XAmzContentSha256Mismatch
        ))),
        (400, "XAmzContentSHA256Mismatch".into())
    );
    assert_eq!(
        e(StorageError::BodyError(auth_io(
            AuthError::SignatureDoesNotMatch
        ))),
        (403, "SignatureDoesNotMatch".into())
    );
    assert_eq!(
        e(StorageError::BodyError(io::Error::other("reset"))),
        (400, "IncompleteBody".into())
    );
    assert_eq!(
        e(StorageError::Io(io::Error::other("disk"))),
        (500, "InternalError".into())
    );
    let skew = S3Error::from(AuthError::RequestTimeTooSkewed {
        request_time: "a".into(),
        server_time: "b".into(),
        max_allowed_skew_ms: 900_000,
    });
    assert_eq!(skew.status, StatusCode::FORBIDDEN);
    assert!(skew
        .extra
        .contains(&("MaxAllowedSkewMilliseconds", "900000".to_owned())));
}

fn verifying(
    parts: Vec<&'static [u8]>,
    sha: Option<[u8; 32]>,
    checksum: Option<(ChecksumAlgorithm, String)>,
) -> VerifyingBody {
    let stream = futures::stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<_, io::Error>(Bytes::from_static(p))),
    );
    VerifyingBody::new(
        Body::from_stream(stream),
        None,
        sha.map(PayloadHashCheck::new),
        checksum.map(|(a, v)| (a.hasher(), v)),
    )
}

async fn drain(mut body: VerifyingBody) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => {
                // The error is the last item.
                assert!(body.next().await.is_none());
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

#[tokio::test]
async fn verifying_body_checks_at_the_end() {
    let sha: [u8; 32] = sha2::Sha256::digest(b"hello world").into();
    let (data, err) = drain(verifying(vec![b"hello ", b"world"], Some(sha), None)).await;
    assert_eq!(data, b"hello world");
    assert!(err.is_none());

    let (data, err) = drain(verifying(vec![b"hello ", b"there"], Some(sha), None)).await;
    assert_eq!(data, b"hello there");
    assert_eq!(
        auth_error_in(&err.unwrap()),
        Some(&AuthError::XAmzContentSha256Mismatch)
    );

    let mut h = ChecksumAlgorithm::Crc32.hasher();
    h.update(b"abc");
    let good = h.finalize_base64();
    let (_, err) = drain(verifying(
        vec![b"a", b"bc"],
        None,
        Some((ChecksumAlgorithm::Crc32, good.clone())),
    ))
    .await;
    assert!(err.is_none());
    let (_, err) = drain(verifying(
        vec![b"a", b"bd"],
        None,
        Some((ChecksumAlgorithm::Crc32, good)),
    ))
    .await;
    assert_eq!(auth_error_in(&err.unwrap()).unwrap().code(), "BadDigest");
}

#[tokio::test]
async fn verifying_body_decodes_aws_chunked() {
    use crate::s3::chunked::encode_aws_chunked;
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut h = ChecksumAlgorithm::Crc32c.hasher();
    h.update(&payload);
    let crc = h.finalize_base64();
    let encoded = encode_aws_chunked(
        None,
        &payload,
        1000,
        Some(&[("x-amz-checksum-crc32c", crc.as_str())]),
    );
    // Feed it in awkward pieces.
    let pieces: Vec<Bytes> = encoded.chunks(7).map(Bytes::copy_from_slice).collect();
    let make = |pieces: Vec<Bytes>| {
        VerifyingBody::new(
            Body::from_stream(futures::stream::iter(
                pieces.into_iter().map(Ok::<_, io::Error>),
            )),
            Some(
                AwsChunkedDecoder::unsigned_trailer()
                    .with_decoded_length(payload.len() as u64)
                    .with_trailer_checksum(ChecksumAlgorithm::Crc32c),
            ),
            None,
            None,
        )
    };
    let (data, err) = drain(make(pieces)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(data, payload);

    // A flipped payload byte fails the trailer checksum, at the end.
    let mut bad = encoded.clone();
    bad[10] ^= 0x55;
    let (data, err) = drain(make(vec![Bytes::from(bad)])).await;
    assert_eq!(data.len(), payload.len());
    assert_eq!(auth_error_in(&err.unwrap()).unwrap().code(), "BadDigest");
    // A truncated body is incomplete.
    let (_, err) = drain(make(vec![Bytes::copy_from_slice(
        &encoded[..encoded.len() / 2],
    )]))
    .await;
    assert_eq!(
        auth_error_in(&err.unwrap()).unwrap().code(),
        "IncompleteBody"
    );
}

/// The S3 router over an empty memory backend, serving `region`, with one key pair.
fn test_router(region: &str) -> Router {
    let mut credentials = HashMap::new();
    credentials.insert(
        "AKIAIOSFODNN7EXAMPLE".to_owned(),
        (
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            Access::default(),
        ),
    );
    let cfg = S3Config {
        region: region.to_owned(),
        credentials,
        ..S3Config::default()
    };
    router(
        Arc::new(crate::backend::memory::MemoryBackend::new()),
        Arc::new(cfg),
    )
}

async fn send(app: Router, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
    use tower::ServiceExt;
    let resp = app.oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// A request signed for another region is refused as S3 does, naming the right region in
/// `<Region>` and `x-amz-bucket-region`, which botocore and s3cmd use to sign again (s3cmd's
/// default config signs for "US").
#[tokio::test]
async fn wrong_region_names_the_right_one() {
    let date = UtcDateTime::from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let (day, stamp) = (date.iso8601_basic()[..8].to_owned(), date.iso8601_basic());
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{day}/US/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature={}",
        "0".repeat(64)
    );
    for method in [Method::GET, Method::HEAD] {
        let req = axum::http::Request::builder()
            .method(method.clone())
            .uri("/media/key.txt")
            .header("host", "127.0.0.1:9000")
            .header("x-amz-date", &stamp)
            .header("x-amz-content-sha256", sigv4::EMPTY_SHA256)
            .header("authorization", &authorization)
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = send(test_router("eu-test-1"), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}");
        assert_eq!(
            headers.get("x-amz-bucket-region").unwrap(),
            "eu-test-1",
            "{method}"
        );
        if method == Method::GET {
            assert!(
                body.contains("<Code>AuthorizationHeaderMalformed</Code>"),
                "{body}"
            );
            assert!(body.contains("<Region>eu-test-1</Region>"), "{body}");
        } else {
            assert!(body.is_empty(), "{body}");
        }
    }

    // A presigned URL: AuthorizationQueryParametersError, also with the region.
    let query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F{day}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature={}",
        "0".repeat(64)
    );
    let req = axum::http::Request::builder()
        .uri(format!("/media/key.txt?{query}"))
        .header("host", "127.0.0.1:9000")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(test_router("eu-test-1"), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("<Code>AuthorizationQueryParametersError</Code>"),
        "{body}"
    );
    assert!(body.contains("<Region>eu-test-1</Region>"), "{body}");

    // Other malformed credentials carry no region (s3cmd would sign again forever).
    let bad_service = authorization.replace("/US/s3/", "/eu-test-1/ec2/");
    let req = axum::http::Request::builder()
        .uri("/media/key.txt")
        .header("host", "127.0.0.1:9000")
        .header("x-amz-date", &stamp)
        .header("x-amz-content-sha256", sigv4::EMPTY_SHA256)
        .header("authorization", bad_service)
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(test_router("eu-test-1"), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.contains("<Region>"), "{body}");
    assert!(headers.get("x-amz-bucket-region").is_none());
}

/// A request for `path` (with plain query parameters: `/b/k?acl`, `/b/k?partNumber=1`)
/// presigned with the test key for `eu-test-1`, `headers` signed.
fn presigned_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> axum::http::Request<Body> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `/path?a&b=c`: decoded query parameters, signed.
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (
            p,
            q.split('&')
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                .collect(),
        ),
        None => (path, Vec::new()),
    };
    let url = sigv4::presign_url(&sigv4::PresignRequest {
        method,
        scheme: "http",
        host: "127.0.0.1:9000",
        path,
        query: &query,
        headers,
        credentials: sigv4::SigningCredentials {
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        },
        region: "eu-test-1",
        time: UtcDateTime::from_unix(now),
        expires_secs: 60,
    })
    .unwrap();
    let target = url.trim_start_matches("http://127.0.0.1:9000");
    let mut b = axum::http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "127.0.0.1:9000");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::from(body.into())).unwrap()
}

/// A copy of an object onto itself is legal when it changes the storage class (S3's
/// documented way to change it; `rclone settier` does this) or the metadata, and refused
/// otherwise, as S3 does.
#[tokio::test]
async fn self_copy_needs_a_change() {
    let app = test_router("eu-test-1");
    for (method, path) in [("PUT", "/media"), ("PUT", "/media/a.txt")] {
        let body: &'static [u8] = if path == "/media" { b"" } else { b"hello" };
        let (status, _, text) = send(
            app.clone(),
            presigned_request(method, path, &[("content-type", "text/x-a")], body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    let copy = |extra: &'static [(&'static str, &'static str)]| {
        let mut headers = vec![("x-amz-copy-source", "/media/a.txt")];
        headers.extend_from_slice(extra);
        presigned_request("PUT", "/media/a.txt", &headers, Bytes::new())
    };
    let (status, _, text) = send(app.clone(), copy(&[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("<Code>InvalidRequest</Code>"), "{text}");
    let (status, _, text) = send(app.clone(), copy(&[("x-amz-metadata-directive", "COPY")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    for extra in [
        &[("x-amz-storage-class", "STANDARD_IA")][..],
        &[
            ("x-amz-metadata-directive", "COPY"),
            ("x-amz-storage-class", "STANDARD"),
        ][..],
        &[("x-amz-metadata-directive", "REPLACE")][..],
    ] {
        let (status, _, text) = send(app.clone(), copy(extra)).await;
        assert_eq!(status, StatusCode::OK, "{extra:?}: {text}");
        assert!(text.contains("<CopyObjectResult"), "{text}");
    }
    // The data survived every rewrite; REPLACE without a Content-Type dropped it.
    let (status, headers, text) = send(
        app.clone(),
        presigned_request("GET", "/media/a.txt", &[], Bytes::new()),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "hello"));
    assert_eq!(headers.get("content-type").unwrap(), "binary/octet-stream");
}

#[test]
fn self_copy_changes() {
    let mut h = HeaderMap::new();
    assert!(!self_copy_changes_something(&h, false));
    assert!(self_copy_changes_something(&h, true));
    h.insert("x-amz-storage-class", HeaderValue::from_static("GLACIER"));
    assert!(self_copy_changes_something(&h, false));
}

/// A body that counts the bytes read from it and whether it was read to its end.
fn watched_body(len: usize) -> (Body, Arc<std::sync::atomic::AtomicUsize>) {
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = read.clone();
    let chunks = (0..len.div_ceil(4096)).map(move |i| {
        let n = 4096.min(len - i * 4096);
        counter.fetch_add(n, Ordering::SeqCst);
        Ok::<_, io::Error>(Bytes::from(vec![b'x'; n]))
    });
    (Body::from_stream(futures::stream::iter(chunks)), read)
}

/// A request body the operation does not read is drained (the connection stays usable:
/// closing a socket with unread data resets it under a client that already sent its next
/// request, which broke `s3cmd mv`); too large a body, or one held back for
/// `100 Continue`, is left alone and the connection closes after the response.
#[tokio::test]
async fn unread_bodies_are_drained_or_the_connection_closes() {
    let app = test_router("eu-test-1");
    let req = |len: usize, extra: &[(&str, &str)]| {
        let (body, read) = watched_body(len);
        let mut b = axum::http::Request::builder()
            .method("PUT")
            .uri("/media/a.txt?tagging")
            .header("host", "127.0.0.1:9000")
            .header("content-length", len.to_string());
        for (n, v) in extra {
            b = b.header(*n, *v);
        }
        (b.body(body).unwrap(), read)
    };
    // Refused before authentication, with a small body: drained, kept alive.
    let (r, read) = req(5000, &[]);
    let (status, headers, _) = send(app.clone(), r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(read.load(Ordering::SeqCst), 5000);
    assert!(headers.get("connection").is_none());
    // Larger than the drain limit: not read, the connection closes.
    let big = body::MAX_DRAIN as usize + 1;
    let (r, read) = req(big, &[]);
    let (_, headers, _) = send(app.clone(), r).await;
    assert_eq!(read.load(Ordering::SeqCst), 0);
    assert_eq!(headers.get("connection").unwrap(), "close");
    // The client waits for 100 Continue: not asked for, the connection closes.
    let (r, read) = req(10, &[("expect", "100-continue")]);
    let (_, headers, _) = send(app.clone(), r).await;
    assert_eq!(read.load(Ordering::SeqCst), 0);
    assert_eq!(headers.get("connection").unwrap(), "close");
    // No body: nothing to do.
    let r = axum::http::Request::builder()
        .uri("/media/a.txt")
        .header("host", "127.0.0.1:9000")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(app.clone(), r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("connection").is_none());
}

/// PUT ?acl: the ACL Ember reports (owner FULL_CONTROL, or canned `private`) is accepted as
/// a no-op (s3cmd sends it back after every `cp` and `mv`); any other grant is
/// `NotImplemented`; a missing object is `NoSuchKey`.
#[tokio::test]
async fn put_acl_accepts_only_the_owner_acl() {
    let app = test_router("eu-test-1");
    for (path, body) in [("/media", &b""[..]), ("/media/a.txt", &b"hello"[..])] {
        let (status, _, text) = send(app.clone(), presigned_request("PUT", path, &[], body)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    // What GET ?acl answers goes back as it is.
    let (status, _, acl) = send(
        app.clone(),
        presigned_request("GET", "/media/a.txt?acl", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{acl}");
    let acl = Bytes::from(acl);
    for path in ["/media/a.txt?acl", "/media?acl"] {
        let (status, _, text) = send(
            app.clone(),
            presigned_request("PUT", path, &[], acl.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        let private = [("x-amz-acl", "private")];
        let (status, _, text) = send(
            app.clone(),
            presigned_request("PUT", path, &private, Bytes::new()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    // Anything else is refused.
    let public_read = [("x-amz-acl", "public-read")];
    let grant = [(
        "x-amz-grant-read",
        "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
    )];
    let everyone: &'static [u8] = b"<AccessControlPolicy><AccessControlList><Grant>\
        <Grantee><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>\
        <Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>";
    for (headers, body) in [
        (&public_read[..], &b""[..]),
        (&grant[..], &b""[..]),
        (&[][..], everyone),
    ] {
        let req = presigned_request("PUT", "/media/a.txt?acl", headers, body);
        let (status, _, text) = send(app.clone(), req).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{headers:?}: {text}");
    }
    let req = presigned_request("PUT", "/media/a.txt?acl", &[], &b"<nope/>"[..]);
    let (status, _, text) = send(app.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("MalformedACLError"), "{text}");
    let req = presigned_request("PUT", "/media/missing.txt?acl", &[], acl.clone());
    let (status, _, text) = send(app.clone(), req).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
}

/// `partNumber` reads: every object reads as a single part (the backend keeps no part
/// boundaries), so part 1 is the whole object as a 206 range, as S3 answers for an object
/// uploaded in one piece, and any other part is `InvalidPartNumber`, never other bytes.
#[tokio::test]
async fn part_number_reads_see_one_part() {
    let app = test_router("eu-test-1");
    for (path, body) in [("/media", &b""[..]), ("/media/a.txt", &b"hello"[..])] {
        let (status, _, text) = send(app.clone(), presigned_request("PUT", path, &[], body)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    for method in ["GET", "HEAD"] {
        let req = presigned_request(method, "/media/a.txt?partNumber=1", &[], Bytes::new());
        let (status, headers, text) = send(app.clone(), req).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{method}: {text}");
        assert_eq!(headers.get("content-range").unwrap(), "bytes 0-4/5");
        assert_eq!(headers.get("content-length").unwrap(), "5");
        assert!(headers.get("x-amz-mp-parts-count").is_none());
        assert_eq!(text, if method == "GET" { "hello" } else { "" });
    }
    let req = presigned_request("GET", "/media/a.txt?partNumber=2", &[], Bytes::new());
    let (status, _, text) = send(app.clone(), req).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{text}");
    assert!(text.contains("<Code>InvalidPartNumber</Code>"), "{text}");
    for bad in ["0", "10001", "x"] {
        let path = format!("/media/a.txt?partNumber={bad}");
        let req = presigned_request("GET", &path, &[], Bytes::new());
        let (status, _, text) = send(app.clone(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert!(text.contains("<Code>InvalidArgument</Code>"), "{text}");
    }
    let range = [("range", "bytes=0-1")];
    let req = presigned_request("GET", "/media/a.txt?partNumber=1", &range, Bytes::new());
    let (status, _, text) = send(app.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("<Code>InvalidRequest</Code>"), "{text}");
}

#[test]
fn upstream_failures_are_503_without_detail() {
    let e = S3Error::from(StorageError::Upstream(
        "GetObject: dispatch failure: connect to minio.internal:9000".into(),
    ));
    assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.code, "ServiceUnavailable");
    assert!(!e.message.contains("minio.internal"), "{}", e.message);
}
