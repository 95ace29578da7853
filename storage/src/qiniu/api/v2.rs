//! Resumable upload v2: init an upload for (bucket, key or `~`), upload numbered parts (any
//! order, retries replace), complete with the part list, or abort; list the parts so far.
//!
//! An upload is a staged directory (see `staging.rs`) whose `upload.json` names the access
//! key, bucket and key it was started for; every later request must come with a token of the
//! same access key for the same bucket and key, else the upload "does not exist" (612). A part
//! is stored under its number and MD5, and that MD5 (hex) is the `etag` the client lists at
//! completion. Completion reads the parts once for the qetag (so the key may depend on it and
//! the qetag can be stored with the object), then streams them into the backend.

use crate::s3::sigv4::hex_encode as hex;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::staging::{self, WriteError};
use super::{
    body_stream, json_ok, now_unix, put_options, qn_meta_name, read_small_body, size_limit, Api,
    ApiError, FinalCheck, Guarded, Uploaded, QETAG_META,
};
use crate::backend::MAX_PART_NUMBER;
use crate::qiniu::error::QiniuError;
use crate::qiniu::etag::QEtag;
use crate::qiniu::magic::MagicVars;
use crate::qiniu::token::UploadToken;
use crate::qiniu::urlsafe_b64_decode;

/// Qiniu's largest part.
const MAX_PART_SIZE: u64 = 1 << 30;
/// Largest completion body.
const MAX_COMPLETE_BODY: usize = 4 << 20;

/// `upload.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadMeta {
    ak: String,
    bucket: String,
    key: Option<String>,
    initiated: u64,
    expire: u64,
}

