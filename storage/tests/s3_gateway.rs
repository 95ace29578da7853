//! The `s3` gateway backend against real S3 servers nobody here wrote, each started on
//! 127.0.0.1 with an ephemeral port (`support/upstream.rs`):
//!
//! - moto's server (an emulation of AWS S3 that implements every call the backend makes):
//!   a model-based comparison with the in-memory reference backend, and directed checks of
//!   each operation, error mapping, metadata encoding, unknown-length bodies and bodies that
//!   fail (at the start, midway, or with a verdict after their last byte);
//! - s3s-fs (a file-system S3 server): the backend directly, Ember's S3 router in gateway mode
//!   driven by aws-sdk-s3, memory while 256 MiB stream through it both ways (in a child
//!   process, measured by its peak RSS), start-up against an upstream that is down or refuses
//!   the credentials, and an upstream that dies mid-request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use ember_common::config::{StorageBackend, StorageConfig, UpstreamConfig};
use ember_common::http::HttpServer;
use ember_storage::backend::memory::MemoryBackend;
use ember_storage::backend::s3::{GatewayError, S3Backend, BUFFER};
use ember_storage::backend::{
    Backend, ByteStream, CopyMetadata, ListPage, ListQuery, ObjectMeta, PutOptions,
    StandardHeaders, StorageError, UploadInfo, MIN_PART_SIZE,
};
use ember_storage::qiniu::api::{stored_qetag, QETAG_META};
use ember_storage::server::{open_backend, router, StartError};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[path = "support/model.rs"]
mod model;
mod support;
use model::*;
#[path = "support/upstream.rs"]
mod upstream;
use upstream::Peer;

const AK: &str = "AKIAGATEWAYTEST";
const SK: &str = "gateway-test-secret-key";
/// Ember's own S3 credentials in the end-to-end tests.
const EMBER: (&str, &str) = ("AKIAEMBERCLIENT", "ember-client-secret");

// ---------------------------------------------------------------------------------------------
// Helpers

fn upstream_cfg(peer: &Peer, ak: &str, sk: &str) -> UpstreamConfig {
    UpstreamConfig {
        endpoint: peer.endpoint(),
        region: "us-east-1".into(),
        access_key: ak.into(),
        secret_key: sk.into(),
        path_style: true,
    }
}

fn gateway(peer: &Peer) -> S3Backend {
    S3Backend::new(&upstream_cfg(peer, AK, SK)).unwrap()
}

