//! Resumable upload v1: `mkblk` starts a block (at most 4 MiB) with its first chunk, `bput`
//! appends the next chunk, `mkfile` joins the blocks named by their ctxs into the object.
//!
//! A block is one staged file; its ctx ([`Ctx`], sealed with [`seal_ctx`]) is the only handle
//! on it. The ctx records how much of the block has arrived, so a `bput` must continue exactly
//! there (a retried `bput` with the same ctx overwrites its own earlier attempt), and carries
//! the block's SHA-1 once complete, so `mkfile` knows the qetag before it writes a byte. The
//! join re-hashes what it streams and fails rather than store anything else.

use crate::s3::sigv4::hex_encode as hex;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::AsyncSeekExt;

use super::staging::{self, WriteError};
use super::{
    body_stream, json_ok, now_unix, put_options, qn_meta_name, read_small_body, Api, ApiError,
    FinalCheck, Guarded, Uploaded, QETAG_META,
};
use crate::qiniu::error::QiniuError;
use crate::qiniu::etag::{qetag_from_block_sha1s, BLOCK_SIZE};
use crate::qiniu::magic::MagicVars;
use crate::qiniu::{urlsafe_b64_decode, urlsafe_b64_encode};

/// Longest ctx accepted.
const MAX_CTX_LEN: usize = 2048;
/// Largest mkfile body (the ctx list).
const MAX_CTX_LIST: usize = 8 << 20;

/// What a v1 ctx says about its block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ctx {
    /// Staged block id.
    pub id: String,
    /// Access key of the token that created the block.
    pub ak: String,
    pub bucket: String,
    /// Declared block size.
    pub size: u32,
    /// Bytes received so far (the next chunk's offset).
    pub off: u32,
    /// Unix time after which the ctx is refused.
    pub exp: u64,
    /// The block's SHA-1 (hex) once `off == size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

fn ctx_key(secret_key: &str) -> Hmac<Sha256> {
    let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret_key.as_bytes())
        .expect("HMAC takes any key length");
    derive.update(b"ember qiniu v1 ctx");
    let key = derive.finalize().into_bytes();
    <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length")
}

/// `<base64url(json)>.<base64url(HMAC-SHA256)>`, keyed by the access key's secret.
pub(crate) fn seal_ctx(secret_key: &str, ctx: &Ctx) -> String {
    let payload = urlsafe_b64_encode(serde_json::to_string(ctx).unwrap_or_default().as_bytes());
    let mut mac = ctx_key(secret_key);
    mac.update(payload.as_bytes());
    let tag = urlsafe_b64_encode(&mac.finalize().into_bytes());
    format!("{payload}.{tag}")
}

/// Opens a sealed ctx: the MAC must verify under the secret of the access key it names, and
/// it must not have expired. Every failure is a 701.
pub(crate) fn open_ctx<'a>(
    lookup: impl Fn(&str) -> Option<&'a str>,
    sealed: &str,
    now_unix: u64,
) -> Result<Ctx, ApiError> {
    let forged = || ApiError::invalid_ctx("unknown or tampered ctx");
    if sealed.len() > MAX_CTX_LEN {
        return Err(forged());
    }
    let (payload, tag) = sealed.split_once('.').ok_or_else(forged)?;
    let json = urlsafe_b64_decode(payload).ok_or_else(forged)?;
    let ctx: Ctx = serde_json::from_slice(&json).map_err(|_| forged())?;
    let secret = lookup(&ctx.ak).ok_or_else(forged)?;
    let given = urlsafe_b64_decode(tag).ok_or_else(forged)?;
    let mut mac = ctx_key(secret);
    mac.update(payload.as_bytes());
    let expected = mac.finalize().into_bytes();
    if given.len() != expected.len() || !bool::from(expected.ct_eq(&given[..])) {
        return Err(forged());
    }
    if !staging::valid_id(&ctx.id) || ctx.off > ctx.size {
        return Err(forged());
    }
    if now_unix > ctx.exp {
        return Err(ApiError::invalid_ctx("expired"));
    }
    Ok(ctx)
}

fn unhex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::TooLarge => ApiError::bad_request("chunk extends past the declared block size"),
        WriteError::Body(e) => ApiError::bad_request(format!("reading the chunk: {e}")),
        WriteError::Io(e) => ApiError::internal(e),
    }
}

/// The mkblk/bput response.
fn block_response(
    api: &Api,
    headers: &HeaderMap,
    secret: &str,
    ctx: &Ctx,
    checksum: &[u8; 20],
    crc: u32,
) -> Response {
    json_ok(serde_json::json!({
        "ctx": seal_ctx(secret, ctx),
        "checksum": urlsafe_b64_encode(checksum),
        "crc32": crc,
        "offset": ctx.off,
        "host": api.upload_host(headers),
        "expired_at": ctx.exp,
    }))
}

