//! The S3 API driven by the real AWS Rust SDK (`aws-sdk-s3`), and by raw HTTP requests where
//! the SDK cannot be made to misbehave: the router served by `ember_common::http::HttpServer`
//! on 127.0.0.1:0 over the in-memory backend.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use base64::Engine;
use ember_common::config::TlsConfig;
use ember_common::http::HttpServer;
use ember_common::tls::TlsProvider;
use ember_storage::backend::memory::MemoryBackend;
use ember_storage::backend::Backend;
use ember_storage::s3::chunked::{encode_aws_chunked, ChunkSignatureChain};
use ember_storage::s3::sigv4::{self, SigningCredentials, SigningKey};
use ember_storage::s3::{router, Access, S3Config};
use ember_storage::time::UtcDateTime;
use md5::{Digest, Md5};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

mod support;
use support::{raw, RawResponse};

const REGION: &str = "us-east-1";
const ADMIN: (&str, &str) = ("AKIAADMIN", "admin-secret-key");
const READER: (&str, &str) = ("AKIAREADER", "reader-secret-key");
const SCOPED: (&str, &str) = ("AKIASCOPED", "scoped-secret-key");
const MAX_OBJECT: u64 = 32 << 20;
const VHOST: &str = "s3.localtest";

struct Server {
    addr: SocketAddr,
    /// The HTTPS listener (self-signed certificate for localhost).
    tls_addr: SocketAddr,
    cert_pem: String,
    shutdown: CancellationToken,
    backend: Arc<MemoryBackend>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Server {
    let mut credentials = HashMap::new();
    credentials.insert(ADMIN.0.to_owned(), (ADMIN.1.to_owned(), Access::default()));
    credentials.insert(
        READER.0.to_owned(),
        (
            READER.1.to_owned(),
            Access {
                read_only: true,
                buckets: None,
            },
        ),
    );
    credentials.insert(
        SCOPED.0.to_owned(),
        (
            SCOPED.1.to_owned(),
            Access {
                read_only: false,
                buckets: Some(vec!["scoped".to_owned()]),
            },
        ),
    );
    let cfg = S3Config {
        region: REGION.to_owned(),
        credentials,
        public_buckets: vec!["public".to_owned()],
        max_object_size: MAX_OBJECT,
        virtual_host_suffixes: vec![VHOST.to_owned()],
    };
    let backend = Arc::new(MemoryBackend::new());
    let app = router(backend.clone(), Arc::new(cfg));
    let shutdown = CancellationToken::new();
    let tls = TlsProvider::new(&TlsConfig::default(), shutdown.clone())
        .await
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = HttpServer::bind("s3", &[any], &[any], Some(tls.server_config()))
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let addr = addrs.iter().find(|(p, _)| *p == "http").unwrap().1;
    let tls_addr = addrs.iter().find(|(p, _)| *p == "https").unwrap().1;
    tokio::spawn(server.run(app, shutdown.clone()));
    Server {
        addr,
        tls_addr,
        cert_pem: tls.self_signed_cert_pem().unwrap(),
        shutdown,
        backend,
    }
}

/// Resolves every name to 127.0.0.1 (for virtual-host-style `bucket.s3.localtest`).
#[derive(Debug, Clone)]
struct Loopback;

impl ResolveDns for Loopback {
    fn resolve_dns<'a>(&'a self, _name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
    }
}

fn client_with(endpoint: String, key: (&str, &str), path_style: bool) -> Client {
    client_trusting(endpoint, key, path_style, None)
}

/// A client of `endpoint` (any host name resolves to 127.0.0.1) that trusts `cert_pem`.
fn client_trusting(
    endpoint: String,
    (ak, sk): (&str, &str),
    path_style: bool,
    cert_pem: Option<&str>,
) -> Client {
    use aws_smithy_http_client::tls;
    let mut builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    if let Some(pem) = cert_pem {
        builder = builder.tls_context(
            tls::TlsContext::builder()
                .with_trust_store(tls::TrustStore::empty().with_pem_certificate(pem.as_bytes()))
                .build()
                .unwrap(),
        );
    }
    let http = builder.build_with_resolver(Loopback);
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(path_style)
        .retry_config(RetryConfig::disabled())
        .http_client(http)
        .build();
    Client::from_conf(config)
}

fn client(s: &Server, key: (&str, &str)) -> Client {
    client_with(format!("http://{}", s.addr), key, true)
}

fn md5_hex(data: &[u8]) -> String {
    sigv4::hex_encode(&Md5::digest(data))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<none>").to_owned()
}

fn status<E, R: HasStatus>(e: &aws_sdk_s3::error::SdkError<E, R>) -> u16 {
    e.raw_response().map_or(0, |r| r.status_code())
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) -> String {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"))
        .e_tag
        .unwrap()
}