/// `data` as a stream of `chunk`-byte pieces.
fn body(data: impl Into<Bytes>, chunk: usize) -> ByteStream {
    let data: Bytes = data.into();
    let chunk = chunk.max(1);
    let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// All of `data`, then an error: a front end's verdict on the finished body (a signature or
/// checksum that did not match) — the upstream must not keep the object.
fn late_failing_body(data: Vec<u8>, chunk: usize) -> ByteStream {
    Box::pin(body(data, chunk).chain(futures::stream::once(async {
        Err(std::io::Error::other("bad chunk signature"))
    })))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

type R<T> = std::result::Result<T, String>;

/// A result with timestamps made comparable across backends; the upstream's default
/// Content-Type counts as none.
fn norm<T, U>(r: ember_storage::backend::Result<T>, f: impl FnOnce(T) -> U) -> R<U> {
    r.map(f).map_err(|e| {
        assert!(
            !matches!(e, StorageError::Io(_) | StorageError::Upstream(_)),
            "unexpected error: {e:?}"
        );
        kind(&e)
    })
}

/// An error's variant (the gateway's BodyError carries another message than the model's).
fn kind(e: &StorageError) -> String {
    match e {
        StorageError::BodyError(_) => "BodyError".into(),
        other => format!("{other:?}"),
    }
}

/// ETags the upstream gave copies of multipart objects -> the model's (which keeps the
/// source's `<hex>-<parts>`; S3 servers compute the copy's own, as moto does).
static COPY_ETAGS: std::sync::Mutex<BTreeMap<String, String>> =
    std::sync::Mutex::new(BTreeMap::new());

fn meta(mut m: ObjectMeta) -> ObjectMeta {
    m.last_modified = UNIX_EPOCH;
    if let Some(model) = COPY_ETAGS.lock().unwrap().get(&m.etag) {
        m.etag = model.clone();
    }
    if m.headers.content_type.as_deref() == Some("binary/octet-stream") {
        m.headers.content_type = None;
    }
    m
}

fn page(mut p: ListPage) -> ListPage {
    p.objects = p.objects.into_iter().map(meta).collect();
    p
}

fn uploads(v: Vec<UploadInfo>, ids: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = v
        .into_iter()
        .map(|u| {
            let id = ids.get(&u.upload_id).cloned().unwrap_or(u.upload_id);
            (u.key, id)
        })
        .collect();
    v.sort();
    v
}

/// Every page of a listing.
async fn list_all(b: &dyn Backend, bucket: &str, query: &ListQuery) -> Vec<ListPage> {
    let mut pages = Vec::new();
    let mut query = query.clone();
    loop {
        let p = b.list_objects(bucket, &query).await.expect("list");
        let next = p.next_after.clone();
        let more = p.truncated;
        pages.push(page(p));
        if !more {
            return pages;
        }
        query.after = next;
        assert!(pages.len() < 10_000, "listing does not end");
    }
}

fn sized(mut opts: PutOptions, len: usize, known: bool) -> PutOptions {
    opts.content_length = known.then_some(len as u64);
    opts
}

// ---------------------------------------------------------------------------------------------
// Model-based comparison (moto)

const BUCKETS: &[&str] = &["bkt", "two", "missing", "../bkt", ".tmp"];

fn key_pool() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a",
        "a/",
        "a/b",
        "a/b/c",
        "a//b",
        "a/b/",
        "/a",
        "//",
        "/",
        "//x",
        "b",
        "b/1",
        "b/2",
        "b/10",
        "ab",
        "a b",
        "a+b",
        "a%20b",
        "q?x=1&y",
        "文件/ünïcødé.png",
        "文件/",
        "文",
        "é",
        "e",
        "~",
        ".hidden",
        "...",
        "a..b",
        "dir/sub/",
        "dir/sub/x",
        "dir/z",
        "dir/sub//y",
        "x/y/z/w",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("k".repeat(1024));
    keys.push(format!("{}/{}", "d".repeat(600), "e".repeat(423)));
    keys.push("文".repeat(341)); // 1023 bytes
    keys
}

fn random_opts(rng: &mut Rng, data: &[u8]) -> PutOptions {
    let mut o = PutOptions::default();
    if rng.chance(40) {
        o.headers.content_type = Some(
            rng.pick(&["image/png", "text/plain; charset=utf-8"])
                .to_string(),
        );
    }
    if rng.chance(15) {
        o.headers = StandardHeaders {
            content_type: Some("video/mp4".into()),
            content_disposition: Some("attachment; filename=\"v.mp4\"".into()),
            content_encoding: Some("gzip".into()),
            content_language: Some("zh-CN".into()),
            cache_control: Some("max-age=60".into()),
            expires: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
        };
    }
    if rng.chance(30) {
        o.user_meta
            .insert("owner".into(), format!("u{}", rng.below(9)));
        if rng.chance(50) {
            o.user_meta.insert("名字".into(), "值 \"quoted\"".into());
        }
        if rng.chance(30) {
            o.user_meta
                .insert(QETAG_META.into(), "FhGHvMCRMwbNpmsVyQ3hcR8F0NWs".into());
        }
    }
    o.if_none_match = rng.chance(20);
    if rng.chance(10) {
        o.expected_md5 = Some(if rng.chance(50) {
            md5_raw(data)
        } else {
            [7; 16]
        });
    }
    if rng.chance(10) {
        o.max_size = Some(rng.below(data.len() * 2 + 2) as u64);
    }
    o
}

struct Upload {
    mem_id: String,
    gw_id: String,
    bucket: String,
    key: String,
}

/// Whether two put results differ only in which of two failures was reported first: the
/// gateway checks `if_none_match` (HEAD) before reading the body, the model after.
fn same_put_outcome(a: &R<ObjectMeta>, b: &R<ObjectMeta>, opts: &PutOptions) -> bool {
    if a == b {
        return true;
    }
    let body_failure =
        |e: &str| e == "BodyError" || e.starts_with("EntityTooLarge") || e == "BadDigest";
    match (a, b) {
        (Err(x), Err(y)) => opts.if_none_match && body_failure(x) && y == "AlreadyExists",
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_based_random_operations_match_memory_backend() {
    let peer = upstream::moto();
    let gw = gateway(&peer);
    let mem = MemoryBackend::new();
    for b in ["bkt", "two"] {
        mem.create_bucket(b).await.unwrap();
        gw.create_bucket(b).await.unwrap();
    }
    let pool = key_pool();
    // EMBER_GATEWAY_SEED=<n> explores other sequences.
    let seed = std::env::var("EMBER_GATEWAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00e1_1be2_5eed);
    let mut rng = Rng(seed);
    let mut ups: Vec<Upload> = Vec::new();
    let mut gw_to_mem: HashMap<String, String> = HashMap::new();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut successes = 0usize;
    const STEPS: usize = 1500;

    for step in 0..STEPS {
        let bucket = if rng.chance(85) {
            "bkt"
        } else {
            *rng.pick(BUCKETS)
        };
        let key = random_key(&mut rng, &pool);
        let op = rng.below(100);
        let ctx = format!("step {step} op {op} bucket {bucket:?} key {key:?}");
        let mut ok = true;
        let kind: &str;
        match op {
            0..=29 => {
                let n = if rng.chance(10) { 0 } else { rng.below(3000) };
                let data = rng.bytes(n);
                let opts = random_opts(&mut rng, &data);
                let gw_opts = sized(opts.clone(), n, rng.chance(60));
                let chunk = 1 + rng.below(800);
                let (a, b) = match rng.below(10) {
                    0 => {
                        kind = "put (body fails)";
                        (
                            mem.put_object(bucket, &key, failing_body(data.clone()), opts.clone())
                                .await,
                            gw.put_object(bucket, &key, failing_body(data), gw_opts)
                                .await,
                        )
                    }
                    1 => {
                        kind = "put (verdict after the body)";
                        (
                            mem.put_object(
                                bucket,
                                &key,
                                late_failing_body(data.clone(), chunk),
                                opts.clone(),
                            )
                            .await,
                            gw.put_object(bucket, &key, late_failing_body(data, chunk), gw_opts)
                                .await,
                        )
                    }
                    _ => {
                        kind = "put";
                        (
                            mem.put_object(bucket, &key, body(data.clone(), chunk), opts.clone())
                                .await,
                            gw.put_object(bucket, &key, body(data, chunk), gw_opts)
                                .await,
                        )
                    }
                };
                ok = a.is_ok();
                let (a, b) = (norm(a, meta), norm(b, meta));
                assert!(
                    same_put_outcome(&a, &b, &opts),
                    "{ctx}\n  model: {a:?}\n  gateway: {b:?}"
                );
            }
            30..=41 => {
                kind = "get";
                let range = match mem.head_object(bucket, &key).await {
                    Ok(m) if m.size > 0 && rng.chance(50) => {
                        let start = rng.below(m.size as usize) as u64;
                        let end = start + 1 + rng.below((m.size - start) as usize) as u64;
                        Some(start..end)
                    }
                    _ => None,
                };
                let a = mem.get_object(bucket, &key, range.clone()).await;
                let b = gw.get_object(bucket, &key, range).await;
                ok = a.is_ok();
                let a = match a {
                    Ok((m, s)) => Ok((meta(m), read_all(s).await)),
                    Err(e) => Err(kind_of(&e)),
                };
                let b = match b {
                    Ok((m, s)) => Ok((meta(m), read_all(s).await)),
                    Err(e) => Err(kind_of(&e)),
                };
                assert_eq!(a, b, "{ctx}");
            }
            42..=46 => {
                kind = "head";
                let a = mem.head_object(bucket, &key).await;
                ok = a.is_ok();
                assert_eq!(
                    norm(a, meta),
                    norm(gw.head_object(bucket, &key).await, meta),
                    "{ctx}"
                );
            }
            47..=56 => {
                kind = "delete";
                let a = mem.delete_object(bucket, &key).await;
                ok = a.is_ok();
                assert_eq!(
                    norm(a, |()| ()),
                    norm(gw.delete_object(bucket, &key).await, |()| ()),
                    "{ctx}"
                );
            }
            57..=63 => {
                kind = "copy";
                let dst_bucket = if rng.chance(80) {
                    "bkt"
                } else {
                    *rng.pick(BUCKETS)
                };
                let dst_key = if rng.chance(10) {
                    key.clone()
                } else {
                    random_key(&mut rng, &pool)
                };
                let md = if rng.chance(50) {
                    CopyMetadata::Copy
                } else {
                    CopyMetadata::Replace(Box::new(random_opts(&mut rng, b"")))
                };
                let a = mem
                    .copy_object(bucket, &key, dst_bucket, &dst_key, md.clone())
                    .await;
                let b = gw.copy_object(bucket, &key, dst_bucket, &dst_key, md).await;
                ok = a.is_ok();
                if let (Ok(a), Ok(b)) = (&a, &b) {
                    if a.etag != b.etag && a.etag.contains('-') {
                        // A copy of a multipart object: the upstream's ETag is its MD5.
                        let (_, s) = mem.get_object(dst_bucket, &dst_key, None).await.unwrap();
                        assert_eq!(b.etag, md5_hex(&read_all(s).await), "{ctx}");
                        COPY_ETAGS
                            .lock()
                            .unwrap()
                            .insert(b.etag.clone(), a.etag.clone());
                    }
                }
                assert_eq!(
                    norm(a, meta),
                    norm(b, meta),
                    "{ctx} -> {dst_bucket} {dst_key:?}"
                );
            }
            64..=75 => {
                let prefix = random_prefix(&mut rng, &pool);
                let delim =
                    *rng.pick(&[None, Some("/"), Some("/"), Some("b"), Some("//"), Some("")]);
                let after = match rng.below(10) {
                    0..=5 => None,
                    6..=8 => Some(random_key(&mut rng, &pool)),
                    _ => Some(random_prefix(&mut rng, &pool)),
                };
                let max = *rng.pick(&[1, 2, 3, 5, 1000, 0]);
                let query = q(&prefix, delim, after.as_deref(), max);
                if rng.chance(30) && max > 0 && mem.head_bucket(bucket).await.is_ok() {
                    let a = list_all(&mem, bucket, &query).await;
                    let b = list_all(&gw, bucket, &query).await;
                    assert_eq!(a, b, "{ctx} {query:?}");
                    kind = "list (all pages)";
                } else {
                    let a = mem.list_objects(bucket, &query).await;
                    ok = a.is_ok();
                    let b = gw.list_objects(bucket, &query).await;
                    assert_eq!(norm(a, page), norm(b, page), "{ctx} {query:?}");
                    kind = "list";
                }
            }
            76..=79 => {
                kind = "create multipart";
                let opts = random_opts(&mut rng, b"");
                let a = mem.create_multipart(bucket, &key, opts.clone()).await;
                let b = gw.create_multipart(bucket, &key, opts).await;
                ok = a.is_ok();
                match (a, b) {
                    (Ok(mem_id), Ok(gw_id)) => {
                        gw_to_mem.insert(gw_id.clone(), mem_id.clone());
                        ups.push(Upload {
                            mem_id,
                            gw_id,
                            bucket: bucket.to_owned(),
                            key: key.clone(),
                        });
                    }
                    (a, b) => assert_eq!(norm(a, |_| ()), norm(b, |_| ()), "{ctx}"),
                }
            }
            80..=95 if !ups.is_empty() => {
                let i = if rng.chance(70) {
                    ups.len() - 1 - rng.below(ups.len().min(4))
                } else {
                    rng.below(ups.len())
                };
                let u = &ups[i];
                let (mut mem_id, mut gw_id) = (u.mem_id.clone(), u.gw_id.clone());
                let ub = u.bucket.clone();
                let mut uk = u.key.clone();
                match rng.below(20) {
                    0 => uk = key.clone(),
                    1 => {
                        let bogus = rng
                            .pick(&["no-such-upload", "0123456789abcdef0123456789abcdef"])
                            .to_string();
                        mem_id = bogus.clone();
                        gw_id = bogus;
                    }
                    _ => {}
                }
                match op {
                    80..=86 => {
                        kind = "upload part";
                        let n = if rng.chance(3) {
                            *rng.pick(&[0, 10_001])
                        } else {
                            1 + rng.below(3) as u32
                        };
                        let len = rng.below(2000);
                        let data = rng.bytes(len);
                        let md5 = rng.chance(10).then(|| {
                            if rng.chance(50) {
                                md5_raw(&data)
                            } else {
                                [1; 16]
                            }
                        });
                        let known = rng.chance(70).then_some(len as u64);
                        let a = mem
                            .upload_part(&ub, &uk, &mem_id, n, body(data.clone(), 333), md5)
                            .await;
                        let b = gw
                            .upload_part_with_length(
                                &ub,
                                &uk,
                                &gw_id,
                                n,
                                body(data, 333),
                                md5,
                                known,
                            )
                            .await;
                        ok = a.is_ok();
                        assert_eq!(
                            norm(a, |p| parts(vec![p])),
                            norm(b, |p| parts(vec![p])),
                            "{ctx} upload {i}"
                        );
                    }
                    87..=88 => {
                        kind = "list parts";
                        let a = mem.list_parts(&ub, &uk, &mem_id).await;
                        ok = a.is_ok();
                        assert_eq!(
                            norm(a, parts),
                            norm(gw.list_parts(&ub, &uk, &gw_id).await, parts),
                            "{ctx}"
                        );
                    }
                    89..=92 => {
                        kind = "complete";
                        let have: Vec<(u32, String)> = mem
                            .list_parts(&ub, &u.key, &u.mem_id)
                            .await
                            .map(|v| v.into_iter().map(|p| (p.part_number, p.etag)).collect())
                            .unwrap_or_default();
                        let list: Vec<(u32, String)> = match rng.below(8) {
                            0 => have.iter().rev().cloned().collect(),
                            1 => have.iter().map(|(n, e)| (*n, format!("{e}x"))).collect(),
                            2 => have.iter().map(|(n, e)| (n + 50, e.clone())).collect(),
                            3 => vec![],
                            4 => have.iter().map(|(n, e)| (*n, format!("\"{e}\""))).collect(),
                            5 | 6 => have.last().cloned().into_iter().collect(),
                            _ => have.clone(),
                        };
                        let a = mem.complete_multipart(&ub, &uk, &mem_id, &list).await;
                        let b = gw.complete_multipart(&ub, &uk, &gw_id, &list).await;
                        ok = a.is_ok();
                        assert_eq!(norm(a, meta), norm(b, meta), "{ctx} parts {list:?}");
                    }
                    93..=94 => {
                        kind = "abort";
                        let a = mem.abort_multipart(&ub, &uk, &mem_id).await;
                        ok = a.is_ok();
                        assert_eq!(
                            norm(a, |()| ()),
                            norm(gw.abort_multipart(&ub, &uk, &gw_id).await, |()| ()),
                            "{ctx}"
                        );
                    }
                    _ => {
                        kind = "list uploads";
                        let prefix = random_prefix(&mut rng, &pool);
                        let a = mem.list_multipart_uploads(&ub, &prefix).await;
                        let b = gw.list_multipart_uploads(&ub, &prefix).await;
                        ok = a.is_ok();
                        let none = HashMap::new();
                        assert_eq!(
                            norm(a, |v| uploads(v, &none)),
                            norm(b, |v| uploads(v, &gw_to_mem)),
                            "{ctx}"
                        );
                    }
                }
            }
            80..=95 => kind = "(no upload yet)",
            _ => {
                kind = "bucket ops";
                let name = *rng.pick(&[
                    "two",
                    "two",
                    "bkt",
                    "new-bucket",
                    "Bad_Name",
                    "../etc",
                    "ab",
                ]);
                let (a, b) = match rng.below(3) {
                    0 => (mem.create_bucket(name).await, gw.create_bucket(name).await),
                    1 => (mem.delete_bucket(name).await, gw.delete_bucket(name).await),
                    _ => (
                        mem.head_bucket(name).await.map(|_| ()),
                        gw.head_bucket(name).await.map(|_| ()),
                    ),
                };
                ok = a.is_ok();
                assert_eq!(norm(a, |()| ()), norm(b, |()| ()), "{ctx} bucket {name}");
                let names = |v: Vec<ember_storage::backend::BucketInfo>| -> Vec<String> {
                    v.into_iter().map(|b| b.name).collect()
                };
                assert_eq!(
                    names(mem.list_buckets().await.unwrap()),
                    names(gw.list_buckets().await.unwrap())
                );
            }
        }
        successes += usize::from(ok);
        let c = counts.entry(kind).or_default();
        c.0 += 1;
        c.1 += usize::from(ok);
    }

    // Finally everything: every listing, every body.
    for bucket in ["bkt", "two"] {
        if mem.head_bucket(bucket).await.is_err() {
            assert!(gw.head_bucket(bucket).await.is_err());
            continue;
        }
        let all = list_all(&mem, bucket, &q("", None, None, 1000)).await;
        assert_eq!(all, list_all(&gw, bucket, &q("", None, None, 1000)).await);
        for delim in [None, Some("/")] {
            for max in [1, 7] {
                let query = q("", delim, None, max);
                assert_eq!(
                    list_all(&mem, bucket, &query).await,
                    list_all(&gw, bucket, &query).await,
                    "{query:?}"
                );
            }
        }
        for o in all.iter().flat_map(|p| &p.objects) {
            let (_, s) = mem.get_object(bucket, &o.key, None).await.unwrap();
            let expected = read_all(s).await;
            let (m, s) = gw.get_object(bucket, &o.key, None).await.unwrap();
            assert_eq!(read_all(s).await, expected, "{:?}", o.key);
            assert_eq!(meta(m), meta(o.clone()));
        }
        let none = HashMap::new();
        assert_eq!(
            uploads(mem.list_multipart_uploads(bucket, "").await.unwrap(), &none),
            uploads(
                gw.list_multipart_uploads(bucket, "").await.unwrap(),
                &gw_to_mem
            )
        );
    }
    println!("{STEPS} steps, {successes} succeeded: {counts:?}");
    assert!(successes > STEPS / 3, "the sequence should mostly succeed");
    assert!(
        counts.len() >= 15,
        "every kind of operation ran: {counts:?}"
    );
}

fn kind_of(e: &StorageError) -> String {
    assert!(
        !matches!(e, StorageError::Io(_) | StorageError::Upstream(_)),
        "unexpected error: {e:?}"
    );
    kind(e)
}

// ---------------------------------------------------------------------------------------------
// Directed checks, against moto (everything) and s3s-fs (what it implements)

/// What the upstream implements beyond the basics: s3s-fs has no ListMultipartUploads, lists
/// and aborts unknown uploads without complaint, deletes non-empty buckets, keeps `Expires`
/// as a parsed date and does not compare part ETags.
#[derive(Clone, Copy)]
struct Upstream {
    list_uploads: bool,
    strict_uploads: bool,
    bucket_not_empty: bool,
    raw_expires: bool,
    part_etags: bool,
}

const MOTO: Upstream = Upstream {
    list_uploads: true,
    strict_uploads: true,
    bucket_not_empty: true,
    raw_expires: true,
    part_etags: true,
};

const S3S_FS: Upstream = Upstream {
    list_uploads: false,
    strict_uploads: false,
    bucket_not_empty: false,
    raw_expires: false,
    part_etags: false,
};

fn all_headers() -> StandardHeaders {
    StandardHeaders {
        content_type: Some("video/mp4".into()),
        content_disposition: Some("attachment; filename=\"v.mp4\"".into()),
        content_encoding: Some("identity".into()),
        content_language: Some("zh-CN".into()),
        cache_control: Some("max-age=60".into()),
        expires: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
    }
}

fn rich_opts(qetag: &str) -> PutOptions {
    let mut o = PutOptions {
        headers: all_headers(),
        ..PutOptions::default()
    };
    for (k, v) in [
        ("owner", "u1"),
        ("名字", "值 \"quoted\""),
        ("Mixed-Case", " padded "),
        ("empty", ""),
        (QETAG_META, qetag),
    ] {
        o.user_meta.insert(k.into(), v.into());
    }
    o
}

fn assert_meta(got: &ObjectMeta, want: &PutOptions, up: Upstream, what: &str) {
    assert_eq!(got.user_meta, want.user_meta, "{what}");
    let mut want_headers = want.headers.clone();
    let mut got_headers = got.headers.clone();
    if !up.raw_expires {
        want_headers.expires = None;
        got_headers.expires = None;
    }
    assert_eq!(got_headers, want_headers, "{what}");
}

async fn missing(gw: &S3Backend, bucket: &str, key: &str) -> bool {
    matches!(
        gw.head_object(bucket, key).await,
        Err(StorageError::NoSuchKey)
    )
}

async fn get_bytes(gw: &S3Backend, bucket: &str, key: &str) -> Vec<u8> {
    let (_, s) = gw.get_object(bucket, key, None).await.unwrap();
    read_all(s).await
}

async fn check_operations(gw: &S3Backend, up: Upstream) {
    let b = "bkt";
    gw.create_bucket(b).await.unwrap();
    assert!(matches!(
        gw.create_bucket(b).await,
        Err(StorageError::BucketAlreadyExists)
    ));
    assert!(matches!(
        gw.create_bucket("Bad_Name").await,
        Err(StorageError::InvalidBucketName(_))
    ));
    assert!(gw.list_buckets().await.unwrap().iter().any(|i| i.name == b));
    assert!(matches!(
        gw.head_bucket("missing-bucket").await,
        Err(StorageError::NoSuchBucket)
    ));

    // Metadata and standard headers round-trip (qetag for the Qiniu front end included),
    // with the length known and unknown.
    let data = pattern(100_000, 1);
    let qetag = ember_storage::qiniu::etag::qetag(&data);
    let opts = rich_opts(&qetag);
    for (key, known) in [("meta/known", true), ("meta/unknown", false)] {
        let m = gw
            .put_object(
                b,
                key,
                body(data.clone(), 7777),
                sized(opts.clone(), data.len(), known),
            )
            .await
            .unwrap();
        assert_eq!(
            (m.size, m.etag.as_str()),
            (100_000, md5_hex(&data).as_str())
        );
        let head = gw.head_object(b, key).await.unwrap();
        assert_meta(&head, &opts, up, key);
        assert_eq!(stored_qetag(&head), Some(qetag.as_str()));
        assert_eq!((head.size, &head.etag), (m.size, &m.etag));
        let (g, s) = gw.get_object(b, key, None).await.unwrap();
        assert_meta(&g, &opts, up, key);
        assert_eq!(read_all(s).await, data);
    }
    let page = gw
        .list_objects(b, &q("meta/", None, None, 10))
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 2);
    for o in &page.objects {
        assert_meta(o, &opts, up, "listed");
        assert_eq!(stored_qetag(o), Some(qetag.as_str()));
    }

    // Ranges: the meta keeps the whole size.
    for range in [0..1, 10..20, 99_990..100_000, 0..100_000] {
        let (m, s) = gw
            .get_object(b, "meta/known", Some(range.clone()))
            .await
            .unwrap();
        assert_eq!(m.size, 100_000);
        assert_eq!(
            read_all(s).await,
            &data[range.start as usize..range.end as usize]
        );
    }
    let (m, s) = gw.get_object(b, "meta/known", Some(5..5)).await.unwrap();
    assert_eq!((m.size, read_all(s).await.len()), (100_000, 0));

    // Missing things and keys that are never sent upstream.
    assert!(matches!(
        gw.get_object(b, "nope", None).await,
        Err(StorageError::NoSuchKey)
    ));
    assert!(matches!(
        gw.head_object("missing-bucket", "k").await,
        Err(StorageError::NoSuchBucket)
    ));
    assert!(matches!(
        gw.get_object("missing-bucket", "k", None).await,
        Err(StorageError::NoSuchBucket)
    ));
    assert!(missing(gw, b, "meta/../meta/known").await);
    gw.delete_object(b, "meta/../meta/known").await.unwrap();
    assert!(!missing(gw, b, "meta/known").await);
    assert!(matches!(
        gw.put_object(b, "a/../b", body(vec![1], 1), PutOptions::default())
            .await,
        Err(StorageError::InvalidKey(_))
    ));
    assert!(matches!(
        gw.list_objects("../bkt", &q("", None, None, 10)).await,
        Err(StorageError::NoSuchBucket)
    ));

    // Delete: gone, and deleting again is fine.
    gw.delete_object(b, "meta/unknown").await.unwrap();
    assert!(missing(gw, b, "meta/unknown").await);
    gw.delete_object(b, "meta/unknown").await.unwrap();
    assert!(matches!(
        gw.delete_object("missing-bucket", "k").await,
        Err(StorageError::NoSuchBucket)
    ));

    // Listing with a delimiter and pages of two, against the model.
    let mem = MemoryBackend::new();
    mem.create_bucket(b).await.unwrap();
    for key in ["l/a", "l/b/1", "l/b/2", "l/c", "l/d/x", "l/d/y", "l/e"] {
        for backend in [gw as &dyn Backend, &mem] {
            backend
                .put_object(
                    b,
                    key,
                    body(key.as_bytes().to_vec(), 3),
                    PutOptions::default(),
                )
                .await
                .unwrap();
        }
    }
    for query in [
        q("l/", Some("/"), None, 2),
        q("l/", None, None, 3),
        q("l/", Some("/"), Some("l/b/1"), 1),
        q("l/b", Some("/"), None, 1000),
        q("l/", Some("/"), None, 0),
    ] {
        if query.max_keys == 0 {
            assert_eq!(page_of(gw, b, &query).await, page_of(&mem, b, &query).await);
            continue;
        }
        let want = list_all(&mem, b, &query).await;
        assert_eq!(list_all(gw, b, &query).await, want, "{query:?}");
        assert!(want.len() > 1 || query.max_keys == 1000, "{query:?}");
    }

    // Copy: metadata copied, replaced, and an object copied onto itself.
    let m = gw
        .copy_object(b, "meta/known", b, "copy/same", CopyMetadata::Copy)
        .await
        .unwrap();
    assert_eq!((m.size, &m.etag), (100_000, &md5_hex(&data)));
    assert_meta(
        &gw.head_object(b, "copy/same").await.unwrap(),
        &opts,
        up,
        "copy",
    );
    let replaced = PutOptions {
        headers: StandardHeaders {
            content_type: Some("text/plain".into()),
            ..StandardHeaders::default()
        },
        user_meta: [("new".to_owned(), "yes".to_owned())].into(),
        ..PutOptions::default()
    };
    gw.copy_object(
        b,
        "meta/known",
        b,
        "copy/replaced",
        CopyMetadata::Replace(Box::new(replaced.clone())),
    )
    .await
    .unwrap();
    assert_meta(
        &gw.head_object(b, "copy/replaced").await.unwrap(),
        &replaced,
        up,
        "replaced",
    );
    gw.copy_object(b, "copy/same", b, "copy/same", CopyMetadata::Copy)
        .await
        .unwrap();
    assert_meta(
        &gw.head_object(b, "copy/same").await.unwrap(),
        &opts,
        up,
        "self-copy",
    );
    assert_eq!(get_bytes(gw, b, "copy/same").await, data);
    assert!(matches!(
        gw.copy_object(b, "nope", b, "copy/x", CopyMetadata::Copy)
            .await,
        Err(StorageError::NoSuchKey)
    ));
    assert!(matches!(
        gw.copy_object(b, "meta/known", "missing-bucket", "x", CopyMetadata::Copy)
            .await,
        Err(StorageError::NoSuchBucket)
    ));

    // Conditional create.
    let only = PutOptions {
        if_none_match: true,
        ..PutOptions::default()
    };
    gw.put_object(
        b,
        "cond",
        body(b"first".to_vec(), 2),
        sized(only.clone(), 5, true),
    )
    .await
    .unwrap();
    for known in [true, false] {
        assert!(matches!(
            gw.put_object(
                b,
                "cond",
                body(b"second".to_vec(), 2),
                sized(only.clone(), 6, known)
            )
            .await,
            Err(StorageError::AlreadyExists)
        ));
    }
    assert_eq!(get_bytes(gw, b, "cond").await, b"first");

    // Content-MD5, size limits, lengths that lie, bodies that fail: nothing is stored and an
    // existing object is untouched.
    gw.put_object(b, "keep", body(b"old".to_vec(), 3), PutOptions::default())
        .await
        .unwrap();
    let five = b"12345".to_vec();
    for known in [true, false] {
        let good = PutOptions {
            expected_md5: Some(md5_raw(&five)),
            ..PutOptions::default()
        };
        gw.put_object(b, "md5", body(five.clone(), 2), sized(good, 5, known))
            .await
            .unwrap();
        gw.delete_object(b, "md5").await.unwrap();
        let bad = PutOptions {
            expected_md5: Some([9; 16]),
            ..PutOptions::default()
        };
        for key in ["md5", "keep"] {
            let r = gw
                .put_object(b, key, body(five.clone(), 2), sized(bad.clone(), 5, known))
                .await;
            assert!(matches!(r, Err(StorageError::BadDigest)), "{r:?}");
        }
        let small = PutOptions {
            max_size: Some(4),
            ..PutOptions::default()
        };
        let r = gw
            .put_object(b, "big", body(five.clone(), 2), sized(small, 5, known))
            .await;
        assert!(
            matches!(r, Err(StorageError::EntityTooLarge { limit: 4 })),
            "{r:?}"
        );
        for key in ["gone", "keep"] {
            let r = gw
                .put_object(
                    b,
                    key,
                    failing_body(pattern(3000, 2)),
                    sized(PutOptions::default(), 6000, known),
                )
                .await;
            assert!(matches!(r, Err(StorageError::BodyError(_))), "{r:?}");
            let r = gw
                .put_object(
                    b,
                    key,
                    late_failing_body(pattern(3000, 2), 1000),
                    sized(PutOptions::default(), 3000, known),
                )
                .await;
            assert!(matches!(r, Err(StorageError::BodyError(_))), "{r:?}");
        }
        assert!(missing(gw, b, "md5").await && missing(gw, b, "big").await);
        assert!(missing(gw, b, "gone").await);
        assert_eq!(get_bytes(gw, b, "keep").await, b"old");
    }
    for (declared, sent) in [(10, 5), (10, 15), (0, 1)] {
        let r = gw
            .put_object(
                b,
                "liar",
                body(pattern(sent, 3), 4),
                sized(PutOptions::default(), declared, true),
            )
            .await;
        assert!(matches!(r, Err(StorageError::BodyError(_))), "{r:?}");
        assert!(missing(gw, b, "liar").await);
    }
    let m = gw
        .put_object(
            b,
            "empty",
            body(Vec::new(), 1),
            sized(PutOptions::default(), 0, true),
        )
        .await
        .unwrap();
    assert_eq!((m.size, m.etag.as_str()), (0, md5_hex(b"").as_str()));
    assert!(get_bytes(gw, b, "empty").await.is_empty());

    // A body of unknown length beyond the buffer becomes an upstream multipart upload.
    let big = pattern(2 * BUFFER + 12_345, 4);
    let big_opts = PutOptions {
        expected_md5: Some(md5_raw(&big)),
        max_size: Some(big.len() as u64),
        ..rich_opts(&ember_storage::qiniu::etag::qetag(&big))
    };
    let m = gw
        .put_object(
            b,
            "unknown/big",
            body(big.clone(), 100_000),
            big_opts.clone(),
        )
        .await
        .unwrap();
    assert_eq!(m.size, big.len() as u64);
    assert!(m.etag.ends_with("-3"), "{}", m.etag);
    let head = gw.head_object(b, "unknown/big").await.unwrap();
    assert_eq!((head.size, &head.etag), (m.size, &m.etag));
    assert_meta(&head, &big_opts, up, "unknown/big");
    assert_eq!(get_bytes(gw, b, "unknown/big").await, big);
    for (why, stream, opts) in [
        (
            "wrong md5",
            body(big.clone(), 65_536),
            PutOptions {
                expected_md5: Some([3; 16]),
                ..PutOptions::default()
            },
        ),
        (
            "too large",
            body(big.clone(), 65_536),
            PutOptions {
                max_size: Some(BUFFER as u64 + 1),
                ..PutOptions::default()
            },
        ),
        (
            "verdict after the body",
            late_failing_body(big.clone(), 65_536),
            PutOptions::default(),
        ),
    ] {
        let r = gw.put_object(b, "unknown/failed", stream, opts).await;
        assert!(r.is_err(), "{why}: {r:?}");
        assert!(missing(gw, b, "unknown/failed").await, "{why}");
    }
    if up.list_uploads {
        assert!(
            gw.list_multipart_uploads(b, "unknown/")
                .await
                .unwrap()
                .is_empty(),
            "the failed uploads were aborted"
        );
    }

    // Multipart: parts of known and unknown length, listing, completion, rules.
    let part1 = pattern(MIN_PART_SIZE as usize, 5);
    let part2 = pattern(1000, 6);
    let mopts = rich_opts("FhGHvMCRMwbNpmsVyQ3hcR8F0NWs");
    let id = gw
        .create_multipart(b, "mp/obj", mopts.clone())
        .await
        .unwrap();
    let p1 = gw
        .upload_part_with_length(
            b,
            "mp/obj",
            &id,
            1,
            body(part1.clone(), 65_536),
            Some(md5_raw(&part1)),
            Some(part1.len() as u64),
        )
        .await
        .unwrap();
    assert_eq!((p1.size, &p1.etag), (part1.len() as u64, &md5_hex(&part1)));
    let p2 = gw
        .upload_part(b, "mp/obj", &id, 2, body(part2.clone(), 300), None)
        .await
        .unwrap();
    let listed = gw.list_parts(b, "mp/obj", &id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.part_number, p.size))
            .collect::<Vec<_>>(),
        [(1, part1.len() as u64), (2, 1000)]
    );
    if up.list_uploads {
        let ups = gw.list_multipart_uploads(b, "mp/").await.unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(
            (ups[0].key.as_str(), ups[0].upload_id.as_str()),
            ("mp/obj", id.as_str())
        );
    }
    assert!(matches!(
        gw.complete_multipart(
            b,
            "mp/obj",
            &id,
            &[(2, p2.etag.clone()), (1, p1.etag.clone())]
        )
        .await,
        Err(StorageError::InvalidPartOrder)
    ));
    assert!(matches!(
        gw.complete_multipart(b, "mp/obj", &id, &[]).await,
        Err(StorageError::InvalidPart)
    ));
    assert!(matches!(
        gw.complete_multipart(
            b,
            "mp/obj",
            &id,
            &[(1, p1.etag.clone()), (3, p2.etag.clone())]
        )
        .await,
        Err(StorageError::InvalidPart)
    ));
    if up.part_etags {
        assert!(matches!(
            gw.complete_multipart(
                b,
                "mp/obj",
                &id,
                &[(1, "0".repeat(32)), (2, p2.etag.clone())]
            )
            .await,
            Err(StorageError::InvalidPart)
        ));
    }
    assert!(matches!(
        gw.complete_multipart(b, "other/key", &id, &[(1, p1.etag.clone())])
            .await,
        Err(StorageError::NoSuchUpload)
    ));
    let m = gw
        .complete_multipart(
            b,
            "mp/obj",
            &id,
            &[(1, p1.etag.clone()), (2, p2.etag.clone())],
        )
        .await
        .unwrap();
    assert_eq!(m.size, part1.len() as u64 + 1000);
    assert!(m.etag.ends_with("-2"), "{}", m.etag);
    let head = gw.head_object(b, "mp/obj").await.unwrap();
    assert_eq!((head.size, &head.etag), (m.size, &m.etag));
    assert_meta(&head, &mopts, up, "multipart");
    let mut whole = part1.clone();
    whole.extend_from_slice(&part2);
    assert_eq!(get_bytes(gw, b, "mp/obj").await, whole);
    if up.strict_uploads {
        assert!(matches!(
            gw.list_parts(b, "mp/obj", &id).await,
            Err(StorageError::NoSuchUpload)
        ));
    }

    // A part of unknown length is buffered up to the limit only.
    let id = gw
        .create_multipart(b, "mp/abort", PutOptions::default())
        .await
        .unwrap();
    let r = gw
        .upload_part(
            b,
            "mp/abort",
            &id,
            1,
            body(pattern(BUFFER + 1, 7), 65_536),
            None,
        )
        .await;
    assert!(matches!(r, Err(StorageError::BodyError(_))), "{r:?}");
    assert!(matches!(
        gw.upload_part(b, "mp/abort", &id, 0, body(vec![1], 1), None)
            .await,
        Err(StorageError::InvalidPart)
    ));
    let r = gw
        .upload_part(b, "mp/abort", &id, 1, body(vec![1, 2], 1), Some([0; 16]))
        .await;
    assert!(matches!(r, Err(StorageError::BadDigest)), "{r:?}");
    gw.upload_part(b, "mp/abort", &id, 1, body(vec![1, 2], 1), None)
        .await
        .unwrap();
    gw.abort_multipart(b, "mp/abort", &id).await.unwrap();
    if up.strict_uploads {
        assert!(matches!(
            gw.abort_multipart(b, "mp/abort", &id).await,
            Err(StorageError::NoSuchUpload)
        ));
        assert!(matches!(
            gw.list_parts(b, "mp/abort", &id).await,
            Err(StorageError::NoSuchUpload)
        ));
        assert!(matches!(
            gw.upload_part(b, "mp/abort", "no-such-upload", 1, body(vec![1], 1), None)
                .await,
            Err(StorageError::NoSuchUpload)
        ));
    }
    assert!(missing(gw, b, "mp/abort").await);

    // Small parts before the last; a conditional completion onto an existing key.
    let id = gw.create_multipart(b, "cond", only.clone()).await.unwrap();
    let a = gw
        .upload_part(b, "cond", &id, 1, body(vec![1], 1), None)
        .await
        .unwrap();
    let c = gw
        .upload_part(b, "cond", &id, 2, body(vec![2], 1), None)
        .await
        .unwrap();
    assert!(matches!(
        gw.complete_multipart(b, "cond", &id, &[(1, a.etag.clone()), (2, c.etag.clone())])
            .await,
        Err(StorageError::EntityTooSmall)
    ));
    assert!(matches!(
        gw.complete_multipart(b, "cond", &id, &[(1, a.etag.clone())])
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(get_bytes(gw, b, "cond").await, b"first");
    gw.abort_multipart(b, "cond", &id).await.unwrap();

    // Buckets: not empty, then empty and gone.
    if up.bucket_not_empty {
        assert!(matches!(
            gw.delete_bucket(b).await,
            Err(StorageError::BucketNotEmpty)
        ));
    }
    gw.create_bucket("spare").await.unwrap();
    gw.delete_bucket("spare").await.unwrap();
    assert!(matches!(
        gw.head_bucket("spare").await,
        Err(StorageError::NoSuchBucket)
    ));
    assert!(matches!(
        gw.delete_bucket("spare").await,
        Err(StorageError::NoSuchBucket)
    ));
}

async fn page_of(b: &dyn Backend, bucket: &str, query: &ListQuery) -> ListPage {
    page(b.list_objects(bucket, query).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_operations_against_moto() {
    let peer = upstream::moto();
    check_operations(&gateway(&peer), MOTO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_operations_against_s3s_fs() {
    let peer = upstream::s3s_fs(AK, SK);
    check_operations(&gateway(&peer), S3S_FS).await;
}

// ---------------------------------------------------------------------------------------------
// Ember's S3 router in gateway mode, driven by aws-sdk-s3

struct Ember {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Drop for Ember {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn gateway_config(upstream: UpstreamConfig, data_dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        backend: StorageBackend::S3,
        data_dir: data_dir.to_path_buf(),
        credentials: [(EMBER.0.to_owned(), EMBER.1.to_owned())].into(),
        buckets: vec!["media".into()],
        max_object_size: 1 << 30,
        upstream,
        ..StorageConfig::default()
    }
}

async fn start_ember(peer: &Peer) -> Ember {
    let data = tempfile::tempdir().unwrap();
    let cfg = gateway_config(upstream_cfg(peer, AK, SK), data.path());
    let backend = open_backend(&cfg).await.expect("open the gateway");
    let app = router(backend, &cfg);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = HttpServer::bind("storage", &[any], &[], None)
        .await
        .unwrap();
    let addr = server.local_addrs()[0].1;
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(app, shutdown.clone()));
    Ember {
        addr,
        shutdown,
        _data: data,
    }
}

fn client(endpoint: String, (ak, sk): (&str, &str)) -> Client {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(true)
        .retry_config(RetryConfig::disabled())
        .http_client(http)
        .build();
    Client::from_conf(config)
}

fn ember_client(e: &Ember) -> Client {
    client(format!("http://{}", e.addr), EMBER)
}

/// Bounds every client call of the end-to-end tests.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 120 s"))
}

async fn get_all(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = bounded(key, c.get_object().bucket(bucket).key(key).send())
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_router_in_gateway_mode_end_to_end() {
    let peer = upstream::s3s_fs(AK, SK);
    let ember = start_ember(&peer).await;
    assert!(
        peer.root().join("media").is_dir(),
        "configured bucket created upstream"
    );
    let c = ember_client(&ember);
    let direct = client(peer.endpoint(), (AK, SK));

    // A single PUT of several MiB, with metadata.
    let data = pattern(12 * 1024 * 1024 + 7, 8);
    let put = bounded(
        "put",
        c.put_object()
            .bucket("media")
            .key("video/clip.mp4")
            .content_type("video/mp4")
            .metadata("owner", "u1")
            .body(SdkStream::from(data.clone()))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        put.e_tag(),
        Some(format!("\"{}\"", md5_hex(&data)).as_str())
    );
    assert_eq!(get_all(&c, "media", "video/clip.mp4").await, data);
    assert_eq!(get_all(&direct, "media", "video/clip.mp4").await, data);
    let head = bounded(
        "head",
        c.head_object().bucket("media").key("video/clip.mp4").send(),
    )
    .await
    .unwrap();
    assert_eq!(head.content_type(), Some("video/mp4"));
    assert_eq!(head.content_length(), Some(data.len() as i64));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("u1")
    );
    let ranged = bounded(
        "range",
        c.get_object()
            .bucket("media")
            .key("video/clip.mp4")
            .range("bytes=1000-1999")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        ranged.content_range(),
        Some(format!("bytes 1000-1999/{}", data.len()).as_str())
    );
    let bytes = ranged.body.collect().await.unwrap().into_bytes();
    assert_eq!(&bytes[..], &data[1000..2000]);

    // A multipart upload through the router.
    let parts = [
        pattern(5 * 1024 * 1024, 9),
        pattern(3 * 1024 * 1024 + 1, 10),
    ];
    let id = bounded(
        "create",
        c.create_multipart_upload()
            .bucket("media")
            .key("big/file.bin")
            .send(),
    )
    .await
    .unwrap()
    .upload_id()
    .unwrap()
    .to_owned();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = bounded(
            "part",
            c.upload_part()
                .bucket("media")
                .key("big/file.bin")
                .upload_id(&id)
                .part_number(n)
                .body(SdkStream::from(p.clone()))
                .send(),
        )
        .await
        .unwrap();
        done.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let listed = bounded(
        "list parts",
        c.list_parts()
            .bucket("media")
            .key("big/file.bin")
            .upload_id(&id)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(listed.parts().len(), 2);
    let completed = bounded(
        "complete",
        c.complete_multipart_upload()
            .bucket("media")
            .key("big/file.bin")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send(),
    )
    .await
    .unwrap();
    assert!(completed.e_tag().unwrap().ends_with("-2\""));
    let whole = [parts[0].clone(), parts[1].clone()].concat();
    assert_eq!(get_all(&c, "media", "big/file.bin").await, whole);
    assert_eq!(get_all(&direct, "media", "big/file.bin").await, whole);

    // Copy (a part copied from an object too), listing, delete.
    bounded(
        "copy",
        c.copy_object()
            .copy_source("media/video/clip.mp4")
            .bucket("media")
            .key("video/copy.mp4")
            .send(),
    )
    .await
    .unwrap();
    for key in ["a/1", "a/2", "b"] {
        bounded(
            key,
            c.put_object()
                .bucket("media")
                .key(key)
                .body(SdkStream::from(key.as_bytes().to_vec()))
                .send(),
        )
        .await
        .unwrap();
    }
    let list = bounded(
        "list",
        c.list_objects_v2().bucket("media").delimiter("/").send(),
    )
    .await
    .unwrap();
    let prefixes: Vec<&str> = list
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(prefixes, ["a/", "big/", "video/"]);
    assert_eq!(keys, ["b"]);
    let page = bounded(
        "page",
        c.list_objects_v2()
            .bucket("media")
            .prefix("video/")
            .max_keys(1)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(page.is_truncated(), Some(true));
    assert_eq!(page.contents()[0].size(), Some(data.len() as i64));
    let rest = bounded(
        "page 2",
        c.list_objects_v2()
            .bucket("media")
            .prefix("video/")
            .continuation_token(page.next_continuation_token().unwrap())
            .send(),
    )
    .await
    .unwrap();
    let keys: Vec<&str> = rest.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["video/copy.mp4"]);
    assert_eq!(get_all(&c, "media", "video/copy.mp4").await, data);
    bounded(
        "delete",
        c.delete_object()
            .bucket("media")
            .key("video/copy.mp4")
            .send(),
    )
    .await
    .unwrap();
    let gone = bounded(
        "head gone",
        c.head_object().bucket("media").key("video/copy.mp4").send(),
    )
    .await;
    assert_eq!(
        gone.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(404)
    );
}

// ---------------------------------------------------------------------------------------------
// Memory while 256 MiB stream through the gateway both ways (in a child process, so that its
// peak RSS is this transfer's alone)

const MEMORY_CHILD: &str = "EMBER_GATEWAY_MEMORY_CHILD";
const STREAM_MIB: u64 = 256;
const MAX_GROWTH: u64 = 32 * 1024 * 1024;

#[test]
fn streaming_through_the_gateway_holds_bounded_memory() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEMORY_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let until = std::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("the memory child did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "memory child failed:\n{out}");
    let growth: u64 = out
        .lines()
        .find_map(|l| l.split_once("GATEWAY_RSS_GROWTH ").map(|(_, v)| v))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure from the child:\n{out}"));
    println!(
        "peak RSS growth for {STREAM_MIB} MiB up and down: {} KiB",
        growth / 1024
    );
    assert!(
        growth <= MAX_GROWTH,
        "peak RSS grew by {growth} bytes (limit {MAX_GROWTH}) while streaming {STREAM_MIB} MiB"
    );
}

/// `VmRSS` or `VmHWM` (peak) of this process, bytes.
fn rss(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// One MiB of the streamed object, chunk `i` (cheap to make and to check again).
fn mib(i: u64) -> Bytes {
    let mut v = vec![0u8; 1 << 20];
    for (j, w) in v.chunks_mut(8).enumerate() {
        w.copy_from_slice(
            &(i << 32 | j as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .to_le_bytes(),
        );
    }
    Bytes::from(v)
}

/// An upload body generated as it is sent, `mibs` MiB.
struct Generated {
    next: u64,
    mibs: u64,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.next == self.mibs {
            return std::task::Poll::Ready(None);
        }
        let chunk = mib(self.next);
        self.next += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.mibs - self.next) << 20)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by streaming_through_the_gateway_holds_bounded_memory"]
async fn memory_child() {
    if std::env::var_os(MEMORY_CHILD).is_none() {
        return;
    }
    let peer = upstream::s3s_fs(AK, SK);
    let ember = start_ember(&peer).await;
    // Plain bodies (no aws-chunked checksum framing) so the client does little work.
    let c = {
        let base = ember_client(&ember);
        Client::from_conf(
            base.config()
                .to_builder()
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                )
                .build(),
        )
    };
    let put = |key: &'static str, mibs: u64| {
        let c = c.clone();
        async move {
            bounded(
                key,
                c.put_object()
                    .bucket("media")
                    .key(key)
                    .content_length((mibs << 20) as i64)
                    .body(SdkStream::new(
                        aws_sdk_s3::primitives::SdkBody::from_body_1_x(Generated { next: 0, mibs }),
                    ))
                    .send(),
            )
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        }
    };
    let get = |key: &'static str, mibs: u64| {
        let c = c.clone();
        async move {
            let mut out = bounded(key, c.get_object().bucket("media").key(key).send())
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            let (mut got, mut expected, mut i) = (0u64, mib(0), 0u64);
            let mut at = 0usize;
            while let Some(chunk) = out.body.next().await {
                let chunk = chunk.unwrap();
                for piece in chunk.chunks(1 << 16) {
                    let mut piece = piece;
                    while !piece.is_empty() {
                        let n = piece.len().min(expected.len() - at);
                        assert!(piece[..n] == expected[at..at + n], "byte {got} differs");
                        (got, at, piece) = (got + n as u64, at + n, &piece[n..]);
                        if at == expected.len() {
                            i += 1;
                            (expected, at) = (mib(i), 0);
                        }
                    }
                }
            }
            assert_eq!(got, mibs << 20);
        }
    };
    // Warm up every pool and buffer on the way, then measure.
    put("warm", 4).await;
    get("warm", 4).await;
    let base = rss("VmRSS:");
    put("big", STREAM_MIB).await;
    get("big", STREAM_MIB).await;
    let peak = rss("VmHWM:");
    println!("GATEWAY_RSS_GROWTH {}", peak.saturating_sub(base));
    drop(ember);
}

// ---------------------------------------------------------------------------------------------
// Start-up and failures of the upstream

fn start_error(r: Result<Arc<dyn Backend>, StartError>) -> (String, GatewayError) {
    match r {
        Err(e @ StartError::Gateway { .. }) => {
            let text = e.to_string();
            let StartError::Gateway { reason, .. } = e else {
                unreachable!()
            };
            (text, reason)
        }
        Err(e) => panic!("another start error: {e}"),
        Ok(_) => panic!("the gateway started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_clearly_when_the_upstream_is_down_or_refuses_the_credentials() {
    let data = tempfile::tempdir().unwrap();

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut up = UpstreamConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: AK.into(),
        secret_key: SK.into(),
        path_style: true,
    };
    let cfg = gateway_config(up.clone(), data.path());
    let (text, reason) = start_error(bounded("down", open_backend(&cfg)).await);
    assert!(matches!(reason, GatewayError::Unreachable(_)), "{reason:?}");
    println!("{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("does not answer"),
        "{text}"
    );

    // Not a URL.
    up.endpoint = "minio.internal:9000".into();
    let (text, reason) = start_error(open_backend(&gateway_config(up.clone(), data.path())).await);
    assert!(matches!(reason, GatewayError::Config(_)), "{text}");

    // Wrong secret, with configured buckets (HeadBucket) and without (ListBuckets).
    let peer = upstream::s3s_fs(AK, SK);
    let mut wrong = upstream_cfg(&peer, AK, "not-the-secret");
    for buckets in [vec!["media".to_owned()], vec![]] {
        let mut cfg = gateway_config(wrong.clone(), data.path());
        cfg.buckets = buckets;
        let (text, reason) = start_error(bounded("creds", open_backend(&cfg)).await);
        assert!(
            matches!(reason, GatewayError::Credentials { .. }),
            "{reason:?}"
        );
        assert!(text.contains("refused the credentials"), "{text}");
        println!("{text}");
    }
    wrong.access_key = "AKIAUNKNOWN".into();
    let (_, reason) = start_error(open_backend(&gateway_config(wrong, data.path())).await);
    assert!(
        matches!(reason, GatewayError::Credentials { .. }),
        "{reason:?}"
    );

    // The right ones: started, and the configured bucket exists upstream.
    let cfg = gateway_config(upstream_cfg(&peer, AK, SK), data.path());
    let backend = bounded("ok", open_backend(&cfg)).await.unwrap();
    assert!(peer.root().join("media").is_dir());
    backend.head_bucket("media").await.unwrap();
    // Started twice: the bucket is there already.
    bounded("again", open_backend(&cfg)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_request_is_a_5xx_not_a_panic() {
    let mut peer = upstream::s3s_fs(AK, SK);
    let ember = start_ember(&peer).await;
    let c = ember_client(&ember);
    let data = pattern(48 * 1024 * 1024, 11);
    bounded(
        "put",
        c.put_object()
            .bucket("media")
            .key("big")
            .body(SdkStream::from(data.clone()))
            .send(),
    )
    .await
    .unwrap();

    // A download in progress when the upstream dies ends short, with an error.
    let mut out = bounded("get", c.get_object().bucket("media").key("big").send())
        .await
        .unwrap();
    let mut got = 0usize;
    while got < 1024 * 1024 {
        got += bounded("chunk", out.body.next())
            .await
            .unwrap()
            .unwrap()
            .len();
    }
    peer.kill();
    let mut failed = false;
    while let Some(chunk) = bounded("rest", out.body.next()).await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed && got < data.len(),
        "the download ended cleanly ({got} bytes)"
    );

    // Every later request: a 5xx S3 error.
    let status = |e: Option<&aws_sdk_s3::config::http::HttpResponse>| {
        e.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let e = bounded("get", c.get_object().bucket("media").key("big").send())
        .await
        .unwrap_err();
    assert!((500..600).contains(&status(e.raw_response())), "{e:?}");
    let e = bounded(
        "put",
        c.put_object()
            .bucket("media")
            .key("new")
            .body(SdkStream::from(vec![1u8; 1000]))
            .send(),
    )
    .await
    .unwrap_err();
    assert!((500..600).contains(&status(e.raw_response())), "{e:?}");
    let e = bounded("list", c.list_objects_v2().bucket("media").send())
        .await
        .unwrap_err();
    assert!((500..600).contains(&status(e.raw_response())), "{e:?}");
    let e = bounded("head", c.head_object().bucket("media").key("big").send())
        .await
        .unwrap_err();
    assert!((500..600).contains(&status(e.raw_response())), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Qiniu form uploads through the gateway

fn form_body(boundary: &str, fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

async fn form_upload(ember: &Ember, policy: &str, fields: &[(&str, &str)], file: &[u8]) -> String {
    let token = ember_storage::qiniu::token::upload_token_for_json(
        ember_storage::qiniu::token::Credentials {
            access_key: EMBER.0,
            secret_key: EMBER.1,
        },
        policy,
    );
    let mut all = vec![("token", token.as_str())];
    all.extend_from_slice(fields);
    let boundary = "ember-gateway-test-boundary";
    let r = bounded(
        "form upload",
        support::raw(
            ember.addr,
            "POST",
            "/",
            &[(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )],
            &form_body(boundary, &all, file),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qiniu_form_uploads_through_the_gateway() {
    let peer = upstream::s3s_fs(AK, SK);
    let ember = start_ember(&peer).await;
    let c = ember_client(&ember);
    let direct = client(peer.endpoint(), (AK, SK));
    let deadline = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;

    // Streamed straight through, length unknown: beyond the buffer it is an upstream
    // multipart upload.
    let data = pattern(BUFFER + 2 * 1024 * 1024 + 3, 12);
    let qetag = ember_storage::qiniu::etag::qetag(&data);
    let policy = format!(r#"{{"scope":"media","deadline":{deadline}}}"#);
    let text = form_upload(
        &ember,
        &policy,
        &[("key", "qiniu/direct.bin"), ("x-qn-meta-Owner", "u1")],
        &data,
    )
    .await;
    assert!(text.contains(&qetag), "{text}");
    assert_eq!(get_all(&c, "media", "qiniu/direct.bin").await, data);
    let head = bounded(
        "head",
        direct
            .head_object()
            .bucket("media")
            .key("qiniu/direct.bin")
            .send(),
    )
    .await
    .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-2\""),
        "{:?}",
        head.e_tag()
    );
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("u1")
    );

    // A key made of the content's qetag: staged first, then stored with the qetag in its
    // metadata, which the upstream keeps.
    let small = pattern(300_000, 13);
    let qetag = ember_storage::qiniu::etag::qetag(&small);
    let policy = format!(r#"{{"scope":"media","deadline":{deadline},"saveKey":"h/$(etag)"}}"#);
    let text = form_upload(&ember, &policy, &[], &small).await;
    let key = format!("h/{qetag}");
    assert!(text.contains(&key), "{text}");
    let head = bounded(
        "head",
        direct.head_object().bucket("media").key(&key).send(),
    )
    .await
    .unwrap();
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get(QETAG_META))
            .map(String::as_str),
        Some(qetag.as_str())
    );
    assert_eq!(
        head.e_tag(),
        Some(format!("\"{}\"", md5_hex(&small)).as_str())
    );
    assert_eq!(get_all(&c, "media", &key).await, small);
}
