//! Grants verify with the same verifiers the store runs, and only for what was granted.

use super::*;
use crate::qiniu::error::QiniuError;
use crate::qiniu::token::{verify_download_url, verify_upload_token, DownloadRequest};
use crate::s3::error::AuthError;

const AK: &str = "AKIDGRANTS";
const SK: &str = "grants-secret-key-0123";
const RO: &str = "AKIDREADER";
const NOW: u64 = 1_795_000_000;

fn config() -> StorageConfig {
    let mut cfg = StorageConfig::default();
    cfg.credentials.insert(AK.into(), SK.into());
    cfg.credentials
        .insert(RO.into(), "reader-secret-key-0123".into());
    cfg.read_only_keys = vec![RO.into()];
    cfg.public_url = "https://s3.example.test".into();
    cfg.download_scheme = "https".into();
    cfg.bucket_domains
        .insert("media.example.test".into(), "media".into());
    cfg.bucket_domains
        .insert("pub.example.test".into(), "pub".into());
    cfg.public_buckets = vec!["pub".into(), "open".into()];
    cfg.max_object_size = 100 << 20;
    cfg
}

fn grants() -> Grants {
    Grants::from_config(&config(), Some(AK), None).unwrap()
}

fn spec<'a>(key: &'a str) -> UploadSpec<'a> {
    UploadSpec {
        bucket: "media",
        key,
        content_type: Some("image/jpeg"),
        size: 5 << 20,
        expires_secs: 600,
        insert_only: false,
    }
}

/// Verifies a URL the way the S3 front end does, with the given request headers.
fn verify_url(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    now: u64,
) -> Result<(), AuthError> {
    let rest = url.strip_prefix("https://").expect("https URL");
    let (host, path_query) = rest.split_once('/').unwrap();
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let path = format!("/{path}");
    let mut all: Vec<(&str, &[u8])> = vec![("host", host.as_bytes())];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
    let view = RequestView {
        method,
        raw_path: &path,
        raw_query: query,
        headers: &all,
    };
    let lookup = |ak: &str| {
        (ak == AK).then(|| Credential {
            secret_key: SK.to_owned(),
            permissions: (),
        })
    };
    match sigv4::verify_request(&view, &VerifyConfig::new("us-east-1"), &lookup, now)? {
        Authenticated::Signed(_) => Ok(()),
        Authenticated::Anonymous => Err(AuthError::SignatureDoesNotMatch),
    }
}

#[test]
fn presigned_put_covers_size_type_and_key() {
    let g = grants();
    let put = g
        .presigned_put(&spec("photos/2026/cat 1.jpg"), NOW)
        .unwrap();
    assert_eq!(put.method, "PUT");
    assert!(put
        .url
        .starts_with("https://s3.example.test/media/photos/2026/cat%201.jpg?"));
    assert_eq!(put.headers["Content-Length"], (5u64 << 20).to_string());
    assert_eq!(put.headers["Content-Type"], "image/jpeg");
    assert_eq!(put.expires_at, NOW + 600);
    let ok = [
        ("content-length", "5242880"),
        ("content-type", "image/jpeg"),
    ];
    verify_url("PUT", &put.url, &ok, NOW + 1).unwrap();
    // Another size, another type, another key, another method: refused.
    for headers in [
        [
            ("content-length", "5242881"),
            ("content-type", "image/jpeg"),
        ],
        [("content-length", "5242880"), ("content-type", "text/html")],
    ] {
        assert_eq!(
            verify_url("PUT", &put.url, &headers, NOW + 1),
            Err(AuthError::SignatureDoesNotMatch)
        );
    }
    let other_key = put.url.replace("cat%201.jpg", "dog.jpg");
    assert_eq!(
        verify_url("PUT", &other_key, &ok, NOW + 1),
        Err(AuthError::SignatureDoesNotMatch)
    );
    assert_eq!(
        verify_url("GET", &put.url, &ok, NOW + 1),
        Err(AuthError::SignatureDoesNotMatch)
    );
    // Expired.
    assert!(matches!(
        verify_url("PUT", &put.url, &ok, NOW + 601),
        Err(AuthError::AccessDenied(_))
    ));
}

#[test]
fn insert_only_put_signs_if_none_match() {
    let mut s = spec("a.jpg");
    s.insert_only = true;
    s.content_type = None;
    let put = grants().presigned_put(&s, NOW).unwrap();
    assert_eq!(put.headers["If-None-Match"], "*");
    assert!(!put.headers.contains_key("Content-Type"));
    verify_url(
        "PUT",
        &put.url,
        &[("content-length", "5242880"), ("if-none-match", "*")],
        NOW,
    )
    .unwrap();
    assert!(verify_url("PUT", &put.url, &[("content-length", "5242880")], NOW).is_err());
}

