"""Drives Ember's Qiniu API with the official Qiniu Python SDK (PyPI `qiniu`, 7.18).

Started by storage/tests/qiniu_sdk.rs, which runs the server and passes its addresses in the
environment: EMBER_UP (upload + rs/rsf host), EMBER_IO (download host, `/<bucket>/<key>`),
QINIU_AK / QINIU_SK, BUCKET (private), PUBLIC_BUCKET, READONLY_AK / READONLY_SK.

Every check runs even when an earlier one failed; the script prints one line per check and
exits non-zero if any failed.
"""

import io
import os
import sys
import tempfile
import time
import traceback
import warnings

import qiniu
import qiniu.http
import requests
from qiniu import Auth, BucketManager, put_data, put_file, put_stream_v2
from qiniu.region import LegacyRegion
from qiniu.utils import entry, etag_stream, urlsafe_base64_encode

UP = os.environ["EMBER_UP"]
IO = os.environ["EMBER_IO"]
AK = os.environ["QINIU_AK"]
SK = os.environ["QINIU_SK"]
BUCKET = os.environ["BUCKET"]
PUBLIC = os.environ["PUBLIC_BUCKET"]
RO_AK = os.environ["READONLY_AK"]
RO_SK = os.environ["READONLY_SK"]

MIB = 1024 * 1024

# put_file is deprecated in favour of put_file_v2, but it is what most code calls.
warnings.simplefilter("ignore", DeprecationWarning)

zone = LegacyRegion(up_host=UP, up_host_backup=UP, io_host=IO, rs_host=UP, rsf_host=UP,
                    api_host=UP, scheme="http")
qiniu.config.set_default(default_zone=zone, default_rs_host=UP, default_rsf_host=UP,
                         default_api_host=UP, default_uc_host=UP, connection_retries=1)

q = Auth(AK, SK)
bm = BucketManager(q, zone=zone)

# Every request path the SDK sends, to prove which upload protocol it used.
SEEN = []


_session = qiniu.http.qn_http_client.session
_send = _session.send


def _recording_send(request, **kwargs):
    SEEN.append("%s %s" % (request.method, request.path_url))
    return _send(request, **kwargs)


# Uploaders and BucketManager share this one requests session (Session.request calls send).
_session.send = _recording_send
qiniu.http._init()
assert qiniu.http._session is _session


RESULTS = []


