//! Fuzzes Qiniu credentials and put policies (`ember_storage::qiniu::token`, `qiniu::magic`).
//!
//! The first input byte picks a mode:
//!
//! - raw strings: `verify_upload_token`, `uptoken_from_authorization`, `verify_download_url`
//!   and `verify_management` on strings cut from the input (line format), with fixed keys:
//!   no panic, every error a Qiniu status.
//! - policy JSON: the input up to its first NUL is parsed as a `PutPolicy`; a parsed policy
//!   goes through its methods (below) and an upload-token round trip.
//! - structured policy: a `PutPolicy` built from the input, same checks.
//! - round trips: private download URLs (`sign_download_url`), `QBox` and `Qiniu` management
//!   signatures (`sign_qbox`, `sign_qiniu`) verify, and fail once a sign character changes;
//!   and `expand_return_body` on a generated JSON template gives valid JSON whose values are
//!   the variables' (checked against an independent model).
//!
//! Policy checks: the token from `PutPolicy::upload_token` verifies (to the same policy) unless
//! the bucket is empty, and fails with a changed sign; `check_key` accepts the scope's own key,
//! `resolve_key` only returns keys `check_key` accepts (the client's key unless a save key is
//! forced), `check_fsize`/`max_fsize`/`check_deadline` agree, and `expand_return_body` keeps a
//! valid JSON template valid JSON.
#![no_main]

use ember_storage::qiniu::magic::{expand_return_body, expand_save_key, MagicVars};
use ember_storage::qiniu::token::{
    body_is_signed, canonical_mime_header_key, sign_download_url, sign_qbox, sign_qiniu,
    uptoken_from_authorization, verify_download_url, verify_management, verify_upload_token,
    Credentials, DownloadRequest, ManagementRequest, ManagementScheme, PutPolicy,
    FORM_CONTENT_TYPE, MAX_QINIU_DATE_SKEW_SECS,
};
use ember_storage::qiniu::QiniuError;
use ember_storage::time::{UtcDateTime, MAX_UNIX};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const AK: &str = "MY_ACCESS_KEY";
const SK: &str = "MY_SECRET_KEY";
const AK2: &str = "ak:with:colons";
const NOW: u64 = 1_451_491_200;

fn lookup(ak: &str) -> Option<&'static str> {
    match ak {
        AK => Some(SK),
        AK2 => Some(""),
        _ => None,
    }
}

fn creds(second: bool) -> Credentials<'static> {
    if second {
        Credentials {
            access_key: AK2,
            secret_key: "",
        }
    } else {
        Credentials {
            access_key: AK,
            secret_key: SK,
        }
    }
}

fn check_error(e: &QiniuError) {
    let s = e.status();
    assert!((400..700).contains(&s), "{e:?}: status {s}");
    let _ = e.to_string();
}

type R<T> = libfuzzer_sys::arbitrary::Result<T>;