/// `POST /mkblk/<blockSize>`: a new block and its first chunk.
pub(crate) async fn mkblk(
    State(api): State<Arc<Api>>,
    Path(size): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    let size: u32 = size
        .parse()
        .ok()
        .filter(|s| (1..=BLOCK_SIZE as u32).contains(s))
        .ok_or_else(|| ApiError::bad_request("invalid block size"))?;
    if token
        .policy
        .max_fsize()
        .is_some_and(|l| u64::from(size) > l)
        || u64::from(size) > api.cfg.max_object_size
    {
        return Err(QiniuError::FileTooLarge.into());
    }
    let bucket = token.policy.bucket().to_owned();
    api.require_bucket(&bucket).await?;
    api.staging.prepare().await.map_err(ApiError::internal)?;

    let id = staging::new_id();
    let path = api.staging.v1_block(&id);
    let mut file = tokio::fs::File::create_new(&path)
        .await
        .map_err(ApiError::internal)?;
    let mut sha = Sha1::new();
    let mut crc = crc32fast::Hasher::new();
    let written = staging::write_body(&mut file, body_stream(body), u64::from(size), |c| {
        sha.update(c);
        crc.update(c);
    })
    .await;
    drop(file);
    let written = match written {
        Ok(n) => n as u32,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(write_error(e));
        }
    };
    let digest: [u8; 20] = sha.finalize().into();
    let ctx = Ctx {
        id,
        ak: token.access_key.clone(),
        bucket,
        size,
        off: written,
        exp: now_unix() + api.staging.ttl().as_secs(),
        sha1: (written == size).then(|| hex(&digest)),
    };
    let secret = api.cfg.secret_key(&token.access_key).unwrap_or("");
    Ok(block_response(
        &api,
        &headers,
        secret,
        &ctx,
        &digest,
        crc.finalize(),
    ))
}

/// `POST /bput/<ctx>/<nextChunkOffset>`: the next chunk of a block.
pub(crate) async fn bput(
    State(api): State<Arc<Api>>,
    Path((sealed, offset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = api.uptoken_header(&headers)?;
    let ctx = open_ctx(|ak| api.cfg.secret_key(ak), &sealed, now_unix())?;
    if ctx.ak != token.access_key || ctx.bucket != token.policy.bucket() {
        return Err(ApiError::invalid_ctx("the ctx belongs to another token"));
    }
    if offset.parse::<u32>().ok() != Some(ctx.off) {
        return Err(ApiError::invalid_ctx("offset does not match the ctx"));
    }
    if ctx.off == ctx.size {
        return Err(ApiError::invalid_ctx("the block is already complete"));
    }
    let path = api.staging.v1_block(&ctx.id);
    let mut file = match tokio::fs::OpenOptions::new().write(true).open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::invalid_ctx("the block has expired"))
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    if len < u64::from(ctx.off) {
        return Err(ApiError::invalid_ctx(
            "the block is shorter than the ctx says",
        ));
    }
    file.set_len(u64::from(ctx.off))
        .await
        .map_err(ApiError::internal)?;
    file.seek(std::io::SeekFrom::Start(u64::from(ctx.off)))
        .await
        .map_err(ApiError::internal)?;
    let mut crc = crc32fast::Hasher::new();
    let written = staging::write_body(
        &mut file,
        body_stream(body),
        u64::from(ctx.size - ctx.off),
        |c| crc.update(c),
    )
    .await;
    drop(file);
    let written = written.map_err(write_error)? as u32;
    let digest = staging::sha1_of_file(&path)
        .await
        .map_err(ApiError::internal)?;
    let off = ctx.off + written;
    let next = Ctx {
        off,
        exp: now_unix() + api.staging.ttl().as_secs(),
        sha1: (off == ctx.size).then(|| hex(&digest)),
        ..ctx
    };
    let secret = api.cfg.secret_key(&token.access_key).unwrap_or("");
    Ok(block_response(
        &api,
        &headers,
        secret,
        &next,
        &digest,
        crc.finalize(),
    ))
}

/// The parameters of a mkfile path (after `/mkfile/`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MkfileArgs {
    pub size: u64,
    pub key: Option<String>,
    pub mime: Option<String>,
    pub fname: Option<String>,
    /// `x:<name>` variables, with the prefix.
    pub custom: Vec<(String, String)>,
    /// `x-qn-meta-<name>`, name lowercased without the prefix.
    pub meta: BTreeMap<String, String>,
}

