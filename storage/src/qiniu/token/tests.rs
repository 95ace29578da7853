//! Qiniu credential tests: the upload-token and management-token examples of Qiniu's security
//! documentation (keys MY_ACCESS_KEY / MY_SECRET_KEY), vectors computed once with an
//! independent Python implementation of the documented algorithms (the `Qiniu` signature and a
//! download URL), tampering, expiry, and the put-policy rules.

use super::*;

const AK: &str = "MY_ACCESS_KEY";
const SK: &str = "MY_SECRET_KEY";

fn creds() -> Credentials<'static> {
    Credentials {
        access_key: AK,
        secret_key: SK,
    }
}

fn lookup(ak: &str) -> Option<&'static str> {
    (ak == AK).then_some(SK)
}

const DOC_POLICY: &str = r#"{"scope":"my-bucket:sunflower.jpg","deadline":1451491200,"returnBody":"{\"name\":$(fname),\"size\":$(fsize),\"w\":$(imageInfo.width),\"h\":$(imageInfo.height),\"hash\":$(etag)}"}"#;
const DOC_ENCODED_POLICY: &str = "eyJzY29wZSI6Im15LWJ1Y2tldDpzdW5mbG93ZXIuanBnIiwiZGVhZGxpbmUiOjE0NTE0OTEyMDAsInJldHVybkJvZHkiOiJ7XCJuYW1lXCI6JChmbmFtZSksXCJzaXplXCI6JChmc2l6ZSksXCJ3XCI6JChpbWFnZUluZm8ud2lkdGgpLFwiaFwiOiQoaW1hZ2VJbmZvLmhlaWdodCksXCJoYXNoXCI6JChldGFnKX0ifQ==";

#[test]
fn documented_upload_token() {
    // Qiniu's example: sign = hmac_sha1(encodedPutPolicy, "MY_SECRET_KEY") =
    // c10e287f2b1e7f547b20a9ebce2aada26ab20ef2, encoded wQ4ofysef1R7IKnrziqtomqyDvI=.
    let token = upload_token_for_json(creds(), DOC_POLICY);
    assert_eq!(
        token,
        format!("MY_ACCESS_KEY:wQ4ofysef1R7IKnrziqtomqyDvI=:{DOC_ENCODED_POLICY}")
    );
    let mut policy = PutPolicy::new("my-bucket:sunflower.jpg", 1_451_491_200);
    policy.return_body = Some(
        r#"{"name":$(fname),"size":$(fsize),"w":$(imageInfo.width),"h":$(imageInfo.height),"hash":$(etag)}"#.to_owned(),
    );
    assert_eq!(policy.to_json(), DOC_POLICY);
    assert_eq!(policy.upload_token(creds()), token);

    let verified = verify_upload_token(&token, lookup, 1_451_491_200).unwrap();
    assert_eq!(verified.access_key, AK);
    assert_eq!(verified.policy, policy);
    assert_eq!(verified.policy.bucket(), "my-bucket");
    assert_eq!(verified.policy.scope_key(), Some("sunflower.jpg"));
    assert_eq!(
        verify_upload_token(&token, lookup, 1_451_491_201).unwrap_err(),
        QiniuError::ExpiredToken
    );
    assert_eq!(QiniuError::ExpiredToken.status(), 401);
}

