//! Unit tests of the Qiniu API: path and parameter parsing, v1 ctx sealing and forgery, error
//! mapping and JSON, the guarded upload stream, and the staging area's streaming and sweep.
//! The protocol end to end is tested with the official SDK in `tests/qiniu_sdk.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;

use super::manage::{decode_entry, decode_marker, encode_marker, parse_params, parse_transfer};
use super::staging::{self, Staging};
use super::v1::{open_ctx, parse_mkfile_path, seal_ctx, Ctx};
use super::v2::{decode_object, parse_content_md5};
use super::*;
use crate::qiniu::etag::qetag;
use crate::qiniu::token::{sign_download_url, Credentials};
use crate::qiniu::urlsafe_b64_encode as enc;

const AK: &str = "ak-1";
const SK: &str = "sk-1-0123456789abcdef";
const AK2: &str = "ak-2";
const SK2: &str = "sk-2-0123456789abcdef";

fn lookup(ak: &str) -> Option<&'static str> {
    match ak {
        AK => Some(SK),
        AK2 => Some(SK2),
        _ => None,
    }
}

fn ctx() -> Ctx {
    Ctx {
        id: "0123456789abcdef0123456789abcdef".to_owned(),
        ak: AK.to_owned(),
        bucket: "media".to_owned(),
        size: 4 << 20,
        off: 1 << 20,
        exp: 2_000_000_000,
        sha1: None,
    }
}

#[test]
fn mkfile_path() {
    let rest = format!(
        "1234/key/{}/mimeType/{}/fname/{}/x:album/{}/x-qn-meta-Owner/{}/unknown/{}",
        enc("a/b 文件.txt".as_bytes()),
        enc(b"text/plain"),
        enc(b"orig.txt"),
        enc(b"summer"),
        enc(b"alice"),
        enc(b"ignored"),
    );
    let args = parse_mkfile_path(&rest).unwrap();
    assert_eq!(args.size, 1234);
    assert_eq!(args.key.as_deref(), Some("a/b 文件.txt"));
    assert_eq!(args.mime.as_deref(), Some("text/plain"));
    assert_eq!(args.fname.as_deref(), Some("orig.txt"));
    assert_eq!(
        args.custom,
        vec![("x:album".to_owned(), "summer".to_owned())]
    );
    assert_eq!(
        args.meta,
        BTreeMap::from([("owner".to_owned(), "alice".to_owned())])
    );
    // Unpadded base64 and a bare size are fine.
    let args = parse_mkfile_path("0/key/YQ").unwrap();
    assert_eq!((args.size, args.key.as_deref()), (0, Some("a")));
    assert_eq!(parse_mkfile_path("77").unwrap().key, None);
    for bad in ["", "abc", "-1", "12/key", "12/key/%%%", "12/key/_w"] {
        let e = parse_mkfile_path(bad).unwrap_err();
        assert_eq!(e.status, 400, "{bad}: {e}");
    }
}

#[test]
fn v2_object_segment_and_content_md5() {
    assert_eq!(decode_object("~").unwrap(), None);
    assert_eq!(
        decode_object(&enc(b"dir/key.bin")).unwrap().as_deref(),
        Some("dir/key.bin")
    );
    assert_eq!(decode_object("%%").unwrap_err().status, 400);
    let md5 = [
        0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42,
        0x7e,
    ];
    assert_eq!(
        parse_content_md5("d41d8cd98f00b204e9800998ecf8427e"),
        Some(md5)
    );
    assert_eq!(parse_content_md5("1B2M2Y8AsgTpgAmY7PhCfg=="), Some(md5));
    assert_eq!(parse_content_md5("xyz"), None);
    assert_eq!(parse_content_md5("d41d8cd98f00b204e9800998ecf8427g"), None);
}

