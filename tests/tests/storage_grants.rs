//! The grant API the messaging core uses (`POST /_ember/v1/grants/{upload,download}` on
//! `ember storage`), driven by clients nobody here wrote: curl signs the API calls with its
//! own SigV4 (`--aws-sigv4`) and uploads with the presigned PUT it got; the official Qiniu
//! Python SDK uploads with the Qiniu token; curl downloads from the bucket domain.
//! Bad input: a different size, type or key than granted, an expired grant, a read-only or
//! unknown key, a wrong signature, a traversal key, a size over the store's limit.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::process::wait_or_kill;
use ember_tests::Ember;
use serde_json::Value;

const AK: &str = "EMBERGRANTSKEY000001";
const SK: &str = "ember-grants-secret-0123456789";
const RO_AK: &str = "EMBERGRANTSREADER001";
const RO_SK: &str = "ember-grants-reader-0123456789";
/// Longest any one client process may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn start() -> Ember {
    Ember::start_storage(&format!(
        "credentials = {{ {AK} = \"{SK}\", {RO_AK} = \"{RO_SK}\" }}\n\
         read_only_keys = [\"{RO_AK}\"]\n\
         buckets = [\"media\", \"avatars\"]\n\
         public_buckets = [\"avatars\"]\n\
         max_object_size = 20971520\n\
         bucket_domains = {{ \"media.example.test\" = \"media\", \"avatars.example.test\" = \"avatars\" }}\n"
    ))
}

/// Runs a client with a deadline; kills it on overrun.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (run .ci/run to install it)"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = read_all(Box::new(stdout));
    let err = read_all(Box::new(stderr));
    let status = wait_or_kill(&mut child, deadline).expect("client timed out");
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `curl -w '\n%{http_code}'`: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {args:?}: no status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_owned())
}

/// Calls the grant API with curl's own SigV4 signer.
fn grant(ember: &Ember, (ak, sk): (&str, &str), op: &str, body: &Value) -> (u16, Value) {
    let addr = ember.addr("storage/http");
    let user = format!("{ak}:{sk}");
    let (code, text) = curl(&[
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        &user,
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body.to_string(),
        &format!("http://{addr}/_ember/v1/grants/{op}"),
    ]);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{op}: {e}: {text}"));
    (code, json)
}

/// PUTs `file` to a presigned grant with the headers it names (overridable).
fn put(grant: &Value, file: &Path, override_headers: &[(&str, &str)]) -> (u16, String) {
    let url = grant["url"].as_str().unwrap();
    let mut args: Vec<String> = vec![
        "-X".into(),
        "PUT".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
    ];
    for (name, value) in grant["headers"].as_object().unwrap() {
        if name == "Content-Length" {
            continue; // curl sends the file's length
        }
        let value = override_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(value.as_str().unwrap(), |(_, v)| v);
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    args.push(url.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)
}

/// GETs a download URL whose host is a bucket domain, connecting to Ember instead.
fn download(ember: &Ember, url: &str) -> (u16, Vec<u8>) {
    let addr = ember.addr("storage/http");
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("unexpected download URL {url}"));
    let out = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "30",
        "--connect-to",
        &format!("{host}:80:{}:{}", addr.ip(), addr.port()),
        "-o",
        "-",
        "-w",
        "%{stderr}%{http_code}",
        url,
    ]));
    let code = String::from_utf8_lossy(&out.stderr)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, out.stdout)
}