#[test]
fn tampered_and_garbage_upload_tokens() {
    let token = upload_token_for_json(creds(), DOC_POLICY);
    let now = 1_400_000_000;
    verify_upload_token(&token, lookup, now).unwrap();
    // Flip every character of the token in turn: never accepted.
    for i in 0..token.len() {
        let mut t = token.clone().into_bytes();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        if t == token {
            continue;
        }
        let err = verify_upload_token(&t, lookup, now).unwrap_err();
        assert_eq!(err, QiniuError::BadToken, "position {i}");
    }
    // A policy re-encoded with a later deadline but the old sign.
    let forged_policy =
        urlsafe_b64_encode(DOC_POLICY.replace("1451491200", "1951491200").as_bytes());
    let forged = format!("MY_ACCESS_KEY:wQ4ofysef1R7IKnrziqtomqyDvI=:{forged_policy}");
    assert_eq!(
        verify_upload_token(&forged, lookup, now).unwrap_err(),
        QiniuError::BadToken
    );
    // Signed by another secret.
    let other = upload_token_for_json(
        Credentials {
            access_key: AK,
            secret_key: "other",
        },
        DOC_POLICY,
    );
    assert_eq!(
        verify_upload_token(&other, lookup, now).unwrap_err(),
        QiniuError::BadToken
    );
    // Unknown key, shapes, emptiness.
    let unknown = upload_token_for_json(
        Credentials {
            access_key: "NOPE",
            secret_key: SK,
        },
        DOC_POLICY,
    );
    assert_eq!(
        verify_upload_token(&unknown, lookup, now).unwrap_err(),
        QiniuError::BadToken
    );
    assert_eq!(
        verify_upload_token("", lookup, now).unwrap_err(),
        QiniuError::TokenNotSpecified
    );
    assert_eq!(
        verify_upload_token("   ", lookup, now).unwrap_err(),
        QiniuError::TokenNotSpecified
    );
    for bad in [
        "x",
        "a:b",
        ":b:c",
        "a::c",
        "a:b:",
        "MY_ACCESS_KEY:!!!:eyJ9",
        "::",
        "MY_ACCESS_KEY:wQ4ofysef1R7IKnrziqtomqyDvI=:%%%",
    ] {
        assert_eq!(
            verify_upload_token(bad, lookup, now).unwrap_err(),
            QiniuError::BadToken,
            "{bad}"
        );
    }
    let huge = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
    assert_eq!(
        verify_upload_token(&huge, lookup, now).unwrap_err(),
        QiniuError::BadToken
    );
    // Correctly signed but not a usable policy.
    for json in [
        "not json",
        "[]",
        r#"{"deadline":1451491200}"#,
        r#"{"scope":"b"}"#,
        r#"{"scope":"","deadline":1451491200}"#,
        r#"{"scope":":key","deadline":1451491200}"#,
        r#"{"scope":"b","deadline":-5}"#,
        r#"{"scope":"b","deadline":"soon"}"#,
        r#"{"scope":"b","deadline":1451491200,"fsizeLimit":"big"}"#,
        r#"{"scope":"b","deadline":1451491200,"insertOnly":[1]}"#,
        r#"{"scope":7,"deadline":1451491200}"#,
    ] {
        let t = upload_token_for_json(creds(), json);
        assert_eq!(
            verify_upload_token(&t, lookup, now).unwrap_err(),
            QiniuError::BadToken,
            "{json}"
        );
    }
}