#[test]
fn management_parsing() {
    assert_eq!(
        decode_entry(&enc(b"media:a/b:c")).unwrap(),
        ("media".to_owned(), "a/b:c".to_owned())
    );
    assert_eq!(
        decode_entry(&enc(b"media:")).unwrap(),
        ("media".to_owned(), String::new())
    );
    for bad in [enc(b"media"), enc(b":key"), "%%".to_owned(), enc(b"\xff:k")] {
        assert_eq!(decode_entry(&bad).unwrap_err().status, 400, "{bad}");
    }

    for key in ["", "a", "dir/ü \"q\"", "list/sub/"] {
        assert_eq!(decode_marker(&encode_marker(key)).unwrap(), key);
    }
    for bad in ["not-a-marker", "%%", &enc(b"{}"), &enc(b"[1]")] {
        assert_eq!(decode_marker(bad).unwrap_err().status, 640, "{bad}");
    }

    assert_eq!(
        parse_params("bucket=media&prefix=a%2Fb&delimiter=%2F&x=a+b&flag&=v"),
        vec![
            ("bucket".to_owned(), "media".to_owned()),
            ("prefix".to_owned(), "a/b".to_owned()),
            ("delimiter".to_owned(), "/".to_owned()),
            ("x".to_owned(), "a b".to_owned()),
            ("flag".to_owned(), String::new()),
            (String::new(), "v".to_owned()),
        ]
    );

    let (src, dst) = (enc(b"b1:k1"), enc(b"b2:k2"));
    let ((sb, sk), (db, dk), force) = parse_transfer(&format!("{src}/{dst}")).unwrap();
    assert_eq!(
        (sb.as_str(), sk.as_str(), db.as_str(), dk.as_str(), force),
        ("b1", "k1", "b2", "k2", false)
    );
    assert!(
        parse_transfer(&format!("{src}/{dst}/force/true"))
            .unwrap()
            .2
    );
    assert!(
        !parse_transfer(&format!("{src}/{dst}/force/false"))
            .unwrap()
            .2
    );
    assert_eq!(parse_transfer(&src).unwrap_err().status, 400);
    assert_eq!(
        parse_transfer(&format!("{src}/{dst}/other/true"))
            .unwrap_err()
            .status,
        400
    );
}

#[test]
fn ctx_round_trip() {
    let c = ctx();
    let sealed = seal_ctx(SK, &c);
    assert!(sealed.len() < 400, "{}", sealed.len());
    assert!(!sealed.contains(',') && !sealed.contains('/'), "{sealed}");
    assert_eq!(open_ctx(lookup, &sealed, 1_900_000_000).unwrap(), c);
    let done = Ctx {
        off: c.size,
        sha1: Some("a".repeat(40)),
        ..c.clone()
    };
    assert_eq!(open_ctx(lookup, &seal_ctx(SK, &done), 0).unwrap(), done);
}

