//! The S3 API driven by boto3 (the AWS SDK for Python) and by raw HTTP requests: SigV4 and
//! SigV2 (header auth and presigned URLs, which boto3's `generate_presigned_url` produces by
//! default for a custom endpoint) and CORS preflights. The router runs on the in-memory
//! backend, served by `ember_common::http::HttpServer` on 127.0.0.1:0.
//!
//! The boto3 checks are in `s3_boto3.py`; the test fails with its output if any check fails.
//! boto3 must be installed, or the test fails saying so: `python3 -m pip install boto3`
//! (`.ci/run` installs `"boto3>=1.36"`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ember_common::http::HttpServer;
use ember_storage::backend::memory::MemoryBackend;
use ember_storage::backend::Backend;
use ember_storage::s3::sigv2::{self, PresignRequest};
use ember_storage::s3::sigv4::{RequestView, SigningCredentials};
use ember_storage::s3::{router, Access, S3Config};
use md5::{Digest, Md5};
use tokio_util::sync::CancellationToken;

mod support;
use support::{raw, RawResponse};

const REGION: &str = "us-east-1";
const ADMIN: (&str, &str) = ("AKIABOTO3ADMIN", "boto3-admin-secret-key");
const READER: (&str, &str) = ("AKIABOTO3READER", "boto3-reader-secret-key");
const VHOST: &str = "s3.localtest";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails with instructions when boto3 is missing.
fn require_boto3() {
    let out = std::process::Command::new(python())
        .args(["-c", "import boto3; print(boto3.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "boto3 is not installed ({}); run: python3 -m pip install boto3 \
             (.ci/run installs \"boto3>=1.36\")",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}; the boto3 test needs Python 3 with boto3 \
             (python3 -m pip install boto3)",
            python()
        ),
    }
}