def check(name):
    def wrap(fn):
        start = len(SEEN)
        try:
            fn()
            RESULTS.append((name, True, ""))
            print("ok   %s" % name, flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            detail = traceback.format_exc()
            RESULTS.append((name, False, detail))
            print("FAIL %s\n%s\n  requests: %s" % (name, detail, SEEN[start:]), flush=True)
        return fn
    return wrap


def expect_ok(ret, info, what):
    assert info.status_code == 200, "%s: HTTP %s %s" % (what, info.status_code, info.text_body)
    assert ret is not None, "%s: no JSON result (%s)" % (what, info)
    return ret


def expect_status(info, status, what, text=None):
    assert info.status_code == status, "%s: expected %s, got %s %s" % (
        what, status, info.status_code, info.text_body)
    if text is not None:
        assert text in (info.text_body or ""), "%s: %r not in %r" % (what, text, info.text_body)


def pattern(n, seed=0):
    block = bytes(((i * 31 + seed * 7 + 3) % 251) for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


def write_temp(data):
    f = tempfile.NamedTemporaryFile(delete=False)
    f.write(data)
    f.close()
    return f.name


def stat(bucket, key):
    return bm.stat(bucket, key)


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------

@check("put_data (form upload) returns hash = qiniu.utils.etag and the key")
def _():
    data = b"hello from the qiniu sdk\n" * 10
    token = q.upload_token(BUCKET, "small.txt", 3600)
    ret, info = put_data(token, "small.txt", data, mime_type="text/plain")
    expect_ok(ret, info, "put_data")
    assert ret["key"] == "small.txt", ret
    assert ret["hash"] == etag_stream(io.BytesIO(data)), ret
    assert any(s.startswith("POST / ") or s == "POST /" for s in SEEN), SEEN


@check("stat: fsize, hash, mimeType, putTime")
def _():
    data = b"hello from the qiniu sdk\n" * 10
    ret, info = stat(BUCKET, "small.txt")
    expect_ok(ret, info, "stat")
    assert ret["fsize"] == len(data), ret
    assert ret["hash"] == etag_stream(io.BytesIO(data)), ret
    assert ret["mimeType"] == "text/plain", ret
    now_100ns = int(time.time() * 1e7)
    assert abs(ret["putTime"] - now_100ns) < 600 * 10**7, ret
    assert ret["type"] == 0, ret


@check("put_file small (form) with x: variables in returnBody")
def _():
    data = pattern(1000, 1)
    path = write_temp(data)
    policy = {"returnBody": '{"key":$(key),"hash":$(etag),"fsize":$(fsize),"bucket":$(bucket),'
                            '"mime":$(mimeType),"fname":$(fname),"ext":$(ext),"album":$(x:album)}'}
    token = q.upload_token(BUCKET, "form/file.bin", 3600, policy)
    ret, info = put_file(token, "form/file.bin", path, params={"x:album": "summer"},
                         mime_type="application/x-test")
    expect_ok(ret, info, "put_file")
    assert ret == {"key": "form/file.bin", "hash": qiniu.etag(path), "fsize": 1000,
                   "bucket": BUCKET, "mime": "application/x-test",
                   "fname": os.path.basename(path), "ext": "", "album": "summer"}, ret
    os.unlink(path)


@check("put_file 9 MiB uses resumable v1 (mkblk/mkfile) and returns the qetag")
def _():
    data = pattern(9 * MIB + 123, 2)
    path = write_temp(data)
    start = len(SEEN)
    token = q.upload_token(BUCKET, "big/v1.bin", 3600)
    ret, info = put_file(token, "big/v1.bin", path, mime_type="video/mp4",
                         params={"x:kind": "v1"})
    expect_ok(ret, info, "put_file v1")
    assert ret["key"] == "big/v1.bin", ret
    assert ret["hash"] == qiniu.etag(path), (ret, qiniu.etag(path))
    paths = SEEN[start:]
    assert sum(1 for p in paths if p.startswith("POST /mkblk/")) == 3, paths
    assert any(p.startswith("POST /mkfile/") for p in paths), paths
    sret, sinfo = stat(BUCKET, "big/v1.bin")
    expect_ok(sret, sinfo, "stat v1")
    assert sret["fsize"] == len(data) and sret["hash"] == ret["hash"], sret
    assert sret["mimeType"] == "video/mp4", sret
    os.unlink(path)


@check("put_stream_v2 / put_file_v2 9 MiB with 4 MiB parts uses resumable v2")
def _():
    data = pattern(9 * MIB + 7, 3)
    start = len(SEEN)
    token = q.upload_token(BUCKET, "big/v2.bin", 3600)
    ret, info = put_stream_v2(token, "big/v2.bin", io.BytesIO(data), "v2.bin", len(data),
                              version="v2", part_size=4 * MIB, mime_type="application/zip",
                              metadata={"x-qn-meta-Owner": "alice"})
    expect_ok(ret, info, "put_stream_v2")
    assert ret["key"] == "big/v2.bin", ret
    assert ret["hash"] == etag_stream(io.BytesIO(data)), ret
    paths = SEEN[start:]
    assert any(p.endswith("/uploads") for p in paths), paths
    assert sum(1 for p in paths if p.startswith("PUT /buckets/")) == 3, paths
    sret, sinfo = stat(BUCKET, "big/v2.bin")
    expect_ok(sret, sinfo, "stat v2")
    assert sret["fsize"] == len(data) and sret["hash"] == ret["hash"], sret
    assert sret["mimeType"] == "application/zip", sret
    assert sret.get("x-qn-meta", {}).get("owner") == "alice", sret

    path = write_temp(pattern(9 * MIB, 4))
    start = len(SEEN)
    token = q.upload_token(BUCKET, "big/v2file.bin", 3600)
    ret, info = qiniu.put_file_v2(token, "big/v2file.bin", path, part_size=1 * MIB)
    expect_ok(ret, info, "put_file_v2")
    assert ret["hash"] == qiniu.etag(path), ret
    assert sum(1 for p in SEEN[start:] if p.startswith("PUT /buckets/")) == 9, SEEN[start:]
    os.unlink(path)


@check("saveKey with $(etag), no key given: stored under the hash")
def _():
    data = b"named by content"
    token = q.upload_token(BUCKET, None, 3600, {"saveKey": "bycontent/$(etag)$(ext)"})
    ret, info = put_data(token, None, data, fname="x.txt")
    expect_ok(ret, info, "put_data saveKey")
    h = etag_stream(io.BytesIO(data))
    assert ret == {"hash": h, "key": "bycontent/%s.txt" % h}, ret
    sret, sinfo = stat(BUCKET, "bycontent/%s.txt" % h)
    expect_ok(sret, sinfo, "stat saveKey")
    assert sret["hash"] == h, sret


@check("raw v1: mkblk + bput chunks + mkfile; forged, foreign and out-of-step ctxs are 701")
def _():
    data = pattern(4 * MIB + 1000, 6)
    token = q.upload_token(BUCKET, "raw/v1.bin", 3600)
    auth = {"Authorization": "UpToken " + token}

    def post(path, body):
        r = requests.post(UP + path, data=body, headers=auth)
        assert r.headers.get("X-Reqid"), r.headers
        return r

    ctxs = []
    for start, size in [(0, 4 * MIB), (4 * MIB, 1000)]:
        block = data[start:start + size]
        first = min(len(block), 1 * MIB)
        r = post("/mkblk/%d" % size, block[:first])
        assert r.status_code == 200, (r.status_code, r.text)
        ret = r.json()
        assert ret["offset"] == first and ret["crc32"] == qiniu.utils.crc32(block[:first]), ret
        assert ret["expired_at"] > time.time() and ret["host"], ret
        ctx, off = ret["ctx"], ret["offset"]
        while off < size:
            chunk = block[off:off + MIB]
            if off == 2 * MIB:
                # A retried bput with the same ctx replaces its earlier attempt.
                r = post("/bput/%s/%d" % (ctx, off), b"garbage")
                assert r.status_code == 200, (r.status_code, r.text)
            r = post("/bput/%s/%d" % (ctx, off), chunk)
            assert r.status_code == 200, (r.status_code, r.text)
            ret = r.json()
            assert ret["crc32"] == qiniu.utils.crc32(chunk), ret
            ctx, off = ret["ctx"], ret["offset"]
        ctxs.append(ctx)
    # Out of step: bput on a complete block, a wrong offset, a tampered ctx.
    r = post("/bput/%s/%d" % (ctxs[0], 4 * MIB), b"x")
    assert r.status_code == 701, (r.status_code, r.text)
    r = post("/mkblk/10", b"01234")
    half = r.json()["ctx"]
    assert r.json()["offset"] == 5, r.text
    r = post("/bput/%s/%d" % (half, 3), b"x")
    assert r.status_code == 701, (r.status_code, r.text)
    payload, mac = ctxs[1].split(".")
    forged = payload[:-6] + ("AAAAAA" if payload[-6:] != "AAAAAA" else "BBBBBB") + "." + mac
    enc = lambda s: urlsafe_base64_encode(s)
    r = post("/mkfile/%d/key/%s" % (len(data), enc("raw/v1.bin")), ",".join([ctxs[0], forged]))
    assert r.status_code == 701, (r.status_code, r.text)
    # A block that is not complete, and a size that does not add up.
    r = post("/mkfile/%d/key/%s" % (len(data) + 10, enc("raw/v1.bin")),
             ",".join(ctxs + [half]))
    assert r.status_code == 701, (r.status_code, r.text)
    r = post("/mkfile/%d/key/%s" % (len(data) + 1, enc("raw/v1.bin")), ",".join(ctxs))
    assert r.status_code == 400, (r.status_code, r.text)
    # Another access key's token cannot use these ctxs.
    ro = Auth(RO_AK, RO_SK)
    other = {"Authorization": "UpToken " + Auth(AK, SK).upload_token(PUBLIC, None, 3600)}
    r = requests.post(UP + "/mkfile/%d" % len(data), data=",".join(ctxs), headers=other)
    assert r.status_code == 701, (r.status_code, r.text)
    del ro
    r = post("/mkfile/%d/key/%s/mimeType/%s/fname/%s/x:tag/%s" % (
        len(data), enc("raw/v1.bin"), enc("audio/amr"), enc("voice.amr"), enc("t1")),
        ",".join(ctxs))
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json() == {"key": "raw/v1.bin", "hash": etag_stream(io.BytesIO(data))}, r.text
    got = requests.get(q.private_download_url("%s/%s/raw/v1.bin" % (IO, BUCKET)))
    assert got.content == data
    # The blocks are gone once joined.
    r = post("/mkfile/%d/key/%s" % (len(data), enc("raw/v1.bin")), ",".join(ctxs))
    assert r.status_code == 701, (r.status_code, r.text)


@check("raw v2: init, parts out of order, list parts, wrong etag, abort")
def _():
    enc = urlsafe_base64_encode
    token = q.upload_token(BUCKET, "raw/v2.bin", 3600)
    auth = {"Authorization": "UpToken " + token}
    base = "%s/buckets/%s/objects/%s/uploads" % (UP, BUCKET, enc("raw/v2.bin"))
    r = requests.post(base, headers=auth)
    assert r.status_code == 200, (r.status_code, r.text)
    upload_id = r.json()["uploadId"]
    assert r.json()["expireAt"] > time.time()
    parts = [pattern(MIB, 7), pattern(MIB, 8), b"tail"]
    etags = {}
    for n in [3, 1, 2]:
        body = parts[n - 1]
        import hashlib
        r = requests.put("%s/%s/%d" % (base, upload_id, n), data=body,
                         headers=dict(auth, **{"Content-MD5": hashlib.md5(body).hexdigest()}))
        assert r.status_code == 200, (r.status_code, r.text)
        etags[n] = r.json()["etag"]
    r = requests.put("%s/%s/%d" % (base, upload_id, 4), data=b"x",
                     headers=dict(auth, **{"Content-MD5": "0" * 32}))
    assert r.status_code == 400, (r.status_code, r.text)
    r = requests.get("%s/%s" % (base, upload_id), headers=auth)
    assert r.status_code == 200, (r.status_code, r.text)
    listed = r.json()["parts"]
    assert [(p["partNumber"], p["etag"], p["size"]) for p in listed] == [
        (1, etags[1], MIB), (2, etags[2], MIB), (3, etags[3], 4)], listed
    import json
    bad = {"parts": [{"partNumber": 1, "etag": etags[2]}]}
    r = requests.post("%s/%s" % (base, upload_id), data=json.dumps(bad), headers=auth)
    assert r.status_code == 400, (r.status_code, r.text)
    # Another key's path cannot see this upload.
    other = "%s/buckets/%s/objects/%s/uploads/%s" % (UP, BUCKET, enc("raw/other.bin"), upload_id)
    r = requests.get(other, headers={"Authorization": "UpToken " + q.upload_token(BUCKET, None, 3600)})
    assert r.status_code == 612, (r.status_code, r.text)
    good = {"parts": [{"partNumber": n, "etag": etags[n]} for n in [1, 2, 3]],
            "mimeType": "text/x-raw", "customVars": {"x:a": "b"}}
    r = requests.post("%s/%s" % (base, upload_id), data=json.dumps(good), headers=auth)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["hash"] == etag_stream(io.BytesIO(b"".join(parts))), r.text
    r = requests.get("%s/%s" % (base, upload_id), headers=auth)
    assert r.status_code == 612, (r.status_code, r.text)
    # Abort.
    r = requests.post(base, headers=auth)
    upload_id = r.json()["uploadId"]
    r = requests.delete("%s/%s" % (base, upload_id), headers=auth)
    assert r.status_code == 200, (r.status_code, r.text)
    r = requests.delete("%s/%s" % (base, upload_id), headers=auth)
    assert r.status_code == 612, (r.status_code, r.text)


# ---------------------------------------------------------------------------------------------
# Token rules
# ---------------------------------------------------------------------------------------------

@check("insertOnly=1 onto an existing key with other content: 614")
def _():
    token = q.upload_token(BUCKET, "small.txt", 3600, {"insertOnly": 1})
    ret, info = put_data(token, "small.txt", b"other content")
    expect_status(info, 614, "insertOnly", "file exists")
    # Resumable uploads honour it too.
    path = write_temp(pattern(9 * MIB, 5))
    token = q.upload_token(BUCKET, "big/v1.bin", 3600, {"insertOnly": 1})
    ret, info = put_file(token, "big/v1.bin", path)
    expect_status(info, 614, "insertOnly v1", "file exists")
    os.unlink(path)


@check("bucket-scope token (insert-only by default) onto an existing key: 614")
def _():
    token = q.upload_token(BUCKET, None, 3600)
    ret, info = put_data(token, "small.txt", b"yet other content")
    expect_status(info, 614, "bucket scope")


@check("expired token: 401")
def _():
    token = q.upload_token(BUCKET, "expired.txt", -100)
    ret, info = put_data(token, "expired.txt", b"x")
    expect_status(info, 401, "expired", "expired")
    ret, info = put_file(token, "expired.txt", write_temp(pattern(9 * MIB)))
    expect_status(info, 401, "expired v1")


@check("tampered token: 401 bad token")
def _():
    token = q.upload_token(BUCKET, "tampered.txt", 3600)
    ak, sign, policy = token.split(":")
    bad_sign = ("A" if sign[0] != "A" else "B") + sign[1:]
    for bad in ["%s:%s:%s" % (ak, bad_sign, policy),
                "%s:%s:%s" % (ak, sign, urlsafe_base64_encode('{"scope":"%s","deadline":%d}'
                                                             % (BUCKET, time.time() + 99999))),
                "nobody:%s:%s" % (sign, policy)]:
        ret, info = put_data(bad, "tampered.txt", b"x")
        expect_status(info, 401, "tampered", "bad token")


@check("fsizeLimit exceeded: 413 (form and resumable), nothing stored")
def _():
    token = q.upload_token(BUCKET, "toolarge.bin", 3600, {"fsizeLimit": 100})
    ret, info = put_data(token, "toolarge.bin", b"x" * 101)
    expect_status(info, 413, "fsizeLimit form")
    ret, info = put_data(token, "toolarge.bin", b"x" * 100)
    expect_ok(ret, info, "fsizeLimit exact")
    token = q.upload_token(BUCKET, "toolarge2.bin", 3600, {"fsizeLimit": 5 * MIB})
    ret, info = put_file(token, "toolarge2.bin", write_temp(pattern(9 * MIB)))
    expect_status(info, 413, "fsizeLimit v1")
    ret, info = stat(BUCKET, "toolarge2.bin")
    expect_status(info, 612, "nothing stored")


@check("fsizeMin and mimeLimit: 403")
def _():
    token = q.upload_token(BUCKET, "small-min.bin", 3600, {"fsizeMin": 10})
    ret, info = put_data(token, "small-min.bin", b"123")
    expect_status(info, 403, "fsizeMin")
    token = q.upload_token(BUCKET, "mime.bin", 3600, {"mimeLimit": "image/*"})
    ret, info = put_data(token, "mime.bin", b"text", mime_type="text/plain")
    expect_status(info, 403, "mimeLimit")
    ret, info = put_data(token, "mime.bin", b"\x89PNG", mime_type="image/png")
    expect_ok(ret, info, "mimeLimit allowed")


@check("key outside the token's scope: 403")
def _():
    token = q.upload_token(BUCKET, "scoped.txt", 3600)
    ret, info = put_data(token, "other.txt", b"x")
    expect_status(info, 403, "scope", "scope")


@check("callbackUrl: the file is stored, 579 says callbacks are not supported")
def _():
    token = q.upload_token(BUCKET, "callback.txt", 3600,
                           {"callbackUrl": "http://127.0.0.1:9/cb", "callbackBody": "k=$(key)"})
    ret, info = put_data(token, "callback.txt", b"cb")
    expect_status(info, 579, "callback", "not supported")
    ret, info = stat(BUCKET, "callback.txt")
    expect_ok(ret, info, "stat callback")


@check("unknown bucket: 631")
def _():
    token = q.upload_token("no-such-bucket", "x.txt", 3600)
    ret, info = put_data(token, "x.txt", b"x")
    expect_status(info, 631, "no such bucket")


@check("crc32 mismatch: 406")
def _():
    token = q.upload_token(BUCKET, "crc.txt", 3600)
    r = requests.post(UP + "/", data={"token": token, "key": "crc.txt", "crc32": "12345"},
                      files={"file": ("crc.txt", b"some data")})
    assert r.status_code == 406, (r.status_code, r.text)
    assert r.headers.get("X-Reqid"), r.headers


@check("read-only access key cannot upload or delete")
def _():
    ro = Auth(RO_AK, RO_SK)
    ret, info = put_data(ro.upload_token(BUCKET, "ro.txt", 3600), "ro.txt", b"x")
    expect_status(info, 403, "read-only upload")
    ret, info = BucketManager(ro, zone=zone).delete(BUCKET, "small.txt")
    expect_status(info, 403, "read-only delete")
    ret, info = BucketManager(ro, zone=zone).stat(BUCKET, "small.txt")
    expect_ok(ret, info, "read-only stat")


# ---------------------------------------------------------------------------------------------
# Management
# ---------------------------------------------------------------------------------------------

@check("list with prefix, limit and marker paging; delimiter")
def _():
    token = q.upload_token(BUCKET, None, 3600)
    for i in range(5):
        ret, info = put_data(token, "list/%d.txt" % i, b"item %d" % i)
        expect_ok(ret, info, "put list item")
    ret, info = put_data(token, "list/sub/deep.txt", b"deep")
    expect_ok(ret, info, "put deep")
    keys, marker = [], None
    while True:
        ret, eof, info = bm.list(BUCKET, prefix="list/", marker=marker, limit=2)
        expect_ok(ret, info, "list")
        for item in ret["items"]:
            assert item["hash"] == etag_stream(io.BytesIO(
                b"deep" if item["key"].endswith("deep.txt") else
                b"item %s" % item["key"][5:6].encode())), item
            assert item["fsize"] > 0 and item["putTime"] > 0 and "mimeType" in item, item
        keys += [i["key"] for i in ret["items"]]
        if eof:
            break
        marker = ret["marker"]
    assert keys == ["list/%d.txt" % i for i in range(5)] + ["list/sub/deep.txt"], keys
    ret, eof, info = bm.list(BUCKET, prefix="list/", delimiter="/")
    expect_ok(ret, info, "list delimiter")
    assert ret.get("commonPrefixes") == ["list/sub/"], ret
    assert len(ret["items"]) == 5 and eof, ret
    ret, eof, info = bm.list(BUCKET, marker="not-a-marker")
    expect_status(info, 640, "bad marker")


@check("copy and move (force / no force)")
def _():
    ret, info = bm.copy(BUCKET, "small.txt", BUCKET, "copied.txt")
    assert info.status_code == 200, info
    ret, info = bm.copy(BUCKET, "small.txt", BUCKET, "copied.txt")
    expect_status(info, 614, "copy without force onto existing")
    ret, info = bm.move(BUCKET, "copied.txt", BUCKET, "moved.txt")
    assert info.status_code == 200, info
    ret, info = stat(BUCKET, "copied.txt")
    expect_status(info, 612, "moved away")
    ret, info = stat(BUCKET, "moved.txt")
    expect_ok(ret, info, "moved")
    assert ret["hash"] == etag_stream(io.BytesIO(b"hello from the qiniu sdk\n" * 10)), ret


@check("delete, then stat is 612; deleting again is 612")
def _():
    ret, info = bm.delete(BUCKET, "moved.txt")
    assert info.status_code == 200, info
    ret, info = stat(BUCKET, "moved.txt")
    expect_status(info, 612, "stat after delete", "no such file")
    ret, info = bm.delete(BUCKET, "moved.txt")
    expect_status(info, 612, "delete again")
    ret, info = stat("no-such-bucket", "x")
    expect_status(info, 631, "stat no bucket")


@check("QBox-signed and untimestamped Qiniu-signed management requests")
def _():
    url = UP + "/stat/" + entry(BUCKET, "small.txt")
    ret, info = qiniu.http._post_with_auth(url, None, q)
    expect_ok(ret, info, "QBox stat")
    assert ret["fsize"] == 250, ret
    no_ts = Auth(AK, SK, disable_qiniu_timestamp_signature=True)
    ret, info = BucketManager(no_ts, zone=zone).stat(BUCKET, "small.txt")
    expect_ok(ret, info, "Qiniu stat without X-Qiniu-Date")
    bad = Auth(AK, "x" * len(SK))
    ret, info = BucketManager(bad, zone=zone).stat(BUCKET, "small.txt")
    expect_status(info, 401, "wrong secret")


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------

@check("private_download_url downloads; tampered / expired / unsigned do not")
def _():
    data = b"hello from the qiniu sdk\n" * 10
    base = "%s/%s/small.txt" % (IO, BUCKET)
    r = requests.get(q.private_download_url(base, expires=3600))
    assert r.status_code == 200 and r.content == data, (r.status_code, r.text)
    r = requests.get(base)
    assert r.status_code == 401, (r.status_code, r.text)
    r = requests.get(q.private_download_url(base, expires=-10))
    assert r.status_code == 401 and "out of date" in r.text, (r.status_code, r.text)
    url = q.private_download_url(base, expires=3600)
    r = requests.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"))
    assert r.status_code == 401, (r.status_code, r.text)
    r = requests.get(q.private_download_url("%s/%s/big/v1.bin" % (IO, BUCKET), expires=3600))
    assert r.status_code == 200 and len(r.content) == 9 * MIB + 123, r.status_code
    assert r.content == pattern(9 * MIB + 123, 2)


@check("public bucket downloads without a token")
def _():
    token = q.upload_token(PUBLIC, "pub.txt", 3600)
    ret, info = put_data(token, "pub.txt", b"public!")
    expect_ok(ret, info, "put public")
    r = requests.get("%s/%s/pub.txt" % (IO, PUBLIC))
    assert r.status_code == 200 and r.content == b"public!", (r.status_code, r.text)


failed = [r for r in RESULTS if not r[1]]
print("qiniu sdk checks: %d ok, %d failed" % (len(RESULTS) - len(failed), len(failed)))
sys.exit(1 if failed else 0)