fn string(u: &mut Unstructured<'_>, max: usize) -> R<String> {
    let n = u.int_in_range(0..=max)?;
    let b = u.bytes(n.min(u.len()))?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn pick_or_string(u: &mut Unstructured<'_>, dict: &[&str], max: usize) -> R<String> {
    if u.ratio(1, 2)? {
        Ok((*u.choose(dict)?).to_owned())
    } else {
        string(u, max)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => raw(rest),
        1 => {
            let (json, tail) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let mut u = Unstructured::new(tail);
            match serde_json::from_slice::<PutPolicy>(json) {
                Ok(policy) => {
                    let _ = exercise_policy(&policy, &mut u, true);
                }
                Err(_) => {
                    // Still a returnBody / saveKey template.
                    let text = String::from_utf8_lossy(json);
                    let _ = check_templates(&text, &mut u);
                }
            }
        }
        2 => {
            let mut u = Unstructured::new(rest);
            if let Ok(policy) = structured_policy(&mut u) {
                let _ = exercise_policy(&policy, &mut u, false);
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let _ = match u.int_in_range(0..=3u8) {
                Ok(0) => download_round_trip(&mut u),
                Ok(1) => management_round_trip(&mut u),
                Ok(2) => generated_return_body(&mut u),
                _ => management_round_trip(&mut u).and_then(|_| download_round_trip(&mut u)),
            };
        }
    }
});

// ---------------------------------------------------------------------------------------------
// Raw strings
// ---------------------------------------------------------------------------------------------

fn raw(data: &[u8]) {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let now = [NOW, 0, u64::MAX, NOW + 899][usize::from(flags & 3)];
    let text_lossy = String::from_utf8_lossy(text);
    let mut lines = text_lossy.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let token = next();
    let authorization = next();
    let host = next();
    let dl_path = next();
    let dl_query = next();
    let method = next();
    let mut header_lines = Vec::new();
    loop {
        let l = next();
        if l.is_empty() || header_lines.len() >= 32 {
            break;
        }
        header_lines.push(match l.split_once(':') {
            Some((n, v)) => (n, v.as_bytes()),
            None => (l, &[][..]),
        });
    }
    let body: Vec<&str> = lines.collect();
    let body = body.join("\n");

    for t in [Some(token), uptoken_from_authorization(authorization)]
        .into_iter()
        .flatten()
    {
        match verify_upload_token(t, lookup, now) {
            Ok(ut) => {
                assert!(lookup(&ut.access_key).is_some());
                assert!(!ut.policy.bucket().is_empty());
                assert!(ut.policy.check_deadline(now).is_ok());
            }
            Err(e) => check_error(&e),
        }
    }
    if let Some(t) = uptoken_from_authorization(authorization) {
        assert_eq!(t, t.trim());
    }
    let scheme = if flags & 4 != 0 { "https" } else { "http" };
    match verify_download_url(
        &DownloadRequest {
            scheme,
            host,
            raw_path: dl_path,
            raw_query: dl_query,
        },
        lookup,
        now,
    ) {
        Ok(g) => {
            assert!(lookup(&g.access_key).is_some());
            assert!(now <= g.deadline);
        }
        Err(e) => check_error(&e),
    }
    let req = ManagementRequest {
        method,
        raw_path: dl_path,
        raw_query: dl_query,
        headers: &header_lines,
        body: body.as_bytes(),
    };
    match verify_management(&req, lookup, now) {
        Ok(m) => assert!(lookup(&m.access_key).is_some()),
        Err(e) => check_error(&e),
    }
    for (n, _) in &header_lines {
        let c = canonical_mime_header_key(n);
        assert_eq!(c.len(), n.len());
        assert!(c.eq_ignore_ascii_case(n));
    }
}

// ---------------------------------------------------------------------------------------------
// Put policies
// ---------------------------------------------------------------------------------------------

const MIMES: &[&str] = &[
    "image/jpeg",
    "image/png; charset=x",
    "text/plain",
    "application/json",
    "video/mp4",
    "",
    "*/*",
];
const MIME_LIMITS: &[&str] = &[
    "image/*",
    "image/*;video/mp4",
    "!application/json;text/plain",
    "!",
    ";;",
    "*",
    "!image/*",
];
const TEMPLATES: &[&str] = &[
    "$(etag)$(ext)",
    "${bucket}/$(year)/$(mon)/$(day)/$(hour)$(min)$(sec)-$(fname)",
    "$(x:album)/$(key)",
    "prefix/$(endUser)/$(persistentId)",
    "$(fsize)$(mimeType)$(imageInfo.width)",
    "$(",
    "${x:a}}",
    r#"{"key":$(key),"hash":"$(etag)","size":$(fsize),"x":$(x:a),"n":$(x:none),"u":"$(endUser)"}"#,
];

fn structured_policy(u: &mut Unstructured<'_>) -> R<PutPolicy> {
    let bucket = pick_or_string(u, &["media", "", "b"], 12)?;
    let scope = match u.int_in_range(0..=2)? {
        0 => bucket,
        _ => format!(
            "{bucket}:{}",
            pick_or_string(u, &["a/b.jpg", "", "photos/", ":"], 16)?
        ),
    };
    let mut p = PutPolicy::new(&scope, u.int_in_range(0..=i64::MAX as u64)?);
    let opt_int = |u: &mut Unstructured<'_>| -> R<Option<i64>> {
        Ok(match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            _ => Some(u.arbitrary()?),
        })
    };
    p.is_prefixal_scope = opt_int(u)?;
    p.insert_only = opt_int(u)?;
    p.fsize_min = opt_int(u)?;
    p.fsize_limit = opt_int(u)?;
    p.detect_mime = opt_int(u)?;
    p.file_type = opt_int(u)?;
    p.delete_after_days = opt_int(u)?;
    if u.arbitrary()? {
        p.save_key = Some(pick_or_string(u, TEMPLATES, 40)?);
    }
    p.force_save_key = u.arbitrary()?;
    if u.arbitrary()? {
        p.mime_limit = Some(pick_or_string(u, MIME_LIMITS, 30)?);
    }
    if u.arbitrary()? {
        p.return_body = Some(pick_or_string(u, TEMPLATES, 60)?);
    }
    if u.arbitrary()? {
        p.end_user = Some(string(u, 10)?);
    }
    if u.arbitrary()? {
        p.callback_body = Some(string(u, 20)?);
    }
    Ok(p)
}