async fn get(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// A SigV4-signed raw request (header auth); `payload_hash` is the `x-amz-content-sha256`.
#[allow(clippy::too_many_arguments)]
async fn signed_raw(
    addr: SocketAddr,
    key: (&str, &str),
    method: &str,
    host: &str,
    raw_path: &str,
    raw_query: &str,
    extra: &[(&str, String)],
    payload_hash: &str,
    body: &[u8],
) -> RawResponse {
    let now = UtcDateTime::from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let mut headers: Vec<(&str, String)> = vec![
        ("host", host.to_owned()),
        ("x-amz-date", now.iso8601_basic()),
        ("x-amz-content-sha256", payload_hash.to_owned()),
    ];
    headers.extend(extra.iter().cloned());
    let view_headers: Vec<(&str, &[u8])> =
        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    let view = sigv4::RequestView {
        method,
        raw_path,
        raw_query,
        headers: &view_headers,
    };
    let auth = sigv4::authorization_header(
        &view,
        SigningCredentials {
            access_key: key.0,
            secret_key: key.1,
        },
        REGION,
        &now,
        &names,
        payload_hash,
    );
    headers.push(("authorization", auth));
    let target = if raw_query.is_empty() {
        raw_path.to_owned()
    } else {
        format!("{raw_path}?{raw_query}")
    };
    raw(addr, method, &target, &headers, body).await
}

fn sha256_hex(data: &[u8]) -> String {
    sigv4::hex_encode(&Sha256::digest(data))
}

fn error_code(r: &RawResponse) -> String {
    let t = r.text();
    t.split("<Code>")
        .nth(1)
        .and_then(|s| s.split("</Code>").next())
        .unwrap_or("")
        .to_owned()
}

/// `http://host:port/path?query` -> `/path?query`.
fn target_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_owned(), |i| rest[i..].to_owned())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bucket_lifecycle() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("media").send().await.unwrap();
    let e = c.create_bucket().bucket("media").send().await.unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyOwnedByYou");
    assert_eq!(status(&e), 409);
    let e = c
        .create_bucket()
        .bucket("Bad_Name")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidBucketName");

    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name.clone())
        .collect();
    assert_eq!(names, vec!["media"]);

    c.head_bucket().bucket("media").send().await.unwrap();
    let e = c.head_bucket().bucket("missing").send().await.unwrap_err();
    assert_eq!(status(&e), 404);
    let loc = c
        .get_bucket_location()
        .bucket("media")
        .send()
        .await
        .unwrap();
    assert!(
        loc.location_constraint.is_none() || loc.location_constraint().unwrap().as_str().is_empty()
    );
    let v = c
        .get_bucket_versioning()
        .bucket("media")
        .send()
        .await
        .unwrap();
    assert!(v.status.is_none());
    let acl = c.get_bucket_acl().bucket("media").send().await.unwrap();
    assert_eq!(acl.grants().len(), 1);
    let e = c
        .get_bucket_policy()
        .bucket("media")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchBucketPolicy");
    let e = c
        .put_bucket_policy()
        .bucket("media")
        .policy("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NotImplemented");
    assert_eq!(status(&e), 501);

    put(&c, "media", "k", b"x").await;
    let e = c.delete_bucket().bucket("media").send().await.unwrap_err();
    assert_eq!(code(&e), "BucketNotEmpty");
    assert_eq!(status(&e), 409);
    c.delete_object()
        .bucket("media")
        .key("k")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("media").send().await.unwrap();
    let e = c.head_bucket().bucket("media").send().await.unwrap_err();
    assert_eq!(status(&e), 404);
    let e = c
        .list_objects_v2()
        .bucket("media")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");

    // A CreateBucketConfiguration for this region is accepted, another region's refused.
    let body = "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>";
    let host = s.addr.to_string();
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/other",
        "",
        &[],
        &sha256_hex(body.as_bytes()),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "IllegalLocationConstraintException");
    let body = body.replace("eu-west-1", REGION);
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/other",
        "",
        &[],
        &sha256_hex(body.as_bytes()),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn objects_and_metadata_round_trip() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = pattern(100_000, 7);
    let out = c
        .put_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .body(ByteStream::from(data.clone()))
        .content_type("application/pdf")
        .content_disposition("attachment; filename=\"report.pdf\"")
        .cache_control("max-age=3600")
        .content_language("en")
        .content_encoding("identity")
        .expires(DateTime::from_secs(2_000_000_000))
        .metadata("owner", "alice")
        .metadata("Project", "ember")
        .acl(aws_sdk_s3::types::ObjectCannedAcl::PublicRead)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.e_tag.as_deref(),
        Some(format!("\"{}\"", md5_hex(&data)).as_str())
    );

    let got = c
        .get_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/pdf"));
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"report.pdf\"")
    );
    assert_eq!(got.cache_control(), Some("max-age=3600"));
    assert_eq!(got.content_language(), Some("en"));
    assert_eq!(got.content_encoding(), Some("identity"));
    assert_eq!(got.content_length(), Some(data.len() as i64));
    assert_eq!(got.accept_ranges(), Some("bytes"));
    assert_eq!(got.e_tag(), out.e_tag());
    assert!(got.last_modified().is_some());
    let meta = got.metadata().unwrap();
    assert_eq!(meta.get("owner").map(String::as_str), Some("alice"));
    assert_eq!(meta.get("project").map(String::as_str), Some("ember"));
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], &data[..]);

    let head = c
        .head_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(data.len() as i64));
    assert_eq!(head.content_type(), Some("application/pdf"));
    assert_eq!(head.metadata().unwrap().len(), 2);

    // GET-time overrides.
    let got = c
        .get_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .response_content_type("text/plain")
        .response_content_disposition("inline")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.content_disposition(), Some("inline"));

    // Object ACL and tagging answer something sane.
    let acl = c
        .get_object_acl()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(acl.grants().len(), 1);
    let tags = c
        .get_object_tagging()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    assert!(tags.tag_set().is_empty());

    // An empty object; S3's default content type when none was sent (the SDK always sends
    // one, so a raw request).
    let host = s.addr.to_string();
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/empty",
        "",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = c
        .get_object()
        .bucket("bkt")
        .key("empty")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_length(), Some(0));
    assert_eq!(got.content_type(), Some("binary/octet-stream"));

    c.delete_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    let e = c
        .get_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 404);
    assert!(e.into_service_error().is_no_such_key());
    // Deleting again is fine.
    c.delete_object()
        .bucket("bkt")
        .key("docs/report.pdf")
        .send()
        .await
        .unwrap();
    let e = c
        .head_object()
        .bucket("bkt")
        .key("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 404);
}