#[test]
fn lenient_policy_fields_and_unknown_fields() {
    let json = r#"{"scope":"media:u/","deadline":"1451491200","isPrefixalScope":1,"insertOnly":true,"fsizeLimit":"1048576","fsizeMin":1.0,"forceSaveKey":1,"saveKey":"u/$(etag)","mimeLimit":"image/*","persistentOps":"avthumb/mp4","persistentWorkflowTemplateID":"wf","callbackUrl":"https://app.example.com/cb","callbackBody":"key=$(key)","endUser":null,"somethingNew":{"a":[1,2]}}"#;
    let token = upload_token_for_json(creds(), json);
    let p = verify_upload_token(&token, lookup, 0).unwrap().policy;
    assert_eq!(p.deadline, 1_451_491_200);
    assert!(p.is_prefixal());
    assert_eq!(p.insert_only, Some(1));
    assert_eq!(p.fsize_limit, Some(1_048_576));
    assert_eq!(p.fsize_min, Some(1));
    assert_eq!(p.force_save_key, Some(true));
    assert_eq!(p.persistent_ops.as_deref(), Some("avthumb/mp4"));
    assert_eq!(
        p.callback_url.as_deref(),
        Some("https://app.example.com/cb")
    );
    assert_eq!(p.callback_body.as_deref(), Some("key=$(key)"));
    assert_eq!(p.end_user, None);
    assert_eq!(p.extra["persistentWorkflowTemplateID"], "wf");
    assert_eq!(p.extra["somethingNew"]["a"][1], 2);
    // Unpadded base64 (some non-SDK clients) is accepted too.
    let small = r#"{"scope":"b","deadline":9}"#;
    let padded = urlsafe_b64_encode(small.as_bytes());
    let unpadded = padded.trim_end_matches('=');
    assert_ne!(unpadded, padded);
    let t = format!(
        "{AK}:{}:{unpadded}",
        sign(SK, unpadded.as_bytes()).trim_end_matches('=')
    );
    assert_eq!(
        verify_upload_token(&t, lookup, 9).unwrap().policy.bucket(),
        "b"
    );
    // A token in an UpToken header.
    assert_eq!(
        uptoken_from_authorization(&format!("UpToken {token}")),
        Some(token.as_str())
    );
    assert_eq!(
        uptoken_from_authorization(&format!("uptoken  {token} ")),
        Some(token.as_str())
    );
    assert_eq!(uptoken_from_authorization(&format!("QBox {token}")), None);
    assert_eq!(uptoken_from_authorization("UpToken"), None);
}

#[test]
fn scope_rules() {
    let bucket = PutPolicy::new("media", 10);
    bucket.check_key("any/key").unwrap();
    assert!(!bucket.allows_overwrite());

    let exact = PutPolicy::new("media:u/1/avatar.jpg", 10);
    exact.check_key("u/1/avatar.jpg").unwrap();
    assert_eq!(
        exact.check_key("u/1/avatar.png"),
        Err(QiniuError::KeyNotMatchScope)
    );
    assert_eq!(
        exact.check_key("u/1/avatar.jpg2"),
        Err(QiniuError::KeyNotMatchScope)
    );
    assert!(exact.allows_overwrite());
    let insert_only = PutPolicy {
        insert_only: Some(1),
        ..exact.clone()
    };
    assert!(!insert_only.allows_overwrite());

    let prefix = PutPolicy {
        is_prefixal_scope: Some(1),
        ..PutPolicy::new("media:u/1/", 10)
    };
    prefix.check_key("u/1/a.jpg").unwrap();
    prefix.check_key("u/1/").unwrap();
    assert_eq!(
        prefix.check_key("u/2/a.jpg"),
        Err(QiniuError::KeyNotMatchScope)
    );
    assert_eq!(prefix.check_key("u/1"), Err(QiniuError::KeyNotMatchScope));
    assert!(!prefix.allows_overwrite());
    // isPrefixalScope without a key in the scope means nothing.
    let odd = PutPolicy {
        is_prefixal_scope: Some(1),
        ..PutPolicy::new("media", 10)
    };
    assert!(!odd.is_prefixal());
    odd.check_key("x").unwrap();
    // A key may itself contain ':'.
    let colon = PutPolicy::new("media:a:b", 10);
    assert_eq!(colon.bucket(), "media");
    colon.check_key("a:b").unwrap();

    assert_eq!(QiniuError::KeyNotMatchScope.status(), 403);
    assert_eq!(PutPolicy::new("b", 10).check_deadline(10), Ok(()));
    assert_eq!(
        PutPolicy::new("b", 10).check_deadline(11),
        Err(QiniuError::ExpiredToken)
    );
}

