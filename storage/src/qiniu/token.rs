//! Qiniu credentials, all HMAC-SHA1 with the secret key and URL-safe base64:
//!
//! - **Upload tokens** `AccessKey:EncodedSign:EncodedPutPolicy`, the sign taken over the
//!   encoded policy exactly as sent; [`verify_upload_token`] returns the parsed [`PutPolicy`],
//!   whose methods apply its rules (scope, insert-only, size and MIME limits, final key).
//! - **Private download URLs** `<url>?e=<deadline>&token=<AK>:<sign>`, the sign taken over
//!   the full URL (scheme and host included) up to and including `e`;
//!   [`verify_download_url`].
//! - **Management requests**: `Authorization: QBox AK:sign` over `<path>[?<query>]\n` plus the
//!   body when it is a form, and `Authorization: Qiniu AK:sign` over
//!   `<METHOD> <path>[?<query>]\nHost: <host>[\nContent-Type: <type>][\nX-Qiniu-*: ...]\n\n`
//!   plus the body unless it is absent or `application/octet-stream`, with `X-Qiniu-Date`
//!   checked against a 15-minute window; [`verify_management`].

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::error::QiniuError;
use super::magic::{expand_save_key, MagicVars};
use super::{urlsafe_b64_decode, urlsafe_b64_encode};
use crate::s3::sigv4::percent_decode;
use crate::time::UtcDateTime;

/// Qiniu's clock-skew window for `X-Qiniu-Date`.
pub const MAX_QINIU_DATE_SKEW_SECS: u64 = 900;
/// Longest upload token accepted.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// The form content type, whose body both schemes sign.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// An access key and secret, for signing.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

fn hmac_sha1(secret: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `urlsafe_base64(hmac_sha1(secret, data))`.
pub fn sign(secret_key: &str, data: &[u8]) -> String {
    urlsafe_b64_encode(&hmac_sha1(secret_key.as_bytes(), data))
}

/// Constant-time check of an encoded sign.
fn sign_matches(secret_key: &str, data: &[u8], encoded_sign: &str) -> bool {
    let expected = hmac_sha1(secret_key.as_bytes(), data);
    match urlsafe_b64_decode(encoded_sign) {
        Some(given) if given.len() == 20 => bool::from(expected.ct_eq(&given[..])),
        _ => false,
    }
}

/// `AK:sign` split from the right (access keys do not contain `:`, signs never do).
fn split_ak_sign(token: &str) -> Option<(&str, &str)> {
    let (ak, sign) = token.rsplit_once(':')?;
    (!ak.is_empty() && !sign.is_empty()).then_some((ak, sign))
}

// ---------------------------------------------------------------------------------------------
// Put policy and upload tokens
// ---------------------------------------------------------------------------------------------

/// Integers as Qiniu SDKs write them, leniently: numbers, integral floats, booleans (`true` =
/// 1) and numeric strings.
fn lenient_i64(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        serde_json::Value::Bool(b) => Some(i64::from(*b)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => lenient_i64(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("expected an integer")),
    }
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b)),
        Some(v) => lenient_i64(&v)
            .map(|n| Some(n != 0))
            .ok_or_else(|| serde::de::Error::custom("expected a boolean")),
    }
}

fn deadline<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    lenient_i64(&v)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom("expected a Unix time"))
}

/// The put policy of an upload token (`https://developer.qiniu.com/kodo/1206/put-policy`).
/// Fields Ember does not act on are kept (`persistentOps` and the rest land in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutPolicy {
    /// `bucket`, `bucket:key`, or `bucket:keyPrefix` with `isPrefixalScope` = 1.
    pub scope: String,
    /// Unix time after which the token is refused.
    #[serde(deserialize_with = "deadline")]
    pub deadline: u64,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_prefixal_scope: Option<i64>,
    /// Non-zero: never overwrite an existing key.
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub insert_only: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_body_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_ops: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_notify_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_key: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub force_save_key: Option<bool>,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub fsize_min: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub fsize_limit: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub detect_mime: Option<i64>,
    /// `image/*;video/mp4`, or `!application/json;text/plain` to forbid instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_limit: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_type: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub delete_after_days: Option<i64>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn mime_matches(pattern: &str, mime: &str) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" || pattern == "*/*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(major) => mime
            .split_once('/')
            .is_some_and(|(m, _)| m.eq_ignore_ascii_case(major)),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