/// Parses `<fileSize>[/<name>/<urlsafe_b64 value>]*`; unknown names are ignored.
pub(crate) fn parse_mkfile_path(rest: &str) -> Result<MkfileArgs, ApiError> {
    let mut segs = rest.trim_matches('/').split('/');
    let size = segs
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("invalid file size"))?;
    let mut args = MkfileArgs {
        size,
        ..Default::default()
    };
    while let Some(name) = segs.next() {
        let value = segs.next().ok_or_else(|| {
            ApiError::bad_request(format!("mkfile parameter {name:?} has no value"))
        })?;
        let decoded = urlsafe_b64_decode(value)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("mkfile parameter {name:?} is not base64url UTF-8"))
            })?;
        match name {
            "key" => args.key = Some(decoded),
            "mimeType" => args.mime = Some(decoded).filter(|m| !m.is_empty()),
            "fname" => args.fname = Some(decoded).filter(|f| !f.is_empty()),
            n if n.starts_with("x:") && n.len() > 2 => {
                args.custom.retain(|(k, _)| k != n);
                args.custom.push((n.to_owned(), decoded));
            }
            n => {
                if let Some(m) = qn_meta_name(n) {
                    args.meta.insert(m, decoded);
                }
            }
        }
    }
    Ok(args)
}

/// `POST /mkfile/<fileSize>[/key/<b64>][/mimeType/<b64>][/fname/<b64>][/x:var/<b64>]...`
/// with the ctx list as the body.
pub(crate) async fn mkfile(
    State(api): State<Arc<Api>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload_time = now_unix();
    let token = api.uptoken_header(&headers)?;
    let policy = &token.policy;
    let bucket = policy.bucket().to_owned();
    let args = parse_mkfile_path(&rest)?;
    let list = read_small_body(body, MAX_CTX_LIST).await?;
    let list = String::from_utf8(list).map_err(|_| ApiError::bad_request("invalid ctx list"))?;
    let now = now_unix();
    let mut blocks = Vec::new();
    for sealed in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ctx = open_ctx(|ak| api.cfg.secret_key(ak), sealed, now)?;
        if ctx.ak != token.access_key || ctx.bucket != bucket {
            return Err(ApiError::invalid_ctx("the ctx belongs to another token"));
        }
        let sha = ctx
            .sha1
            .as_deref()
            .and_then(unhex20)
            .filter(|_| ctx.off == ctx.size)
            .ok_or_else(|| ApiError::invalid_ctx("the block is incomplete"))?;
        blocks.push((ctx, sha));
    }
    if let Some((_, init)) = blocks.split_last() {
        if init.iter().any(|(c, _)| c.size as usize != BLOCK_SIZE) {
            return Err(ApiError::bad_request(
                "every block but the last must be 4 MiB",
            ));
        }
    }
    let total: u64 = blocks.iter().map(|(c, _)| u64::from(c.size)).sum();
    if total != args.size {
        return Err(ApiError::bad_request(format!(
            "file size {} does not match the blocks ({total} bytes)",
            args.size
        )));
    }
    policy.check_fsize(total)?;
    if total > api.cfg.max_object_size {
        return Err(QiniuError::FileTooLarge.into());
    }
    let sha1s: Vec<[u8; 20]> = blocks.iter().map(|(_, s)| *s).collect();
    let qetag = qetag_from_block_sha1s(&sha1s);
    let mime = args
        .mime
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    policy.check_mime(&mime)?;
    let custom: Vec<(&str, &str)> = args
        .custom
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
        fname: args.fname.as_deref(),
        persistent_id: None,
        upload_time,
        custom: &custom,
    };
    let key = policy.resolve_key(args.key.as_deref(), &vars)?;
    api.require_bucket(&bucket).await?;

    let files: Vec<_> = blocks
        .iter()
        .map(|(c, _)| (api.staging.v1_block(&c.id), u64::from(c.size)))
        .collect();
    for (path, len) in &files {
        match tokio::fs::metadata(path).await {
            Ok(m) if m.len() == *len => {}
            Ok(_) => return Err(ApiError::invalid_ctx("the staged block changed")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::invalid_ctx("the block has expired"))
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
    }
    let mut opts = put_options(&api.cfg, policy, &mime, args.meta.clone());
    opts.user_meta.insert(QETAG_META.to_owned(), qetag.clone());
    opts.content_length = Some(total);
    let expected = qetag.clone();
    let check: FinalCheck = Box::new(move |t| {
        if t.size == total && t.qetag.clone().finalize() == expected {
            Ok(())
        } else {
            Err(ApiError::invalid_ctx("the staged blocks changed"))
        }
    });
    let (guarded, tally) = Guarded::new(staging::read_files(files.clone()), total, Some(check));
    api.store(&bucket, &key, Box::pin(guarded), opts, &tally)
        .await?;
    for (path, _) in files {
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::debug!("qiniu: removing a joined block: {e}");
        }
    }
    Ok(Uploaded {
        bucket,
        key,
        qetag,
        fsize: total,
        mime,
        fname: args.fname,
        custom: args.custom,
        upload_time,
    }
    .response(policy, false))
}