#[test]
fn size_and_mime_limits() {
    let p = PutPolicy {
        fsize_limit: Some(100),
        fsize_min: Some(10),
        ..PutPolicy::new("b", 10)
    };
    p.check_fsize(10).unwrap();
    p.check_fsize(100).unwrap();
    assert_eq!(p.check_fsize(101), Err(QiniuError::FileTooLarge));
    assert_eq!(p.check_fsize(9), Err(QiniuError::FileTooSmall));
    assert_eq!(p.max_fsize(), Some(100));
    let negative = PutPolicy {
        fsize_limit: Some(-1),
        fsize_min: Some(-1),
        ..PutPolicy::new("b", 10)
    };
    negative.check_fsize(u64::MAX).unwrap();
    assert_eq!(QiniuError::FileTooLarge.status(), 413);

    let allowed = |limit: &str, mime: &str| {
        PutPolicy {
            mime_limit: Some(limit.to_owned()),
            ..PutPolicy::new("b", 10)
        }
        .check_mime(mime)
        .is_ok()
    };
    assert!(allowed("image/*", "image/png"));
    assert!(allowed("image/*", "IMAGE/JPEG"));
    assert!(!allowed("image/*", "video/mp4"));
    assert!(!allowed("image/*", "imagex/png"));
    assert!(allowed("image/jpeg;image/png", "image/png; charset=binary"));
    assert!(allowed("image/jpeg; image/png ;", "image/png"));
    assert!(!allowed("image/jpeg;image/png", "image/gif"));
    assert!(!allowed("!application/json;text/plain", "text/plain"));
    assert!(!allowed("!application/json;text/plain", "application/json"));
    assert!(allowed("!application/json;text/plain", "image/png"));
    assert!(!allowed("!image/*", "image/webp"));
    assert!(allowed("*/*", "anything/at-all"));
    assert!(allowed("", "x/y"));
    assert!(allowed("!", "x/y"));
    assert!(!allowed("image/png", ""));
    assert!(PutPolicy::new("b", 10).check_mime("whatever").is_ok());
    assert_eq!(
        PutPolicy {
            mime_limit: Some("image/*".into()),
            ..PutPolicy::new("b", 1)
        }
        .check_mime("text/html"),
        Err(QiniuError::MimeLimited)
    );
}

#[test]
fn key_resolution() {
    let vars = MagicVars {
        bucket: "media",
        etag: "FhashEtag",
        fname: Some("cat.png"),
        mime_type: "image/png",
        upload_time: 1_369_353_600,
        key: "ignored",
        ..Default::default()
    };
    let bucket = PutPolicy::new("media", 10);
    assert_eq!(bucket.resolve_key(Some("k"), &vars).unwrap(), "k");
    assert_eq!(bucket.resolve_key(None, &vars).unwrap(), "FhashEtag");
    let save = PutPolicy {
        save_key: Some("$(year)/$(etag)$(ext)".into()),
        ..bucket.clone()
    };
    assert_eq!(save.resolve_key(None, &vars).unwrap(), "2013/FhashEtag.png");
    assert_eq!(save.resolve_key(Some("client"), &vars).unwrap(), "client");
    let forced = PutPolicy {
        force_save_key: Some(true),
        ..save.clone()
    };
    assert_eq!(
        forced.resolve_key(Some("client"), &vars).unwrap(),
        "2013/FhashEtag.png"
    );
    let exact = PutPolicy::new("media:fixed.png", 10);
    assert_eq!(exact.resolve_key(None, &vars).unwrap(), "fixed.png");
    assert_eq!(
        exact.resolve_key(Some("other"), &vars),
        Err(QiniuError::KeyNotMatchScope)
    );
    let prefix = PutPolicy {
        is_prefixal_scope: Some(1),
        save_key: Some("u/7/$(etag)".into()),
        ..PutPolicy::new("media:u/7/", 10)
    };
    assert_eq!(prefix.resolve_key(None, &vars).unwrap(), "u/7/FhashEtag");
    assert_eq!(
        prefix.resolve_key(Some("u/8/x"), &vars),
        Err(QiniuError::KeyNotMatchScope)
    );
    let forced_outside = PutPolicy {
        force_save_key: Some(true),
        save_key: Some("elsewhere".into()),
        ..prefix
    };
    assert_eq!(
        forced_outside.resolve_key(Some("u/7/x"), &vars),
        Err(QiniuError::KeyNotMatchScope)
    );
    // $(key) inside saveKey expands to nothing rather than to a stale value.
    let self_ref = PutPolicy {
        save_key: Some("a$(key)b".into()),
        ..PutPolicy::new("media", 10)
    };
    assert_eq!(self_ref.resolve_key(None, &vars).unwrap(), "ab");
}

