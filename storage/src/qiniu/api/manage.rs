//! Management requests (Qiniu's rs / rsf hosts): stat, delete, list, move, copy, signed with
//! `QBox` or `Qiniu` (+ `X-Qiniu-Date`) and verified by `verify_management`.
//!
//! Entries are `EncodedEntryURI` = base64url(`<bucket>:<key>`). Missing objects are 612 (the
//! backend's delete of a missing key succeeds, Qiniu's does not, so delete looks first);
//! missing buckets 631. A list `marker` is base64url of `{"c":0,"k":"<last key>"}` as on
//! Qiniu; anything undecodable is 640.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use super::{json_ok, put_time, read_small_body, Api, ApiError};
use crate::backend::{CopyMetadata, ListQuery, ObjectMeta};
use crate::qiniu::token::{body_is_signed, verify_management, ManagementRequest, ManagementScheme};
use crate::qiniu::{urlsafe_b64_decode, urlsafe_b64_encode};
use crate::s3::sigv4::percent_decode;

/// Largest management request body (list parameters as a form).
const MAX_BODY: usize = 1 << 20;

/// Verifies the request's management signature and returns its (bounded) body. `write`:
/// refuse read-only keys.
async fn authorize(
    api: &Api,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    write: bool,
) -> Result<Vec<u8>, ApiError> {
    let body = read_small_body(body, MAX_BODY).await?;
    let scheme = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(' ').next())
    {
        Some("QBox") => Some(ManagementScheme::QBox),
        Some("Qiniu") => Some(ManagementScheme::Qiniu),
        _ => None,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let signed_body = match scheme {
        Some(s) if body_is_signed(s, content_type) => &body[..],
        _ => &[][..],
    };
    let header_list: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let req = ManagementRequest {
        method: method.as_str(),
        raw_path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        headers: &header_list,
        body: signed_body,
    };
    let auth = verify_management(&req, |ak| api.cfg.secret_key(ak), super::now_unix())?;
    if write && api.cfg.read_only_keys.contains(&auth.access_key) {
        return Err(ApiError::read_only());
    }
    Ok(body)
}

/// Decodes an `EncodedEntryURI` into (bucket, key); the key is required.
pub(crate) fn decode_entry(entry: &str) -> Result<Entry, ApiError> {
    let bad = || ApiError::bad_request("invalid EncodedEntryURI");
    let raw = urlsafe_b64_decode(entry).ok_or_else(bad)?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (bucket, key) = s.split_once(':').ok_or_else(bad)?;
    if bucket.is_empty() {
        return Err(bad());
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// Encodes a list marker.
pub(crate) fn encode_marker(after: &str) -> String {
    urlsafe_b64_encode(
        serde_json::json!({ "c": 0, "k": after })
            .to_string()
            .as_bytes(),
    )
}

/// Decodes a list marker (640 when invalid).
pub(crate) fn decode_marker(marker: &str) -> Result<String, ApiError> {
    let bad = || ApiError::new(640, "invalid marker");
    let raw = urlsafe_b64_decode(marker).ok_or_else(bad)?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v.get("k")
        .and_then(|k| k.as_str())
        .map(str::to_owned)
        .ok_or_else(bad)
}

/// `a=1&b=2` pairs, percent-decoded (`+` as space).
pub(crate) fn parse_params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |x: &str| String::from_utf8_lossy(&percent_decode(x, true)).into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

fn entry_json(meta: &ObjectMeta, qetag: String) -> serde_json::Value {
    let mut v = serde_json::json!({
        "fsize": meta.size,
        "hash": qetag,
        "mimeType": meta
            .headers
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        "putTime": put_time(meta.last_modified),
        "type": 0,
        "status": 0,
    });
    if meta.etag.len() == 32 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        v["md5"] = serde_json::Value::String(meta.etag.clone());
    }
    v
}

/// `GET|POST /stat/<EncodedEntryURI>`.
pub(crate) async fn stat(
    State(api): State<Arc<Api>>,
    Path(entry): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&api, &method, &uri, &headers, body, false).await?;
    let (bucket, key) = decode_entry(&entry)?;
    let meta = api.backend.head_object(&bucket, &key).await?;
    let qetag = api.qetag_of(&bucket, &meta).await?;
    let mut v = entry_json(&meta, qetag);
    let user: serde_json::Map<String, serde_json::Value> = meta
        .user_meta
        .iter()
        .filter(|(k, _)| k.as_str() != super::QETAG_META)
        .map(|(k, val)| (k.clone(), serde_json::Value::String(val.clone())))
        .collect();
    if !user.is_empty() {
        v["x-qn-meta"] = serde_json::Value::Object(user);
    }
    Ok(json_ok(v))
}