#[test]
fn ctx_forgery_and_expiry() {
    let c = ctx();
    let sealed = seal_ctx(SK, &c);
    let now = 1_900_000_000;
    let is_701 = |r: Result<Ctx, ApiError>| matches!(r, Err(ApiError { status: 701, .. }));

    // Any single-character change is refused.
    for i in 0..sealed.len() {
        let mut b = sealed.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).unwrap();
        if t != sealed {
            assert!(is_701(open_ctx(lookup, &t, now)), "position {i}");
        }
    }
    // A payload rewritten to point elsewhere (other block, larger offset, other key), with
    // the original MAC or signed with the wrong secret.
    let (_, mac) = sealed.split_once('.').unwrap();
    for forged in [
        Ctx {
            id: "f".repeat(32),
            ..c.clone()
        },
        Ctx {
            off: c.size,
            sha1: Some("0".repeat(40)),
            ..c.clone()
        },
        Ctx {
            ak: AK2.to_owned(),
            ..c.clone()
        },
        Ctx {
            exp: u64::MAX,
            ..c.clone()
        },
    ] {
        let payload = enc(serde_json::to_string(&forged).unwrap().as_bytes());
        assert!(is_701(open_ctx(lookup, &format!("{payload}.{mac}"), now)));
        // Signed with another key's secret than the access key it names.
        assert!(is_701(open_ctx(
            lookup,
            &seal_ctx(
                SK2,
                &Ctx {
                    ak: AK.to_owned(),
                    ..forged.clone()
                }
            ),
            now
        )));
    }
    // Correctly sealed but unusable: unknown access key, path-like id, offset past the size.
    assert!(is_701(open_ctx(
        lookup,
        &seal_ctx(
            SK,
            &Ctx {
                ak: "nobody".into(),
                ..c.clone()
            }
        ),
        now
    )));
    assert!(is_701(open_ctx(
        lookup,
        &seal_ctx(
            SK,
            &Ctx {
                id: "../../etc/passwd".into(),
                ..c.clone()
            }
        ),
        now
    )));
    assert!(is_701(open_ctx(
        lookup,
        &seal_ctx(
            SK,
            &Ctx {
                off: c.size + 1,
                ..c.clone()
            }
        ),
        now
    )));
    // Garbage.
    for g in [
        "",
        ".",
        "a.b",
        "%%%.%%%",
        &"A".repeat(5000),
        &format!("{}.", enc(b"{}")),
    ] {
        assert!(is_701(open_ctx(lookup, g, now)), "{g}");
    }
    // Expiry.
    let e = open_ctx(lookup, &sealed, c.exp + 1).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (701, "invalid ctx: expired")
    );
    assert!(open_ctx(lookup, &sealed, c.exp).is_ok());
}

#[test]
fn errors_map_to_qiniu_codes_and_json() {
    let cases: Vec<(ApiError, u16)> = vec![
        (QiniuError::BadToken.into(), 401),
        (QiniuError::ExpiredToken.into(), 401),
        (QiniuError::KeyNotMatchScope.into(), 403),
        (QiniuError::FileTooLarge.into(), 413),
        (StorageError::NoSuchKey.into(), 612),
        (StorageError::NoSuchUpload.into(), 612),
        (StorageError::NoSuchBucket.into(), 631),
        (StorageError::AlreadyExists.into(), 614),
        (StorageError::EntityTooLarge { limit: 5 }.into(), 413),
        (StorageError::InvalidKey("x".into()).into(), 400),
        (StorageError::InsufficientStorage.into(), 507),
        (StorageError::Io(std::io::Error::other("disk")).into(), 599),
        (ApiError::invalid_ctx("x"), 701),
    ];
    for (e, status) in cases {
        assert_eq!(e.status, status, "{e}");
        let v: serde_json::Value = serde_json::from_str(&e.json_body()).unwrap();
        assert_eq!(v["error"], e.message.as_str());
    }
    assert_eq!(
        ApiError::from(QiniuError::BadToken).json_body(),
        r#"{"error":"bad token"}"#
    );
    assert_eq!(
        ApiError::file_exists().json_body(),
        r#"{"error":"file exists"}"#
    );
    // Server-side detail is not leaked.
    let e: ApiError = StorageError::Io(std::io::Error::other("/secret/path")).into();
    assert!(!e.json_body().contains("secret"));

    let res = ApiError::file_exists().into_response();
    assert_eq!(res.status().as_u16(), 614);
    assert_eq!(res.headers()["content-type"], "application/json");
}