impl PutPolicy {
    /// A policy for `scope` (`bucket` or `bucket:key`) valid until `deadline`.
    pub fn new(scope: &str, deadline: u64) -> Self {
        PutPolicy {
            scope: scope.to_owned(),
            deadline,
            ..Default::default()
        }
    }

    /// The compact JSON of the policy.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The upload token for this policy.
    pub fn upload_token(&self, credentials: Credentials<'_>) -> String {
        upload_token_for_json(credentials, &self.to_json())
    }

    /// The bucket named by the scope.
    pub fn bucket(&self) -> &str {
        self.scope
            .split_once(':')
            .map_or(self.scope.as_str(), |(b, _)| b)
    }

    /// The key (or key prefix) named by the scope.
    pub fn scope_key(&self) -> Option<&str> {
        self.scope.split_once(':').map(|(_, k)| k)
    }

    /// Whether the scope's key is a prefix.
    pub fn is_prefixal(&self) -> bool {
        self.is_prefixal_scope.unwrap_or(0) == 1 && self.scope_key().is_some()
    }

    /// Whether an upload may replace an existing object with other content: only with an exact
    /// `bucket:key` scope and no `insertOnly`. (A `bucket` or prefix scope is insert-only; an
    /// upload of identical content onto an existing key still succeeds there.)
    pub fn allows_overwrite(&self) -> bool {
        self.insert_only.unwrap_or(0) == 0 && self.scope_key().is_some() && !self.is_prefixal()
    }

    /// 401 `expired token` once `now_unix` is past the deadline.
    pub fn check_deadline(&self, now_unix: u64) -> Result<(), QiniuError> {
        if now_unix > self.deadline {
            Err(QiniuError::ExpiredToken)
        } else {
            Ok(())
        }
    }

    /// 403 unless `key` is the scope's key, or under its prefix; any key for a bucket scope.
    pub fn check_key(&self, key: &str) -> Result<(), QiniuError> {
        let ok = match self.scope_key() {
            None => true,
            Some(prefix) if self.is_prefixal() => key.starts_with(prefix),
            Some(exact) => key == exact,
        };
        if ok {
            Ok(())
        } else {
            Err(QiniuError::KeyNotMatchScope)
        }
    }

    /// 413 above `fsizeLimit`, 403 below `fsizeMin` (negative limits are ignored).
    pub fn check_fsize(&self, size: u64) -> Result<(), QiniuError> {
        if let Some(limit) = self.fsize_limit.and_then(|l| u64::try_from(l).ok()) {
            if size > limit {
                return Err(QiniuError::FileTooLarge);
            }
        }
        if let Some(min) = self.fsize_min.and_then(|m| u64::try_from(m).ok()) {
            if size < min {
                return Err(QiniuError::FileTooSmall);
            }
        }
        Ok(())
    }

    /// The largest size `fsizeLimit` allows, so a streaming upload can stop early.
    pub fn max_fsize(&self) -> Option<u64> {
        self.fsize_limit.and_then(|l| u64::try_from(l).ok())
    }

    /// 403 when `mime` (parameters ignored) is outside `mimeLimit`: a `;`-separated list of
    /// types or `type/*` wildcards, the whole list negated by a leading `!`.
    pub fn check_mime(&self, mime: &str) -> Result<(), QiniuError> {
        let Some(limit) = self.mime_limit.as_deref().map(str::trim) else {
            return Ok(());
        };
        let (negate, list) = match limit.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, limit),
        };
        let mut patterns = list
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .peekable();
        if patterns.peek().is_none() {
            return Ok(());
        }
        let base = mime.split(';').next().unwrap_or("").trim();
        let matched = patterns.any(|p| mime_matches(p, base));
        if matched != negate {
            Ok(())
        } else {
            Err(QiniuError::MimeLimited)
        }
    }

    /// The key an upload is stored under: the expanded `saveKey` when `forceSaveKey`, else the
    /// key the client gave, else the scope's exact key, else the expanded `saveKey`, else the
    /// etag; then checked against the scope. `vars.key` is ignored while expanding.
    pub fn resolve_key(
        &self,
        client_key: Option<&str>,
        vars: &MagicVars<'_>,
    ) -> Result<String, QiniuError> {
        let save_key = || {
            self.save_key
                .as_deref()
                .map(|t| expand_save_key(t, &MagicVars { key: "", ..*vars }))
        };
        let key = if self.force_save_key == Some(true) && self.save_key.is_some() {
            save_key().unwrap_or_default()
        } else if let Some(k) = client_key {
            k.to_owned()
        } else if let (Some(k), false) = (self.scope_key(), self.is_prefixal()) {
            k.to_owned()
        } else if let Some(k) = save_key() {
            k
        } else {
            vars.etag.to_owned()
        };
        self.check_key(&key)?;
        Ok(key)
    }
}