/// The Cache-Control of a bucket-domain download (a HEAD request).
fn cache_control(ember: &Ember, url: &str) -> String {
    let addr = ember.addr("storage/http");
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let out = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "30",
        "-I",
        "--connect-to",
        &format!("{host}:80:{}:{}", addr.ip(), addr.port()),
        url,
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("cache-control")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

fn file_of(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
fn presigned_put_grant_uploads_exactly_what_was_granted() {
    let ember = start();
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = file_of(dir.path(), "photo.jpg", 5 << 20);
    let key = "chat/2026/11/photo 1 ü.jpg";
    let (code, g) = grant(
        &ember,
        (AK, SK),
        "upload",
        &serde_json::json!({
            "bucket": "media", "key": key, "content_type": "image/jpeg",
            "size": data.len(), "expires_secs": 300
        }),
    );
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["dialect"], "s3");
    let s3 = &g["s3"];
    assert_eq!(s3["method"], "PUT");
    assert_eq!(s3["headers"]["Content-Length"], data.len().to_string());

    // Another type than granted: refused, nothing stored.
    let (code, body) = put(s3, &file, &[("Content-Type", "text/html")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // Another size than granted.
    let (bigger, _) = file_of(dir.path(), "bigger.jpg", (5 << 20) + 1);
    let (code, body) = put(s3, &bigger, &[]);
    assert_eq!(code, 403, "{body}");
    let (code, _) = download(&ember, g["download"]["url"].as_str().unwrap());
    assert_eq!(code, 404, "nothing was stored by refused uploads");

    // As granted: stored, and the download URL on the bucket domain serves the same bytes.
    let (code, body) = put(s3, &file, &[]);
    assert_eq!(code, 200, "{body}\n{}", ember.log());
    let url = g["download"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://media.example.test/chat/2026/11/photo%201%20%C3%BC.jpg?e="),
        "{url}"
    );
    let (code, got) = download(&ember, url);
    assert_eq!(code, 200);
    assert!(
        got == data,
        "downloaded bytes differ: {} bytes, {:?}...",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    // A signed link is cacheable only privately, and not past its expiry (300 s).
    let cache = cache_control(&ember, url);
    let max_age: u64 = cache
        .strip_prefix("private, max-age=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cache-control {cache:?}"));
    assert!((290..=300).contains(&max_age), "{cache}");
    // The URL is signed: without its token, or with the key changed, it is refused.
    let unsigned = url.split_once('?').unwrap().0;
    assert_eq!(download(&ember, unsigned).0, 401);
    let other = url.replace("photo%201", "photo%202");
    assert_eq!(download(&ember, &other).0, 401);

    // A grant for another key does not cover this one.
    let (_, g2) = grant(
        &ember,
        (AK, SK),
        "upload",
        &serde_json::json!({ "bucket": "media", "key": "other.jpg", "size": data.len() }),
    );
    let mut forged = g2["s3"].clone();
    forged["url"] = Value::String(
        g2["s3"]["url"]
            .as_str()
            .unwrap()
            .replace("/media/other.jpg", "/media/victim.jpg"),
    );
    assert_eq!(put(&forged, &file, &[]).0, 403);

    // A download grant alone, public bucket: a plain URL.
    let (code, d) = grant(
        &ember,
        (RO_AK, RO_SK),
        "download",
        &serde_json::json!({ "bucket": "avatars", "key": "u1.png" }),
    );
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["url"], "http://avatars.example.test/u1.png");
    assert!(d["expires_at"].is_null());
}

#[test]
fn expired_and_insert_only_grants() {
    let ember = start();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = file_of(dir.path(), "v.amr", 1000);
    let (code, g) = grant(
        &ember,
        (AK, SK),
        "upload",
        &serde_json::json!({ "bucket": "media", "key": "v.amr", "size": 1000,
                             "expires_secs": 1, "insert_only": true }),
    );
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["s3"]["headers"]["If-None-Match"], "*");
    assert_eq!(put(&g["s3"], &file, &[]).0, 200, "{}", ember.log());
    // Insert-only: the same grant cannot replace the object.
    assert_eq!(put(&g["s3"], &file, &[]).0, 412);
    // Expired (the URL was valid for one second).
    std::thread::sleep(Duration::from_millis(2100));
    let (code, body) = put(&g["s3"], &file, &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("expired"), "{body}");
    let (code, _) = download(&ember, g["download"]["url"].as_str().unwrap());
    assert_eq!(code, 401, "the download URL expired with the grant");
}

#[test]
fn grant_api_refuses_bad_callers_and_bad_requests() {
    let ember = start();
    let ok = serde_json::json!({ "bucket": "media", "key": "k", "size": 10 });
    // Wrong secret, unknown key.
    let (code, e) = grant(&ember, (AK, "wrong-secret-wrong-secret"), "upload", &ok);
    assert_eq!(
        (code, e["error"].as_str()),
        (403, Some("SignatureDoesNotMatch"))
    );
    let (code, e) = grant(&ember, ("NOSUCHKEY", SK), "upload", &ok);
    assert_eq!(
        (code, e["error"].as_str()),
        (403, Some("InvalidAccessKeyId"))
    );
    // Read-only key: no uploads.
    let (code, e) = grant(&ember, (RO_AK, RO_SK), "upload", &ok);
    assert_eq!((code, e["error"].as_str()), (403, Some("AccessDenied")));
    // Unsigned.
    let addr = ember.addr("storage/http");
    let (code, body) = curl(&[
        "--data-binary",
        &ok.to_string(),
        &format!("http://{addr}/_ember/v1/grants/upload"),
    ]);
    assert_eq!(code, 403, "{body}");
    // Bad requests.
    for (body, status, error) in [
        (
            serde_json::json!({ "bucket": "media", "key": "../../etc/passwd", "size": 1 }),
            400,
            "InvalidArgument",
        ),
        (
            serde_json::json!({ "bucket": "media", "key": "k", "size": 20971521 }),
            413,
            "EntityTooLarge",
        ),
        (
            serde_json::json!({ "bucket": "media", "key": "k", "size": 1, "expires_secs": 0 }),
            400,
            "InvalidArgument",
        ),
        (
            serde_json::json!({ "bucket": "media", "key": "k", "size": 1, "dialect": "ftp" }),
            400,
            "InvalidArgument",
        ),
        (
            serde_json::json!({ "bucket": "media", "key": "k" }),
            400,
            "MalformedJSON",
        ),
    ] {
        let (code, e) = grant(&ember, (AK, SK), "upload", &body);
        assert_eq!((code, e["error"].as_str()), (status, Some(error)), "{body}");
    }
}

const QINIU_UPLOAD: &str = r#"
import json, os, sys
import qiniu
from qiniu import put_data
from qiniu.region import LegacyRegion
up = os.environ["UP"]
zone = LegacyRegion(up_host=up, up_host_backup=up, io_host=up, rs_host=up, rsf_host=up,
                    api_host=up, scheme="http")
qiniu.config.set_default(default_zone=zone, connection_retries=1)
data = open(os.environ["FILE"], "rb").read()
ret, info = put_data(os.environ["TOKEN"], os.environ["KEY"], data,
                     mime_type=os.environ["MIME"])
print(json.dumps({"status": info.status_code, "ret": ret, "error": info.text_body}))
"#;

fn qiniu_put(up: &str, token: &str, key: &str, mime: &str, file: &Path) -> Value {
    let out = run(Command::new("python3")
        .args(["-c", QINIU_UPLOAD])
        .env("UP", up.trim_start_matches("http://"))
        .env("TOKEN", token)
        .env("KEY", key)
        .env("MIME", mime)
        .env("FILE", file));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "qiniu SDK: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn qiniu_grant_uploads_with_the_qiniu_sdk() {
    let ember = start();
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = file_of(dir.path(), "voice.amr", 300_000);
    let (code, g) = grant(
        &ember,
        (AK, SK),
        "upload",
        &serde_json::json!({ "bucket": "media", "key": "voice/1.amr", "dialect": "qiniu",
                             "content_type": "audio/amr", "size": data.len() }),
    );
    assert_eq!(code, 200, "{g}");
    let q = &g["qiniu"];
    let up = q["upload_url"].as_str().unwrap();
    let token = q["token"].as_str().unwrap();

    // Another key, another type, another size: refused by the store.
    let r = qiniu_put(up, token, "voice/2.amr", "audio/amr", &file);
    assert_eq!(r["status"], 403, "{r}");
    let r = qiniu_put(up, token, "voice/1.amr", "text/html", &file);
    assert_eq!(r["status"], 403, "{r}");
    let (bigger, _) = file_of(dir.path(), "bigger.amr", 300_001);
    let r = qiniu_put(up, token, "voice/1.amr", "audio/amr", &bigger);
    assert_eq!(r["status"], 413, "{r}");

    // As granted.
    let r = qiniu_put(up, token, "voice/1.amr", "audio/amr", &file);
    assert_eq!(r["status"], 200, "{r}\n{}", ember.log());
    assert_eq!(r["ret"]["key"], "voice/1.amr");
    let (code, got) = download(&ember, g["download"]["url"].as_str().unwrap());
    assert_eq!(code, 200);
    assert!(
        got == data,
        "downloaded bytes differ: {} bytes, {:?}...",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
}