#[tokio::test]
async fn ranges_and_conditionals() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = pattern(1000, 3);
    let etag = put(&c, "bkt", "obj", &data).await;

    let range = |r: &'static str| c.get_object().bucket("bkt").key("obj").range(r).send();
    let got = range("bytes=10-19").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 10-19/1000"));
    assert_eq!(got.content_length(), Some(10));
    assert_eq!(
        &got.body.collect().await.unwrap().into_bytes()[..],
        &data[10..20]
    );
    let got = range("bytes=990-").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 990-999/1000"));
    assert_eq!(
        &got.body.collect().await.unwrap().into_bytes()[..],
        &data[990..]
    );
    let got = range("bytes=-5").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 995-999/1000"));
    let got = range("bytes=900-5000").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 900-999/1000"));
    // Several ranges: the whole object, 200.
    let got = range("bytes=0-1,5-6").await.unwrap();
    assert_eq!(got.content_range(), None);
    assert_eq!(got.content_length(), Some(1000));
    let e = range("bytes=1000-").await.unwrap_err();
    assert_eq!(status(&e), 416);
    assert_eq!(code(&e), "InvalidRange");
    let head = c
        .head_object()
        .bucket("bkt")
        .key("obj")
        .range("bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10));

    // 416 carries Content-Range: bytes */size.
    let host = s.addr.to_string();
    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/bkt/obj",
        "",
        &[("range", "bytes=2000-3000".to_owned())],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    assert_eq!(error_code(&r), "InvalidRange");

    // If-None-Match / If-Modified-Since: 304.
    let e = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 304);
    let e = c
        .head_object()
        .bucket("bkt")
        .key("obj")
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 304);
    let later = DateTime::from(SystemTime::now() + Duration::from_secs(3600));
    let earlier = DateTime::from(SystemTime::now() - Duration::from_secs(3600));
    let e = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .if_modified_since(later)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 304);
    c.get_object()
        .bucket("bkt")
        .key("obj")
        .if_modified_since(earlier)
        .send()
        .await
        .unwrap();
    // If-Match / If-Unmodified-Since: 412.
    let e = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .if_match("\"0123\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    assert_eq!(code(&e), "PreconditionFailed");
    let e = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .if_unmodified_since(earlier)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    // If-Match true wins over a failing If-Unmodified-Since (S3's rule).
    c.get_object()
        .bucket("bkt")
        .key("obj")
        .if_match(&etag)
        .if_unmodified_since(earlier)
        .send()
        .await
        .unwrap();
    // If-None-Match false (different ETag) with If-Modified-Since true: 200.
    c.get_object()
        .bucket("bkt")
        .key("obj")
        .if_none_match("\"other\"")
        .if_modified_since(later)
        .send()
        .await
        .unwrap();

    // Conditional writes.
    let e = c
        .put_object()
        .bucket("bkt")
        .key("obj")
        .if_none_match("*")
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    c.put_object()
        .bucket("bkt")
        .key("fresh")
        .if_none_match("*")
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap();
    let e = c
        .put_object()
        .bucket("bkt")
        .key("obj")
        .if_match("\"wrong\"")
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    c.put_object()
        .bucket("bkt")
        .key("obj")
        .if_match(&etag)
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "obj").await, b"new");
}