/// The upload token for a policy given as JSON text (`AK:sign:encodedPolicy`).
pub fn upload_token_for_json(credentials: Credentials<'_>, policy_json: &str) -> String {
    let encoded = urlsafe_b64_encode(policy_json.as_bytes());
    format!(
        "{}:{}:{encoded}",
        credentials.access_key,
        sign(credentials.secret_key, encoded.as_bytes())
    )
}

/// An upload token that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadToken {
    pub access_key: String,
    pub policy: PutPolicy,
}

/// Verifies an upload token (from the `token` form field, or an `UpToken` authorization, see
/// [`uptoken_from_authorization`]). `lookup` maps an access key to its secret key.
pub fn verify_upload_token<F, S>(
    token: &str,
    lookup: F,
    now_unix: u64,
) -> Result<UploadToken, QiniuError>
where
    F: Fn(&str) -> Option<S>,
    S: AsRef<str>,
{
    let token = token.trim();
    if token.is_empty() {
        return Err(QiniuError::TokenNotSpecified);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(QiniuError::BadToken);
    }
    let (signed, encoded_policy) = token.rsplit_once(':').ok_or(QiniuError::BadToken)?;
    let (access_key, encoded_sign) = split_ak_sign(signed).ok_or(QiniuError::BadToken)?;
    let secret = lookup(access_key).ok_or(QiniuError::BadToken)?;
    if !sign_matches(secret.as_ref(), encoded_policy.as_bytes(), encoded_sign) {
        return Err(QiniuError::BadToken);
    }
    let json = urlsafe_b64_decode(encoded_policy).ok_or(QiniuError::BadToken)?;
    let policy: PutPolicy = serde_json::from_slice(&json).map_err(|_| QiniuError::BadToken)?;
    if policy.bucket().is_empty() {
        return Err(QiniuError::BadToken);
    }
    policy.check_deadline(now_unix)?;
    Ok(UploadToken {
        access_key: access_key.to_owned(),
        policy,
    })
}

/// The token of an `Authorization: UpToken <token>` header (resumable uploads, `putb64`).
pub fn uptoken_from_authorization(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("UpToken").then(|| token.trim())
}

// ---------------------------------------------------------------------------------------------
// Private download URLs
// ---------------------------------------------------------------------------------------------

/// Signs a download URL for a private bucket: appends `e=<deadline>` and `token=AK:sign`.
pub fn sign_download_url(credentials: Credentials<'_>, url: &str, deadline: u64) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    let with_e = format!("{url}{sep}e={deadline}");
    let token = format!(
        "{}:{}",
        credentials.access_key,
        sign(credentials.secret_key, with_e.as_bytes())
    );
    format!("{with_e}&token={token}")
}

/// A download request as received on a bucket domain.
#[derive(Debug, Clone, Copy)]
pub struct DownloadRequest<'a> {
    /// `http` or `https`, as the request arrived; the other one is tried as well, since a URL
    /// signed for one may be fetched over the other behind a proxy.
    pub scheme: &'a str,
    /// The `Host` header (with the port when it is not the default).
    pub host: &'a str,
    /// Path as received, percent-encoded.
    pub raw_path: &'a str,
    /// Query as received, without `?`.
    pub raw_query: &'a str,
}

/// A download URL that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadGrant {
    pub access_key: String,
    /// The URL's `e`.
    pub deadline: u64,
}