fn empty_ok() -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::OK;
    res
}

/// `POST /delete/<EncodedEntryURI>`.
pub(crate) async fn delete(
    State(api): State<Arc<Api>>,
    Path(entry): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&api, &method, &uri, &headers, body, true).await?;
    let (bucket, key) = decode_entry(&entry)?;
    api.backend.head_object(&bucket, &key).await?;
    api.backend.delete_object(&bucket, &key).await?;
    Ok(empty_ok())
}

/// `GET|POST /list?bucket=&prefix=&marker=&limit=&delimiter=` (rsf v1).
pub(crate) async fn list(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = authorize(&api, &method, &uri, &headers, body, false).await?;
    let mut params = parse_params(uri.query().unwrap_or(""));
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim().starts_with("application/x-www-form-urlencoded"));
    if method == Method::POST && is_form {
        params.extend(parse_params(&String::from_utf8_lossy(&body)));
    }
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let bucket = get("bucket")
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::bad_request("bucket is required"))?;
    let limit = match get("limit").filter(|l| !l.is_empty()) {
        None => 1000,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("invalid limit"))?
            .clamp(1, 1000),
    };
    let after = match get("marker").filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => Some(decode_marker(&m)?),
    };
    let query = ListQuery {
        prefix: get("prefix").unwrap_or_default(),
        delimiter: get("delimiter").filter(|d| !d.is_empty()),
        after,
        max_keys: limit,
        metadata: true,
    };
    let page = api.backend.list_objects(&bucket, &query).await?;
    let mut items = Vec::with_capacity(page.objects.len());
    for meta in &page.objects {
        let qetag = api.qetag_of(&bucket, meta).await?;
        let mut v = entry_json(meta, qetag);
        v["key"] = serde_json::Value::String(meta.key.clone());
        items.push(v);
    }
    let mut out = serde_json::json!({ "items": items });
    if !page.common_prefixes.is_empty() {
        out["commonPrefixes"] = serde_json::json!(page.common_prefixes);
    }
    if let (true, Some(next)) = (page.truncated, page.next_after.as_deref()) {
        out["marker"] = serde_json::Value::String(encode_marker(next));
    }
    Ok(json_ok(out))
}

/// A (bucket, key) pair.
pub(crate) type Entry = (String, String);

/// `<src>/<dst>[/force/<true|false>]` of move and copy.
pub(crate) fn parse_transfer(rest: &str) -> Result<(Entry, Entry, bool), ApiError> {
    let segs: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let (src, dst, force) = match segs.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "force", f] => (*src, *dst, *f == "true" || *f == "1"),
        _ => return Err(ApiError::bad_request("expected <src>/<dst>[/force/<bool>]")),
    };
    Ok((decode_entry(src)?, decode_entry(dst)?, force))
}

async fn transfer(api: &Api, rest: &str, remove_source: bool) -> Result<Response, ApiError> {
    let ((sb, sk), (db, dk), force) = parse_transfer(rest)?;
    let src = api.backend.head_object(&sb, &sk).await?;
    if sb == db && sk == dk {
        return if remove_source {
            Ok(empty_ok())
        } else {
            Err(ApiError::file_exists())
        };
    }
    api.backend.head_bucket(&db).await?;
    if !force && api.backend.head_object(&db, &dk).await.is_ok() {
        return Err(ApiError::file_exists());
    }
    let cached = api.qetags.get(&sb, &src);
    let copied = api
        .backend
        .copy_object(&sb, &sk, &db, &dk, CopyMetadata::Copy)
        .await?;
    if let Some(q) = cached {
        api.qetags.insert(&db, &copied, q);
    }
    if remove_source {
        api.backend.delete_object(&sb, &sk).await?;
    }
    Ok(empty_ok())
}

/// `POST /move/<src>/<dst>[/force/<bool>]`.
pub(crate) async fn move_object(
    State(api): State<Arc<Api>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&api, &method, &uri, &headers, body, true).await?;
    transfer(&api, &rest, true).await
}

/// `POST /copy/<src>/<dst>[/force/<bool>]`.
pub(crate) async fn copy_object(
    State(api): State<Arc<Api>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&api, &method, &uri, &headers, body, true).await?;
    transfer(&api, &rest, false).await
}