/// The key named by the `objects/<...>` path segment: `~` for none, else base64url.
pub(crate) fn decode_object(segment: &str) -> Result<Option<String>, ApiError> {
    if segment == "~" {
        return Ok(None);
    }
    urlsafe_b64_decode(segment)
        .and_then(|k| String::from_utf8(k).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalid object name (expected base64url or ~)"))
}

/// The bucket in the path must be the token's.
fn check_bucket(token: &UploadToken, bucket: &str) -> Result<(), ApiError> {
    if token.policy.bucket() == bucket {
        Ok(())
    } else {
        Err(ApiError::new(403, "bucket doesn't match with scope"))
    }
}

/// Loads an upload and checks it belongs to this token, bucket and key.
async fn load(
    api: &Api,
    token: &UploadToken,
    bucket: &str,
    object: &str,
    upload_id: &str,
) -> Result<(PathBuf, UploadMeta), ApiError> {
    check_bucket(token, bucket)?;
    let key = decode_object(object)?;
    if !staging::valid_id(upload_id) {
        return Err(ApiError::no_such_upload());
    }
    let dir = api.staging.v2_upload(upload_id);
    let json = match tokio::fs::read(dir.join("upload.json")).await {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ApiError::no_such_upload()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let meta: UploadMeta = serde_json::from_slice(&json).map_err(ApiError::internal)?;
    if meta.ak != token.access_key
        || meta.bucket != bucket
        || meta.key != key
        || now_unix() > meta.expire
    {
        return Err(ApiError::no_such_upload());
    }
    Ok((dir, meta))
}

/// `POST /buckets/<bucket>/objects/<b64 key|~>/uploads`.
pub(crate) async fn init(
    State(api): State<Arc<Api>>,
    Path((bucket, object)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    check_bucket(&token, &bucket)?;
    let key = decode_object(&object)?;
    if let Some(k) = &key {
        token.policy.check_key(k)?;
    }
    api.require_bucket(&bucket).await?;
    api.staging.prepare().await.map_err(ApiError::internal)?;
    let id = staging::new_id();
    let dir = api.staging.v2_upload(&id);
    let now = now_unix();
    let meta = UploadMeta {
        ak: token.access_key.clone(),
        bucket,
        key,
        initiated: now,
        expire: now + api.staging.ttl().as_secs(),
    };
    tokio::fs::create_dir(&dir)
        .await
        .map_err(ApiError::internal)?;
    let json = serde_json::to_vec(&meta).map_err(ApiError::internal)?;
    tokio::fs::write(dir.join("upload.json"), json)
        .await
        .map_err(ApiError::internal)?;
    Ok(json_ok(serde_json::json!({
        "uploadId": id,
        "expireAt": meta.expire,
    })))
}

/// `Content-MD5` as the SDKs send it: 32 hex digits (Qiniu's SDKs) or base64 of 16 bytes.
pub(crate) fn parse_content_md5(value: &str) -> Option<[u8; 16]> {
    let v = value.trim();
    if v.len() == 32 {
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(out);
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    raw.try_into().ok()
}

fn part_prefix(n: u32) -> String {
    format!("{n:05}.")
}

fn valid_etag(e: &str) -> bool {
    e.len() == 32 && e.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `PUT .../uploads/<uploadId>/<partNumber>`.
pub(crate) async fn upload_part(
    State(api): State<Arc<Api>>,
    Path((bucket, object, upload_id, part)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    let n: u32 = part
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| ApiError::bad_request("invalid partNumber"))?;
    let (dir, _) = load(&api, &token, &bucket, &object, &upload_id).await?;
    let expected_md5 = match headers.get("content-md5") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(parse_content_md5)
                .ok_or_else(|| ApiError::bad_request("invalid Content-MD5"))?,
        ),
    };
    let limit = MAX_PART_SIZE.min(size_limit(&api.cfg, &token.policy));
    let tmp = dir.join(format!("{n:05}.tmp-{}", staging::new_id()));
    let mut file = match tokio::fs::File::create_new(&tmp).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ApiError::no_such_upload()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let mut md5 = Md5::new();
    let written = staging::write_body(&mut file, body_stream(body), limit, |c| md5.update(c)).await;
    drop(file);
    let result = match written {
        Ok(_) => {
            let digest: [u8; 16] = md5.finalize().into();
            if expected_md5.is_some_and(|m| m != digest) {
                Err(ApiError::bad_request("Content-MD5 does not match the part"))
            } else {
                Ok(digest)
            }
        }
        Err(WriteError::TooLarge) => Err(QiniuError::FileTooLarge.into()),
        Err(WriteError::Body(e)) => Err(ApiError::bad_request(format!("reading the part: {e}"))),
        Err(WriteError::Io(e)) => Err(ApiError::internal(e)),
    };
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let etag = hex(&digest);
    let name = format!("{}{etag}", part_prefix(n));
    if let Err(e) = tokio::fs::rename(&tmp, dir.join(&name)).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(if e.kind() == io::ErrorKind::NotFound {
            ApiError::no_such_upload()
        } else {
            ApiError::internal(e)
        });
    }
    // Earlier uploads of the same part number with other content are replaced.
    if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
        let prefix = part_prefix(n);
        while let Ok(Some(entry)) = entries.next_entry().await {
            let fname = entry.file_name();
            let Some(f) = fname.to_str() else { continue };
            if f.starts_with(&prefix) && f != name && valid_etag(&f[prefix.len()..]) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
    Ok(json_ok(serde_json::json!({ "etag": etag, "md5": etag })))
}

/// One part of a completion request.
#[derive(Debug, Deserialize)]
struct PartRef {
    #[serde(rename = "partNumber")]
    part_number: u32,
    etag: String,
}

/// A completion request.
#[derive(Debug, Deserialize)]
struct CompleteBody {
    #[serde(default)]
    parts: Vec<PartRef>,
    #[serde(default)]
    fname: Option<String>,
    #[serde(default, rename = "mimeType")]
    mime_type: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, rename = "customVars")]
    custom_vars: Option<BTreeMap<String, serde_json::Value>>,
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `POST .../uploads/<uploadId>`: joins the listed parts into the object.
pub(crate) async fn complete(
    State(api): State<Arc<Api>>,
    Path((bucket, object, upload_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload_time = now_unix();
    let token = api.uptoken_header(&headers)?;
    let policy = &token.policy;
    let (dir, meta) = load(&api, &token, &bucket, &object, &upload_id).await?;
    let raw = read_small_body(body, MAX_COMPLETE_BODY).await?;
    let req: CompleteBody = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid completion body: {e}")))?;
    if req.parts.is_empty() {
        return Err(ApiError::bad_request("no parts to complete"));
    }
    let mut files = Vec::with_capacity(req.parts.len());
    let mut last = 0;
    for p in &req.parts {
        if p.part_number <= last {
            return Err(ApiError::bad_request(
                "parts must be listed in ascending order",
            ));
        }
        last = p.part_number;
        let etag = p.etag.trim_matches('"').to_ascii_lowercase();
        if !valid_etag(&etag) {
            return Err(ApiError::bad_request(format!(
                "part {}: invalid etag",
                p.part_number
            )));
        }
        let path = dir.join(format!("{}{etag}", part_prefix(p.part_number)));
        let len = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ApiError::bad_request(format!(
                    "part {} with etag {etag} was not uploaded",
                    p.part_number
                )))
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        files.push((path, len));
    }
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    policy.check_fsize(total)?;
    if total > api.cfg.max_object_size {
        return Err(QiniuError::FileTooLarge.into());
    }
    let mime = req
        .mime_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    policy.check_mime(&mime)?;

    // Pass 1: the qetag (the key may depend on it; it is stored with the object).
    let mut h = QEtag::new();
    let mut stream = staging::read_files(files.clone());
    while let Some(chunk) = stream.next().await {
        h.update(&chunk.map_err(ApiError::internal)?);
    }
    let qetag = h.finalize();

    let custom: Vec<(String, String)> = req
        .custom_vars
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x:") && k.len() > 2)
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect();
    let user_meta: BTreeMap<String, String> = req
        .metadata
        .iter()
        .flatten()
        .filter_map(|(k, v)| qn_meta_name(k).map(|n| (n, value_text(v))))
        .collect();
    let fname = req.fname.clone().filter(|f| !f.is_empty());
    let custom_refs: Vec<(&str, &str)> = custom
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let vars = MagicVars {
        bucket: &bucket,
        key: "",
        etag: &qetag,
        fsize: total,
        mime_type: &mime,
        end_user: policy.end_user.as_deref(),
        fname: fname.as_deref(),
        persistent_id: None,
        upload_time,
        custom: &custom_refs,
    };
    let key = policy.resolve_key(meta.key.as_deref(), &vars)?;

    // Pass 2: into the backend, checked against pass 1.
    let mut opts = put_options(&api.cfg, policy, &mime, user_meta);
    opts.user_meta.insert(QETAG_META.to_owned(), qetag.clone());
    opts.content_length = Some(total);
    let expected = qetag.clone();
    let check: FinalCheck = Box::new(move |t| {
        if t.size == total && t.qetag.clone().finalize() == expected {
            Ok(())
        } else {
            Err(ApiError::bad_request("the parts changed during completion"))
        }
    });
    let (guarded, tally) = Guarded::new(staging::read_files(files), total, Some(check));
    api.store(&bucket, &key, Box::pin(guarded), opts, &tally)
        .await?;
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::debug!("qiniu: removing a completed upload: {e}");
    }
    Ok(Uploaded {
        bucket,
        key,
        qetag,
        fsize: total,
        mime,
        fname,
        custom,
        upload_time,
    }
    .response(policy, false))
}

/// `DELETE .../uploads/<uploadId>`.
pub(crate) async fn abort(
    State(api): State<Arc<Api>>,
    Path((bucket, object, upload_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    let (dir, _) = load(&api, &token, &bucket, &object, &upload_id).await?;
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => Ok(json_ok(serde_json::json!({}))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ApiError::no_such_upload()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `GET .../uploads/<uploadId>`: the parts uploaded so far.
pub(crate) async fn list_parts(
    State(api): State<Arc<Api>>,
    Path((bucket, object, upload_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    let (dir, meta) = load(&api, &token, &bucket, &object, &upload_id).await?;
    let mut parts = Vec::new();
    let mut entries = tokio::fs::read_dir(&dir)
        .await
        .map_err(ApiError::internal)?;
    while let Some(entry) = entries.next_entry().await.map_err(ApiError::internal)? {
        let fname = entry.file_name();
        let Some(f) = fname.to_str() else { continue };
        let Some((num, etag)) = f.split_once('.') else {
            continue;
        };
        let (Ok(n), true) = (num.parse::<u32>(), valid_etag(etag)) else {
            continue;
        };
        let Ok(m) = entry.metadata().await else {
            continue;
        };
        let put = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        parts.push((n, etag.to_owned(), m.len(), put));
    }
    parts.sort();
    let parts: Vec<_> = parts
        .into_iter()
        .map(|(n, etag, size, put)| {
            serde_json::json!({ "partNumber": n, "etag": etag, "size": size, "putTime": put })
        })
        .collect();
    Ok(json_ok(serde_json::json!({
        "uploadId": upload_id,
        "expireAt": meta.expire,
        "partNumberMarker": 0,
        "parts": parts,
    })))
}