/// Verifies a private download URL. The `token` parameter must come last (as every SDK puts
/// it); the signed part is everything before it, `e` included.
pub fn verify_download_url<F, S>(
    req: &DownloadRequest<'_>,
    lookup: F,
    now_unix: u64,
) -> Result<DownloadGrant, QiniuError>
where
    F: Fn(&str) -> Option<S>,
    S: AsRef<str>,
{
    // The last `&token=` is ours (the URL's own query may have a `token` of its own); a
    // leading `token=` only when there is no other.
    let (signed_query, token) = match req.raw_query.rfind("&token=") {
        Some(i) => (&req.raw_query[..i], &req.raw_query[i + "&token=".len()..]),
        None => match req.raw_query.strip_prefix("token=") {
            Some(t) => ("", t),
            None => return Err(QiniuError::DownloadTokenNotSpecified),
        },
    };
    if token.contains('&') {
        return Err(QiniuError::DownloadTokenAuthFailed);
    }
    let token = String::from_utf8(percent_decode(token, false).into_owned())
        .map_err(|_| QiniuError::DownloadTokenAuthFailed)?;
    let (access_key, encoded_sign) =
        split_ak_sign(&token).ok_or(QiniuError::DownloadTokenAuthFailed)?;
    let deadline = signed_query
        .split('&')
        .filter_map(|p| p.strip_prefix("e="))
        .next_back()
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or(QiniuError::DownloadTokenAuthFailed)?;
    let secret = lookup(access_key).ok_or(QiniuError::DownloadTokenAuthFailed)?;
    let other = if req.scheme.eq_ignore_ascii_case("https") {
        "http"
    } else {
        "https"
    };
    let verified = [req.scheme, other].iter().any(|scheme| {
        let url = format!("{scheme}://{}{}?{signed_query}", req.host, req.raw_path);
        sign_matches(secret.as_ref(), url.as_bytes(), encoded_sign)
    });
    if !verified {
        return Err(QiniuError::DownloadTokenAuthFailed);
    }
    if now_unix > deadline {
        return Err(QiniuError::DownloadTokenExpired);
    }
    Ok(DownloadGrant {
        access_key: access_key.to_owned(),
        deadline,
    })
}

// ---------------------------------------------------------------------------------------------
// Management requests
// ---------------------------------------------------------------------------------------------

/// Which management signature a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementScheme {
    /// `QBox AK:sign`.
    QBox,
    /// `Qiniu AK:sign` (with `X-Qiniu-Date` when present).
    Qiniu,
}

/// A management request (stat, delete, list, ...) as received.
#[derive(Debug, Clone, Copy)]
pub struct ManagementRequest<'a> {
    pub method: &'a str,
    /// Path as received, percent-encoded.
    pub raw_path: &'a str,
    /// Query as received, without `?`.
    pub raw_query: &'a str,
    /// Every header; names compare case-insensitively. `Host` must be among them.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The body, when [`body_is_signed`] says the signature covers it (empty otherwise).
    pub body: &'a [u8],
}

impl<'a> ManagementRequest<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }
}

/// A management request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementAuth {
    pub access_key: String,
    pub scheme: ManagementScheme,
}

/// Whether the signature covers the body, i.e. whether the HTTP layer must read it (bounded)
/// before calling [`verify_management`].
pub fn body_is_signed(scheme: ManagementScheme, content_type: Option<&str>) -> bool {
    match (scheme, content_type) {
        (_, None) => false,
        (ManagementScheme::QBox, Some(ct)) => ct == FORM_CONTENT_TYPE,
        (ManagementScheme::Qiniu, Some(ct)) => !ct.is_empty() && ct != "application/octet-stream",
    }
}

/// What a `QBox` token signs: `<path>[?<query>]\n` and the body of a form request.
pub fn qbox_signing_data(
    raw_path: &str,
    raw_query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut data = Vec::with_capacity(raw_path.len() + raw_query.len() + body.len() + 2);
    data.extend_from_slice(raw_path.as_bytes());
    if !raw_query.is_empty() {
        data.push(b'?');
        data.extend_from_slice(raw_query.as_bytes());
    }
    data.push(b'\n');
    if body_is_signed(ManagementScheme::QBox, content_type) {
        data.extend_from_slice(body);
    }
    data
}