struct Server {
    addr: SocketAddr,
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
    let cfg = S3Config {
        region: REGION.to_owned(),
        credentials,
        public_buckets: Vec::new(),
        max_object_size: 64 << 20,
        virtual_host_suffixes: vec![VHOST.to_owned()],
    };
    let backend = Arc::new(MemoryBackend::new());
    let app = router(backend.clone(), Arc::new(cfg));
    let shutdown = CancellationToken::new();
    let server = HttpServer::bind("s3-boto3", &["127.0.0.1:0".parse().unwrap()], &[], None)
        .await
        .unwrap();
    let addr = server.local_addrs()[0].1;
    tokio::spawn(server.run(app, shutdown.clone()));
    Server {
        addr,
        shutdown,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_against_ember() {
    require_boto3();
    let server = start().await;
    let py_tmp = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3_boto3.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(&script);
    // Nothing from the environment may change how boto3 signs or where it connects.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy().to_ascii_lowercase();
        if n.starts_with("aws_") || n.ends_with("_proxy") {
            cmd.env_remove(&name);
        }
    }
    let missing = py_tmp.path().join("none");
    let run = cmd
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("EMBER_S3", format!("http://{}", server.addr))
        .env("S3_REGION", REGION)
        .env("S3_AK", ADMIN.0)
        .env("S3_SK", ADMIN.1)
        .env("S3_RO_AK", READER.0)
        .env("S3_RO_SK", READER.1)
        .env("S3_VHOST", VHOST)
        .env("PYTHONUNBUFFERED", "1")
        .env("TMPDIR", py_tmp.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the boto3 script did not finish in 300 s")
        .expect("running the boto3 script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "boto3 checks failed:\n{stdout}\n{stderr}"
    );

    // What boto3 uploaded is in the backend.
    let meta = server
        .backend
        .head_object("media", "big/12m.bin")
        .await
        .unwrap();
    assert_eq!(meta.size, 12 << 20);
    let meta = server
        .backend
        .head_object("media", "presigned/v2.png")
        .await
        .unwrap();
    assert_eq!(meta.headers.content_type.as_deref(), Some("image/png"));
    assert_eq!(meta.user_meta.get("owner").map(String::as_str), Some("bob"));
}

// ---- Raw HTTP ---------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = ember_storage::time::UtcDateTime::from_unix(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        t.day,
        MONTHS[usize::from(t.month - 1)],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

/// A SigV2 header-signed request (`Date` = now unless `extra` has a date).
async fn signed_v2(
    addr: SocketAddr,
    key: (&str, &str),
    method: &str,
    target: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> RawResponse {
    let mut headers: Vec<(&str, String)> = vec![("host", addr.to_string())];
    if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("date")) {
        headers.push(("date", http_date(now())));
    }
    headers.extend(extra.iter().cloned());
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let view_headers: Vec<(&str, &[u8])> =
        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let view = RequestView {
        method,
        raw_path,
        raw_query,
        headers: &view_headers,
    };
    let authorization = sigv2::authorization_header(
        &view,
        None,
        SigningCredentials {
            access_key: key.0,
            secret_key: key.1,
        },
    );
    headers.push(("authorization", authorization));
    raw(addr, method, target, &headers, body).await
}

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

/// The path and query of a URL.
fn target_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sigv2_and_cors() {
    let server = start().await;
    let addr = server.addr;
    server.backend.create_bucket("raw").await.unwrap();

    // Header auth: PUT with metadata and Content-MD5, then GET.
    let data = b"raw sigv2 body";
    let r = signed_v2(
        addr,
        ADMIN,
        "PUT",
        "/raw/dir/a%20b.txt",
        &[
            ("content-type", "text/plain".to_owned()),
            ("content-md5", md5_b64(data)),
            ("x-amz-meta-color", "blue".to_owned()),
        ],
        data,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = signed_v2(addr, ADMIN, "GET", "/raw/dir/a%20b.txt", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-amz-meta-color"), Some("blue"));
    assert!(r.header("access-control-allow-origin").is_none());

    // Content-MD5 is still checked; a SigV2 aws-chunked body without a streaming mode is not
    // stored as data; stale dates are refused.
    let r = signed_v2(
        addr,
        ADMIN,
        "PUT",
        "/raw/bad-md5",
        &[("content-md5", md5_b64(b"something else"))],
        data,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>BadDigest</Code>"), "{}", r.text());
    let r = signed_v2(
        addr,
        ADMIN,
        "PUT",
        "/raw/chunked",
        &[("content-encoding", "aws-chunked".to_owned())],
        data,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("<Code>InvalidRequest</Code>"),
        "{}",
        r.text()
    );
    let r = signed_v2(
        addr,
        ADMIN,
        "GET",
        "/raw/dir/a%20b.txt",
        &[("date", http_date(now() - 3600))],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("<Code>RequestTimeTooSkewed</Code>"),
        "{}",
        r.text()
    );
    assert!(server.backend.head_object("raw", "chunked").await.is_err());
    assert!(server.backend.head_object("raw", "bad-md5").await.is_err());

    // Read-only key: reads yes, writes no.
    let r = signed_v2(addr, READER, "GET", "/raw/dir/a%20b.txt", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = signed_v2(addr, READER, "DELETE", "/raw/dir/a%20b.txt", &[], b"").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("<Code>AccessDenied</Code>"));

    // Presigned URLs, path and virtual-host style.
    let presign = |path: &'static str, vhost: bool, expires_at: u64| {
        let host = if vhost {
            format!("raw.{VHOST}:{}", addr.port())
        } else {
            addr.to_string()
        };
        let url = sigv2::presign_url(&PresignRequest {
            method: "GET",
            scheme: "http",
            host: &host,
            path,
            virtual_host_bucket: vhost.then_some("raw"),
            query: &[("response-content-type", "application/x-test")],
            credentials: SigningCredentials {
                access_key: ADMIN.0,
                secret_key: ADMIN.1,
            },
            expires_at,
        });
        (host, target_of(&url))
    };
    let (host, target) = presign("/raw/dir/a b.txt", false, now() + 60);
    let origin = ("origin", "https://app.example.com".to_owned());
    let r = raw(addr, "GET", &target, &[("host", host), origin.clone()], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("ETag"));
    let (host, target) = presign("/dir/a b.txt", true, now() + 60);
    let r = raw(addr, "GET", &target, &[("host", host)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (host, target) = presign("/raw/dir/a b.txt", false, now() - 1);
    let r = raw(addr, "GET", &target, &[("host", host), origin.clone()], b"").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("Request has expired"), "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // Two mechanisms at once.
    let (host, target) = presign("/raw/dir/a b.txt", false, now() + 60);
    let r = raw(
        addr,
        "GET",
        &format!("{target}&X-Amz-Signature=00"),
        &[("host", host)],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("<Code>InvalidArgument</Code>"),
        "{}",
        r.text()
    );

    // CORS preflights need no credentials, on any path.
    for path in ["/raw/new-object", "/nonexistent/k", "/"] {
        let r = raw(
            addr,
            "OPTIONS",
            path,
            &[
                origin.clone(),
                ("access-control-request-method", "PUT".to_owned()),
                (
                    "access-control-request-headers",
                    "content-type, x-amz-meta-a".to_owned(),
                ),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, PUT, POST, HEAD, DELETE")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type, x-amz-meta-a")
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("ETag, x-amz-request-id, x-amz-version-id")
        );
        assert_eq!(r.header("access-control-max-age"), Some("3600"));
        assert!(r.header("x-amz-request-id").is_some());
    }
    let r = raw(addr, "OPTIONS", "/raw/k", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>BadRequest</Code>"), "{}", r.text());
    let r = raw(
        addr,
        "OPTIONS",
        "/raw/k",
        &[
            origin.clone(),
            ("access-control-request-method", "PATCH".to_owned()),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A preflight grants nothing by itself: the real request still needs a signature.
    let r = raw(addr, "PUT", "/raw/new-object", &[origin], b"x").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(server
        .backend
        .head_object("raw", "new-object")
        .await
        .is_err());
}
