//! SigV2 tests: AWS's published examples ("Signing and authenticating REST requests (AWS
//! signature version 2)", key AKIAIOSFODNN7EXAMPLE), requests and presigned URLs exactly as
//! botocore's `HmacV1Auth` / `HmacV1QueryAuth` produced them, malformed input of every kind,
//! and sign/verify round trips.

use super::*;
use crate::s3::sigv4::{Credential, PayloadMode};

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// Tue, 27 Mar 2007 19:36:42 +0000.
const T_GET: u64 = 1_175_024_202;
/// Tue, 14 Nov 2023 22:13:20 GMT, the clock of the botocore vectors.
const T_BOTO: u64 = 1_700_000_000;

fn creds(ak: &str) -> Option<Credential<&'static str>> {
    (ak == AK).then(|| Credential {
        secret_key: SK.to_owned(),
        permissions: "rw",
    })
}

fn config() -> VerifyConfig {
    VerifyConfig::new("us-east-1")
}

fn hdrs<'a>(h: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
    h.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

fn check(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    vhost: Option<&str>,
    now: u64,
) -> Result<Verified<&'static str>, AuthError> {
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let headers = hdrs(headers);
    let req = RequestView {
        method,
        raw_path,
        raw_query,
        headers: &headers,
    };
    match verify_request(&req, vhost, &config(), &creds, now)? {
        Authenticated::Signed(v) => Ok(v),
        Authenticated::Anonymous => panic!("unexpectedly anonymous"),
    }
}

fn sts(method: &str, target: &str, headers: &[(&str, &str)], vhost: Option<&str>) -> String {
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let headers = hdrs(headers);
    let req = RequestView {
        method,
        raw_path,
        raw_query,
        headers: &headers,
    };
    String::from_utf8(string_to_sign(&req, vhost, SignatureMode::Header)).unwrap()
}

fn auth(sig: &str) -> String {
    format!("AWS {AK}:{sig}")
}

// ---- Published examples ---------------------------------------------------------------------

#[test]
fn published_strings_to_sign() {
    // The string-to-sign / signature pairs of the AWS documentation (both editions of the
    // examples: the johnsmith and the awsexamplebucket1 buckets).
    let cases = [
        (
            "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/johnsmith/photos/puppy.jpg",
            "bWq2s1WEIj+Ydj0vQ697zp+IXMU=",
        ),
        (
            "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg",
            "qgk2+6Sv9/oM7G3qLEjTH1a1l1g=",
        ),
        (
            "PUT\n\nimage/jpeg\nTue, 27 Mar 2007 21:15:45 +0000\n/awsexamplebucket1/photos/puppy.jpg",
            "iqRzw+ileNPu1fhspnRs8nOjjIA=",
        ),
        (
            "GET\n\n\nTue, 27 Mar 2007 19:42:41 +0000\n/awsexamplebucket1/",
            "m0WP8eCtspQl5Ahe6L1SozdX9YA=",
        ),
        (
            "GET\n\n\nTue, 27 Mar 2007 19:44:46 +0000\n/awsexamplebucket1/?acl",
            "82ZHiFIjc+WbcwFKGUVEQspPn+0=",
        ),
        (
            "DELETE\n\n\nTue, 27 Mar 2007 21:20:26 +0000\n/johnsmith/photos/puppy.jpg",
            "lx3byBScXR6KzyMaifNkardMwNk=",
        ),
        (
            "GET\n\n\n1175139620\n/johnsmith/photos/puppy.jpg",
            "NpgCjnDzrM+WFzoENXmpNDUsSn8=",
        ),
    ];
    for (s, sig) in cases {
        assert_eq!(sign(SK, s.as_bytes()), sig, "{s:?}");
    }
}