// ---- Download URLs ---------------------------------------------------------------------------

fn download(url: &str) -> DownloadRequest<'_> {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, path_query) = rest.split_at(rest.find('/').unwrap());
    let (raw_path, raw_query) = path_query.split_once('?').unwrap_or((path_query, ""));
    DownloadRequest {
        scheme,
        host,
        raw_path,
        raw_query,
    }
}

#[test]
fn download_url_vector_and_round_trip() {
    // Python: urlsafe_b64encode(hmac.new(b"MY_SECRET_KEY",
    //   b"http://media.example.com/a%20b.jpg?e=1451491200", sha1).digest())
    let url = sign_download_url(creds(), "http://media.example.com/a%20b.jpg", 1_451_491_200);
    assert_eq!(
        url,
        "http://media.example.com/a%20b.jpg?e=1451491200&token=MY_ACCESS_KEY:I7Eb29l5tCipQOo0qb4pz4cCKoE="
    );
    let grant = verify_download_url(&download(&url), lookup, 1_451_491_200).unwrap();
    assert_eq!(
        grant,
        DownloadGrant {
            access_key: AK.to_owned(),
            deadline: 1_451_491_200
        }
    );
    assert_eq!(
        verify_download_url(&download(&url), lookup, 1_451_491_201).unwrap_err(),
        QiniuError::DownloadTokenExpired
    );
    // Fetched over https although signed for http (TLS in front), and vice versa.
    let https = url.replacen("http://", "https://", 1);
    verify_download_url(&download(&https), lookup, 0).unwrap();
    let signed_https = sign_download_url(creds(), "https://media.example.com/k", 100);
    verify_download_url(
        &download(&signed_https.replacen("https", "http", 1)),
        lookup,
        0,
    )
    .unwrap();
    // An existing query (image processing) is part of what is signed.
    let with_query = sign_download_url(
        creds(),
        "https://media.example.com/p.jpg?imageView2/2/w/200",
        100,
    );
    assert!(with_query.contains("?imageView2/2/w/200&e=100&token="));
    verify_download_url(&download(&with_query), lookup, 0).unwrap();
    // A percent-encoded ':' or '=' in the token still verifies.
    let encoded = url
        .replace("MY_ACCESS_KEY:", "MY_ACCESS_KEY%3A")
        .replace("E=", "E%3D");
    verify_download_url(&download(&encoded), lookup, 0).unwrap();
}

#[test]
fn download_url_with_its_own_token_parameter() {
    // Found by the qiniu_token fuzz target: the URL's own query starts with `token=`.
    let c = Credentials {
        access_key: "MY_ACCESS_KEY",
        secret_key: "MY_SECRET_KEY",
    };
    let url = sign_download_url(c, "https://n/?token=", 0);
    let req = DownloadRequest {
        scheme: "https",
        host: "n",
        raw_path: "/",
        raw_query: url.split_once('?').unwrap().1,
    };
    let grant = verify_download_url(
        &req,
        |ak| (ak == "MY_ACCESS_KEY").then_some("MY_SECRET_KEY"),
        0,
    )
    .expect("a correctly signed URL verifies");
    assert_eq!(grant.deadline, 0);
}

