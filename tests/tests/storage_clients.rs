//! End-to-end tests of `ember storage` with the command-line S3 clients people use: the aws
//! CLI, s3cmd (SigV2 and SigV4) and rclone (`provider = Other` and `Minio`). Each client is
//! configured only through files in the test's temp dir (`AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE`, `s3cmd -c`, `rclone --config`) and talks to Ember on
//! 127.0.0.1 with an ephemeral port. Every client process runs with a deadline
//! ([`CLIENT_TIMEOUT`]) and is killed past it.
//!
//! The clients come from `.ci/run` (pip `awscli`, apt `s3cmd` and `rclone`); a missing one
//! fails the test with that hint rather than skipping it.
//!
//! Ember is configured for region `eu-test-1`, not the clients' default, so the tests also
//! cover what a client does when it signs for the wrong region first (s3cmd's default
//! `bucket_location` signs for "US"; the aws CLI with `--region us-west-2`).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_tests::process::wait_or_kill;
use ember_tests::Ember;
use md5::{Digest, Md5};
use serde_json::Value;

const AK: &str = "EMBERCLIENTSKEY00001";
const SK: &str = "ember-clients-secret-0123456789";
const REGION: &str = "eu-test-1";
const PUBLIC_BUCKET: &str = "public-media";
/// Longest any one client process may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Environment variables of the machine that would change what a client does (credentials,
/// profiles, CA bundles, proxies, config locations); removed for every client.
const ENV_PREFIXES_REMOVED: [&str; 3] = ["AWS_", "RCLONE_", "S3CMD"];
const ENV_REMOVED: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "BOTO_CONFIG",
    "PYTHONPATH",
];

/// Ember for one test; its log (quoted in every failure) has the S3 layer's refusals.
fn start() -> Ember {
    Ember::start_storage(&format!(
        "region = \"{REGION}\"\n\
         credentials = {{ {AK} = \"{SK}\" }}\n\
         buckets = [\"{PUBLIC_BUCKET}\"]\n\
         public_buckets = [\"{PUBLIC_BUCKET}\"]\n\
         \n[log]\nlevel = \"ember_storage::s3=debug,info\"\n"
    ))
}

// ---------------------------------------------------------------------------------------------
// Running clients
// ---------------------------------------------------------------------------------------------

/// What a client process did.
struct Out {
    what: String,
    success: bool,
    code: Option<i32>,
    /// stdout as it came (`stdout` is its lossy UTF-8 reading).
    raw: Vec<u8>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "{}\n--- exit code {:?}; stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

/// One test's clients: a scratch dir for their configs and files, and the server.
struct Clients<'a> {
    ember: &'a Ember,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    runs: std::cell::Cell<u32>,
}