#[tokio::test]
async fn listing_v2_paginated_and_v1() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    for d in ["a", "b", "c"] {
        for i in 0..4 {
            keys.push(format!("{d}/{i}.txt"));
        }
    }
    for i in 0..7 {
        keys.push(format!("top-{i}"));
    }
    keys.push("a/deep/x".to_owned());
    for k in &keys {
        put(&c, "bkt", k, k.as_bytes()).await;
    }
    keys.sort();

    // v2 without delimiter, 4 per page, through the SDK's paginator.
    let pages: Vec<_> = c
        .list_objects_v2()
        .bucket("bkt")
        .max_keys(4)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let pages: Vec<_> = pages.into_iter().map(Result::unwrap).collect();
    assert_eq!(pages.len(), keys.len().div_ceil(4));
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p.contents().iter().filter_map(|o| o.key.clone()))
        .collect();
    assert_eq!(listed, keys);
    assert!(pages
        .iter()
        .all(|p| p.key_count() == Some(p.contents().len() as i32)));
    let first = &pages[0].contents()[0];
    assert_eq!(first.size(), Some(keys[0].len() as i64));
    assert_eq!(
        first.e_tag(),
        Some(format!("\"{}\"", md5_hex(keys[0].as_bytes())).as_str())
    );
    assert!(first.owner.is_none());

    // v2 with delimiter: common prefixes count against max-keys.
    let pages: Vec<_> = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(2)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut prefixes = Vec::new();
    let mut top = Vec::new();
    for p in pages {
        let p = p.unwrap();
        assert!(p.key_count().unwrap() <= 2);
        prefixes.extend(
            p.common_prefixes()
                .iter()
                .filter_map(|cp| cp.prefix.clone()),
        );
        top.extend(p.contents().iter().filter_map(|o| o.key.clone()));
    }
    assert_eq!(prefixes, vec!["a/", "b/", "c/"]);
    assert_eq!(top, (0..7).map(|i| format!("top-{i}")).collect::<Vec<_>>());

    // Prefix + delimiter, start-after, fetch-owner.
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("a/")
        .delimiter("/")
        .fetch_owner(true)
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 4);
    assert_eq!(out.common_prefixes()[0].prefix(), Some("a/deep/"));
    assert!(out.contents()[0].owner.is_some());
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .start_after("c/3.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents()[0].key(), Some("top-0"));
    assert_eq!(out.start_after(), Some("c/3.txt"));
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .max_keys(0)
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_count(), Some(0));
    let e = c
        .list_objects_v2()
        .bucket("bkt")
        .continuation_token("!!!not-a-token")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");

    // v1: marker paging; NextMarker only with a delimiter.
    let mut marker: Option<String> = None;
    let mut listed = Vec::new();
    loop {
        let mut req = c.list_objects().bucket("bkt").max_keys(5);
        if let Some(m) = &marker {
            req = req.marker(m);
        }
        let out = req.send().await.unwrap();
        assert!(out.next_marker.is_none());
        listed.extend(out.contents().iter().filter_map(|o| o.key.clone()));
        assert!(out.contents().iter().all(|o| o.owner.is_some()));
        if !out.is_truncated().unwrap_or(false) {
            break;
        }
        marker = listed.last().cloned();
    }
    assert_eq!(listed, keys);
    let out = c
        .list_objects()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(out.next_marker(), Some("b/"));
    let out = c
        .list_objects()
        .bucket("bkt")
        .delimiter("/")
        .marker("b/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(out.common_prefixes()[0].prefix(), Some("c/"));
    assert_eq!(out.contents()[0].key(), Some("top-0"));
}

#[tokio::test]
async fn special_keys_round_trip() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut keys = vec![
        "with space.txt",
        "plus+sign+",
        "unicode/文件 ü.png",
        "a//b",
        "percent%20literal",
        "q?uestion&amp=1#frag",
        "tilde~ and 'quotes' \"dq\"",
        "<xml>&entities;",
        "emoji 🎉/é",
        " leading and trailing ",
    ];
    for k in &keys {
        put(&c, "bkt", k, k.as_bytes()).await;
        assert_eq!(get(&c, "bkt", k).await, k.as_bytes(), "{k}");
    }
    keys.sort();
    let out = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    let listed: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, keys);
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("unicode/")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents()[0].key(), Some("unicode/文件 ü.png"));

    // encoding-type=url (the Rust SDK leaves decoding to the caller).
    let host = s.addr.to_string();
    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/bkt",
        "encoding-type=url&list-type=2&prefix=with",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(t.contains("<Key>with%20space.txt</Key>"), "{t}");
    assert!(t.contains("<EncodingType>url</EncodingType>"));

    // Keys the store refuses.
    let e = c
        .put_object()
        .bucket("bkt")
        .key("a/../escape")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    let long = "k".repeat(1025);
    let e = c
        .put_object()
        .bucket("bkt")
        .key(&long)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "KeyTooLongError");
}

