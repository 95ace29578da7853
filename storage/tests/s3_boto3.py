"""Drives Ember's S3 API with boto3, the AWS SDK for Python.

Started by storage/tests/s3_boto3.rs, which runs the server and passes it in the environment:
EMBER_S3 (http://127.0.0.1:<port>), S3_REGION, S3_AK / S3_SK (read-write), S3_RO_AK /
S3_RO_SK (read-only), S3_VHOST (virtual-host suffix; every `*.<suffix>` name resolves to
127.0.0.1 inside this script).

Three kinds of client take part: boto3 with its defaults (SigV4 requests; `generate_presigned_url`
with a custom endpoint and no signature_version gives SigV2 query URLs), boto3 with
`signature_version="s3"` (SigV2 `Authorization: AWS ...` on every request) and presigned URLs
fetched with urllib (SigV2 and SigV4, GET and PUT, CORS preflights).

Every check runs even when an earlier one failed; the script prints one line per check and
exits non-zero if any failed.
"""

import hashlib
import os
import socket
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

EP = os.environ["EMBER_S3"]
REGION = os.environ["S3_REGION"]
AK = os.environ["S3_AK"]
SK = os.environ["S3_SK"]
RO_AK = os.environ["S3_RO_AK"]
RO_SK = os.environ["S3_RO_SK"]
VHOST = os.environ["S3_VHOST"]
PORT = urllib.parse.urlsplit(EP).port

BUCKET = "media"
V2_BUCKET = "sigv2-bucket"
MIB = 1024 * 1024
ORIGIN = "https://app.example.com"

# `<bucket>.<VHOST>` resolves to the server (virtual-host-style URLs).
_getaddrinfo = socket.getaddrinfo


def _loopback_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host == VHOST or host.endswith("." + VHOST)):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_getaddrinfo

# No proxies for urllib, whatever the environment says.
urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))


def client(ak=AK, sk=SK, endpoint=EP, **config):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ak,
        aws_secret_access_key=sk,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            proxies={},
            **config,
        ),
    )


s3 = client()  # boto3's defaults
v2 = client(signature_version="s3")  # SigV2 header auth on every request
v4 = client(signature_version="s3v4")

RESULTS = []


