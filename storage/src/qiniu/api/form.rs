//! Form upload: `POST /` with `multipart/form-data` fields `token`, optional `key`, `x:<var>`
//! custom variables, `x-qn-meta-<name>` metadata, `crc32`, `fname`, and the `file` part last.
//!
//! The text fields are read (bounded) first; the token and the policy's rules that need no
//! content (scope, MIME type, bucket) are checked before a byte of the file is read; the file
//! part is then streamed into the backend through a [`Guarded`] stream that computes the qetag
//! and CRC32, stops past the size limit (413) and, at the end, checks `fsizeMin` and the CRC32
//! the client sent (406) before the backend may commit. When the final key depends on the
//! content (no `key` and a `saveKey` with `$(etag)`/`$(fsize)`, or the hash itself as key) the
//! file is staged on disk first, since the backend needs the key up front.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use futures::StreamExt;

use super::staging::{self, WriteError};
use super::{
    now_unix, put_options, qn_meta_name, size_limit, Api, ApiError, FinalCheck, Guarded, Uploaded,
    QETAG_META,
};
use crate::backend::ByteStream;
use crate::qiniu::error::QiniuError;
use crate::qiniu::etag::QEtag;
use crate::qiniu::magic::MagicVars;
use crate::qiniu::token::PutPolicy;

/// Longest text field accepted.
const MAX_FIELD: usize = 64 * 1024;
/// At most this many text fields.
const MAX_FIELDS: usize = 1000;
/// At most this many bytes of text fields together.
const MAX_FIELDS_TOTAL: usize = 1024 * 1024;

/// The text fields of a form upload.
#[derive(Debug, Default)]
pub(crate) struct FormFields {
    pub token: Option<String>,
    pub key: Option<String>,
    pub crc32: Option<String>,
    pub fname: Option<String>,
    /// `x:<name>` fields, with their prefix.
    pub custom: Vec<(String, String)>,
    /// `x-qn-meta-<name>` fields, name lowercased without the prefix.
    pub meta: BTreeMap<String, String>,
}

impl FormFields {
    pub(crate) fn set(&mut self, name: &str, value: String) {
        match name {
            "token" => self.token = Some(value),
            "key" => self.key = Some(value),
            "crc32" => self.crc32 = Some(value),
            "fname" => self.fname = Some(value),
            n if n.starts_with("x:") && n.len() > 2 => {
                self.custom.retain(|(k, _)| k != n);
                self.custom.push((n.to_owned(), value));
            }
            n => {
                if let Some(m) = qn_meta_name(n) {
                    self.meta.insert(m, value);
                }
            }
        }
    }
}

/// Reads one text field, bounded.
async fn read_text(
    field: &mut multer::Field<'static>,
    total: &mut usize,
) -> Result<String, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
        out.extend_from_slice(&chunk);
        *total += chunk.len();
        if out.len() > MAX_FIELD || *total > MAX_FIELDS_TOTAL {
            return Err(ApiError::bad_request("form field too large"));
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("form field is not UTF-8"))
}

fn bad_form(e: multer::Error) -> ApiError {
    ApiError::bad_request(format!("invalid multipart form: {e}"))
}