#[tokio::test]
async fn multipart_upload() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let part1 = pattern(5 << 20, 1);
    let part2 = pattern(5 << 20, 2);
    let tail = pattern(1234, 3);

    let up = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("big/file.bin")
        .content_type("application/x-test")
        .metadata("kind", "multipart")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_owned();
    let mut completed = Vec::new();
    for (n, data) in [(1, &part1), (2, &part2), (3, &tail)] {
        let out = c
            .upload_part()
            .bucket("bkt")
            .key("big/file.bin")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(data)).as_str()));
        completed.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let parts = c
        .list_parts()
        .bucket("bkt")
        .key("big/file.bin")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(parts.parts().len(), 3);
    assert_eq!(parts.parts()[2].size(), Some(1234));
    let parts = c
        .list_parts()
        .bucket("bkt")
        .key("big/file.bin")
        .upload_id(&id)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!(parts.parts().len(), 2);
    assert_eq!(parts.is_truncated(), Some(true));
    assert_eq!(parts.next_part_number_marker(), Some("2"));

    // A second upload, to abort; both are listed meanwhile.
    let other = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("big/other")
        .send()
        .await
        .unwrap();
    let uploads = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    let listed: Vec<&str> = uploads.uploads().iter().filter_map(|u| u.key()).collect();
    assert_eq!(listed, vec!["big/file.bin", "big/other"]);
    let uploads = c
        .list_multipart_uploads()
        .bucket("bkt")
        .max_uploads(1)
        .send()
        .await
        .unwrap();
    assert_eq!(uploads.is_truncated(), Some(true));
    assert_eq!(uploads.next_key_marker(), Some("big/file.bin"));
    c.abort_multipart_upload()
        .bucket("bkt")
        .key("big/other")
        .upload_id(other.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    let e = c
        .abort_multipart_upload()
        .bucket("bkt")
        .key("big/other")
        .upload_id(other.upload_id().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");

    // A wrong ETag is refused; the right list completes.
    let bad = CompletedMultipartUpload::builder()
        .parts(
            CompletedPart::builder()
                .part_number(1)
                .e_tag("\"00000000000000000000000000000000\"")
                .build(),
        )
        .build();
    let e = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("big/file.bin")
        .upload_id(&id)
        .multipart_upload(bad)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidPart");
    // If-None-Match: * on completion while the key exists: 412 (and the upload survives).
    put(&c, "bkt", "big/file.bin", b"occupied").await;
    let e = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("big/file.bin")
        .upload_id(&id)
        .if_none_match("*")
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed.clone()))
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("big/file.bin")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut md5s = Vec::new();
    for d in [&part1, &part2, &tail] {
        md5s.extend_from_slice(&Md5::digest(d));
    }
    let expected = format!("\"{}-3\"", md5_hex(&md5s));
    assert_eq!(done.e_tag(), Some(expected.as_str()));
    let got = c
        .get_object()
        .bucket("bkt")
        .key("big/file.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(
        got.metadata().unwrap().get("kind").map(String::as_str),
        Some("multipart")
    );
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.len(), part1.len() + part2.len() + tail.len());
    assert!(body[..part1.len()] == part1[..]);
    assert!(body[part1.len()..part1.len() + part2.len()] == part2[..]);
    assert!(body[part1.len() + part2.len()..] == tail[..]);
    assert!(c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap()
        .uploads()
        .is_empty());

    // UploadPartCopy: a range of the finished object becomes a part of a new one.
    let up = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("copy-of-range")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let out = c
        .upload_part_copy()
        .bucket("bkt")
        .key("copy-of-range")
        .upload_id(id)
        .part_number(1)
        .copy_source("bkt/big/file.bin")
        .copy_source_range("bytes=100-199")
        .send()
        .await
        .unwrap();
    let etag = out.copy_part_result().unwrap().e_tag().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&part1[100..200])));
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("copy-of-range")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(etag).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "copy-of-range").await, &part1[100..200]);
}

#[tokio::test]
async fn copy_and_multi_delete() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("src").send().await.unwrap();
    c.create_bucket().bucket("dst").send().await.unwrap();
    c.put_object()
        .bucket("src")
        .key("orig name+1.txt")
        .body(ByteStream::from_static(b"copy me"))
        .content_type("text/plain")
        .metadata("a", "1")
        .send()
        .await
        .unwrap();

    // COPY keeps the metadata (the source is URL-encoded, spaces and '+' included).
    let out = c
        .copy_object()
        .bucket("dst")
        .key("copied")
        .copy_source("src/orig%20name%2B1.txt")
        .send()
        .await
        .unwrap();
    let r = out.copy_object_result().unwrap();
    assert_eq!(
        r.e_tag(),
        Some(format!("\"{}\"", md5_hex(b"copy me")).as_str())
    );
    assert!(r.last_modified().is_some());
    let h = c
        .head_object()
        .bucket("dst")
        .key("copied")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("text/plain"));
    assert_eq!(
        h.metadata().unwrap().get("a").map(String::as_str),
        Some("1")
    );

    // REPLACE takes the request's metadata.
    c.copy_object()
        .bucket("dst")
        .key("replaced")
        .copy_source("/src/orig%20name%2B1.txt")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("application/json")
        .metadata("b", "2")
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket("dst")
        .key("replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("application/json"));
    let m = h.metadata().unwrap();
    assert_eq!(m.get("b").map(String::as_str), Some("2"));
    assert!(!m.contains_key("a"));
    assert_eq!(get(&c, "dst", "replaced").await, b"copy me");

    // Onto itself without REPLACE: illegal; with REPLACE: fine.
    let e = c
        .copy_object()
        .bucket("dst")
        .key("copied")
        .copy_source("dst/copied")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    c.copy_object()
        .bucket("dst")
        .key("copied")
        .copy_source("dst/copied")
        .metadata_directive(MetadataDirective::Replace)
        .send()
        .await
        .unwrap();
    // Copy-source conditions and a missing source.
    let e = c
        .copy_object()
        .bucket("dst")
        .key("x")
        .copy_source("src/orig%20name%2B1.txt")
        .copy_source_if_match("\"nope\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    let e = c
        .copy_object()
        .bucket("dst")
        .key("x")
        .copy_source("src/orig%20name%2B1.txt")
        .copy_source_if_modified_since(DateTime::from(
            SystemTime::now() + Duration::from_secs(3600),
        ))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    let e = c
        .copy_object()
        .bucket("dst")
        .key("x")
        .copy_source("src/missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");

    // Multi-object delete, verbose then quiet.
    for k in ["d1", "d2", "d3", "d4"] {
        put(&c, "dst", k, b"x").await;
    }
    let ids = |keys: &[&str]| -> Delete {
        Delete::builder()
            .set_objects(Some(
                keys.iter()
                    .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
                    .collect(),
            ))
            .build()
            .unwrap()
    };
    let out = c
        .delete_objects()
        .bucket("dst")
        .delete(ids(&["d1", "d2", "never-existed"]))
        .send()
        .await
        .unwrap();
    let mut deleted: Vec<&str> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort();
    assert_eq!(deleted, vec!["d1", "d2", "never-existed"]);
    assert!(out.errors().is_empty());
    let mut quiet = ids(&["d3", "d4", "a/../bad"]);
    quiet.quiet = Some(true);
    let out = c
        .delete_objects()
        .bucket("dst")
        .delete(quiet)
        .send()
        .await
        .unwrap();
    assert!(out.deleted().is_empty());
    assert_eq!(out.errors().len(), 1);
    assert_eq!(out.errors()[0].key(), Some("a/../bad"));
    let left: Vec<String> = c
        .list_objects_v2()
        .bucket("dst")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key.clone())
        .collect();
    assert_eq!(left, vec!["copied", "replaced"]);
}