/// The policy without `extra` (whose floats need not survive a JSON round trip bit for bit).
fn without_extra(p: &PutPolicy) -> PutPolicy {
    PutPolicy {
        extra: serde_json::Map::new(),
        ..p.clone()
    }
}

struct VarsOwned {
    key: String,
    etag: String,
    fsize: u64,
    mime: String,
    end_user: Option<String>,
    fname: Option<String>,
    persistent_id: Option<String>,
    upload_time: u64,
    custom: Vec<(String, String)>,
}

impl VarsOwned {
    fn new(u: &mut Unstructured<'_>) -> R<Self> {
        let opt = |u: &mut Unstructured<'_>, dict: &[&str]| -> R<Option<String>> {
            Ok(if u.arbitrary()? {
                Some(pick_or_string(u, dict, 16)?)
            } else {
                None
            })
        };
        let mut custom = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let name = format!("x:{}", pick_or_string(u, &["a", "album", "b"], 6)?);
            custom.push((name, string(u, 16)?));
        }
        Ok(VarsOwned {
            key: pick_or_string(u, &["a/b.jpg", "k\"q\\", ""], 16)?,
            etag: pick_or_string(u, &["Fto5o-5ea0sNMlW_75VgGJCv2AcJ"], 28)?,
            fsize: u.arbitrary()?,
            mime: pick_or_string(u, MIMES, 16)?,
            end_user: opt(u, &["user-7"])?,
            fname: opt(
                u,
                &["photo.JPG", "dir/a.b.c", "noext.", ".hidden", "a\\b.png"],
            )?,
            persistent_id: opt(u, &["z0.abc"])?,
            upload_time: if u.arbitrary()? { NOW } else { u.arbitrary()? },
            custom,
        })
    }
}