/// Whether the key the policy resolves to depends on the content (qetag or size).
fn key_depends_on_content(
    policy: &PutPolicy,
    client_key: Option<&str>,
    vars: &MagicVars<'_>,
) -> bool {
    let a = policy.resolve_key(
        client_key,
        &MagicVars {
            etag: "FAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            fsize: 0,
            ..*vars
        },
    );
    let b = policy.resolve_key(
        client_key,
        &MagicVars {
            etag: "lBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            fsize: 1,
            ..*vars
        },
    );
    match (a, b) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// `POST /`.
pub(crate) async fn form_upload(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload_time = now_unix();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad_request("expected a multipart/form-data body"))?;
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);

    let mut fields = FormFields::default();
    let mut count = 0;
    let mut total = 0;
    let file = loop {
        let Some(mut field) = form.next_field().await.map_err(bad_form)? else {
            return Err(ApiError::bad_request("file is missing from the form"));
        };
        let name = field.name().unwrap_or("").to_owned();
        if name == "file" {
            break field;
        }
        count += 1;
        if count > MAX_FIELDS {
            return Err(ApiError::bad_request("too many form fields"));
        }
        let value = read_text(&mut field, &mut total).await?;
        fields.set(&name, value);
    };

    let token = api.upload_token(fields.token.as_deref().unwrap_or(""))?;
    let policy = &token.policy;
    let bucket = policy.bucket().to_owned();
    let mime = file
        .content_type()
        .map(|m| m.essence_str().to_owned())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    policy.check_mime(&mime)?;
    let fname = fields
        .fname
        .clone()
        .or_else(|| file.file_name().map(str::to_owned))
        .filter(|f| !f.is_empty());
    let expected_crc = match fields.crc32.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<u32>()
                .map_err(|_| ApiError::bad_request("invalid crc32"))?,
        ),
    };
    api.require_bucket(&bucket).await?;

    let custom: Vec<(&str, &str)> = fields
        .custom
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let vars = MagicVars {
        bucket: &bucket,
        key: "",
        etag: "",
        fsize: 0,
        mime_type: &mime,
        end_user: policy.end_user.as_deref(),
        fname: fname.as_deref(),
        persistent_id: None,
        upload_time,
        custom: &custom,
    };
    let client_key = fields.key.as_deref();
    let limit = size_limit(&api.cfg, policy);
    let policy_for_check = policy.clone();
    let check: FinalCheck = Box::new(move |t| {
        policy_for_check.check_fsize(t.size)?;
        if let Some(want) = expected_crc {
            if t.crc32.clone().finalize() != want {
                return Err(ApiError::new(406, "crc32 not match"));
            }
        }
        Ok(())
    });
    let file_stream: ByteStream = Box::pin(file.map(|r| r.map_err(std::io::Error::other)));

    let (key, meta, tally) = if key_depends_on_content(policy, client_key, &vars) {
        // Stage, hash, then put with the key known.
        api.staging.prepare().await.map_err(ApiError::internal)?;
        let path = api.staging.form_file(&staging::new_id());
        let result = async {
            let (guarded, tally) = Guarded::new(file_stream, limit, Some(check));
            let mut out = tokio::fs::File::create_new(&path)
                .await
                .map_err(ApiError::internal)?;
            let written = staging::write_body(&mut out, Box::pin(guarded), u64::MAX, |_| {}).await;
            drop(out);
            if let Err(e) = written {
                let failure = tally
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failure
                    .clone();
                return Err(failure.unwrap_or_else(|| match e {
                    WriteError::Body(e) => ApiError::bad_request(format!("reading the file: {e}")),
                    WriteError::Io(e) => ApiError::internal(e),
                    WriteError::TooLarge => QiniuError::FileTooLarge.into(),
                }));
            }
            let (qetag, size) = {
                let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                (t.qetag.clone().finalize(), t.size)
            };
            let key = policy.resolve_key(
                client_key,
                &MagicVars {
                    etag: &qetag,
                    fsize: size,
                    ..vars
                },
            )?;
            let mut user_meta = fields.meta.clone();
            user_meta.remove(QETAG_META);
            let mut opts = put_options(&api.cfg, policy, &mime, user_meta);
            opts.user_meta.insert(QETAG_META.to_owned(), qetag);
            opts.content_length = Some(size);
            let (guarded, tally) = Guarded::new(
                staging::read_files(vec![(path.clone(), size)]),
                u64::MAX,
                None,
            );
            let meta = api
                .store(&bucket, &key, Box::pin(guarded), opts, &tally)
                .await?;
            Ok((key, meta, tally))
        }
        .await;
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::debug!("qiniu: removing staged form upload: {e}");
        }
        result?
    } else {
        let key = policy.resolve_key(client_key, &vars)?;
        let opts = put_options(&api.cfg, policy, &mime, fields.meta.clone());
        let (guarded, tally) = Guarded::new(file_stream, limit, Some(check));
        let meta = api
            .store(&bucket, &key, Box::pin(guarded), opts, &tally)
            .await?;
        (key, meta, tally)
    };

    let (qetag, size) = {
        let t = tally.lock().unwrap_or_else(|e| e.into_inner());
        let q: QEtag = t.qetag.clone();
        (q.finalize(), t.size)
    };
    if meta.size == size {
        api.qetags.insert(&bucket, &meta, qetag.clone());
    }
    Ok(Uploaded {
        bucket,
        key,
        qetag,
        fsize: size,
        mime,
        fname,
        custom: fields.custom.clone(),
        upload_time,
    }
    .response(policy, true))
}