#[tokio::test]
async fn presigned_urls() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    put(&c, "bkt", "photos/cat 1.jpg", b"meow").await;

    let presigned = c
        .get_object()
        .bucket("bkt")
        .key("photos/cat 1.jpg")
        .response_content_disposition("attachment")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = raw(s.addr, "GET", &target_of(presigned.uri()), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"meow");
    assert_eq!(r.header("content-disposition"), Some("attachment"));
    assert!(r.header("x-amz-request-id").is_some());

    // A presigned PUT, used by a plain HTTP client.
    let presigned = c
        .put_object()
        .bucket("bkt")
        .key("uploads/from browser.txt")
        .content_type("text/plain")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let headers: Vec<(&str, String)> = presigned
        .headers()
        .map(|(n, v)| (n, v.to_owned()))
        .collect();
    let r = raw(
        s.addr,
        "PUT",
        &target_of(presigned.uri()),
        &headers,
        b"uploaded without the SDK",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("etag").map(str::to_owned),
        Some(format!("\"{}\"", md5_hex(b"uploaded without the SDK")))
    );
    let got = c
        .get_object()
        .bucket("bkt")
        .key("uploads/from browser.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        &got.body.collect().await.unwrap().into_bytes()[..],
        b"uploaded without the SDK"
    );

    // Expired.
    let expired = c
        .get_object()
        .bucket("bkt")
        .key("photos/cat 1.jpg")
        .presigned(
            PresigningConfig::builder()
                .start_time(SystemTime::now() - Duration::from_secs(7200))
                .expires_in(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let r = raw(s.addr, "GET", &target_of(expired.uri()), &[], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "AccessDenied");
    assert!(r.text().contains("Request has expired"));
    // Tampered: another key under the same signature.
    let tampered = target_of(presigned.uri()).replace("from%20browser", "other");
    let r = raw(s.addr, "PUT", &tampered, &headers, b"x").await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "SignatureDoesNotMatch");
    assert!(s
        .backend
        .head_object("bkt", "uploads/other.txt")
        .await
        .is_err());
}