#[test]
fn qetag_metadata() {
    assert!(is_qetag(&qetag(b"")));
    assert!(is_qetag(&qetag(&vec![1u8; (4 << 20) + 1])));
    for bad in [
        "",
        "Fto5o-5ea0sNMlW_75VgGJCv2Ac",
        "Xto5o-5ea0sNMlW_75VgGJCv2AcJ",
        "Fto5o+5ea0sNMlW_75VgGJCv2AcJ",
    ] {
        assert!(!is_qetag(bad), "{bad}");
    }
    let mut meta = ObjectMeta {
        key: "k".into(),
        size: 0,
        etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
        last_modified: SystemTime::UNIX_EPOCH,
        headers: Default::default(),
        user_meta: BTreeMap::new(),
    };
    assert_eq!(stored_qetag(&meta), None);
    meta.user_meta
        .insert(QETAG_META.into(), "not a qetag".into());
    assert_eq!(stored_qetag(&meta), None);
    meta.user_meta.insert(QETAG_META.into(), qetag(b""));
    assert_eq!(stored_qetag(&meta), Some("Fto5o-5ea0sNMlW_75VgGJCv2AcJ"));

    // Clients cannot set the reserved entry.
    let cfg = QiniuConfig::new(BTreeMap::new(), "/nonexistent");
    let policy = crate::qiniu::token::PutPolicy::new("media:k", 1);
    let opts = put_options(
        &cfg,
        &policy,
        "text/plain",
        BTreeMap::from([
            (QETAG_META.to_owned(), qetag(b"x")),
            ("a".into(), "b".into()),
        ]),
    );
    assert_eq!(opts.user_meta, BTreeMap::from([("a".into(), "b".into())]));
    assert!(!opts.if_none_match, "bucket:key scope may overwrite");
    assert!(
        put_options(
            &cfg,
            &crate::qiniu::token::PutPolicy::new("media", 1),
            "a/b",
            BTreeMap::new()
        )
        .if_none_match
    );
    assert_eq!(opts.max_size, Some(cfg.max_object_size));
    assert_eq!(qn_meta_name("X-Qn-Meta-Owner").as_deref(), Some("owner"));
    assert_eq!(qn_meta_name("x-qn-meta-"), None);
    assert_eq!(qn_meta_name("x:foo"), None);
}

#[test]
fn dialect_detection() {
    let mut h = HeaderMap::new();
    assert!(!is_qiniu_request(&Method::GET, "/list", &h));
    h.insert("authorization", HeaderValue::from_static("UpToken a:b:c"));
    assert!(is_qiniu_request(&Method::POST, "/mkblk/4", &h));
    h.insert("authorization", HeaderValue::from_static("Qiniu a:b"));
    assert!(is_qiniu_request(&Method::GET, "/list", &h));
    h.insert("authorization", HeaderValue::from_static("QBox a:b"));
    assert!(is_qiniu_request(&Method::POST, "/stat/x", &h));
    h.insert(
        "authorization",
        HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=x"),
    );
    assert!(!is_qiniu_request(&Method::GET, "/list", &h));
    let mut form = HeaderMap::new();
    form.insert(
        "content-type",
        HeaderValue::from_static("multipart/form-data; boundary=x"),
    );
    assert!(is_qiniu_request(&Method::POST, "/", &form));
    assert!(!is_qiniu_request(&Method::POST, "/bucket", &form));
}

#[test]
fn download_authorization() {
    let mut cfg = QiniuConfig::new(BTreeMap::from([(AK.to_owned(), SK.to_owned())]), "/x");
    cfg.public_buckets.insert("pub".into());
    let creds = Credentials {
        access_key: AK,
        secret_key: SK,
    };
    let req = |query: &'static str| DownloadRequest {
        scheme: "http",
        host: "dl.example.com",
        raw_path: "/a%20b.jpg",
        raw_query: query,
    };
    assert_eq!(authorize_download(&cfg, "pub", &req(""), 0).unwrap(), None);
    let e = authorize_download(&cfg, "media", &req(""), 0).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (401, "download token not specified")
    );
    let url = sign_download_url(creds, "http://dl.example.com/a%20b.jpg", 1000);
    let query: &'static str = Box::leak(url.split_once('?').unwrap().1.to_owned().into_boxed_str());
    let grant = authorize_download(&cfg, "media", &req(query), 1000)
        .unwrap()
        .unwrap();
    assert_eq!((grant.access_key.as_str(), grant.deadline), (AK, 1000));
    assert_eq!(
        authorize_download(&cfg, "media", &req(query), 1001)
            .unwrap_err()
            .status,
        401
    );
}