#[test]
fn published_object_get_virtual_host() {
    let a = auth("bWq2s1WEIj+Ydj0vQ697zp+IXMU=");
    let h = [
        ("Host", "johnsmith.s3.amazonaws.com"),
        ("Date", "Tue, 27 Mar 2007 19:36:42 +0000"),
        ("Authorization", a.as_str()),
    ];
    assert_eq!(
        sts("GET", "/photos/puppy.jpg", &h, Some("johnsmith")),
        "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/johnsmith/photos/puppy.jpg"
    );
    let v = check("GET", "/photos/puppy.jpg", &h, Some("johnsmith"), T_GET).unwrap();
    assert_eq!(v.access_key, AK);
    assert_eq!(v.permissions, "rw");
    assert_eq!(v.method, AuthMethod::V2Header);
    assert_eq!(v.payload, PayloadMode::Unsigned);
    assert_eq!(v.time.unix(), T_GET);
    assert!(v.chunked_decoder().is_none());
    // The same request path-style signs the same resource.
    let v = check("GET", "/johnsmith/photos/puppy.jpg", &h, None, T_GET + 899).unwrap();
    assert_eq!(v.method, AuthMethod::V2Header);
    // Without the bucket the resource differs.
    assert_eq!(
        check("GET", "/photos/puppy.jpg", &h, None, T_GET).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
}

#[test]
fn published_put_list_acl_and_service() {
    let a = auth("MyyxeRY7whkBe+bq8fHCL/2kKUg=");
    let h = [
        ("Host", "s3.amazonaws.com"),
        ("Content-Type", "image/jpeg"),
        ("Content-Length", "94328"),
        ("Date", "Tue, 27 Mar 2007 21:15:45 +0000"),
        ("Authorization", a.as_str()),
    ];
    let t = parse_date("Tue, 27 Mar 2007 21:15:45 +0000").unwrap();
    check("PUT", "/johnsmith/photos/puppy.jpg", &h, None, t).unwrap();

    // Ordinary query parameters are not signed; the trailing slash is.
    let a = auth("htDYFYduRNen8P9ZfE/s9SuKy0U=");
    let h = [
        ("User-Agent", "Mozilla/5.0"),
        ("Host", "johnsmith.s3.amazonaws.com"),
        ("Date", "Tue, 27 Mar 2007 19:42:41 +0000"),
        ("Authorization", a.as_str()),
    ];
    let t = parse_date("Tue, 27 Mar 2007 19:42:41 +0000").unwrap();
    let target = "/?prefix=photos&max-keys=50&marker=puppy";
    check("GET", target, &h, Some("johnsmith"), t).unwrap();

    let a = auth("c2WLPFtWHVgbEmeEG93a4cG37dM=");
    let h = [
        ("Host", "johnsmith.s3.amazonaws.com"),
        ("Date", "Tue, 27 Mar 2007 19:44:46 +0000"),
        ("Authorization", a.as_str()),
    ];
    let t = parse_date("Tue, 27 Mar 2007 19:44:46 +0000").unwrap();
    check("GET", "/?acl", &h, Some("johnsmith"), t).unwrap();
    // `acl=` (an empty value) signs the same as `acl`.
    check("GET", "/?acl=", &h, Some("johnsmith"), t).unwrap();
    assert_eq!(
        check("GET", "/?versioning", &h, Some("johnsmith"), t).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );

    let a = auth("qGdzdERIC03wnaRNKh6OqZehG9s=");
    let h = [
        ("Host", "s3.amazonaws.com"),
        ("Date", "Wed, 28 Mar 2007 01:29:59 +0000"),
        ("Authorization", a.as_str()),
    ];
    let t = parse_date("Wed, 28 Mar 2007 01:29:59 +0000").unwrap();
    check("GET", "/", &h, None, t).unwrap();
}

#[test]
fn published_cname_upload_with_metadata() {
    let a = auth("ilyl83RwaSoYIEdixDQcA4OnAnc=");
    let h = [
        ("User-Agent", "curl/7.15.5"),
        ("Host", "static.johnsmith.net:8080"),
        ("Date", "Tue, 27 Mar 2007 21:06:08 +0000"),
        ("x-amz-acl", "public-read"),
        ("content-type", "application/x-download"),
        ("Content-MD5", "4gJE4saaMU4BqNR0kLY+lw=="),
        ("X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"),
        ("X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"),
        ("X-Amz-Meta-FileChecksum", "0x02661779"),
        ("X-Amz-Meta-ChecksumAlgorithm", "crc32"),
        ("Content-Disposition", "attachment; filename=database.dat"),
        ("Content-Encoding", "gzip"),
        ("Content-Length", "5913339"),
        ("Authorization", a.as_str()),
    ];
    assert_eq!(
        sts("PUT", "/db-backup.dat.gz", &h, Some("static.johnsmith.net")),
        "PUT\n4gJE4saaMU4BqNR0kLY+lw==\napplication/x-download\nTue, 27 Mar 2007 21:06:08 +0000\n\
         x-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\n\
         x-amz-meta-filechecksum:0x02661779\n\
         x-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n\
         /static.johnsmith.net/db-backup.dat.gz"
    );
    let t = parse_date("Tue, 27 Mar 2007 21:06:08 +0000").unwrap();
    check(
        "PUT",
        "/db-backup.dat.gz",
        &h,
        Some("static.johnsmith.net"),
        t,
    )
    .unwrap();
}

#[test]
fn published_unicode_key_is_signed_as_received() {
    let a = auth("DNEZGsoieTZ92F3bUfSPQcbGmlM=");
    let h = [
        ("Host", "s3.amazonaws.com"),
        ("Date", "Wed, 28 Mar 2007 01:49:49 +0000"),
        ("Authorization", a.as_str()),
    ];
    let t = parse_date("Wed, 28 Mar 2007 01:49:49 +0000").unwrap();
    // Mixed-case percent escapes are signed literally, not normalized.
    check(
        "GET",
        "/dictionary/fran%C3%A7ais/pr%c3%a9f%c3%a8re",
        &h,
        None,
        t,
    )
    .unwrap();
    assert_eq!(
        check(
            "GET",
            "/dictionary/fran%C3%A7ais/pr%C3%A9f%C3%A8re",
            &h,
            None,
            t
        )
        .unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
}

#[test]
fn x_amz_date_empties_the_date_element() {
    // The first edition of the DELETE example: `x-amz-date` is an amz header and the Date
    // element is empty (the Date header, if any, is ignored).
    let a = auth("R4dJ53KECjStyBO5iTBJZ4XVOaI=");
    let h = [
        ("User-Agent", "dotnet"),
        ("Host", "s3.amazonaws.com"),
        ("Date", "Tue, 27 Mar 2007 21:20:27 +0000"),
        ("x-amz-date", "Tue, 27 Mar 2007 21:20:26 +0000"),
        ("Authorization", a.as_str()),
    ];
    assert_eq!(
        sts("DELETE", "/johnsmith/photos/puppy.jpg", &h, None),
        "DELETE\n\n\n\nx-amz-date:Tue, 27 Mar 2007 21:20:26 +0000\n/johnsmith/photos/puppy.jpg"
    );
    let t = parse_date("Tue, 27 Mar 2007 21:20:26 +0000").unwrap();
    let v = check("DELETE", "/johnsmith/photos/puppy.jpg", &h, None, t).unwrap();
    assert_eq!(v.time.unix(), t);
    // The skew is measured on x-amz-date, not Date.
    let mut h2 = h;
    h2[2] = ("Date", "Mon, 01 Jan 2024 00:00:00 GMT");
    check("DELETE", "/johnsmith/photos/puppy.jpg", &h2, None, t).unwrap();
}

#[test]
fn published_query_string_auth() {
    let target = "/photos/puppy.jpg?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1175139620";
    // Date headers play no part in query auth.
    let h = [
        ("Host", "johnsmith.s3.amazonaws.com"),
        ("Date", "Mon, 26 Mar 2007 19:37:58 +0000"),
    ];
    let v = check("GET", target, &h, Some("johnsmith"), 1_175_139_620).unwrap();
    assert_eq!(
        v.method,
        AuthMethod::V2Presigned {
            expires_at: 1_175_139_620
        }
    );
    assert_eq!(v.payload, PayloadMode::Unsigned);
    // Long before Expires is fine (SigV2 has no maximum validity).
    check("GET", target, &h, Some("johnsmith"), 1_000_000_000).unwrap();
    assert_eq!(
        check("GET", target, &h, Some("johnsmith"), 1_175_139_621).unwrap_err(),
        AuthError::denied("Request has expired")
    );
    // Parameter order does not matter; a literal `+` in the signature is a `+`.
    let target = "/photos/puppy.jpg?Expires=1175139620&Signature=NpgCjnDzrM+WFzoENXmpNDUsSn8=&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE";
    check("GET", target, &h, Some("johnsmith"), 1_175_139_600).unwrap();
}

// ---- botocore vectors -----------------------------------------------------------------------

#[test]
fn botocore_header_auth() {
    // HmacV1Auth on POST ?uploads with a content type and x-amz-* headers (mixed case, padded).
    let a = auth("SmqJcrkpPdz2kwzQUXHUh5ItAAE=");
    let h = [
        ("Host", "127.0.0.1:9000"),
        ("Content-Type", "video/mp4"),
        ("x-amz-meta-Tag", " one "),
        ("X-Amz-Acl", "private"),
        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("Authorization", a.as_str()),
    ];
    assert_eq!(
        sts("POST", "/media/big%20file.bin?uploads", &h, None),
        "POST\n\nvideo/mp4\nTue, 14 Nov 2023 22:13:20 GMT\nx-amz-acl:private\nx-amz-meta-tag:one\n/media/big%20file.bin?uploads"
    );
    check("POST", "/media/big%20file.bin?uploads", &h, None, T_BOTO).unwrap();

    // UploadPart: two sub-resources sorted, the upload id decoded.
    let a = auth("5YoUdNVbhEECVCk/tk8Np5g3Nfg=");
    let h = [
        ("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("Authorization", a.as_str()),
    ];
    let target = "/media/big%20file.bin?partNumber=2&uploadId=abc%2Fdef";
    assert!(sts("PUT", target, &h, None)
        .ends_with("/media/big%20file.bin?partNumber=2&uploadId=abc/def"));
    check("PUT", target, &h, None, T_BOTO).unwrap();
    let reordered = "/media/big%20file.bin?uploadId=abc%2Fdef&partNumber=2";
    check("PUT", reordered, &h, None, T_BOTO).unwrap();
}

#[test]
fn botocore_bucket_operations_sign_a_trailing_slash() {
    // botocore signs `/<bucket>/` for bucket operations it sends as `/<bucket>`.
    let date = ("Date", "Tue, 14 Nov 2023 22:13:20 GMT");
    let a = auth("AgQa37vmiIltjobTARL8CbFP70I=");
    let h = [date, ("Authorization", a.as_str())];
    check("PUT", "/sigv2-bucket", &h, None, T_BOTO).unwrap();
    // Sent with the slash, it is signed as sent.
    check("PUT", "/sigv2-bucket/", &h, None, T_BOTO).unwrap();
    // Never for keys, nor for another bucket.
    assert_eq!(
        check("PUT", "/sigv2-bucket/k", &h, None, T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
    assert_eq!(
        check("PUT", "/sigv2-bucke", &h, None, T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );

    // DeleteObjects: `?delete` with botocore's default checksum headers.
    let a = auth("TFUPiaYVeczBZAVgGPCzpSHLFIM=");
    let h = [
        ("x-amz-checksum-crc32", "CEaAGw=="),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
        date,
        ("Authorization", a.as_str()),
    ];
    check("POST", "/media?delete", &h, None, T_BOTO).unwrap();
    assert_eq!(
        check("POST", "/media", &h, None, T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );

    // ListObjectsV2: its parameters are not sub-resources.
    let a = auth("Ee8WI3Lh3ncrtMoUaoLv2FzNeQU=");
    let h = [date, ("Authorization", a.as_str())];
    let target = "/media?list-type=2&prefix=p%2F&encoding-type=url";
    check("GET", target, &h, None, T_BOTO).unwrap();
    // Virtual-host style, the root path gives the same `/media/`.
    check("GET", "/?list-type=2", &h, Some("media"), T_BOTO).unwrap();
}

#[test]
fn botocore_presigned_urls() {
    let h = [("Host", "127.0.0.1:9000")];
    // generate_presigned_url("get_object", ResponseContentType=...), ExpiresIn=600.
    let get = "/media/a%20b/c~d%2Be.txt?response-content-type=text%2Fplain%3B%20charset%3Dutf-8&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=LbFXFVKCfOKMB22Smv9bvJ6v%2Bfo%3D&Expires=1700000600";
    check("GET", get, &h, None, T_BOTO).unwrap();
    assert_eq!(
        check("GET", get, &h, None, T_BOTO + 601).unwrap_err(),
        AuthError::denied("Request has expired")
    );
    assert_eq!(
        check("HEAD", get, &h, None, T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
    let tampered = get.replace("utf-8", "utf-16");
    assert_eq!(
        check("GET", &tampered, &h, None, T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );

    // put_object with ContentType and Metadata: botocore moves both into the query.
    let put = "/media/up/%C3%BC.bin?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=h2N1pmQZMcFvtH1xUwG6Xk8AgDU%3D&content-type=image%2Fpng&x-amz-meta-owner=ann&Expires=1700000600";
    check("PUT", put, &h, None, T_BOTO).unwrap();
    // Sending the same values as headers instead is equivalent ...
    let h2 = [
        ("Host", "127.0.0.1:9000"),
        ("Content-Type", "image/png"),
        ("x-amz-meta-owner", "ann"),
    ];
    check("PUT", put, &h2, None, T_BOTO).unwrap();
    // ... but a different content type or an extra x-amz header is not.
    for extra in [("Content-Type", "text/html"), ("x-amz-acl", "public-read")] {
        let h3 = [("Host", "127.0.0.1:9000"), extra];
        assert_eq!(
            check("PUT", put, &h3, None, T_BOTO).unwrap_err(),
            AuthError::SignatureDoesNotMatch,
            "{extra:?}"
        );
    }
    let headers = hdrs(&h);
    let (raw_path, raw_query) = put.split_once('?').unwrap();
    let view = RequestView {
        method: "PUT",
        raw_path,
        raw_query,
        headers: &headers,
    };
    assert_eq!(
        query_headers(&view),
        vec![
            ("content-type".to_owned(), b"image/png".to_vec()),
            ("x-amz-meta-owner".to_owned(), b"ann".to_vec()),
        ]
    );
    let headers = hdrs(&h2);
    let view = RequestView {
        headers: &headers,
        ..view
    };
    assert!(query_headers(&view).is_empty());

    // Virtual-host style with a versionId sub-resource.
    let h = [("Host", "media.s3.localtest:9000")];
    let vget = "/k.txt?versionId=null&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=RLwwmtjo7RVNIp8LVYkFF6WlpBs%3D&Expires=1700000600";
    check("GET", vget, &h, Some("media"), T_BOTO).unwrap();
    assert_eq!(
        check("GET", vget, &h, Some("other"), T_BOTO).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
}

// ---- Canonicalization -----------------------------------------------------------------------

#[test]
fn canonicalized_resource_details() {
    let r = |p: &str, q: &str, b: Option<&str>| {
        String::from_utf8(canonicalized_resource(p, q, b)).unwrap()
    };
    assert_eq!(r("", "", None), "/");
    assert_eq!(r("/", "", Some("b")), "/b/");
    assert_eq!(r("/k", "", Some("b")), "/b/k");
    assert_eq!(r("/b//a/./k%2B", "", None), "/b//a/./k%2B");
    assert_eq!(
        r(
            "/b/k",
            "versionId=3&acl&prefix=x&uploads=&list-type=2",
            None
        ),
        "/b/k?acl&uploads&versionId=3"
    );
    assert_eq!(
        r(
            "/b/k",
            "response-content-disposition=attachment%3B%20filename%3D%22a%20b.txt%22&response-cache-control=no-cache",
            None
        ),
        "/b/k?response-cache-control=no-cache&response-content-disposition=attachment; filename=\"a b.txt\""
    );
    // Names are case-sensitive; percent-encoded names still count; `+` is literal.
    assert_eq!(r("/b", "ACL&%61cl&tagging=a+b", None), "/b?acl&tagging=a+b");
    // Repeated sub-resources keep their order.
    assert_eq!(r("/b", "acl=2&acl=1", None), "/b?acl=2&acl=1");
    // Auth parameters are never part of the resource.
    assert_eq!(
        r("/b", "AWSAccessKeyId=a&Signature=s&Expires=1", None),
        "/b"
    );
    let mut sorted = SUB_RESOURCES.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), SUB_RESOURCES.len());
}

#[test]
fn amz_header_canonicalization() {
    let h = [
        ("X-AMZ-Meta-B", "  two  words "),
        ("x-amz-meta-a", "1"),
        ("x-amz-meta-a", "2"),
        ("x-amz-meta-fold", "line1\r\n   line2"),
        ("X-Other", "ignored"),
        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ];
    assert_eq!(
        sts("GET", "/b/k", &h, None),
        "GET\n\n\nTue, 14 Nov 2023 22:13:20 GMT\nx-amz-meta-a:1,2\nx-amz-meta-b:two  words\nx-amz-meta-fold:line1 line2\n/b/k"
    );
}

#[test]
fn date_formats() {
    let t = T_GET;
    for s in [
        "Tue, 27 Mar 2007 19:36:42 +0000",
        "Tue, 27 Mar 2007 19:36:42 GMT",
        "  Tue, 27 Mar 2007 19:36:42 UTC ",
        "27 Mar 2007 19:36:42 GMT",
        "Tue, 27 Mar 2007 21:36:42 +0200",
        "Tue, 27 Mar 2007 14:36:42 -0500",
        "Tuesday, 27-Mar-07 19:36:42 GMT",
        "Tue Mar 27 19:36:42 2007",
        "20070327T193642Z",
    ] {
        assert_eq!(parse_date(s), Some(t), "{s}");
    }
    assert_eq!(parse_date("Thu, 1 Jan 1970 00:00:09 GMT"), Some(9));
    for s in [
        "",
        "yesterday",
        "Tue, 27 Mar 2007 19:36:42 PST",
        "Tue, 27 Foo 2007 19:36:42 GMT",
        "Tue, 32 Mar 2007 19:36:42 GMT",
        "Tue, 27 Mar 2007 24:00:00 GMT",
        "Tue, 27 Mar 2007 19:36 GMT",
        "Tue, 27 Mar 2007 19:36:42 GMT extra",
        "Tue, 27 Mar 20070 19:36:42 GMT",
        "Thu, 1 Jan 1970 00:00:00 +0100",
        "Tue, 27 Mar 2007 19:36:42 +2400",
        "27-Mar-07-1 19:36:42 GMT",
    ] {
        assert_eq!(parse_date(s), None, "{s}");
    }
}

// ---- Errors ---------------------------------------------------------------------------------

fn header_err(authorization: &str, extra: &[(&str, &str)]) -> AuthError {
    let mut h = vec![
        ("Host", "johnsmith.s3.amazonaws.com"),
        ("Authorization", authorization),
    ];
    if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("date")) {
        h.push(("Date", "Tue, 27 Mar 2007 19:36:42 +0000"));
    }
    h.extend_from_slice(extra);
    check("GET", "/photos/puppy.jpg", &h, Some("johnsmith"), T_GET).unwrap_err()
}

#[test]
fn malformed_headers_and_signatures() {
    let malformed = AuthError::InvalidArgument(Cow::Borrowed(BAD_HEADER));
    for a in [
        "AWS",
        "AWS ",
        "AWS AKIAIOSFODNN7EXAMPLE",
        "AWS :sig",
        "AWS AKIAIOSFODNN7EXAMPLE:",
        "AWSAKIAIOSFODNN7EXAMPLE:bWq2s1WEIj+Ydj0vQ697zp+IXMU=",
    ] {
        let err = header_err(a, &[]);
        if a.starts_with("AWS ") || a == "AWS" {
            assert_eq!(err, malformed, "{a:?}");
        } else {
            assert!(matches!(err, AuthError::InvalidArgument(_)), "{a:?}");
        }
    }
    assert_eq!(
        header_err("AWS NOBODY:bWq2s1WEIj+Ydj0vQ697zp+IXMU=", &[]),
        AuthError::InvalidAccessKeyId
    );
    for sig in [
        "bWq2s1WEIj+Ydj0vQ697zp+IXMV=",
        "not base64!",
        "bWq2s1WEIj+Ydj0vQ697zp+IXMU",
        "AAAA",
        "bWq2s1WEIj+Ydj0vQ697zp+IXMUbWq2s1WEIj+Ydj0vQ697zp+IXMU=",
    ] {
        assert_eq!(
            header_err(&auth(sig), &[]),
            AuthError::SignatureDoesNotMatch,
            "{sig}"
        );
    }
    // Extra blanks around the parts are tolerated.
    let h = [
        (
            "Authorization",
            "AWS   AKIAIOSFODNN7EXAMPLE:bWq2s1WEIj+Ydj0vQ697zp+IXMU=  ",
        ),
        ("Date", "Tue, 27 Mar 2007 19:36:42 +0000"),
    ];
    check("GET", "/photos/puppy.jpg", &h, Some("johnsmith"), T_GET).unwrap();
}

#[test]
fn dates_and_skew() {
    let a = auth("bWq2s1WEIj+Ydj0vQ697zp+IXMU=");
    let h = |date: &'static str| vec![("Authorization", a.clone()), ("Date", date.to_owned())];
    let run = |h: Vec<(&str, String)>, now: u64| {
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check("GET", "/photos/puppy.jpg", &h, Some("johnsmith"), now)
    };
    let d = "Tue, 27 Mar 2007 19:36:42 +0000";
    run(h(d), T_GET - 900).unwrap();
    run(h(d), T_GET + 900).unwrap();
    for now in [T_GET - 901, T_GET + 901] {
        let err = run(h(d), now).unwrap_err();
        assert_eq!(
            err,
            AuthError::RequestTimeTooSkewed {
                request_time: "2007-03-27T19:36:42.000Z".to_owned(),
                server_time: UtcDateTime::from_unix(now).iso8601_extended(),
                max_allowed_skew_ms: 900_000,
            }
        );
        assert_eq!(err.status(), 403);
    }
    assert_eq!(
        run(h("garbage"), T_GET).unwrap_err(),
        AuthError::denied(NO_DATE)
    );
    assert_eq!(
        run(vec![("Authorization", a.clone())], T_GET).unwrap_err(),
        AuthError::denied(NO_DATE)
    );
    // An unparsable x-amz-date is not rescued by a valid Date.
    let mut bad = h(d);
    bad.push(("x-amz-date", "nonsense".to_owned()));
    assert_eq!(run(bad, T_GET).unwrap_err(), AuthError::denied(NO_DATE));
}

#[test]
fn malformed_query_auth() {
    let h = [("Host", "johnsmith.s3.amazonaws.com")];
    let q = |query: &str, now: u64| {
        check(
            "GET",
            &format!("/photos/puppy.jpg?{query}"),
            &h,
            Some("johnsmith"),
            now,
        )
    };
    let missing = AuthError::denied(MISSING_QUERY_PARAMS);
    for query in [
        "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE",
        "Signature=x",
        "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x",
        "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1",
        "Signature=x&Expires=1",
    ] {
        assert_eq!(q(query, 0).unwrap_err(), missing, "{query}");
    }
    for expires in ["", "-1", "1e9", "soon", "0x10", " 5"] {
        let err = q(
            &format!("AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires={expires}"),
            0,
        )
        .unwrap_err();
        assert!(
            matches!(&err, AuthError::AccessDenied(m) if m.starts_with("Invalid date")),
            "{expires:?}: {err:?}"
        );
    }
    // A huge Expires is far in the future (and then the signature decides).
    assert_eq!(
        q(
            "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=99999999999999999999999",
            T_GET
        )
        .unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
    assert_eq!(
        q("AWSAccessKeyId=&Signature=x&Expires=5", 0).unwrap_err(),
        AuthError::InvalidAccessKeyId
    );
    assert_eq!(
        q("AWSAccessKeyId=NOBODY&Signature=x&Expires=5", 0).unwrap_err(),
        AuthError::InvalidAccessKeyId
    );
    // Expiry is checked before the key and the signature.
    assert_eq!(
        q("AWSAccessKeyId=NOBODY&Signature=x&Expires=5", 6).unwrap_err(),
        AuthError::denied("Request has expired")
    );
}

#[test]
fn mixed_mechanisms_and_session_tokens() {
    let one = AuthError::InvalidArgument(Cow::Borrowed(ONE_MECHANISM));
    let a = auth("bWq2s1WEIj+Ydj0vQ697zp+IXMU=");
    let h = [
        ("Authorization", a.as_str()),
        ("Date", "Tue, 27 Mar 2007 19:36:42 +0000"),
    ];
    for query in [
        "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=5",
        "X-Amz-Signature=abc",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
    ] {
        let target = format!("/photos/puppy.jpg?{query}");
        assert_eq!(
            check("GET", &target, &h, Some("johnsmith"), T_GET).unwrap_err(),
            one,
            "{query}"
        );
    }
    let target = "/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=5&X-Amz-Credential=c";
    assert_eq!(check("GET", target, &[], None, 0).unwrap_err(), one);
    // A SigV4 Authorization header with SigV2 query parameters.
    let h4 = [("Authorization", "AWS4-HMAC-SHA256 Credential=x")];
    let target = "/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=5";
    assert_eq!(check("GET", target, &h4, None, 0).unwrap_err(), one);

    let mut ht = h.to_vec();
    ht.push(("X-Amz-Security-Token", "token"));
    assert_eq!(
        check("GET", "/photos/puppy.jpg", &ht, Some("johnsmith"), T_GET).unwrap_err(),
        AuthError::InvalidToken
    );
    let target =
        "/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=5&x-amz-security-token=t";
    assert_eq!(
        check("GET", target, &[], None, 0).unwrap_err(),
        AuthError::InvalidToken
    );
}

#[test]
fn detection_and_anonymous() {
    let detect = |authorization: Option<&str>, query: &str| {
        let headers: Vec<(&str, &[u8])> = authorization
            .map(|a| ("Authorization", a.as_bytes()))
            .into_iter()
            .collect();
        uses_sigv2(&RequestView {
            method: "GET",
            raw_path: "/b/k",
            raw_query: query,
            headers: &headers,
        })
    };
    assert!(detect(Some("AWS a:b"), ""));
    assert!(detect(Some("  AWS\ta:b"), ""));
    assert!(!detect(Some("AWS4-HMAC-SHA256 x"), ""));
    assert!(!detect(Some("AWSX a:b"), ""));
    assert!(!detect(Some("Bearer x"), ""));
    assert!(detect(None, "AWSAccessKeyId=a"));
    assert!(detect(None, "x=1&Signature=s"));
    assert!(detect(Some("AWS4-HMAC-SHA256 x"), "Signature=s"));
    assert!(!detect(None, "Expires=5&X-Amz-Signature=s"));
    assert!(!detect(None, ""));
    let req = RequestView {
        method: "GET",
        raw_path: "/b/k",
        raw_query: "prefix=a&Expires=5",
        headers: &[],
    };
    assert!(matches!(
        verify_request(&req, None, &config(), &creds, 0).unwrap(),
        Authenticated::Anonymous
    ));
    let headers: [(&str, &[u8]); 1] = [("Authorization", b"Bearer x")];
    let req = RequestView {
        headers: &headers,
        raw_query: "",
        ..req
    };
    assert!(matches!(
        verify_request(&req, None, &config(), &creds, 0).unwrap_err(),
        AuthError::InvalidArgument(_)
    ));
}

#[test]
fn declared_payloads() {
    let sign_and_check = |extra: &[(&str, &str)]| {
        let mut h: Vec<(&str, &str)> = vec![("Date", "Tue, 14 Nov 2023 22:13:20 GMT")];
        h.extend_from_slice(extra);
        let view_headers = hdrs(&h);
        let view = RequestView {
            method: "PUT",
            raw_path: "/media/k",
            raw_query: "",
            headers: &view_headers,
        };
        let a = authorization_header(
            &view,
            None,
            SigningCredentials {
                access_key: AK,
                secret_key: SK,
            },
        );
        h.push(("Authorization", &a));
        check("PUT", "/media/k", &h, None, T_BOTO)
    };
    assert_eq!(sign_and_check(&[]).unwrap().payload, PayloadMode::Unsigned);
    assert_eq!(
        sign_and_check(&[("x-amz-content-sha256", "UNSIGNED-PAYLOAD")])
            .unwrap()
            .payload,
        PayloadMode::Unsigned
    );
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(matches!(
        sign_and_check(&[("x-amz-content-sha256", empty)])
            .unwrap()
            .payload,
        PayloadMode::Sha256(_)
    ));
    let v = sign_and_check(&[
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "0"),
    ])
    .unwrap();
    assert_eq!(v.payload, PayloadMode::StreamingUnsignedTrailer);
    assert!(v.chunked_decoder().is_some());
    for mode in [
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    ] {
        assert!(matches!(
            sign_and_check(&[("x-amz-content-sha256", mode)]).unwrap_err(),
            AuthError::InvalidRequest(_)
        ));
    }
    assert!(matches!(
        sign_and_check(&[("x-amz-content-sha256", "nonsense")]).unwrap_err(),
        AuthError::InvalidArgument(_)
    ));
    assert!(matches!(
        sign_and_check(&[("Content-Encoding", "gzip, aws-chunked")]).unwrap_err(),
        AuthError::InvalidRequest(_)
    ));
    sign_and_check(&[("Content-Encoding", "gzip")]).unwrap();
}

// ---- Round trips ----------------------------------------------------------------------------

/// A tiny deterministic generator (xorshift) for the round trips.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &[
    "k",
    "photos/puppy.jpg",
    "a b/c~d+e.txt",
    "dir//x/./y",
    "ünïcödé/文件.bin",
    "100% sure?#.txt",
];
const METHODS: &[&str] = &["GET", "PUT", "HEAD", "DELETE", "POST"];
const QUERIES: &[&str] = &[
    "",
    "acl",
    "uploads",
    "partNumber=3&uploadId=u%2F1",
    "prefix=a&delimiter=%2F&list-type=2",
    "response-content-type=text%2Fplain&versionId=null",
    "delete",
    "tagging&x=1",
];

#[test]
fn sign_then_verify_round_trip_and_every_tamper_fails() {
    let mut rng = Rng(0x5EED_2A11_C0DE_0042);
    let date = "Tue, 14 Nov 2023 22:13:20 GMT";
    for i in 0..200 {
        let method = rng.pick(METHODS);
        let key = rng.pick(KEYS);
        let query = rng.pick(QUERIES);
        let vhost = i % 2 == 0;
        let path = if vhost {
            uri_encode(format!("/{key}").as_bytes(), false)
        } else {
            uri_encode(format!("/media/{key}").as_bytes(), false)
        };
        let bucket = vhost.then_some("media");
        let mut headers: Vec<(&str, String)> =
            vec![("Host", "127.0.0.1".to_owned()), ("Date", date.to_owned())];
        if rng.next().is_multiple_of(2) {
            headers.push((
                "Content-Type",
                rng.pick(&["text/plain", "a/b; c=d"]).to_owned(),
            ));
        }
        if rng.next().is_multiple_of(2) {
            headers.push(("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==".to_owned()));
        }
        if rng.next().is_multiple_of(2) {
            headers.push(("X-Amz-Meta-Color", "blue".to_owned()));
            headers.push(("x-amz-meta-color", "red".to_owned()));
        }
        if rng.next().is_multiple_of(3) {
            headers.push(("x-amz-date", date.to_owned()));
        }
        let view_headers: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let view = RequestView {
            method,
            raw_path: &path,
            raw_query: query,
            headers: &view_headers,
        };
        let authz = authorization_header(
            &view,
            bucket,
            SigningCredentials {
                access_key: AK,
                secret_key: SK,
            },
        );
        let mut signed = headers.clone();
        signed.push(("Authorization", authz));
        let run = |h: &[(&str, String)], method: &str, path: &str, query: &str, b: Option<&str>| {
            let hv: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
            let req = RequestView {
                method,
                raw_path: path,
                raw_query: query,
                headers: &hv,
            };
            verify_request(&req, b, &config(), &creds, T_BOTO)
        };
        let ok = run(&signed, method, &path, query, bucket).unwrap();
        assert!(matches!(ok, Authenticated::Signed(ref v) if v.method == AuthMethod::V2Header));

        let bad = AuthError::SignatureDoesNotMatch;
        let other_method = if method == "GET" { "PUT" } else { "GET" };
        assert_eq!(
            run(&signed, other_method, &path, query, bucket).unwrap_err(),
            bad
        );
        assert_eq!(
            run(&signed, method, &format!("{path}x"), query, bucket).unwrap_err(),
            bad
        );
        let other_bucket = if vhost { Some("other") } else { Some("media") };
        assert_eq!(
            run(&signed, method, &path, query, other_bucket).unwrap_err(),
            bad
        );
        if query != "acl" {
            let q = if query.is_empty() {
                "acl".to_owned()
            } else {
                format!("{query}&acl")
            };
            assert_eq!(run(&signed, method, &path, &q, bucket).unwrap_err(), bad);
        }
        // Unsigned parameters may change freely.
        let q = if query.is_empty() {
            "max-keys=5".to_owned()
        } else {
            format!("{query}&max-keys=5")
        };
        run(&signed, method, &path, &q, bucket).unwrap();
        for (name, value) in [
            ("Content-Type", "evil/type"),
            ("Content-MD5", "XrY7u+Ae7tCTyyK7j1rNww=="),
            ("x-amz-acl", "public-read"),
            ("X-Amz-Meta-Color", "green"),
        ] {
            let mut t = signed.clone();
            match t.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some(slot) => slot.1 = value.to_owned(),
                None => t.push((name, value.to_owned())),
            }
            assert_eq!(
                run(&t, method, &path, query, bucket).unwrap_err(),
                bad,
                "{name}"
            );
        }
        // Headers outside the string to sign may change.
        let mut t = signed.clone();
        t.push(("User-Agent", "x".to_owned()));
        t.push(("Content-Length", "5".to_owned()));
        run(&t, method, &path, query, bucket).unwrap();
    }
}

fn split_url(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").unwrap().1;
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    let (path, query) = target.split_once('?').unwrap();
    (host.to_owned(), path.to_owned(), query.to_owned())
}

#[test]
fn presign_then_verify_round_trip() {
    let mut rng = Rng(0xFEED_BEEF_1234_5678);
    for i in 0..100 {
        let method = rng.pick(&["GET", "PUT", "HEAD"]);
        let key = rng.pick(KEYS);
        let vhost = i % 2 == 1;
        let path = if vhost {
            format!("/{key}")
        } else {
            format!("/media/{key}")
        };
        let extra: &[(&str, &str)] = match i % 3 {
            0 => &[],
            1 => &[(
                "response-content-disposition",
                "attachment; filename=\"x y\"",
            )],
            _ => &[("content-type", "image/png"), ("x-amz-meta-owner", "ann")],
        };
        let url = presign_url(&PresignRequest {
            method,
            scheme: "http",
            host: "media.s3.localtest:9000",
            path: &path,
            virtual_host_bucket: vhost.then_some("media"),
            query: extra,
            credentials: SigningCredentials {
                access_key: AK,
                secret_key: SK,
            },
            expires_at: T_BOTO + 60,
        });
        let (host, raw_path, raw_query) = split_url(&url);
        let bucket = vhost.then_some("media");
        let h = [("Host", host.as_str())];
        let target = format!("{raw_path}?{raw_query}");
        let v = check(method, &target, &h, bucket, T_BOTO + 60).unwrap();
        assert_eq!(
            v.method,
            AuthMethod::V2Presigned {
                expires_at: T_BOTO + 60
            }
        );
        assert_eq!(
            check(method, &target, &h, bucket, T_BOTO + 61).unwrap_err(),
            AuthError::denied("Request has expired")
        );
        let tampered = target.replace("Expires=", "Expires=1");
        assert_eq!(
            check(method, &tampered, &h, bucket, T_BOTO).unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
        let other = if method == "PUT" { "GET" } else { "PUT" };
        assert_eq!(
            check(other, &target, &h, bucket, T_BOTO).unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x0BAD_F00D_DEAD_BEEF);
    let alphabet: &[u8] = b"AWS :=&%+/?-_.~aZ09\t\r\n\xff\xc3\xa9,";
    for _ in 0..3000 {
        let mut gen = |n: usize| -> Vec<u8> {
            let len = (rng.next() % n as u64) as usize;
            (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect()
        };
        let authz = gen(40);
        let date = gen(35);
        let amz = gen(20);
        let query = String::from_utf8_lossy(&gen(60)).into_owned();
        let path = String::from_utf8_lossy(&gen(30)).into_owned();
        let headers: Vec<(&str, &[u8])> = vec![
            ("Authorization", authz.as_slice()),
            ("Date", date.as_slice()),
            ("x-amz-meta-z", amz.as_slice()),
        ];
        let req = RequestView {
            method: "GET",
            raw_path: &path,
            raw_query: &query,
            headers: &headers,
        };
        let _ = uses_sigv2(&req);
        let _ = verify_request(&req, Some("b"), &config(), &creds, T_BOTO);
        let _ = parse_date(&String::from_utf8_lossy(&date));
        let no_auth = &headers[1..];
        let req = RequestView {
            headers: no_auth,
            raw_query: &format!("AWSAccessKeyId={AK}&Signature={query}&Expires={path}"),
            ..req
        };
        let _ = verify_request(&req, None, &config(), &creds, T_BOTO);
    }
}