#[tokio::test]
async fn authentication_and_permissions() {
    let s = start().await;
    let admin = client(&s, ADMIN);
    for b in ["bkt", "scoped", "public"] {
        admin.create_bucket().bucket(b).send().await.unwrap();
        put(&admin, b, "obj", b"data").await;
    }

    let e = client(&s, (ADMIN.0, "wrong-secret"))
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    assert_eq!(status(&e), 403);
    let e = client(&s, ("AKIAUNKNOWN", "whatever"))
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidAccessKeyId");
    assert_eq!(status(&e), 403);

    // Read-only key: reads yes, writes no.
    let reader = client(&s, READER);
    assert_eq!(get(&reader, "bkt", "obj").await, b"data");
    let e = reader
        .put_object()
        .bucket("bkt")
        .key("new")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    assert_eq!(status(&e), 403);
    let e = reader
        .delete_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");

    // Per-bucket key.
    let scoped = client(&s, SCOPED);
    put(&scoped, "scoped", "mine", b"ok").await;
    let e = scoped
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = scoped
        .copy_object()
        .bucket("scoped")
        .key("stolen")
        .copy_source("bkt/obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let names: Vec<String> = scoped
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name.clone())
        .collect();
    assert_eq!(names, vec!["scoped"]);

    // Anonymous: public bucket reads only.
    let r = raw(s.addr, "GET", "/public/obj", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"data");
    let r = raw(s.addr, "GET", "/public?list-type=2", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<Key>obj</Key>"));
    let r = raw(s.addr, "HEAD", "/public/obj", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("4"));
    for (method, target) in [
        ("GET", "/bkt/obj"),
        ("PUT", "/public/new"),
        ("DELETE", "/public/obj"),
        ("GET", "/"),
        ("GET", "/public?uploads"),
    ] {
        let r = raw(s.addr, method, target, &[], b"x").await;
        assert_eq!(r.status, 403, "{method} {target}");
        if method != "HEAD" {
            assert_eq!(error_code(&r), "AccessDenied");
        }
    }
    let r = raw(
        s.addr,
        "GET",
        "/public/obj?response-content-type=text/html",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);

    // Clock skew.
    let old = UtcDateTime::from_unix(1_600_000_000);
    let host = s.addr.to_string();
    let mut headers: Vec<(&str, String)> = vec![
        ("host", host.clone()),
        ("x-amz-date", old.iso8601_basic()),
        ("x-amz-content-sha256", sigv4::EMPTY_SHA256.to_owned()),
    ];
    let view_headers: Vec<(&str, &[u8])> =
        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let auth = sigv4::authorization_header(
        &sigv4::RequestView {
            method: "GET",
            raw_path: "/bkt/obj",
            raw_query: "",
            headers: &view_headers,
        },
        SigningCredentials {
            access_key: ADMIN.0,
            secret_key: ADMIN.1,
        },
        REGION,
        &old,
        &["host", "x-amz-date", "x-amz-content-sha256"],
        sigv4::EMPTY_SHA256,
    );
    headers.push(("authorization", auth));
    let r = raw(s.addr, "GET", "/bkt/obj", &headers, b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "RequestTimeTooSkewed");
    assert!(r
        .text()
        .contains("<MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds>"));
}

#[tokio::test]
async fn checksums_and_body_verification() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();

    // The SDK's default checksum (CRC32), and explicitly chosen ones.
    put(&c, "bkt", "default", b"checked by default").await;
    for alg in [
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Crc64Nvme,
    ] {
        c.put_object()
            .bucket("bkt")
            .key(format!("alg-{}", alg.as_str()))
            .checksum_algorithm(alg.clone())
            .body(ByteStream::from(pattern(200_000, 9)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", alg.as_str()));
    }
    // A streaming (file) body over plain HTTP.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.bin");
    let data = pattern(150_000, 4);
    std::fs::write(&path, &data).unwrap();
    c.put_object()
        .bucket("bkt")
        .key("from-file")
        .body(ByteStream::from_path(&path).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "from-file").await, data);
    // Content-MD5 from the SDK.
    c.put_object()
        .bucket("bkt")
        .key("md5")
        .content_md5(base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"abc")))
        .body(ByteStream::from_static(b"abc"))
        .send()
        .await
        .unwrap();

    let host = s.addr.to_string();
    let body = b"the real body";
    let crc_of = |data: &[u8]| {
        base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(data).to_be_bytes())
    };
    // A wrong x-amz-checksum-crc32 header: BadDigest, nothing stored.
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/bad-crc",
        "",
        &[("x-amz-checksum-crc32", crc_of(b"another body"))],
        &sha256_hex(body),
        body,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "BadDigest");
    assert!(r.header("x-amz-request-id").is_some());
    // The right one is accepted.
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/good-crc",
        "",
        &[("x-amz-checksum-crc32", crc_of(body))],
        &sha256_hex(body),
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A body that does not match x-amz-content-sha256.
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/bad-sha",
        "",
        &[],
        &sha256_hex(b"something else"),
        body,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "XAmzContentSHA256Mismatch");
    // A wrong Content-MD5.
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/bad-md5",
        "",
        &[(
            "content-md5",
            base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"other")),
        )],
        sigv4::UNSIGNED_PAYLOAD,
        body,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "BadDigest");
    for k in ["bad-crc", "bad-sha", "bad-md5"] {
        assert!(s.backend.head_object("bkt", k).await.is_err(), "{k} stored");
    }
    assert_eq!(get(&c, "bkt", "good-crc").await, body);

    // A signed aws-chunked upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), then a tampered one.
    let payload = pattern(200_000, 5);
    for tamper in [false, true] {
        let key = if tamper { "chunked-bad" } else { "chunked" };
        let now = UtcDateTime::from_unix(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
        let mut headers: Vec<(&str, String)> = vec![
            ("host", host.clone()),
            ("x-amz-date", now.iso8601_basic()),
            ("x-amz-content-sha256", sigv4::STREAMING_PAYLOAD.to_owned()),
            ("content-encoding", "aws-chunked".to_owned()),
            ("x-amz-decoded-content-length", payload.len().to_string()),
        ];
        let view_headers: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let path = format!("/bkt/{key}");
        let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let auth = sigv4::authorization_header(
            &sigv4::RequestView {
                method: "PUT",
                raw_path: &path,
                raw_query: "",
                headers: &view_headers,
            },
            SigningCredentials {
                access_key: ADMIN.0,
                secret_key: ADMIN.1,
            },
            REGION,
            &now,
            &names,
            sigv4::STREAMING_PAYLOAD,
        );
        let seed =
            sigv4::hex_decode_32(auth.rsplit("Signature=").next().unwrap().as_bytes()).unwrap();
        let mut chain = ChunkSignatureChain::new(
            SigningKey::derive(ADMIN.1, &now.date_stamp(), REGION, "s3"),
            &now.iso8601_basic(),
            &sigv4::credential_scope(&now, REGION),
            seed,
        );
        let mut encoded = encode_aws_chunked(Some(&mut chain), &payload, 64 * 1024, None);
        if tamper {
            let i = encoded.len() / 2;
            encoded[i] ^= 1;
        }
        headers.push(("authorization", auth));
        let r = raw(s.addr, "PUT", &path, &headers, &encoded).await;
        if tamper {
            assert_eq!(r.status, 403, "{}", r.text());
            assert_eq!(error_code(&r), "SignatureDoesNotMatch");
            assert!(s.backend.head_object("bkt", key).await.is_err());
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(get(&c, "bkt", key).await, payload);
            let h = c.head_object().bucket("bkt").key(key).send().await.unwrap();
            assert_eq!(h.content_encoding(), None);
        }
    }

    // An unsigned-payload aws-chunked body with a wrong CRC32 trailer.
    let trailer = crc_of(b"not the payload");
    let encoded = encode_aws_chunked(
        None,
        &payload,
        8192,
        Some(&[("x-amz-checksum-crc32", trailer.as_str())]),
    );
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/bad-trailer",
        "",
        &[
            ("content-encoding", "aws-chunked".to_owned()),
            ("x-amz-decoded-content-length", payload.len().to_string()),
            ("x-amz-trailer", "x-amz-checksum-crc32".to_owned()),
        ],
        sigv4::STREAMING_UNSIGNED_PAYLOAD_TRAILER,
        &encoded,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "BadDigest");
    assert!(s.backend.head_object("bkt", "bad-trailer").await.is_err());

    // Too large by its announced length: refused before the body is read.
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt/huge",
        "",
        &[("content-length", (MAX_OBJECT + 1).to_string())],
        sigv4::UNSIGNED_PAYLOAD,
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "EntityTooLarge");
}