def check(name):
    def wrap(fn):
        try:
            fn()
            RESULTS.append((name, True))
            print("ok   %s" % name, flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            RESULTS.append((name, False))
            print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
        return fn

    return wrap


def http(method, url, data=None, headers=None):
    """One request with urllib: (status, headers, body), also for error statuses."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def error_code(body):
    text = body.decode("utf-8", "replace")
    start = text.find("<Code>")
    end = text.find("</Code>")
    return text[start + 6:end] if start >= 0 and end > start else text


def client_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e
    raise AssertionError("no ClientError from %s" % fn.__name__)


def eq(got, want, what=""):
    assert got == want, "%s: got %r, want %r" % (what, got, want)


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def is_sigv2_url(url):
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return "AWSAccessKeyId" in q and "Signature" in q and "Expires" in q


print("boto3 %s, botocore %s" % (boto3.__version__, botocore.__version__), flush=True)


@check("create buckets (SigV4 and SigV2 header auth)")
def _():
    s3.create_bucket(Bucket=BUCKET)
    v2.create_bucket(Bucket=V2_BUCKET)
    names = {b["Name"] for b in v2.list_buckets()["Buckets"]}
    assert {BUCKET, V2_BUCKET} <= names, names
    v2.head_bucket(Bucket=BUCKET)


@check("put/get with metadata (SigV4)")
def _():
    body = b"hello from boto3\n"
    put = s3.put_object(Bucket=BUCKET, Key="meta/hello.txt", Body=body,
                        ContentType="text/plain; charset=utf-8", CacheControl="no-cache",
                        Metadata={"owner": "ann", "note": "two words"})
    eq(put["ETag"], '"%s"' % md5_hex(body), "etag")
    got = s3.get_object(Bucket=BUCKET, Key="meta/hello.txt")
    eq(got["Body"].read(), body, "body")
    eq(got["ContentType"], "text/plain; charset=utf-8", "content type")
    eq(got["CacheControl"], "no-cache", "cache control")
    eq(got["Metadata"], {"owner": "ann", "note": "two words"}, "metadata")


@check("put/get with metadata (SigV2 header auth), read back by either client")
def _():
    key = "v2/ünï code+x~(1).txt"
    body = b"signed with HMAC-SHA1" * 100
    put = v2.put_object(Bucket=V2_BUCKET, Key=key, Body=body, ContentType="text/x-v2",
                        Metadata={"sig": "v2"}, ACL="private")
    eq(put["ETag"], '"%s"' % md5_hex(body), "etag")
    for c in (v2, s3):
        got = c.get_object(Bucket=V2_BUCKET, Key=key)
        eq(got["Body"].read(), body, "body")
        eq(got["Metadata"], {"sig": "v2"}, "metadata")
        eq(got["ContentType"], "text/x-v2", "content type")
    head = v2.head_object(Bucket=V2_BUCKET, Key=key)
    eq(head["ContentLength"], len(body), "length")
    got = v2.get_object(Bucket=V2_BUCKET, Key=key, Range="bytes=0-5",
                        ResponseContentType="application/x-override")
    eq(got["Body"].read(), body[:6], "range")
    eq(got["ContentType"], "application/x-override", "override")


def upload_and_compare(c, bucket, key, size, config=None):
    data = os.urandom(size)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
        path = f.name
    try:
        kwargs = {"Config": config} if config else {}
        c.upload_file(path, bucket, key, **kwargs)
    finally:
        os.unlink(path)
    head = c.head_object(Bucket=bucket, Key=key)
    eq(head["ContentLength"], size, "size")
    got = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "content differs"
    return head


@check("upload_file 12 MiB: multipart, boto3's default checksums (SigV4)")
def _():
    head = upload_and_compare(s3, BUCKET, "big/12m.bin", 12 * MIB)
    # boto3's default 8 MiB threshold and chunk size: two parts.
    assert head["ETag"].endswith('-2"'), head["ETag"]


@check("upload_file 12 MiB: multipart in 5 MiB parts (SigV2 header auth)")
def _():
    cfg = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    head = upload_and_compare(v2, V2_BUCKET, "big/12m-v2.bin", 12 * MIB, cfg)
    assert head["ETag"].endswith('-3"'), head["ETag"]


@check("list_objects_v2 paginator (SigV4 and SigV2)")
def _():
    keys = ["list/k%02d" % i for i in range(7)] + ["list/sub/a", "list/sub/b"]
    for k in keys:
        s3.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    for c in (s3, v2):
        pages = list(c.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="list/", PaginationConfig={"PageSize": 3}))
        got = [o["Key"] for p in pages for o in p.get("Contents", [])]
        eq(got, sorted(keys), "keys")
        eq(len(pages), 3, "pages")
        pages = list(c.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="list/", Delimiter="/", PaginationConfig={"PageSize": 4}))
        prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        eq(prefixes, ["list/sub/"], "common prefixes")


@check("presigned GET with boto3's defaults (SigV2 for a custom endpoint), urllib")
def _():
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                          "Key": "meta/hello.txt"})
    print("     default presigned URL is %s" % ("SigV2" if is_sigv2_url(url) else "SigV4"))
    assert is_sigv2_url(url), url
    status, headers, body = http("GET", url)
    eq(status, 200, "status")
    eq(body, b"hello from boto3\n", "body")
    eq(headers["x-amz-meta-owner"], "ann", "metadata header")
    # Response overrides are signed sub-resources.
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": BUCKET, "Key": "meta/hello.txt",
        "ResponseContentType": "application/octet-stream",
        "ResponseContentDisposition": 'attachment; filename="hello world.txt"'})
    status, headers, body = http("GET", url)
    eq(status, 200, "status")
    eq(headers["Content-Type"], "application/octet-stream", "content type")
    eq(headers["Content-Disposition"], 'attachment; filename="hello world.txt"', "disposition")
    status, _, _ = http("HEAD", url)
    eq(status, 403, "HEAD with a GET signature")


@check("presigned GET with signature_version='s3' (path and virtual-host style)")
def _():
    key = "v2/ünï code+x~(1).txt"
    url = v2.generate_presigned_url("get_object", Params={"Bucket": V2_BUCKET, "Key": key},
                                    ExpiresIn=120)
    assert is_sigv2_url(url), url
    status, _, body = http("GET", url)
    eq(status, 200, "status %s" % body[:300])
    vh = client(endpoint="http://%s:%d" % (VHOST, PORT), signature_version="s3",
                s3={"addressing_style": "virtual"})
    url = vh.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                          "Key": "meta/hello.txt"})
    assert url.startswith("http://%s.%s:%d/meta/hello.txt?" % (BUCKET, VHOST, PORT)), url
    status, _, body = http("GET", url)
    eq(status, 200, "status %s" % body[:300])
    eq(body, b"hello from boto3\n", "body")


@check("presigned GET with signature_version='s3v4', urllib")
def _():
    url = v4.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                          "Key": "meta/hello.txt"})
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url, url
    status, _, body = http("GET", url)
    eq(status, 200, "status")
    eq(body, b"hello from boto3\n", "body")


@check("presigned PUT (SigV2 defaults: content type and metadata in the query), urllib")
def _():
    data = b"\x89PNG uploaded through a presigned URL"
    url = s3.generate_presigned_url("put_object", Params={
        "Bucket": BUCKET, "Key": "presigned/v2.png", "ContentType": "image/png",
        "Metadata": {"owner": "bob"}}, ExpiresIn=300)
    assert is_sigv2_url(url), url
    status, _, body = http("PUT", url, data, {"Content-Type": "text/html"})
    eq((status, error_code(body)), (403, "SignatureDoesNotMatch"), "other content type")
    status, headers, body = http("PUT", url, data, {"Content-Type": "image/png"})
    eq(status, 200, "status %s" % body[:300])
    eq(headers["ETag"], '"%s"' % md5_hex(data), "etag")
    head = s3.head_object(Bucket=BUCKET, Key="presigned/v2.png")
    eq(head["ContentType"], "image/png", "content type")
    eq(head["Metadata"], {"owner": "bob"}, "metadata from the query")
    eq(head["ContentLength"], len(data), "length")


@check("presigned PUT with signature_version='s3v4', urllib")
def _():
    data = b"v4 presigned body"
    url = v4.generate_presigned_url("put_object", Params={
        "Bucket": BUCKET, "Key": "presigned/v4.txt", "ContentType": "text/plain"})
    assert "X-Amz-Signature=" in url, url
    status, _, body = http("PUT", url, data, {"Content-Type": "text/plain"})
    eq(status, 200, "status %s" % body[:300])
    eq(s3.get_object(Bucket=BUCKET, Key="presigned/v4.txt")["Body"].read(), data, "body")


@check("copy_object (SigV4 and SigV2)")
def _():
    s3.copy_object(Bucket=BUCKET, Key="copy/hello.txt",
                   CopySource={"Bucket": BUCKET, "Key": "meta/hello.txt"})
    got = s3.get_object(Bucket=BUCKET, Key="copy/hello.txt")
    eq(got["Body"].read(), b"hello from boto3\n", "body")
    eq(got["Metadata"], {"owner": "ann", "note": "two words"}, "metadata copied")
    v2.copy_object(Bucket=V2_BUCKET, Key="copy/replaced.txt",
                   CopySource={"Bucket": BUCKET, "Key": "meta/hello.txt"},
                   MetadataDirective="REPLACE", Metadata={"fresh": "yes"},
                   ContentType="text/x-copied")
    got = v2.get_object(Bucket=V2_BUCKET, Key="copy/replaced.txt")
    eq(got["Body"].read(), b"hello from boto3\n", "body")
    eq(got["Metadata"], {"fresh": "yes"}, "metadata replaced")
    eq(got["ContentType"], "text/x-copied", "content type replaced")


@check("delete_objects (SigV4 and SigV2)")
def _():
    for c, bucket in ((s3, BUCKET), (v2, V2_BUCKET)):
        keys = ["del/%d" % i for i in range(5)]
        for k in keys:
            c.put_object(Bucket=bucket, Key=k, Body=b"x")
        out = c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
        eq(sorted(d["Key"] for d in out["Deleted"]), keys, "deleted")
        eq(out.get("Errors", []), [], "errors")
        left = c.list_objects_v2(Bucket=bucket, Prefix="del/").get("Contents", [])
        eq(left, [], "left over")


@check("head_object of a missing key: ClientError 404 (SigV4 and SigV2)")
def _():
    for c in (s3, v2):
        e = client_error(c.head_object, Bucket=BUCKET, Key="no/such/key")
        eq(e.response["Error"]["Code"], "404", "code")
        eq(e.response["ResponseMetadata"]["HTTPStatusCode"], 404, "status")
        e = client_error(c.get_object, Bucket=BUCKET, Key="no/such/key")
        eq(e.response["Error"]["Code"], "NoSuchKey", "code")


@check("wrong secret: SignatureDoesNotMatch (SigV4, SigV2 header, SigV2 URL)")
def _():
    for cfg in ({}, {"signature_version": "s3"}):
        bad = client(sk="not-the-secret", **cfg)
        e = client_error(bad.list_objects_v2, Bucket=BUCKET)
        eq(e.response["Error"]["Code"], "SignatureDoesNotMatch", "code %s" % cfg)
        e = client_error(bad.put_object, Bucket=BUCKET, Key="evil", Body=b"x")
        eq(e.response["Error"]["Code"], "SignatureDoesNotMatch", "put %s" % cfg)
    url = client(sk="not-the-secret").generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "meta/hello.txt"})
    status, _, body = http("GET", url)
    eq((status, error_code(body)), (403, "SignatureDoesNotMatch"), "url")
    e = client_error(client(ak="AKIANOBODY", signature_version="s3").list_buckets)
    eq(e.response["Error"]["Code"], "InvalidAccessKeyId", "unknown key")


@check("expired and tampered SigV2 URLs are refused")
def _():
    params = {"Bucket": BUCKET, "Key": "meta/hello.txt"}
    with mock.patch("time.time", return_value=time.time() - 3600):
        url = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    assert is_sigv2_url(url), url
    status, _, body = http("GET", url)
    eq((status, error_code(body)), (403, "AccessDenied"), "expired")
    assert b"Request has expired" in body, body
    url = s3.generate_presigned_url("get_object", Params=params)
    for tampered in (url.replace("meta/hello.txt", "meta/hello.txT"),
                     url.replace("Expires=", "Expires=1"),
                     url.replace("Signature=", "Signature=A")):
        status, _, body = http("GET", tampered)
        eq((status, error_code(body)), (403, "SignatureDoesNotMatch"), tampered)


@check("read-only key: presigned GET works, presigned PUT and deletes are refused")
def _():
    ro = client(ak=RO_AK, sk=RO_SK)
    url = ro.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                          "Key": "meta/hello.txt"})
    status, _, _ = http("GET", url)
    eq(status, 200, "get")
    url = ro.generate_presigned_url("put_object", Params={
        "Bucket": BUCKET, "Key": "ro/x", "ContentType": "text/plain"})
    status, _, body = http("PUT", url, b"x", {"Content-Type": "text/plain"})
    eq((status, error_code(body)), (403, "AccessDenied"), "put")
    e = client_error(client(ak=RO_AK, sk=RO_SK, signature_version="s3").delete_object,
                     Bucket=BUCKET, Key="meta/hello.txt")
    eq(e.response["Error"]["Code"], "AccessDenied", "delete")


@check("CORS preflight (urllib OPTIONS), no auth needed")
def _():
    for path in ("/%s/presigned/new.png" % BUCKET, "/no-such-bucket/k", "/"):
        status, headers, _ = http("OPTIONS", EP + path, headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type,x-amz-meta-owner",
        })
        eq(status, 200, path)
        eq(headers["Access-Control-Allow-Origin"], ORIGIN, "allow origin")
        methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
        eq(methods, {"GET", "PUT", "POST", "HEAD", "DELETE"}, "allow methods")
        eq(headers["Access-Control-Allow-Headers"], "content-type,x-amz-meta-owner",
           "allow headers")
        expose = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
        assert {"etag", "x-amz-request-id", "x-amz-version-id"} <= expose, expose
        eq(headers["Access-Control-Max-Age"], "3600", "max age")
        assert "Origin" in headers["Vary"], headers["Vary"]
    status, _, body = http("OPTIONS", EP + "/%s/k" % BUCKET)
    eq((status, error_code(body)), (400, "BadRequest"), "no Origin")
    status, _, _ = http("OPTIONS", EP + "/%s/k" % BUCKET,
                        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"})
    eq(status, 403, "PATCH")


@check("CORS headers on actual responses (presigned PUT and GET from a browser origin)")
def _():
    data = b"uploaded by a browser"
    url = s3.generate_presigned_url("put_object", Params={
        "Bucket": BUCKET, "Key": "browser/upload.txt", "ContentType": "text/plain"})
    status, headers, _ = http("PUT", url, data, {"Content-Type": "text/plain", "Origin": ORIGIN})
    eq(status, 200, "put")
    eq(headers["Access-Control-Allow-Origin"], ORIGIN, "allow origin")
    assert "ETag" in headers["Access-Control-Expose-Headers"], headers
    eq(headers["ETag"], '"%s"' % md5_hex(data), "etag")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                          "Key": "browser/upload.txt"})
    status, headers, body = http("GET", url, headers={"Origin": ORIGIN})
    eq((status, body), (200, data), "get")
    eq(headers["Access-Control-Allow-Origin"], ORIGIN, "allow origin")
    # Errors carry them too (so the page can read the S3 error), requests without Origin not.
    status, headers, _ = http("GET", url.replace("Signature=", "Signature=A"),
                              headers={"Origin": ORIGIN})
    eq(status, 403, "tampered")
    eq(headers["Access-Control-Allow-Origin"], ORIGIN, "allow origin on errors")
    status, headers, _ = http("GET", url)
    eq(status, 200, "no origin")
    assert headers["Access-Control-Allow-Origin"] is None, headers


failed = [name for name, ok in RESULTS if not ok]
print("%d checks, %d failed" % (len(RESULTS), len(failed)), flush=True)
if failed:
    print("failed: %s" % ", ".join(failed), flush=True)
    sys.exit(1)
