//! Upstream S3 servers for the gateway tests, each a child process on 127.0.0.1 with an
//! ephemeral port, killed when dropped: `s3s-fs` (a file-system S3 server; install with
//! `cargo install s3s-fs --version 0.14.1 --locked --features binary`) and moto's server
//! (Python `moto[server]`, an in-memory emulation of AWS S3).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running upstream server.
pub struct Peer {
    child: Child,
    /// Closed when the peer is dropped (moto's launcher exits on end of input).
    _stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    pub name: &'static str,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's output so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Where s3s-fs keeps its buckets (directories).
    pub fn root(&self) -> PathBuf {
        self._dir.path().join("root")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The s3s-fs binary: `$EMBER_S3S_FS`, `s3s-fs` on PATH, or `~/.cargo/bin/s3s-fs`.
fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBER_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(p) = which("s3s-fs") {
        return p;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let p = home.join("bin").join("s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs not found (install: cargo install s3s-fs --version 0.14.1 --locked --features binary)"
    );
    p
}

/// Waits until `log` has a line containing `marker`, then returns the rest of that line.
fn wait_for_line(child: &mut Child, log: &Path, marker: &str, what: &str) -> String {
    let until = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r.trim().to_owned()))
        {
            return rest;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening; output:\n{text}");
        }
        assert!(
            Instant::now() < until,
            "{what} did not start within {START_TIMEOUT:?}; output:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// s3s-fs on 127.0.0.1 (port chosen by the kernel), with SigV4 credentials `ak`/`sk`.
pub fn s3s_fs(ak: &str, sk: &str) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let log = dir.path().join("s3s-fs.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(s3s_fs_bin())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--access-key", ak, "--secret-key", sk])
        .arg(&root)
        // Only its own start-up line: request logging would slow it down.
        .env("RUST_LOG", "s3s_fs=info,s3s=off")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start s3s-fs");
    let url = wait_for_line(&mut child, &log, "server is running at http://", "s3s-fs");
    let addr: SocketAddr = url.parse().unwrap_or_else(|e| panic!("{url:?}: {e}"));
    Peer {
        child,
        _stdin: None,
        addr,
        name: "s3s-fs",
        log,
        _dir: dir,
    }
}

/// The launcher: moto's threaded server on an ephemeral port, printed, until stdin closes.
///
/// moto 5.2.1 names some documents `<Operation>Response` (ListParts, CompleteMultipartUpload)
/// where S3 says `<Operation>Result`: boto3 does not look at the root element, aws-sdk-s3
/// does, so the launcher renames them.
const MOTO_LAUNCHER: &str = r#"
import sys
from moto.server import ThreadedMotoServer
from moto.s3.responses import S3Response

_serialized = S3Response.serialized

def serialized(self, action_result):
    status, headers, body = _serialized(self, action_result)
    action = self.data.get("Action") or ""
    wrong, right = action + "Response", action + "Result"
    if action and isinstance(body, (str, bytes)):
        text = body if isinstance(body, str) else body.decode()
        if ("<" + wrong + " ") in text or ("<" + wrong + ">") in text:
            text = text.replace("<" + wrong, "<" + right).replace("</" + wrong + ">", "</" + right + ">")
            body = text if isinstance(body, str) else text.encode()
            for name in list(headers):
                if name.lower() == "content-length":
                    headers[name] = str(len(text.encode()))
    return status, headers, body

S3Response.serialized = serialized
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"MOTO_LISTENING {host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"#;

/// moto's S3 server (any credentials are accepted).
pub fn moto() -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("moto.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("python3")
        .args(["-c", MOTO_LAUNCHER])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start python3 (moto's server: pip install \"moto[server]\")");
    let stdin = child.stdin.take();
    let hostport = wait_for_line(&mut child, &log, "MOTO_LISTENING ", "moto");
    let addr: SocketAddr = hostport
        .parse()
        .unwrap_or_else(|e| panic!("{hostport:?}: {e}"));
    Peer {
        child,
        _stdin: stdin,
        addr,
        name: "moto",
        log,
        _dir: dir,
    }
}