fn chunks(parts: &[&'static [u8]]) -> crate::backend::ByteStream {
    let items: Vec<std::io::Result<Bytes>> =
        parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
    Box::pin(futures::stream::iter(items))
}

async fn drain(mut s: Guarded) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[tokio::test]
async fn guarded_stream() {
    // Passes bytes through, hashing and counting.
    let (g, tally) = Guarded::new(chunks(&[b"hello ", b"world"]), 100, None);
    let (out, err) = drain(g).await;
    assert_eq!((out.as_slice(), err.is_none()), (&b"hello world"[..], true));
    {
        let t = tally.lock().unwrap();
        assert!(t.complete && t.failure.is_none());
        assert_eq!(t.size, 11);
        assert_eq!(t.qetag.clone().finalize(), qetag(b"hello world"));
        assert_eq!(t.crc32.clone().finalize(), crc32fast::hash(b"hello world"));
    }
    // Cut past the limit, with 413 recorded.
    let (g, tally) = Guarded::new(chunks(&[b"12345", b"67890", b"x"]), 7, None);
    let (out, err) = drain(g).await;
    assert!(err.is_some() && out == b"12345");
    {
        let t = tally.lock().unwrap();
        assert_eq!(t.failure.as_ref().unwrap().status, 413);
        assert!(!t.complete);
    }
    // The final check can refuse the whole body.
    let check: FinalCheck = Box::new(|t| {
        if t.size < 100 {
            Err(ApiError::new(403, "file size too small"))
        } else {
            Ok(())
        }
    });
    let (g, tally) = Guarded::new(chunks(&[b"abc"]), 100, Some(check));
    let (_, err) = drain(g).await;
    assert!(err.is_some());
    assert_eq!(tally.lock().unwrap().failure.as_ref().unwrap().status, 403);
}

#[tokio::test]
async fn staged_files_stream_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let staging = Arc::new(Staging::new(dir.path().to_owned(), Duration::from_secs(60)));
    staging.prepare().await.unwrap();
    let (a, b) = (staging::new_id(), staging::new_id());
    assert!(staging::valid_id(&a) && a != b);
    assert!(!staging::valid_id("../x") && !staging::valid_id(&"A".repeat(32)));
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(staging.v1_block(&a), &big).unwrap();
    std::fs::write(staging.v1_block(&b), b"tail").unwrap();

    let files = vec![
        (staging.v1_block(&a), big.len() as u64),
        (staging.v1_block(&b), 4),
    ];
    let mut s = staging::read_files(files.clone());
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    assert_eq!(out.len(), big.len() + 4);
    assert!(out.starts_with(&big) && out.ends_with(b"tail"));
    // Wrong expected lengths and missing files are errors, never silently short data.
    for bad in [
        vec![(staging.v1_block(&b), 5)],
        vec![(staging.v1_block(&b), 3)],
        vec![(staging.v1_block(&staging::new_id()), 1)],
    ] {
        let mut s = staging::read_files(bad);
        let mut failed = false;
        while let Some(c) = s.next().await {
            failed |= c.is_err();
        }
        assert!(failed);
    }
    assert_eq!(
        staging::sha1_of_file(&staging.v1_block(&b)).await.unwrap(),
        {
            use sha1::Digest;
            let d: [u8; 20] = sha1::Sha1::digest(b"tail").into();
            d
        }
    );

    // Sweep: only what is older than TTL + grace goes.
    let upload = staging.v2_upload(&staging::new_id());
    std::fs::create_dir(&upload).unwrap();
    std::fs::write(upload.join("upload.json"), b"{}").unwrap();
    let now = SystemTime::now();
    assert_eq!(staging.sweep(now).await.unwrap(), 0);
    let old = now - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(staging.v1_block(&a))
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::File::open(&upload)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(staging.sweep(now).await.unwrap(), 2);
    assert!(!staging.v1_block(&a).exists() && !upload.exists());
    assert!(staging.v1_block(&b).exists());
    assert_eq!(
        staging
            .sweep(now + Duration::from_secs(7200))
            .await
            .unwrap(),
        1
    );
}
