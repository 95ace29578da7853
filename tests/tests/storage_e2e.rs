//! End-to-end tests of `ember storage` (the real binary, fs backend on a temp dir): boto3
//! against the S3 API, downloads on bucket domains (public, Qiniu-signed, Range, caching
//! headers), and a `kill -9` in the middle of an upload that must leave the old object.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, SystemTime};

use ember_storage::qiniu::token::{sign_download_url, Credentials};
use ember_storage::s3::sigv4::{presign_url, PresignRequest, SigningCredentials};
use ember_storage::time::UtcDateTime;
use ember_tests::process::wait_or_kill;
use ember_tests::Ember;

const AK: &str = "EMBERTESTACCESSKEY01";
const SK: &str = "ember-test-secret-key-0123456789";

fn start() -> Ember {
    Ember::start_storage(&format!(
        "credentials = {{ {AK} = \"{SK}\" }}\n\
         buckets = [\"media\", \"private\"]\n\
         public_buckets = [\"media\"]\n\
         bucket_domains = {{ \"media.example.test\" = \"media\", \"files.example.test\" = \"private\" }}\n"
    ))
}

/// One raw HTTP/1.1 exchange: status line + headers, and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    (head, out[split + 4..].to_vec())
}

fn get(addr: SocketAddr, host: &str, target: &str, extra: &str) -> (String, Vec<u8>) {
    http(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A presigned S3 URL's path and query for `method` on `path`.
fn presigned(addr: SocketAddr, method: &str, path: &str) -> String {
    let host = addr.to_string();
    let url = presign_url(&PresignRequest {
        method,
        scheme: "http",
        host: &host,
        path,
        query: &[],
        headers: &[],
        credentials: SigningCredentials {
            access_key: AK,
            secret_key: SK,
        },
        region: "us-east-1",
        time: UtcDateTime::from_unix(now()),
        expires_secs: 300,
    })
    .expect("presign");
    url.split_once(&host).expect("host in url").1.to_owned()
}

fn put(addr: SocketAddr, path: &str, body: &[u8]) -> String {
    let target = presigned(addr, "PUT", path);
    let mut req = format!(
        "PUT {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    http(addr, &req).0
}

#[test]
fn boto3_uploads_and_bucket_domains_serve() {
    let ember = start();
    let addr = ember.addr("storage/http");

    // boto3, a client nobody here wrote: create, put, get, list, multipart, copy, delete.
    let script = format!(
        r#"
import boto3, io
s3 = boto3.client("s3", endpoint_url="http://{addr}", aws_access_key_id="{AK}",
                  aws_secret_access_key="{SK}", region_name="us-east-1")
s3.create_bucket(Bucket="extra")
s3.put_object(Bucket="media", Key="photos/cat ü.png", Body=b"meow" * 1000,
              ContentType="image/png", Metadata={{"owner": "alice"}})
o = s3.get_object(Bucket="media", Key="photos/cat ü.png")
assert o["Body"].read() == b"meow" * 1000 and o["Metadata"] == {{"owner": "alice"}}, o
data = bytes(range(256)) * (12 * 4096)
s3.upload_fileobj(io.BytesIO(data), "private", "big.bin")
assert s3.get_object(Bucket="private", Key="big.bin")["Body"].read() == data
s3.copy_object(Bucket="extra", Key="copy.png", CopySource={{"Bucket": "media", "Key": "photos/cat ü.png"}})
keys = [c["Key"] for c in s3.list_objects_v2(Bucket="extra")["Contents"]]
assert keys == ["copy.png"], keys
s3.delete_object(Bucket="extra", Key="copy.png")
s3.delete_bucket(Bucket="extra")
print("boto3 ok")
"#
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let status = wait_or_kill(
        &mut child,
        std::time::Instant::now() + Duration::from_secs(120),
    );
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()) && out.contains("boto3 ok"),
        "boto3 script failed ({status:?}; is boto3 installed? `pip install boto3`):\n{out}\n{err}\n--- ember ---\n{}",
        ember.log()
    );

    // The public bucket's domain: no signature, caching headers, Range.
    let (head, body) = get(addr, "media.example.test", "/photos/cat%20%C3%BC.png", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"meow".repeat(1000));
    let lower = head.to_ascii_lowercase();
    for h in [
        "etag: \"",
        "last-modified: ",
        "accept-ranges: bytes",
        "cache-control: ",
        "content-type: image/png",
    ] {
        assert!(lower.contains(h), "missing {h:?} in\n{head}");
    }
    let (head, body) = get(
        addr,
        "media.example.test",
        "/photos/cat%20%C3%BC.png",
        "Range: bytes=4-7\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-range: bytes 4-7/4000"),
        "{head}"
    );
    assert_eq!(body, b"meow");
    let (head, _) = get(
        addr,
        "media.example.test",
        "/photos/cat%20%C3%BC.png",
        "Range: bytes=9999-\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    let (head, _) = get(addr, "media.example.test", "/no-such-key", "");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // The private bucket's domain: a Qiniu-style signed URL, expiring.
    let (head, _) = get(addr, "files.example.test", "/big.bin", "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let creds = Credentials {
        access_key: AK,
        secret_key: SK,
    };
    let signed = sign_download_url(creds, "http://files.example.test/big.bin", now() + 300);
    let target = signed.trim_start_matches("http://files.example.test");
    let (head, body) = get(addr, "files.example.test", target, "Range: bytes=0-255\r\n");
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, (0..=255u8).collect::<Vec<u8>>());
    let expired = sign_download_url(creds, "http://files.example.test/big.bin", now() - 10);
    let (head, _) = get(
        addr,
        "files.example.test",
        expired.trim_start_matches("http://files.example.test"),
        "",
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let tampered = signed.replace("big.bin", "big.bin2");
    let (head, _) = get(
        addr,
        "files.example.test",
        tampered.trim_start_matches("http://files.example.test"),
        "",
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[test]
fn kill_9_during_an_upload_keeps_the_old_object() {
    let ember = start();
    let addr = ember.addr("storage/http");
    let old = b"the old, acknowledged version".to_vec();
    let head = put(addr, "/media/doc.txt", &old);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Start replacing it with 64 MiB, send 8 MiB, then kill -9 the server.
    let target = presigned(addr, "PUT", "/media/doc.txt");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "PUT {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'n'; 1 << 20];
    for _ in 0..8 {
        s.write_all(&chunk).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let ember = ember.kill9_and_restart(&["storage"]);
    drop(s);
    let addr = ember.addr("storage/http");

    let (head, body) = get(addr, "media.example.test", "/doc.txt", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", ember.log());
    assert_eq!(body, old, "the old object must survive intact");
    // And a new upload after the restart works.
    let head = put(addr, "/media/doc.txt", b"new");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, body) = get(addr, "media.example.test", "/doc.txt", "");
    assert_eq!(body, b"new");
}