#[test]
fn tampered_download_urls() {
    let url = sign_download_url(
        creds(),
        "https://media.example.com/u/1/photo.jpg",
        2_000_000_000,
    );
    let fail = |u: &str| verify_download_url(&download(u), lookup, 0).unwrap_err();
    assert_eq!(
        fail(&url.replace("photo.jpg", "photo.png")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&url.replace("media.example.com", "evil.example.com")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&url.replace("e=2000000000", "e=2000000001")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&url.replace("MY_ACCESS_KEY", "OTHER_KEY")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&format!("{url}&x=1")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&url.replace("e=2000000000&", "")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail(&url.replace("e=2000000000", "e=soon")),
        QiniuError::DownloadTokenAuthFailed
    );
    assert_eq!(
        fail("https://media.example.com/u/1/photo.jpg"),
        QiniuError::DownloadTokenNotSpecified
    );
    assert_eq!(
        fail("https://media.example.com/u/1/photo.jpg?e=1"),
        QiniuError::DownloadTokenNotSpecified
    );
    assert_eq!(
        fail("https://media.example.com/k?token=MY_ACCESS_KEY:abc"),
        QiniuError::DownloadTokenAuthFailed
    );
    for garbage in [
        "token=",
        "e=1&token=",
        "e=1&token=:",
        "e=1&token=MY_ACCESS_KEY:",
        "e=1&token=%ff%fe:x",
        "e=99999999999999999999999&token=MY_ACCESS_KEY:x",
    ] {
        let req = DownloadRequest {
            scheme: "http",
            host: "h",
            raw_path: "/k",
            raw_query: garbage,
        };
        assert_eq!(
            verify_download_url(&req, lookup, 0).unwrap_err().status(),
            401,
            "{garbage}"
        );
    }
}

// ---- Management signatures -------------------------------------------------------------------

#[test]
fn documented_qbox_management_token() {
    // Qiniu's example: url http://rs.qiniu.com/move/bmV3ZG9jczpmaW5kX21hbi50eHQ=/bmV3ZG9jczpmaW5kLm1hbi50eHQ=
    // signingStr = path + "\n", sign = 157b18874c0a1d83c4b0802074f0fd39f8e47843.
    let path = "/move/bmV3ZG9jczpmaW5kX21hbi50eHQ=/bmV3ZG9jczpmaW5kLm1hbi50eHQ=";
    let auth = sign_qbox(creds(), path, "", None, b"");
    assert_eq!(auth, "QBox MY_ACCESS_KEY:FXsYh0wKHYPEsIAgdPD9OfjkeEM=");
    let headers: Vec<(&str, &[u8])> = vec![
        ("host", b"rs.qiniu.com"),
        ("authorization", auth.as_bytes()),
    ];
    let req = ManagementRequest {
        method: "POST",
        raw_path: path,
        raw_query: "",
        headers: &headers,
        body: b"",
    };
    assert_eq!(
        verify_management(&req, lookup, 0).unwrap(),
        ManagementAuth {
            access_key: AK.to_owned(),
            scheme: ManagementScheme::QBox
        }
    );
    // Other path, query, unknown key, mangled header.
    let other = ManagementRequest {
        raw_path: "/delete/x",
        ..req
    };
    assert_eq!(
        verify_management(&other, lookup, 0).unwrap_err(),
        QiniuError::BadToken
    );
    let query = ManagementRequest {
        raw_query: "a=1",
        ..req
    };
    assert_eq!(
        verify_management(&query, lookup, 0).unwrap_err(),
        QiniuError::BadToken
    );
    for bad in [
        "QBox",
        "QBox ",
        "QBox MY_ACCESS_KEY",
        "QBox :x",
        "QBox OTHER:FXsYh0wKHYPEsIAgdPD9OfjkeEM=",
        "Bearer x",
        "qbox MY_ACCESS_KEY:FXsYh0wKHYPEsIAgdPD9OfjkeEM=",
    ] {
        let headers: Vec<(&str, &[u8])> = vec![("Authorization", bad.as_bytes())];
        let r = ManagementRequest {
            headers: &headers,
            ..req
        };
        assert_eq!(
            verify_management(&r, lookup, 0).unwrap_err(),
            QiniuError::BadToken,
            "{bad}"
        );
    }
    let none = ManagementRequest {
        headers: &[],
        ..req
    };
    assert_eq!(
        verify_management(&none, lookup, 0).unwrap_err(),
        QiniuError::TokenNotSpecified
    );
}

#[test]
fn qbox_signs_form_bodies_only() {
    let body = b"op=/delete/bWVkaWE6aw==";
    let form = sign_qbox(creds(), "/batch", "", Some(FORM_CONTENT_TYPE), body);
    let json = sign_qbox(creds(), "/batch", "", Some("application/json"), body);
    assert_eq!(json, sign_qbox(creds(), "/batch", "", None, b""));
    assert_ne!(form, json);
    let headers: Vec<(&str, &[u8])> = vec![
        ("Content-Type", FORM_CONTENT_TYPE.as_bytes()),
        ("Authorization", form.as_bytes()),
    ];
    let req = ManagementRequest {
        method: "POST",
        raw_path: "/batch",
        raw_query: "",
        headers: &headers,
        body,
    };
    verify_management(&req, lookup, 0).unwrap();
    let changed = ManagementRequest {
        body: b"op=/delete/bWVkaWE6bA==",
        ..req
    };
    assert_eq!(
        verify_management(&changed, lookup, 0).unwrap_err(),
        QiniuError::BadToken
    );
    assert!(body_is_signed(
        ManagementScheme::QBox,
        Some(FORM_CONTENT_TYPE)
    ));
    assert!(!body_is_signed(
        ManagementScheme::QBox,
        Some("application/json")
    ));
    assert!(body_is_signed(
        ManagementScheme::Qiniu,
        Some("application/json")
    ));
    assert!(!body_is_signed(
        ManagementScheme::Qiniu,
        Some("application/octet-stream")
    ));
    assert!(!body_is_signed(ManagementScheme::Qiniu, None));
}

#[test]
fn qiniu_signature_vectors() {
    // Python, following the documented rules:
    // data = "POST /move/a/b?x=1\nHost: rs.qiniu.com\nContent-Type: application/x-www-form-urlencoded\n"
    //        "X-Qiniu-Bbb: 2\nX-Qiniu-Date: 20240101T000000Z\n\nbody=1"
    let now = 1_704_067_200; // 2024-01-01T00:00:00Z
    let headers: Vec<(&str, &[u8])> = vec![
        ("host", b"rs.qiniu.com"),
        ("content-type", FORM_CONTENT_TYPE.as_bytes()),
        ("x-qiniu-date", b"20240101T000000Z"),
        ("X-QINIU-BBB", b"2"),
        ("x-qiniu-", b"ignored: empty key"),
        ("user-agent", b"QiniuPython/7"),
    ];
    let unsigned = ManagementRequest {
        method: "POST",
        raw_path: "/move/a/b",
        raw_query: "x=1",
        headers: &headers,
        body: b"body=1",
    };
    let auth = sign_qiniu(creds(), &unsigned);
    assert_eq!(auth, "Qiniu MY_ACCESS_KEY:RYj0wrWBq-edw5TDa0MIFcRaJ0A=");
    let mut all = headers.clone();
    all.push(("Authorization", auth.as_bytes()));
    let req = ManagementRequest {
        headers: &all,
        ..unsigned
    };
    assert_eq!(
        verify_management(&req, lookup, now).unwrap().scheme,
        ManagementScheme::Qiniu
    );
    verify_management(&req, lookup, now + 900).unwrap();
    assert_eq!(
        verify_management(&req, lookup, now + 901).unwrap_err(),
        QiniuError::RequestTimeTooSkewed
    );
    assert_eq!(
        verify_management(&req, lookup, now - 901).unwrap_err(),
        QiniuError::RequestTimeTooSkewed
    );
    // Tampering with the body, an X-Qiniu header, the host or the method.
    assert_eq!(
        verify_management(
            &ManagementRequest {
                body: b"body=2",
                ..req
            },
            lookup,
            now
        )
        .unwrap_err(),
        QiniuError::BadToken
    );
    assert_eq!(
        verify_management(
            &ManagementRequest {
                method: "PUT",
                ..req
            },
            lookup,
            now
        )
        .unwrap_err(),
        QiniuError::BadToken
    );
    let mut changed = all.clone();
    changed[3].1 = b"3";
    assert_eq!(
        verify_management(
            &ManagementRequest {
                headers: &changed,
                ..req
            },
            lookup,
            now
        )
        .unwrap_err(),
        QiniuError::BadToken
    );
    changed = all.clone();
    changed[0].1 = b"rs.example.com";
    assert_eq!(
        verify_management(
            &ManagementRequest {
                headers: &changed,
                ..req
            },
            lookup,
            now
        )
        .unwrap_err(),
        QiniuError::BadToken
    );
    // A malformed X-Qiniu-Date.
    changed = all.clone();
    changed[2].1 = b"2024-01-01";
    assert_eq!(
        verify_management(
            &ManagementRequest {
                headers: &changed,
                ..req
            },
            lookup,
            now
        )
        .unwrap_err()
        .status(),
        400
    );

    // data = "GET /stat/abc\nHost: rs.qiniu.com\n\n": no Content-Type, no X-Qiniu-*, no body.
    let headers: Vec<(&str, &[u8])> = vec![("Host", b"rs.qiniu.com")];
    let stat = ManagementRequest {
        method: "GET",
        raw_path: "/stat/abc",
        raw_query: "",
        headers: &headers,
        body: b"",
    };
    assert_eq!(
        sign_qiniu(creds(), &stat),
        "Qiniu MY_ACCESS_KEY:6LIt_7G3YHVcO8SvNDuGjhcNnb4="
    );
    // Without X-Qiniu-Date there is no time check (SDKs can disable it).
    let auth = sign_qiniu(creds(), &stat);
    let headers: Vec<(&str, &[u8])> = vec![
        ("Host", b"rs.qiniu.com"),
        ("Authorization", auth.as_bytes()),
    ];
    verify_management(
        &ManagementRequest {
            headers: &headers,
            ..stat
        },
        lookup,
        u64::MAX,
    )
    .unwrap();
    // An octet-stream body is not signed.
    let headers: Vec<(&str, &[u8])> = vec![
        ("Host", b"h"),
        ("Content-Type", b"application/octet-stream"),
    ];
    let a = sign_qiniu(
        creds(),
        &ManagementRequest {
            headers: &headers,
            body: b"one",
            ..stat
        },
    );
    let b = sign_qiniu(
        creds(),
        &ManagementRequest {
            headers: &headers,
            body: b"two",
            ..stat
        },
    );
    assert_eq!(a, b);
}

#[test]
fn canonical_header_keys() {
    assert_eq!(canonical_mime_header_key("x-qiniu-date"), "X-Qiniu-Date");
    assert_eq!(
        canonical_mime_header_key("X-QINIU-META-ABC"),
        "X-Qiniu-Meta-Abc"
    );
    assert_eq!(canonical_mime_header_key(""), "");
    assert_eq!(canonical_mime_header_key("-a--b"), "-A--B");
    let h: Vec<(&str, &[u8])> = vec![
        ("x-qiniu-b", b"1"),
        ("X-Qiniu-A", b" 2 "),
        ("x-qiniu-b", b"dup"),
        ("x-qiniu", b"no"),
    ];
    assert_eq!(
        qiniu_headers(&h),
        vec![
            ("X-Qiniu-A".to_owned(), "2".to_owned()),
            ("X-Qiniu-B".to_owned(), "1".to_owned())
        ]
    );
}