/// Over HTTPS the SDK streams uploads as `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with its
/// default CRC32 checksum as a trailer (over plain HTTP it signs the payload instead).
#[tokio::test]
async fn sdk_default_checksum_trailers_over_https() {
    let s = start().await;
    let c = client_trusting(
        format!("https://localhost:{}", s.tls_addr.port()),
        ADMIN,
        true,
        Some(&s.cert_pem),
    );
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = pattern(300_000, 11);
    let out = c
        .put_object()
        .bucket("bkt")
        .key("trailer.bin")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.e_tag(),
        Some(format!("\"{}\"", md5_hex(&data)).as_str())
    );
    assert_eq!(get(&c, "bkt", "trailer.bin").await, data);
    // A streaming (file) body.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.bin");
    std::fs::write(&path, &data).unwrap();
    let out = c
        .put_object()
        .bucket("bkt")
        .key("from-file.bin")
        .body(ByteStream::from_path(&path).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.e_tag(),
        Some(format!("\"{}\"", md5_hex(&data)).as_str())
    );
    assert_eq!(get(&c, "bkt", "from-file.bin").await, data);
    // A part upload and a multi-delete over TLS as well.
    let up = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .send()
        .await
        .unwrap();
    let part = c
        .upload_part()
        .bucket("bkt")
        .key("mp")
        .upload_id(up.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .upload_id(up.upload_id().unwrap())
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "mp").await, data);
    let out = c
        .delete_objects()
        .bucket("bkt")
        .delete(
            Delete::builder()
                .objects(ObjectIdentifier::builder().key("mp").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().len(), 1);
}

#[tokio::test]
async fn virtual_host_style() {
    let s = start().await;
    let vhost = client_with(format!("http://{VHOST}:{}", s.addr.port()), ADMIN, false);
    vhost.create_bucket().bucket("media").send().await.unwrap();
    put(&vhost, "media", "dir/a b.txt", b"virtual").await;
    assert_eq!(get(&vhost, "media", "dir/a b.txt").await, b"virtual");
    let out = vhost
        .list_objects_v2()
        .bucket("media")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents()[0].key(), Some("dir/a b.txt"));
    // Visible path-style too.
    assert_eq!(
        get(&client(&s, ADMIN), "media", "dir/a b.txt").await,
        b"virtual"
    );

    // Raw: Host names the bucket, the path is the key.
    let host = format!("media.{VHOST}:{}", s.addr.port());
    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/dir/a%20b.txt",
        "",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"virtual");
}

#[tokio::test]
async fn error_documents() {
    let s = start().await;
    let c = client(&s, ADMIN);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let host = s.addr.to_string();
    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/bkt/missing%20key",
        "",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/xml"));
    let id = r.header("x-amz-request-id").unwrap().to_owned();
    let t = r.text();
    assert!(
        t.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>"
        ),
        "{t}"
    );
    assert!(t.contains("<Resource>/bkt/missing key</Resource>"), "{t}");
    assert!(t.contains(&format!("<RequestId>{id}</RequestId>")));

    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/nobucket",
        "",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r), "NoSuchBucket");
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PATCH",
        &host,
        "/bkt/k",
        "",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    let r = signed_raw(
        s.addr,
        ADMIN,
        "POST",
        &host,
        "/bkt",
        "delete",
        &[],
        &sha256_hex(b"<Delete>"),
        b"<Delete>",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "MalformedXML");
    let r = signed_raw(
        s.addr,
        ADMIN,
        "GET",
        &host,
        "/bkt",
        "list-type=2&max-keys=-1",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(error_code(&r), "InvalidArgument");
    let r = signed_raw(
        s.addr,
        ADMIN,
        "PUT",
        &host,
        "/bkt",
        "website",
        &[],
        sigv4::EMPTY_SHA256,
        b"",
    )
    .await;
    assert_eq!(r.status, 501);
    assert_eq!(error_code(&r), "NotImplemented");
}