impl<'a> Clients<'a> {
    fn new(ember: &'a Ember) -> Clients<'a> {
        let dir = tempfile::Builder::new()
            .prefix("ember-clients-")
            .tempdir()
            .expect("temp dir");
        let c = Clients {
            ember,
            addr: ember.addr("storage/http"),
            dir,
            runs: std::cell::Cell::new(0),
        };
        c.write_configs();
        c
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every client's config files: aws profiles `default`, `badsecret`, `nokey`; s3cmd
    /// `v2`, `v4`, `us` (V4 with s3cmd's default region), `badsecret-v2`, `badsecret-v4`,
    /// `nokey`; rclone remotes `other`, `minio`, `badsecret`, `nokey`.
    fn write_configs(&self) {
        let write = |rel: &str, text: String| fs::write(self.path(rel), text).expect("config");
        write(
            "aws-config",
            format!(
                "[default]\nregion = {REGION}\noutput = json\ns3 =\n    addressing_style = path\n\
                 [profile badsecret]\nregion = {REGION}\noutput = json\n\
                 [profile nokey]\nregion = {REGION}\noutput = json\n"
            ),
        );
        write(
            "aws-credentials",
            format!(
                "[default]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n\
                 [badsecret]\naws_access_key_id = {AK}\naws_secret_access_key = not-the-secret\n\
                 [nokey]\naws_access_key_id = EMBERUNKNOWNKEY00000\naws_secret_access_key = {SK}\n"
            ),
        );
        let host = self.addr;
        let s3cmd = |ak: &str, sk: &str, v2: bool, location: Option<&str>| {
            let mut text = format!(
                "[default]\naccess_key = {ak}\nsecret_key = {sk}\nhost_base = {host}\n\
                 host_bucket = {host}\nuse_https = False\nsignature_v2 = {}\n\
                 progress_meter = False\n",
                if v2 { "True" } else { "False" }
            );
            if let Some(l) = location {
                text.push_str(&format!("bucket_location = {l}\n"));
            }
            text
        };
        write("s3cmd-v2", s3cmd(AK, SK, true, Some(REGION)));
        write("s3cmd-v4", s3cmd(AK, SK, false, Some(REGION)));
        write("s3cmd-us", s3cmd(AK, SK, false, None));
        write(
            "s3cmd-badsecret-v2",
            s3cmd(AK, "not-the-secret", true, Some(REGION)),
        );
        write(
            "s3cmd-badsecret-v4",
            s3cmd(AK, "not-the-secret", false, Some(REGION)),
        );
        write(
            "s3cmd-nokey",
            s3cmd("EMBERUNKNOWNKEY00000", SK, false, Some(REGION)),
        );
        let remote = |name: &str, provider: &str, ak: &str, sk: &str| {
            format!(
                "[{name}]\ntype = s3\nprovider = {provider}\nenv_auth = false\n\
                 access_key_id = {ak}\nsecret_access_key = {sk}\nregion = {REGION}\n\
                 endpoint = http://{host}\nforce_path_style = true\n\n"
            )
        };
        write(
            "rclone.conf",
            [
                remote("other", "Other", AK, SK),
                remote("minio", "Minio", AK, SK),
                remote("badsecret", "Other", AK, "not-the-secret"),
                remote("nokey", "Other", "EMBERUNKNOWNKEY00000", SK),
            ]
            .concat(),
        );
    }

    /// A command for `program` with the machine's client settings removed.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            if ENV_PREFIXES_REMOVED.iter().any(|p| k.starts_with(p)) || ENV_REMOVED.contains(&k) {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("LC_ALL", "C.UTF-8")
            .env("PYTHONUTF8", "1")
            .env("PYTHONIOENCODING", "utf-8")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `cmd` to completion (killed after [`CLIENT_TIMEOUT`]); stdout and stderr go to
    /// files, so no pipe can fill up.
    fn run(&self, mut cmd: Command) -> Out {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let what = format!("{cmd:?}");
        let out_path = self.path(&format!("run-{n}.out"));
        let err_path = self.path(&format!("run-{n}.err"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("stdout file"))
            .stderr(fs::File::create(&err_path).expect("stderr file"));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start {what}: {e}\nThe S3 client tests need the aws CLI, s3cmd and rclone: run .ci/run, which installs them."
            ),
        };
        let started = Instant::now();
        let status = wait_or_kill(&mut child, started + CLIENT_TIMEOUT);
        // Shown with the test's output when it fails.
        eprintln!("[{:5.1}s] {what}", started.elapsed().as_secs_f64());
        let raw = fs::read(&out_path).unwrap_or_default();
        let err = fs::read(&err_path).unwrap_or_default();
        let out = Out {
            stdout: String::from_utf8_lossy(&raw).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            raw,
            what,
            success: status.is_some_and(|s| s.success()),
            code: status.and_then(|s| s.code()),
        };
        if status.is_none() {
            self.fail(&format!("timed out after {CLIENT_TIMEOUT:?}"), &out);
        }
        out
    }

    fn fail(&self, why: &str, out: &Out) -> ! {
        panic!(
            "{why}: {}\n--- ember.log ---\n{}",
            out.describe(),
            self.ember.log()
        )
    }

    /// Runs `cmd`, which must succeed.
    fn ok(&self, cmd: Command) -> Out {
        let out = self.run(cmd);
        if !out.success {
            self.fail("client failed", &out);
        }
        out
    }

    /// Runs `cmd`, which must fail with `needle` in its output.
    fn fails_with(&self, cmd: Command, needle: &str) -> Out {
        let out = self.run(cmd);
        if out.success {
            self.fail(&format!("expected a failure mentioning {needle:?}"), &out);
        }
        if !out.stderr.contains(needle) && !out.stdout.contains(needle) {
            self.fail(&format!("the failure does not mention {needle:?}"), &out);
        }
        out
    }

    /// `aws --endpoint-url ... WORDS ARGS` (`words` split on whitespace, `args` as they are).
    fn aws_cmd(&self, words: &str, args: &[&str]) -> Command {
        let mut cmd = self.command("aws");
        cmd.env("AWS_CONFIG_FILE", self.path("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path("aws-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["--endpoint-url", &self.endpoint()])
            .args(words.split_whitespace())
            .args(args);
        cmd
    }

    fn aws(&self, words: &str, args: &[&str]) -> Out {
        self.ok(self.aws_cmd(words, args))
    }

    fn aws_json(&self, words: &str, args: &[&str]) -> Value {
        let out = self.aws(words, args);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| self.fail(&format!("not JSON ({e})"), &out))
    }

    /// `s3cmd -c s3cmd-CONFIG WORDS ARGS`.
    fn s3cmd_cmd(&self, config: &str, words: &str, args: &[&str]) -> Command {
        let mut cmd = self.command("s3cmd");
        // No ~/.s3cfg or other file of the machine's user, even by accident.
        cmd.env("HOME", self.dir.path())
            .arg("-c")
            .arg(self.path(&format!("s3cmd-{config}")))
            .args(words.split_whitespace())
            .args(args);
        cmd
    }

    fn s3cmd(&self, config: &str, words: &str, args: &[&str]) -> Out {
        self.ok(self.s3cmd_cmd(config, words, args))
    }

    /// `rclone --config rclone.conf WORDS ARGS`, one try per request so errors show at once.
    fn rclone_cmd(&self, words: &str, args: &[&str]) -> Command {
        let mut cmd = self.command("rclone");
        cmd.env("HOME", self.dir.path())
            .arg("--config")
            .arg(self.path("rclone.conf"))
            .args(["--retries", "1", "--low-level-retries", "1", "--cache-dir"])
            .arg(self.path("rclone-cache"))
            .args(words.split_whitespace())
            .args(args);
        cmd
    }

    fn rclone(&self, words: &str, args: &[&str]) -> Out {
        self.ok(self.rclone_cmd(words, args))
    }

    /// The scratch path `rel`, as a client argument.
    fn arg(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// Writes `data` to `rel` in the scratch dir (parents created); returns its path.
    fn file(&self, rel: &str, data: &[u8]) -> String {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p.display().to_string()
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

/// Fails the test right away when a client is not installed.
fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{program} --version` does not run. The S3 client tests need the aws CLI (pip awscli), \
         s3cmd and rclone: run .ci/run, which installs them."
    );
}

// ---------------------------------------------------------------------------------------------
// Data and plain HTTP
// ---------------------------------------------------------------------------------------------

/// `len` bytes that do not compress (xorshift), different per `seed`.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// S3's ETag of a multipart object uploaded in `part_size` parts.
fn multipart_etag(bytes: &[u8], part_size: usize) -> String {
    let mut all = Vec::new();
    let mut n = 0;
    for part in bytes.chunks(part_size) {
        all.extend_from_slice(&Md5::digest(part));
        n += 1;
    }
    format!("\"{}-{n}\"", md5_hex(&all))
}

/// A plain HTTP/1.1 GET of `url` (`http://127.0.0.1:PORT/...`, as a client printed it):
/// the status code and the body.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {url:?}"));
    let (host, target) = rest.split_at(rest.find('/').expect("a path"));
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, raw[split + 4..].to_vec())
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// aws CLI
// ---------------------------------------------------------------------------------------------

/// `aws s3`: buckets, small and multipart uploads and downloads, listings, server-side copy
/// and move, sync both ways, recursive delete.
#[test]
fn aws_cli_round_trips() {
    require("aws");
    let ember = start();
    let c = Clients::new(&ember);
    let b = "s3://cli-bucket";
    let cp = "s3 cp --no-progress";

    c.aws("s3 mb", &[b]);
    let out = c.aws("s3 ls", &[]);
    assert!(out.stdout.contains("cli-bucket"), "{}", out.describe());

    // A small object with a unicode and space key, and a 20 MiB one: multipart in the
    // CLI's 8 MiB parts, whose ETag S3 derives from the parts' MD5s.
    let small = b"hello from the aws CLI\n".to_vec();
    let small_path = c.file("up/small.txt", &small);
    let small_key = format!("{b}/docs/ü ñ space.txt");
    c.aws(cp, &[&small_path, &small_key]);
    let big = data(20 << 20, 1);
    let big_path = c.file("up/big.bin", &big);
    c.aws(cp, &[&big_path, &format!("{b}/big.bin")]);
    let head = c.aws_json("s3api head-object --bucket cli-bucket --key big.bin", &[]);
    assert_eq!(head["ContentLength"], 20 << 20, "{head}");
    assert_eq!(head["ETag"], multipart_etag(&big, 8 << 20), "{head}");
    // Ember keeps no part boundaries: part 1 is the whole object, other parts are refused
    // rather than answered with the wrong bytes.
    let head = c.aws_json(
        "s3api head-object --bucket cli-bucket --key big.bin --part-number 1",
        &[],
    );
    assert_eq!(head["ContentLength"], 20 << 20, "{head}");
    let cmd = c.aws_cmd(
        "s3api get-object --bucket cli-bucket --key big.bin --part-number 2",
        &[&c.arg("part2")],
    );
    c.fails_with(cmd, "InvalidPartNumber");

    c.aws(cp, &[&small_key, &c.arg("down/small.txt")]);
    assert_eq!(c.read("down/small.txt"), small);
    c.aws(cp, &[&format!("{b}/big.bin"), &c.arg("down/big.bin")]);
    assert!(c.read("down/big.bin") == big, "20 MiB download differs");
    // Listings: top level (a prefix and an object), a prefix, everything.
    let out = c.aws("s3 ls", &[&format!("{b}/")]);
    assert!(out.stdout.contains("PRE docs/"), "{}", out.describe());
    let big_line = format!("{} big.bin", 20 << 20);
    assert!(out.stdout.contains(&big_line), "{}", out.describe());
    let out = c.aws("s3 ls --recursive", &[b]);
    assert_eq!(lines(&out.stdout).len(), 2, "{}", out.describe());
    assert!(
        out.stdout.contains("docs/ü ñ space.txt"),
        "{}",
        out.describe()
    );

    // Server-side copy (UploadPartCopy, past the multipart threshold) and move.
    c.aws(cp, &[&format!("{b}/big.bin"), &format!("{b}/copy/big.bin")]);
    let mv = "s3 mv --no-progress";
    c.aws(
        mv,
        &[&format!("{b}/copy/big.bin"), &format!("{b}/moved/big.bin")],
    );
    // The copy's parts are the source's bytes, so its ETag is the source's.
    let head = c.aws_json(
        "s3api head-object --bucket cli-bucket --key moved/big.bin",
        &[],
    );
    assert_eq!(head["ETag"], multipart_etag(&big, 8 << 20), "{head}");

    // sync both ways; a second sync transfers nothing.
    c.file("tree/a.txt", b"a");
    c.file("tree/sub dir/b é.txt", b"bb");
    c.file("tree/sub dir/deeper/c.bin", &data(100_000, 2));
    let (tree, remote_tree) = (c.arg("tree"), format!("{b}/tree"));
    let sync = "s3 sync --no-progress";
    let out = c.aws(sync, &[&tree, &remote_tree]);
    assert_eq!(lines(&out.stdout).len(), 3, "{}", out.describe());
    let out = c.aws(sync, &[&tree, &remote_tree]);
    assert!(
        lines(&out.stdout).is_empty(),
        "second sync up: {}",
        out.describe()
    );
    let out = c.aws(sync, &[&remote_tree, &c.arg("tree-back")]);
    assert_eq!(lines(&out.stdout).len(), 3, "{}", out.describe());
    assert_eq!(c.read("tree-back/sub dir/deeper/c.bin"), data(100_000, 2));
    assert_eq!(c.read("tree-back/sub dir/b é.txt"), b"bb");
    let out = c.aws(sync, &[&remote_tree, &c.arg("tree-back")]);
    assert!(
        lines(&out.stdout).is_empty(),
        "second sync down: {}",
        out.describe()
    );

    // Empty the bucket and remove it.
    // What is deleted is what should be there (the move left no copy/big.bin behind).
    let out = c.aws("s3 rm --recursive", &[b]);
    let mut deleted: Vec<&str> = lines(&out.stdout)
        .iter()
        .filter_map(|l| l.strip_prefix("delete: s3://cli-bucket/"))
        .collect();
    deleted.sort_unstable();
    let want = [
        "big.bin",
        "docs/ü ñ space.txt",
        "moved/big.bin",
        "tree/a.txt",
        "tree/sub dir/b é.txt",
        "tree/sub dir/deeper/c.bin",
    ];
    assert_eq!(deleted, want, "{}", out.describe());
    // Refused unless empty (BucketNotEmpty), so this also shows everything went.
    c.aws("s3 rb", &[b]);
    let out = c.aws("s3 ls", &[]);
    assert!(!out.stdout.contains("cli-bucket"), "{}", out.describe());
}

/// `aws s3api` metadata and pagination, presigned URLs (and their expiry), a client signing
/// for the wrong region, anonymous reads of a public bucket, missing keys.
#[test]
fn aws_cli_metadata_pagination_presigning_and_errors() {
    require("aws");
    let ember = start();
    let c = Clients::new(&ember);
    let b = "s3://cli-meta";
    let cp = "s3 cp --no-progress";
    c.aws("s3 mb", &[b]);
    let small = b"hello again from the aws CLI\n".to_vec();
    let small_path = c.file("up/small.txt", &small);
    let small_key = format!("{b}/docs/ü ñ space.txt");
    c.aws(cp, &[&small_path, &small_key]);

    // Metadata and Content-Type round trip.
    c.aws(
        "s3api put-object --bucket cli-meta --key meta.txt --content-type text/x-ember \
         --metadata owner=alice,Colour=Blue --cache-control max-age=60 --body",
        &[&small_path],
    );
    let head = c.aws_json("s3api head-object --bucket cli-meta --key meta.txt", &[]);
    assert_eq!(head["ContentType"], "text/x-ember", "{head}");
    assert_eq!(head["CacheControl"], "max-age=60", "{head}");
    assert_eq!(head["Metadata"]["owner"], "alice", "{head}");
    assert_eq!(head["Metadata"]["colour"], "Blue", "{head}");
    assert_eq!(head["ETag"], format!("\"{}\"", md5_hex(&small)), "{head}");

    // ListObjectsV2 pagination: 7 keys, pages of 2 keys, 3 keys per CLI call.
    for i in 1..=7 {
        c.file(&format!("page/k{i}"), i.to_string().as_bytes());
    }
    c.aws(
        "s3 cp --no-progress --recursive",
        &[&c.arg("page"), &format!("{b}/page/")],
    );
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for round in 0..5 {
        let list = "s3api list-objects-v2 --bucket cli-meta --prefix page/ \
                    --max-items 3 --page-size 2";
        let page = match &token {
            Some(t) => c.aws_json(list, &["--starting-token", t]),
            None => c.aws_json(list, &[]),
        };
        let keys = page["Contents"].as_array().cloned().unwrap_or_default();
        assert!(keys.len() <= 3, "round {round}: {page}");
        seen.extend(keys.iter().map(|o| o["Key"].as_str().unwrap().to_owned()));
        token = page["NextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let want: Vec<String> = (1..=7).map(|i| format!("page/k{i}")).collect();
    assert_eq!(seen, want);
    assert!(token.is_none(), "pagination did not end");

    // Presigned GET from a plain HTTP client; an expired one is refused.
    let out = c.aws("s3 presign --expires-in 300", &[&small_key]);
    let (status, body) = http_get(&out.stdout);
    assert_eq!(
        (status, body.as_slice()),
        (200, small.as_slice()),
        "{}",
        out.stdout
    );
    let out = c.aws("s3 presign --expires-in 1", &[&small_key]);
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = http_get(&out.stdout);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");

    // Signed for another region: Ember names its own (as S3), and the CLI signs again.
    let head = c.aws_json(
        "--region us-west-2 s3api head-object --bucket cli-meta --key meta.txt",
        &[],
    );
    assert_eq!(head["ContentType"], "text/x-ember", "{head}");
    let out = c.aws("--region us-west-2 s3 ls", &[&format!("{b}/docs/")]);
    assert!(out.stdout.contains("ü ñ space.txt"), "{}", out.describe());

    // A public bucket reads without credentials, and refuses anonymous writes.
    let public_key = format!("s3://{PUBLIC_BUCKET}/pub/a b.txt");
    c.aws(cp, &[&small_path, &public_key]);
    let out = c.aws(
        "--no-sign-request s3 ls",
        &[&format!("s3://{PUBLIC_BUCKET}/pub/")],
    );
    assert!(out.stdout.contains("a b.txt"), "{}", out.describe());
    let out = c.aws("--no-sign-request s3 cp --no-progress", &[&public_key, "-"]);
    assert_eq!(out.stdout.as_bytes(), small.as_slice());
    let anon = format!("s3://{PUBLIC_BUCKET}/pub/anon.txt");
    let cmd = c.aws_cmd(
        "--no-sign-request s3 cp --no-progress",
        &[&small_path, &anon],
    );
    c.fails_with(cmd, "AccessDenied");

    // Missing keys.
    let cmd = c.aws_cmd(
        "s3api get-object --bucket cli-meta --key no-such-key",
        &[&c.arg("down/x")],
    );
    c.fails_with(cmd, "NoSuchKey");
    c.fails_with(c.aws_cmd(cp, &[&format!("{b}/no-such-key"), "-"]), "404");
}

// ---------------------------------------------------------------------------------------------
// s3cmd
// ---------------------------------------------------------------------------------------------

/// s3cmd with SigV2 and with SigV4: put (plain and multipart), get, ls, la, info, cp, mv,
/// signurl, sync both ways, del, rb; and s3cmd's default region.
#[test]
fn s3cmd_round_trips_with_v2_and_v4_signatures() {
    require("s3cmd");
    let ember = start();
    let c = Clients::new(&ember);
    let small = b"hello from s3cmd\n".to_vec();
    let small_path = c.file("up/small.txt", &small);
    let mid = data(12 << 20, 3);
    let mid_path = c.file("up/mid.bin", &mid);
    c.file("tree/a.txt", b"a");
    c.file("tree/sub/b é.txt", b"bb");
    c.file("tree/sub/c.bin", &data(50_000, 4));
    let tree = format!("{}/", c.arg("tree"));

    for sig in ["v2", "v4"] {
        let b = format!("s3://s3cmd-{sig}");
        let key = format!("{b}/docs/ü ñ+space.txt");
        let got = c.arg(&format!("got-{sig}"));
        c.s3cmd(sig, "mb", &[&b]);
        c.s3cmd(
            sig,
            "put --add-header=x-amz-meta-colour:red --mime-type=text/x-ember",
            &[&small_path, &key],
        );
        // 12 MiB in 5 MiB parts.
        let mid_key = format!("{b}/mid.bin");
        c.s3cmd(
            sig,
            "put --multipart-chunk-size-mb=5",
            &[&mid_path, &mid_key],
        );
        c.s3cmd(sig, "get --force", &[&mid_key, &got]);
        assert!(
            fs::read(&got).unwrap() == mid,
            "{sig}: 12 MiB download differs"
        );

        let out = c.s3cmd(sig, "ls", &[&format!("{b}/")]);
        assert!(
            out.stdout.contains(&format!("DIR  {b}/docs/")),
            "{sig}: {}",
            out.describe()
        );
        assert!(out.stdout.contains(&mid_key), "{sig}: {}", out.describe());
        let out = c.s3cmd(sig, "ls --recursive --list-md5", &[&format!("{b}/")]);
        assert!(
            out.stdout.contains(&md5_hex(&small)),
            "{sig}: {}",
            out.describe()
        );
        // For a multipart ETag s3cmd shows the MD5 it stored in its own metadata.
        assert!(
            out.stdout.contains(&md5_hex(&mid)),
            "{sig}: {}",
            out.describe()
        );
        let out = c.s3cmd(sig, "la", &[]);
        assert!(out.stdout.contains(&mid_key), "{sig}: {}", out.describe());

        let out = c.s3cmd(sig, "info", &[&key]);
        assert!(
            out.stdout.contains("text/x-ember"),
            "{sig}: {}",
            out.describe()
        );
        assert!(
            out.stdout.contains("x-amz-meta-colour: red"),
            "{sig}: {}",
            out.describe()
        );
        assert!(
            out.stdout.contains(&md5_hex(&small)),
            "{sig}: {}",
            out.describe()
        );
        let out = c.s3cmd(sig, "info", &[&b]);
        assert!(out.stdout.contains(REGION), "{sig}: {}", out.describe());

        // Server-side copy and move.
        let moved = format!("{b}/moved/ü.txt");
        c.s3cmd(sig, "cp", &[&key, &format!("{b}/copied.txt")]);
        c.s3cmd(sig, "mv", &[&format!("{b}/copied.txt"), &moved]);
        c.s3cmd(sig, "get --force", &[&moved, &got]);
        assert_eq!(fs::read(&got).unwrap(), small, "{sig}");

        // A signed URL (SigV2 query auth, whatever the config) read by a plain client.
        let out = c.s3cmd(sig, "signurl", &[&key, "+300"]);
        let (status, body) = http_get(&out.stdout);
        assert_eq!(
            (status, body.as_slice()),
            (200, small.as_slice()),
            "{}",
            out.stdout
        );

        // sync up twice (the second uploads nothing), and down.
        let remote_tree = format!("{b}/tree/");
        let out = c.s3cmd(sig, "sync", &[&tree, &remote_tree]);
        assert_eq!(
            out.stdout.matches("upload:").count(),
            3,
            "{sig}: {}",
            out.describe()
        );
        let out = c.s3cmd(sig, "sync", &[&tree, &remote_tree]);
        assert_eq!(
            out.stdout.matches("upload:").count(),
            0,
            "{sig}: {}",
            out.describe()
        );
        let back = format!("{}/", c.arg(&format!("back-{sig}")));
        fs::create_dir_all(&back).unwrap();
        let out = c.s3cmd(sig, "sync", &[&remote_tree, &back]);
        assert_eq!(
            out.stdout.matches("download:").count(),
            3,
            "{sig}: {}",
            out.describe()
        );
        assert_eq!(c.read(&format!("back-{sig}/sub/b é.txt")), b"bb");
        assert_eq!(c.read(&format!("back-{sig}/sub/c.bin")), data(50_000, 4));

        // Missing keys, delete, remove the bucket.
        let missing = format!("{b}/no-such-key");
        c.fails_with(c.s3cmd_cmd(sig, "info", &[&missing]), "404");
        c.fails_with(c.s3cmd_cmd(sig, "get", &[&missing, &got]), "does not exist");
        c.s3cmd(sig, "del", &[&key]);
        let out = c.s3cmd(sig, "del --recursive --force", &[&format!("{b}/")]);
        assert_eq!(
            out.stdout.matches("delete:").count(),
            5,
            "{sig}: {}",
            out.describe()
        );
        // Refused unless empty (BucketNotEmpty), so this also shows everything went.
        c.s3cmd(sig, "rb", &[&b]);
        let out = c.s3cmd(sig, "ls", &[]);
        assert!(!out.stdout.contains(&b), "{sig}: {}", out.describe());
    }

    // s3cmd's default config signs V4 for region "US": Ember's error names its region, and
    // s3cmd signs again for it, as it does against S3.
    c.s3cmd("us", "mb s3://s3cmd-us", &[]);
    c.s3cmd("us", "put", &[&small_path, "s3://s3cmd-us/a.txt"]);
    let out = c.s3cmd("us", "ls s3://s3cmd-us", &[]);
    assert!(
        out.stdout.contains("s3://s3cmd-us/a.txt"),
        "{}",
        out.describe()
    );
    let out = c.s3cmd("us", "ls", &[]);
    assert!(out.stdout.contains("s3://s3cmd-us"), "{}", out.describe());
}

// ---------------------------------------------------------------------------------------------
// rclone
// ---------------------------------------------------------------------------------------------

/// rclone as `provider = Other` and `Minio`: mkdir, copy (multipart past the cutoff), lsjson,
/// check and md5sum, server-side copyto/moveto, ranged cat, touch, settier, delete, rmdir.
#[test]
fn rclone_round_trips_as_other_and_minio() {
    require("rclone");
    let ember = start();
    let c = Clients::new(&ember);
    let big = data(7 << 20, 5);
    c.file("src/one.txt", b"one\n");
    c.file("src/sp ü.txt", b"two two\n");
    c.file("src/sub/three.bin", &data(30_000, 6));
    c.file("src/big.bin", &big);
    let src = c.arg("src");

    for remote in ["other", "minio"] {
        let b = format!("{remote}:rclone-{remote}");
        let dir = format!("{b}/dir");
        c.rclone("mkdir", &[&b]);
        // big.bin is past the upload cutoff: multipart in 5 MiB parts.
        c.rclone(
            "copy --s3-upload-cutoff 5M --s3-chunk-size 5M",
            &[&src, &dir],
        );
        let out = c.rclone("lsjson -R --hash", &[&dir]);
        let list: Value = serde_json::from_str(&out.stdout).expect("lsjson output");
        let mut files: Vec<(String, i64)> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["IsDir"] == false)
            .map(|e| {
                (
                    e["Path"].as_str().unwrap().to_owned(),
                    e["Size"].as_i64().unwrap(),
                )
            })
            .collect();
        files.sort();
        let want = [
            ("big.bin", 7 << 20),
            ("one.txt", 4),
            ("sp ü.txt", 8),
            ("sub/three.bin", 30_000),
        ]
        .map(|(p, n)| (p.to_owned(), n));
        assert_eq!(files, want, "{remote}: {}", out.stdout);
        // check compares MD5s: ETags of single-part objects, rclone's metadata otherwise.
        c.rclone("check", &[&src, &dir]);
        let out = c.rclone("md5sum", &[&dir]);
        let line = format!("{}  big.bin", md5_hex(&big));
        assert!(out.stdout.contains(&line), "{remote}: {}", out.describe());

        // Server-side copy (CopyObject, and UploadPartCopy past the copy cutoff), move.
        c.rclone(
            "copyto",
            &[&format!("{dir}/one.txt"), &format!("{b}/copy/one.txt")],
        );
        let (from, to) = (format!("{dir}/big.bin"), format!("{b}/copy/big.bin"));
        c.rclone("copyto --s3-copy-cutoff 5M", &[&from, &to]);
        let (from, to) = (format!("{dir}/sp ü.txt"), format!("{b}/moved/sp ü.txt"));
        c.rclone("moveto", &[&from, &to]);
        let out = c.rclone("lsf -R --files-only", &[&b]);
        let mut listed = lines(&out.stdout);
        listed.sort_unstable();
        let want = [
            "copy/big.bin",
            "copy/one.txt",
            "dir/big.bin",
            "dir/one.txt",
            "dir/sub/three.bin",
            "moved/sp ü.txt",
        ];
        assert_eq!(listed, want, "{remote}");
        let copied = format!("copied-{remote}.bin");
        c.rclone("copyto", &[&format!("{b}/copy/big.bin"), &c.arg(&copied)]);
        assert!(
            c.read(&copied) == big,
            "{remote}: server-side multipart copy differs"
        );

        // Range reads.
        let out = c.rclone(
            "cat --offset 1000 --count 4096",
            &[&format!("{dir}/big.bin")],
        );
        assert!(out.raw == big[1000..1000 + 4096], "{remote}: range differs");
        let out = c.rclone("cat --offset 1 --count 2", &[&format!("{dir}/one.txt")]);
        assert_eq!(out.stdout, "ne", "{remote}");
        let out = c.rclone("cat --tail 4", &[&format!("{b}/moved/sp ü.txt")]);
        assert_eq!(out.stdout, "two\n", "{remote}");

        // Modification time and storage class: copies of an object onto itself.
        let one = format!("{dir}/one.txt");
        c.rclone("touch -t 2021-02-03T04:05:06", &[&one]);
        let out = c.rclone("lsl", &[&one]);
        assert!(
            out.stdout.contains("2021-02-03 04:05:06"),
            "{remote}: {}",
            out.describe()
        );
        c.rclone("settier STANDARD_IA", &[&one]);
        let out = c.rclone("cat", &[&one]);
        assert_eq!(out.stdout, "one\n", "{remote}");

        // Missing key: rclone sees the 404 as "no such file" and copies nothing.
        rclone_copies_nothing(&c, &format!("{dir}/no-such-key"));

        // A bucket with objects stays; delete them, then it goes.
        c.fails_with(c.rclone_cmd("rmdir", &[&b]), "BucketNotEmpty");
        c.rclone("delete", &[&b]);
        let out = c.rclone("lsf -R", &[&b]);
        assert!(
            lines(&out.stdout).is_empty(),
            "{remote}: {}",
            out.describe()
        );
        c.rclone("rmdir", &[&b]);
        let out = c.rclone("lsd", &[&format!("{remote}:")]);
        let name = format!("rclone-{remote}");
        assert!(!out.stdout.contains(&name), "{remote}: {}", out.describe());
    }
}

/// `rclone copyto --error-on-no-transfer` of a missing object: exit status 9 (nothing
/// transferred) and no local file.
fn rclone_copies_nothing(c: &Clients<'_>, missing: &str) {
    let local = c.arg("missing-download");
    let out = c.run(c.rclone_cmd("copyto --error-on-no-transfer", &[missing, &local]));
    if out.code != Some(9) {
        c.fail("expected rclone's exit status 9 (no transfer)", &out);
    }
    assert!(!Path::new(&local).exists(), "{missing} was downloaded");
}

// ---------------------------------------------------------------------------------------------
// Listings past one page
// ---------------------------------------------------------------------------------------------

/// 1100 keys, more than one 1000-key page: every client lists them all (v2 continuation
/// tokens, v1 with and without a delimiter, URL-encoded or not).
#[test]
fn listings_past_one_thousand_keys() {
    require("rclone");
    require("aws");
    require("s3cmd");
    let ember = start();
    let c = Clients::new(&ember);
    for i in 0..1100 {
        c.file(&format!("many/k {i:04}.txt"), i.to_string().as_bytes());
    }
    c.rclone("mkdir other:many-keys", &[]);
    c.rclone(
        "copy --transfers 16 --checkers 16",
        &[&c.arg("many"), "other:many-keys/d"],
    );

    let count = |out: &Out| out.stdout.lines().filter(|l| l.contains(".txt")).count();
    for words in [
        "lsf other:many-keys/d",
        "lsf --s3-list-version 1 other:many-keys/d",
        "lsf --s3-list-version 1 --s3-list-url-encode true -R --fast-list other:many-keys",
        "lsf --s3-list-version 2 --s3-list-chunk 300 -R --fast-list minio:many-keys",
    ] {
        assert_eq!(count(&c.rclone(words, &[])), 1100, "rclone {words}");
    }
    let out = c.aws("s3 ls s3://many-keys/d/", &[]);
    assert_eq!(count(&out), 1100, "aws s3 ls");
    assert!(
        out.stdout.trim_end().ends_with(" k 1099.txt"),
        "aws s3 ls: last key"
    );
    let out = c.aws(
        "s3api list-objects --bucket many-keys --query length(Contents)",
        &[],
    );
    assert_eq!(out.stdout.trim(), "1100", "aws s3api list-objects (v1)");
    for sig in ["v2", "v4"] {
        let out = c.s3cmd(sig, "ls s3://many-keys/d/", &[]);
        assert_eq!(count(&out), 1100, "s3cmd {sig}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input through the clients
// ---------------------------------------------------------------------------------------------

/// A wrong secret (SignatureDoesNotMatch), an unknown key (InvalidAccessKeyId) and missing
/// keys or buckets, as each client reports them; nothing gets written.
#[test]
fn bad_credentials_and_missing_keys_through_every_client() {
    require("aws");
    require("s3cmd");
    require("rclone");
    let ember = start();
    let c = Clients::new(&ember);
    let small_path = c.file("small.txt", b"x");
    c.rclone("mkdir other:guarded", &[]);
    c.rclone("copyto", &[&small_path, "other:guarded/there.txt"]);

    // aws CLI: S3's code in stderr and a failing exit status.
    for (profile, code) in [
        ("badsecret", "SignatureDoesNotMatch"),
        ("nokey", "InvalidAccessKeyId"),
    ] {
        let p = ["--profile", profile];
        let out = c.fails_with(c.aws_cmd("s3 ls s3://guarded/", &p), code);
        assert!(out.stderr.contains("ListObjectsV2"), "{}", out.describe());
        let put = "s3api put-object --bucket guarded --key new.txt --body";
        c.fails_with(c.aws_cmd(put, &[&small_path, p[0], p[1]]), code);
    }
    let cmd = c.aws_cmd("s3api head-object --bucket guarded --key missing.txt", &[]);
    c.fails_with(cmd, "Not Found");
    let get = "s3api get-object --bucket guarded --key missing.txt";
    c.fails_with(c.aws_cmd(get, &[&c.arg("o")]), "NoSuchKey");
    c.fails_with(c.aws_cmd("s3 ls s3://no-such-bucket/", &[]), "NoSuchBucket");

    // s3cmd, both signature versions.
    for (config, code) in [
        ("badsecret-v2", "SignatureDoesNotMatch"),
        ("badsecret-v4", "SignatureDoesNotMatch"),
        ("nokey", "InvalidAccessKeyId"),
    ] {
        c.fails_with(c.s3cmd_cmd(config, "ls s3://guarded", &[]), code);
        let cmd = c.s3cmd_cmd(config, "put", &[&small_path, "s3://guarded/new.txt"]);
        c.fails_with(cmd, code);
    }
    for sig in ["v2", "v4"] {
        let cmd = c.s3cmd_cmd(sig, "info s3://guarded/missing.txt", &[]);
        c.fails_with(cmd, "NoSuchKey");
    }

    // rclone.
    c.fails_with(
        c.rclone_cmd("lsf badsecret:guarded", &[]),
        "SignatureDoesNotMatch",
    );
    c.fails_with(c.rclone_cmd("lsf nokey:guarded", &[]), "InvalidAccessKeyId");
    rclone_copies_nothing(&c, "other:guarded/missing.txt");

    // Nothing was written by the refused requests.
    let out = c.rclone("lsf -R other:guarded", &[]);
    assert_eq!(lines(&out.stdout), ["there.txt"], "{}", out.describe());
}