/// Go's canonical MIME header key: first letter and letters after `-` upper case, the rest
/// lower case (`x-qiniu-date` → `X-Qiniu-Date`).
pub fn canonical_mime_header_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// The `X-Qiniu-*` headers of a request in signing form: canonical names, sorted, first value
/// of each.
pub fn qiniu_headers(headers: &[(&str, &[u8])]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let canon = canonical_mime_header_key(name);
        if canon.len() > "X-Qiniu-".len() && canon.starts_with("X-Qiniu-") {
            if out.iter().any(|(n, _)| *n == canon) {
                continue;
            }
            let value = String::from_utf8_lossy(value).trim().to_owned();
            out.push((canon, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What a `Qiniu` token signs.
pub fn qiniu_signing_data(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    host: &str,
    content_type: Option<&str>,
    x_qiniu_headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut data = String::with_capacity(128);
    data.push_str(method);
    data.push(' ');
    data.push_str(raw_path);
    if !raw_query.is_empty() {
        data.push('?');
        data.push_str(raw_query);
    }
    data.push_str("\nHost: ");
    data.push_str(host);
    if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
        data.push_str("\nContent-Type: ");
        data.push_str(ct);
    }
    for (name, value) in x_qiniu_headers {
        data.push('\n');
        data.push_str(name);
        data.push_str(": ");
        data.push_str(value);
    }
    data.push_str("\n\n");
    let mut data = data.into_bytes();
    if body_is_signed(ManagementScheme::Qiniu, content_type) {
        data.extend_from_slice(body);
    }
    data
}

/// The `Authorization` value of a `QBox`-signed request.
pub fn sign_qbox(
    credentials: Credentials<'_>,
    raw_path: &str,
    raw_query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> String {
    let data = qbox_signing_data(raw_path, raw_query, content_type, body);
    format!(
        "QBox {}:{}",
        credentials.access_key,
        sign(credentials.secret_key, &data)
    )
}

/// The `Authorization` value of a `Qiniu`-signed request; `req.headers` must already hold
/// `Host`, `Content-Type` (if any) and `X-Qiniu-Date` (if used).
pub fn sign_qiniu(credentials: Credentials<'_>, req: &ManagementRequest<'_>) -> String {
    let data = qiniu_signing_data(
        req.method,
        req.raw_path,
        req.raw_query,
        req.header("host").unwrap_or(""),
        req.header("content-type"),
        &qiniu_headers(req.headers),
        req.body,
    );
    format!(
        "Qiniu {}:{}",
        credentials.access_key,
        sign(credentials.secret_key, &data)
    )
}

/// Verifies a management request signed with `QBox` or `Qiniu`. `lookup` maps an access key to
/// its secret key.
pub fn verify_management<F, S>(
    req: &ManagementRequest<'_>,
    lookup: F,
    now_unix: u64,
) -> Result<ManagementAuth, QiniuError>
where
    F: Fn(&str) -> Option<S>,
    S: AsRef<str>,
{
    let auth = req
        .header("authorization")
        .ok_or(QiniuError::TokenNotSpecified)?;
    let (scheme_word, token) = auth.split_once(' ').ok_or(QiniuError::BadToken)?;
    let scheme = match scheme_word {
        "QBox" => ManagementScheme::QBox,
        "Qiniu" => ManagementScheme::Qiniu,
        _ => return Err(QiniuError::BadToken),
    };
    let (access_key, encoded_sign) = split_ak_sign(token.trim()).ok_or(QiniuError::BadToken)?;
    let secret = lookup(access_key).ok_or(QiniuError::BadToken)?;
    let content_type = req.header("content-type");
    let data = match scheme {
        ManagementScheme::QBox => {
            qbox_signing_data(req.raw_path, req.raw_query, content_type, req.body)
        }
        ManagementScheme::Qiniu => {
            if let Some(date) = req.header("x-qiniu-date") {
                let t = UtcDateTime::parse_iso8601_basic(date).ok_or_else(|| {
                    QiniuError::InvalidArgument("invalid X-Qiniu-Date".to_owned())
                })?;
                if t.unix().abs_diff(now_unix) > MAX_QINIU_DATE_SKEW_SECS {
                    return Err(QiniuError::RequestTimeTooSkewed);
                }
            }
            qiniu_signing_data(
                req.method,
                req.raw_path,
                req.raw_query,
                req.header("host").unwrap_or(""),
                content_type,
                &qiniu_headers(req.headers),
                req.body,
            )
        }
    };
    if !sign_matches(secret.as_ref(), &data, encoded_sign) {
        return Err(QiniuError::BadToken);
    }
    Ok(ManagementAuth {
        access_key: access_key.to_owned(),
        scheme,
    })
}

#[cfg(test)]
mod tests;