#[test]
fn qiniu_token_pins_key_size_type() {
    let up = grants().qiniu_upload(&spec("voice/1.amr"), NOW).unwrap();
    assert_eq!(up.upload_url, "https://s3.example.test");
    assert_eq!(up.key, "voice/1.amr");
    let lookup = |ak: &str| (ak == AK).then_some(SK);
    let token = verify_upload_token(&up.token, lookup, NOW + 1).unwrap();
    let p = &token.policy;
    assert_eq!(p.scope, "media:voice/1.amr");
    assert_eq!(p.deadline, NOW + 600);
    assert_eq!(p.fsize_limit, Some(5 << 20));
    assert_eq!(p.fsize_min, Some(5 << 20));
    assert_eq!(p.mime_limit.as_deref(), Some("image/jpeg"));
    assert!(p.check_key("voice/1.amr").is_ok());
    assert!(p.check_key("voice/2.amr").is_err());
    assert_eq!(p.check_fsize((5 << 20) + 1), Err(QiniuError::FileTooLarge));
    assert!(p.check_mime("text/html").is_err());
    assert!(verify_upload_token(&up.token, lookup, NOW + 601).is_err());
}

#[test]
fn download_urls() {
    let g = grants();
    // Private bucket with a domain: Qiniu-style signed URL on the domain.
    let d = g.download_url("media", "a b/ü.jpg", 300, NOW).unwrap();
    assert_eq!(d.expires_at, Some(NOW + 300));
    let rest = d.url.strip_prefix("https://media.example.test").unwrap();
    let (path, query) = rest.split_once('?').unwrap();
    assert_eq!(path, "/a%20b/%C3%BC.jpg");
    let req = DownloadRequest {
        scheme: "https",
        host: "media.example.test",
        raw_path: path,
        raw_query: query,
    };
    let lookup = |ak: &str| (ak == AK).then_some(SK);
    verify_download_url(&req, lookup, NOW + 299).unwrap();
    assert_eq!(
        verify_download_url(&req, lookup, NOW + 301),
        Err(QiniuError::DownloadTokenExpired)
    );
    // Public bucket with a domain: plain.
    let d = g.download_url("pub", "x.png", 300, NOW).unwrap();
    assert_eq!(d.url, "https://pub.example.test/x.png");
    assert_eq!(d.expires_at, None);
    // Public bucket without a domain: plain path-style.
    let d = g.download_url("open", "x y.png", 0, NOW).unwrap();
    assert_eq!(d.url, "https://s3.example.test/open/x%20y.png");
    // Private bucket without a domain: SigV4 presigned GET.
    let d = g.download_url("files", "doc.pdf", 60, NOW).unwrap();
    verify_url("GET", &d.url, &[], NOW + 59).unwrap();
    assert!(verify_url("GET", &d.url, &[], NOW + 61).is_err());
}

#[test]
fn download_scheme_follows_config() {
    let mut cfg = config();
    cfg.download_scheme = "auto".into();
    let g = Grants::from_config(&cfg, None, None).unwrap();
    assert!(g
        .download_url("pub", "k", 1, NOW)
        .unwrap()
        .url
        .starts_with("http://pub.example.test/"));
    cfg.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    let g = Grants::from_config(&cfg, None, None).unwrap();
    assert!(g
        .download_url("pub", "k", 1, NOW)
        .unwrap()
        .url
        .starts_with("https://"));
    cfg.download_scheme = "http".into();
    let g = Grants::from_config(&cfg, None, None).unwrap();
    assert!(g
        .download_url("pub", "k", 1, NOW)
        .unwrap()
        .url
        .starts_with("http://"));
}

#[test]
fn public_url_defaults_to_the_listener() {
    let mut cfg = config();
    cfg.public_url.clear();
    let g = Grants::from_config(&cfg, None, Some("0.0.0.0:9123".parse().unwrap())).unwrap();
    assert_eq!(g.public_url(), "http://127.0.0.1:9123");
    let g = Grants::from_config(&cfg, None, Some("[::]:9123".parse().unwrap())).unwrap();
    assert_eq!(g.public_url(), "http://[::1]:9123");
    // The default port is not part of the signed host.
    let g = grants()
        .with_public_url("https://s3.example.test:443/")
        .unwrap();
    let put = g.presigned_put(&spec("k"), NOW).unwrap();
    assert!(put.url.starts_with("https://s3.example.test/media/k?"));
    assert!(grants().with_public_url("ftp://x").is_err());
    assert!(grants().with_public_url("https://x/path").is_err());
}

/// An upload request and the check its refusal must pass.
type Refusal<'a> = (UploadSpec<'a>, fn(&GrantError) -> bool);