fn with_vars<T>(v: &VarsOwned, bucket: &str, f: impl FnOnce(&MagicVars<'_>) -> T) -> T {
    let custom: Vec<(&str, &str)> = v
        .custom
        .iter()
        .map(|(n, x)| (n.as_str(), x.as_str()))
        .collect();
    f(&MagicVars {
        bucket,
        key: &v.key,
        etag: &v.etag,
        fsize: v.fsize,
        mime_type: &v.mime,
        end_user: v.end_user.as_deref(),
        fname: v.fname.as_deref(),
        persistent_id: v.persistent_id.as_deref(),
        upload_time: v.upload_time,
        custom: &custom,
    })
}

fn check_templates(template: &str, u: &mut Unstructured<'_>) -> R<()> {
    let vars = VarsOwned::new(u)?;
    with_vars(&vars, "media", |mv| {
        let out = expand_return_body(template, mv);
        if serde_json::from_str::<Value>(template).is_ok() {
            assert!(
                serde_json::from_str::<Value>(&out).is_ok(),
                "valid JSON template {template:?} expanded to invalid JSON {out:?}"
            );
        }
        let _ = expand_save_key(template, mv);
    });
    Ok(())
}

fn exercise_policy(p: &PutPolicy, u: &mut Unstructured<'_>, from_json: bool) -> R<()> {
    let bucket = p.bucket().to_owned();
    let scope_key = p.scope_key();
    if p.is_prefixal() || p.allows_overwrite() {
        assert!(scope_key.is_some());
    }
    assert!(!(p.is_prefixal() && p.allows_overwrite()));
    if let Some(k) = scope_key {
        assert!(
            p.check_key(k).is_ok(),
            "the scope's own key {k:?} is refused"
        );
    }
    let key = pick_or_string(u, &["a/b.jpg", "photos/x", ""], 20)?;
    if let Err(e) = p.check_key(&key) {
        assert_eq!(e, QiniuError::KeyNotMatchScope);
        assert!(scope_key.is_some());
    }
    let now: u64 = u.arbitrary()?;
    assert_eq!(p.check_deadline(now).is_ok(), now <= p.deadline);
    let size: u64 = u.arbitrary()?;
    match p.check_fsize(size) {
        Ok(()) => assert!(p.max_fsize().is_none_or(|m| size <= m)),
        Err(e) => check_error(&e),
    }
    let mime = pick_or_string(u, MIMES, 24)?;
    match p.check_mime(&mime) {
        Ok(()) => {}
        Err(e) => {
            assert_eq!(e, QiniuError::MimeLimited);
            assert!(p.mime_limit.is_some());
        }
    }

    let vars = VarsOwned::new(u)?;
    let client_key = if u.arbitrary()? {
        Some(pick_or_string(u, &["a/b.jpg", "photos/x"], 20)?)
    } else {
        None
    };
    with_vars(&vars, &bucket, |mv| {
        match p.resolve_key(client_key.as_deref(), mv) {
            Ok(k) => {
                assert!(p.check_key(&k).is_ok());
                let forced = p.force_save_key == Some(true) && p.save_key.is_some();
                if let (Some(c), false) = (&client_key, forced) {
                    assert_eq!(&k, c);
                }
            }
            Err(e) => assert_eq!(e, QiniuError::KeyNotMatchScope),
        }
        for t in [&p.return_body, &p.save_key, &p.callback_body]
            .into_iter()
            .flatten()
        {
            let out = expand_return_body(t, mv);
            if serde_json::from_str::<Value>(t).is_ok() {
                assert!(
                    serde_json::from_str::<Value>(&out).is_ok(),
                    "valid JSON template {t:?} expanded to invalid JSON {out:?}"
                );
            }
            let _ = expand_save_key(t, mv);
        }
    });

    // Upload-token round trip.
    let second = u.arbitrary()?;
    let token = p.upload_token(creds(second));
    let now = u.int_in_range(0..=p.deadline)?;
    match verify_upload_token(&token, lookup, now) {
        Ok(t) => {
            assert!(!bucket.is_empty());
            assert_eq!(t.access_key, creds(second).access_key);
            if from_json {
                assert_eq!(without_extra(&t.policy), without_extra(p));
                assert!(t.policy.extra.keys().eq(p.extra.keys()));
            } else {
                assert_eq!(&t.policy, p);
            }
        }
        Err(e) => assert!(
            bucket.is_empty() && e == QiniuError::BadToken,
            "own upload token refused: {e:?} for {}",
            p.to_json()
        ),
    }
    // A changed sign character.
    let (head, policy) = token.rsplit_once(':').expect("AK:sign:policy");
    let (ak, sign) = head.rsplit_once(':').expect("AK:sign");
    let bad = format!("{ak}:{}:{policy}", flip_b64url(sign, u)?);
    assert_eq!(
        verify_upload_token(&bad, lookup, now).unwrap_err(),
        QiniuError::BadToken
    );
    Ok(())
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A base64url sign with one data character replaced by another base64url character.
fn flip_b64url(sign: &str, u: &mut Unstructured<'_>) -> R<String> {
    let data_len = sign.trim_end_matches('=').len();
    let idx = u.choose_index(data_len)?;
    let mut b = sign.as_bytes().to_vec();
    let cur = B64URL.iter().position(|&c| c == b[idx]).expect("base64url");
    b[idx] = B64URL[(cur + u.int_in_range(1..=63)?) % 64];
    Ok(String::from_utf8(b).expect("ascii"))
}

// ---------------------------------------------------------------------------------------------
// Download URLs and management requests
// ---------------------------------------------------------------------------------------------

fn download_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let second = u.arbitrary()?;
    let scheme = if u.arbitrary()? { "https" } else { "http" };
    let other_scheme = u.arbitrary::<bool>()?;
    // Host and path never hold a '?' (it starts the query).
    let host: String = string(u, 24)?.replace('?', "");
    let path: String = format!("/{}", string(u, 32)?.replace('?', ""));
    let query = if u.arbitrary()? {
        Some(pick_or_string(
            u,
            &["imageView2/1/w/100", "a=1&b=2", "e=5", ""],
            24,
        )?)
    } else {
        None
    };
    let deadline: u64 = u.arbitrary()?;
    let now = u.int_in_range(0..=deadline)?;
    let url = match &query {
        Some(q) => format!("{scheme}://{host}{path}?{q}"),
        None => format!("{scheme}://{host}{path}"),
    };
    let signed = sign_download_url(creds(second), &url, deadline);
    let prefix = format!("{scheme}://{host}{path}?");
    let raw_query = signed
        .strip_prefix(&prefix)
        .expect("signed URL extends the URL");
    let verify = |raw_query: &str| {
        let req = DownloadRequest {
            scheme: match (other_scheme, scheme) {
                (false, s) => s,
                (true, "https") => "http",
                (true, _) => "https",
            },
            host: &host,
            raw_path: &path,
            raw_query,
        };
        verify_download_url(&req, lookup, now)
    };
    let grant = verify(raw_query)
        .unwrap_or_else(|e| panic!("own download URL refused: {e:?} for {signed:?}"));
    assert_eq!(grant.access_key, creds(second).access_key);
    assert_eq!(grant.deadline, deadline);
    if deadline < u64::MAX {
        let late = DownloadRequest {
            scheme,
            host: &host,
            raw_path: &path,
            raw_query,
        };
        assert_eq!(
            verify_download_url(&late, lookup, deadline + 1).unwrap_err(),
            QiniuError::DownloadTokenExpired
        );
    }
    let (head, sign) = raw_query.rsplit_once(':').expect("token=AK:sign");
    let bad = format!("{head}:{}", flip_b64url(sign, u)?);
    assert_eq!(
        verify(&bad).unwrap_err(),
        QiniuError::DownloadTokenAuthFailed
    );
    Ok(())
}

const CONTENT_TYPES: &[&str] = &[
    FORM_CONTENT_TYPE,
    "application/octet-stream",
    "application/json",
    "",
    "text/plain; charset=utf-8",
];

fn management_round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let second = u.arbitrary()?;
    let qiniu = u.arbitrary::<bool>()?;
    let method = pick_or_string(u, &["POST", "GET"], 8)?;
    let raw_path = pick_or_string(u, &["/stat/bWVkaWE6YQ==", "/list"], 32)?;
    let raw_query = pick_or_string(u, &["bucket=media&limit=10", ""], 24)?;
    let host = string(u, 24)?;
    let ct = if u.arbitrary()? {
        Some(pick_or_string(u, CONTENT_TYPES, 24)?.trim().to_owned())
    } else {
        None
    };
    let body_len = u.int_in_range(0..=64)?;
    let body = u.bytes(body_len.min(u.len()))?.to_vec();
    let (t, now) = {
        let t = u.int_in_range(0..=MAX_UNIX)?;
        let skew = u.int_in_range(0..=2 * MAX_QINIU_DATE_SKEW_SECS)?;
        (t, (t + skew).saturating_sub(MAX_QINIU_DATE_SKEW_SECS))
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![("Host".to_owned(), host.into_bytes())];
    if let Some(ct) = &ct {
        headers.push(("Content-Type".to_owned(), ct.clone().into_bytes()));
    }
    if qiniu && u.arbitrary()? {
        headers.push((
            "X-Qiniu-Date".to_owned(),
            UtcDateTime::from_unix(t).iso8601_basic().into(),
        ));
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let name = if u.arbitrary()? {
            format!(
                "{}{}",
                u.choose(&["X-Qiniu-", "x-qiniu-", "X-QINIU-"])?,
                string(u, 8)?
            )
        } else {
            pick_or_string(u, &["X-Qiniu-", "x-qiniu-meta", "Accept"], 12)?
        };
        let canon = canonical_mime_header_key(&name);
        if ["Authorization", "Content-Type", "X-Qiniu-Date"].contains(&canon.as_str()) {
            continue;
        }
        let vlen = u.int_in_range(0..=24)?;
        headers.push((name, u.bytes(vlen.min(u.len()))?.to_vec()));
    }
    let scheme = if qiniu {
        ManagementScheme::Qiniu
    } else {
        ManagementScheme::QBox
    };
    let signed_body: &[u8] = if body_is_signed(scheme, ct.as_deref()) {
        &body
    } else {
        &[]
    };
    let view: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let unsigned_req = ManagementRequest {
        method: &method,
        raw_path: &raw_path,
        raw_query: &raw_query,
        headers: &view,
        body: signed_body,
    };
    let auth = if qiniu {
        sign_qiniu(creds(second), &unsigned_req)
    } else {
        sign_qbox(creds(second), &raw_path, &raw_query, ct.as_deref(), &body)
    };
    let verify = |auth: &str| {
        let mut h = view.clone();
        h.insert(0, ("Authorization", auth.as_bytes()));
        let req = ManagementRequest {
            headers: &h,
            ..unsigned_req
        };
        verify_management(&req, lookup, now)
    };
    let m = verify(&auth).unwrap_or_else(|e| panic!("own {scheme:?} signature refused: {e:?}"));
    assert_eq!(m.access_key, creds(second).access_key);
    assert_eq!(m.scheme, scheme);
    let (head, sign) = auth.rsplit_once(':').expect("AK:sign");
    let bad = format!("{head}:{}", flip_b64url(sign, u)?);
    assert_eq!(verify(&bad).unwrap_err(), QiniuError::BadToken);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// returnBody on a generated template
// ---------------------------------------------------------------------------------------------

const VAR_NAMES: &[&str] = &[
    "bucket",
    "key",
    "etag",
    "fsize",
    "mimeType",
    "endUser",
    "fname",
    "persistentId",
    "ext",
    "year",
    "mon",
    "day",
    "hour",
    "min",
    "sec",
    "x:a",
    "x:album",
    "x:none",
    "imageInfo.width",
    "exif.Model",
    "unknown",
];

enum Expected {
    Str(String),
    Num(u64),
    Absent,
}

/// What a variable evaluates to, written from the module documentation.
fn model(name: &str, v: &VarsOwned, bucket: &str, ext: &str) -> Expected {
    let t = UtcDateTime::from_unix(v.upload_time);
    let opt = |o: &Option<String>| o.clone().map_or(Expected::Absent, Expected::Str);
    match name {
        "bucket" => Expected::Str(bucket.to_owned()),
        "key" => Expected::Str(v.key.clone()),
        "etag" => Expected::Str(v.etag.clone()),
        "fsize" => Expected::Num(v.fsize),
        "mimeType" => Expected::Str(v.mime.clone()),
        "endUser" => opt(&v.end_user),
        "fname" => opt(&v.fname),
        "persistentId" => opt(&v.persistent_id),
        "ext" => Expected::Str(ext.to_owned()),
        "year" => Expected::Str(format!("{:04}", t.year)),
        "mon" => Expected::Str(format!("{:02}", t.month)),
        "day" => Expected::Str(format!("{:02}", t.day)),
        "hour" => Expected::Str(format!("{:02}", t.hour)),
        "min" => Expected::Str(format!("{:02}", t.minute)),
        "sec" => Expected::Str(format!("{:02}", t.second)),
        n if n.starts_with("x:") => v
            .custom
            .iter()
            .find(|(c, _)| c == n)
            .map_or(Expected::Absent, |(_, x)| Expected::Str(x.clone())),
        _ => Expected::Absent,
    }
}

fn json_escaped(s: &str) -> String {
    let q = serde_json::to_string(s).expect("a string serializes");
    q[1..q.len() - 1].to_owned()
}

fn generated_return_body(u: &mut Unstructured<'_>) -> R<()> {
    let vars = VarsOwned::new(u)?;
    let bucket = pick_or_string(u, &["media"], 10)?;
    let ext = with_vars(&vars, &bucket, |mv| mv.ext().into_owned());
    let mut template = String::from("{");
    let mut expected = serde_json::Map::new();
    for i in 0..u.int_in_range(1..=8)? {
        let name = *u.choose(VAR_NAMES)?;
        let var = if u.arbitrary()? {
            format!("$({name})")
        } else {
            format!("${{{name}}}")
        };
        if i > 0 {
            template.push(',');
        }
        template.push_str(&format!("\"f{i}\":"));
        let value = model(name, &vars, &bucket, &ext);
        let want = if u.arbitrary()? {
            // A bare variable: a JSON value.
            template.push_str(&var);
            match value {
                Expected::Str(s) => Value::String(s),
                Expected::Num(n) => Value::from(n),
                Expected::Absent => Value::Null,
            }
        } else {
            // Inside a string, between literal text (no '$', so no other variable).
            let before = string(u, 8)?.replace('$', "");
            let after = string(u, 8)?.replace('$', "");
            template.push_str(&format!(
                "\"{}{var}{}\"",
                json_escaped(&before),
                json_escaped(&after)
            ));
            let middle = match value {
                Expected::Str(s) => s,
                Expected::Num(n) => n.to_string(),
                Expected::Absent => String::new(),
            };
            Value::String(format!("{before}{middle}{after}"))
        };
        expected.insert(format!("f{i}"), want);
    }
    template.push('}');
    let out = with_vars(&vars, &bucket, |mv| expand_return_body(&template, mv));
    let got: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{template:?} expanded to invalid JSON {out:?}: {e}"));
    assert_eq!(got, Value::Object(expected), "template {template:?}");
    Ok(())
}