#[test]
fn refusals() {
    let g = grants();
    let cases: Vec<Refusal<'_>> = vec![
        (
            UploadSpec {
                key: "../etc/passwd",
                ..spec("")
            },
            |e| matches!(e, GrantError::InvalidKey(_)),
        ),
        (
            UploadSpec {
                bucket: "Bad_Bucket",
                ..spec("k")
            },
            |e| matches!(e, GrantError::InvalidBucket(_)),
        ),
        (
            UploadSpec {
                size: (100 << 20) + 1,
                ..spec("k")
            },
            |e| matches!(e, GrantError::TooLarge { .. }),
        ),
        (
            UploadSpec {
                expires_secs: 0,
                ..spec("k")
            },
            |e| matches!(e, GrantError::InvalidExpiry(0)),
        ),
        (
            UploadSpec {
                expires_secs: MAX_EXPIRES_SECS + 1,
                ..spec("k")
            },
            |e| matches!(e, GrantError::InvalidExpiry(_)),
        ),
        (
            UploadSpec {
                content_type: Some("text/html\r\nx-evil: 1"),
                ..spec("k")
            },
            |e| matches!(e, GrantError::InvalidContentType(_)),
        ),
        (
            UploadSpec {
                content_type: Some("nonsense"),
                ..spec("k")
            },
            |e| matches!(e, GrantError::InvalidContentType(_)),
        ),
    ];
    for (s, expected) in cases {
        let e = g.presigned_put(&s, NOW).unwrap_err();
        assert!(expected(&e), "{s:?}: {e}");
        let e = g.qiniu_upload(&s, NOW).unwrap_err();
        assert!(expected(&e), "{s:?}: {e}");
    }
    let reader = Grants::from_config(&config(), Some(RO), None).unwrap();
    assert_eq!(
        reader.presigned_put(&spec("k"), NOW),
        Err(GrantError::ReadOnly)
    );
    assert!(reader.download_url("media", "k", 60, NOW).is_ok());
    assert_eq!(
        Grants::from_config(&config(), Some("nope"), None).unwrap_err(),
        GrantError::UnknownAccessKey("nope".into())
    );
    assert_eq!(
        Grants::from_config(&StorageConfig::default(), None, None).unwrap_err(),
        GrantError::NoCredentials
    );
    assert!(matches!(
        g.download_url("media", "k", 0, NOW),
        Err(GrantError::InvalidExpiry(0))
    ));
}

#[test]
fn header_names_are_canonical() {
    assert_eq!(canonical_header_name("content-length"), "Content-Length");
    assert_eq!(canonical_header_name("if-none-match"), "If-None-Match");
    assert_eq!(canonical_header_name("x"), "X");
}

/// An S3-style signed call to the HTTP API: `x-amz-content-sha256` of `signed_body`, the
/// request carrying `sent_body`.
async fn call_signed(signed_body: &str, sent_body: &str) -> (StatusCode, String) {
    use tower::ServiceExt;
    let now = now_unix();
    let time = UtcDateTime::from_unix(now);
    let amz_date = time.iso8601_basic();
    let hash = sigv4::hex_encode(&Sha256::digest(signed_body.as_bytes()));
    let path = "/_ember/v1/grants/download";
    let headers: Vec<(&str, &[u8])> = vec![
        ("host", b"s3.example.test"),
        ("x-amz-content-sha256", hash.as_bytes()),
        ("x-amz-date", amz_date.as_bytes()),
    ];
    let view = RequestView {
        method: "POST",
        raw_path: path,
        raw_query: "",
        headers: &headers,
    };
    let auth = sigv4::authorization_header(
        &view,
        SigningCredentials {
            access_key: AK,
            secret_key: SK,
        },
        "us-east-1",
        &time,
        &["host", "x-amz-content-sha256", "x-amz-date"],
        &hash,
    );
    let req = axum::http::Request::post(path)
        .header("host", "s3.example.test")
        .header("x-amz-content-sha256", &hash)
        .header("x-amz-date", &amz_date)
        .header("authorization", auth)
        .body(Body::from(sent_body.to_owned()))
        .unwrap();
    let res = router(&config()).oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_api_checks_the_signed_payload_hash() {
    let body = r#"{"bucket":"media","key":"a.jpg","expires_secs":60}"#;
    let (status, text) = call_signed(body, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("https://media.example.test/a.jpg?e="),
        "{text}"
    );
    // Signed for one body, sent with another: refused before anything is granted.
    let other = r#"{"bucket":"media","key":"b.jpg","expires_secs":60}"#;
    let (status, text) = call_signed(body, other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("XAmzContentSHA256Mismatch"), "{text}");
}
