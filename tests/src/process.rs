//! The `ember` binary as a child process.
//!
//! [`ember_bin`] finds the binary: `$EMBER_BIN` when set, else it runs
//! `cargo build -p ember --bin ember` once per test binary (same profile and target
//! directory as the tests, found with `cargo metadata`). [`Ember::start_turn`] writes a
//! config into a fresh temp dir, starts `ember turn --config FILE`, and waits (at most
//! [`READY_TIMEOUT`]) for the contract's stdout lines:
//!
//! ```text
//! ember: listening turn/udp 127.0.0.1:PORT
//! ember: listening turn/tcp 127.0.0.1:PORT
//! ember: listening turn/tls 127.0.0.1:PORT
//! ember: listening metrics/http 127.0.0.1:PORT
//! ember: ready
//! ```
//!
//! stderr (the log) goes to `ember.log` in the temp dir and is quoted in every failure.
//! Dropping an [`Ember`] sends SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::turn_client::TestCert;

/// Longest wait for `ember: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a graceful exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `ember` binary, built on first use (see the module docs). Panics with
/// cargo's output when the build fails.
pub fn ember_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_or_build) {
        Ok(p) => p.clone(),
        Err(e) => panic!("cannot get the ember binary: {e}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("EMBER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("EMBER_BIN={} is not a file", p.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let meta = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !meta.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&meta.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&meta.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    let target = meta["target_directory"]
        .as_str()
        .ok_or("cargo metadata: no target_directory")?;
    let release = !cfg!(debug_assertions);
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--quiet", "-p", "ember", "--bin", "ember"])
        .current_dir(&root);
    // `cargo test` gives this process the variables of the ember-tests package
    // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts such as ring's declare
    // `rerun-if-env-changed` on some of them, so passing them on would make this build and
    // the developer's next one rebuild ring and everything above it, each time.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_CRATE_")
            || k.starts_with("CARGO_BIN_")
            || matches!(
                k,
                "CARGO_TARGET_TMPDIR"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            build.env_remove(k);
        }
    }
    if release {
        build.arg("--release");
    }
    let out = build
        .output()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p ember --bin ember` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = Path::new(target)
        .join(if release { "release" } else { "debug" })
        .join("ember");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("built, but {} does not exist", bin.display()))
    }
}

/// How the relay gets its TLS certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// The harness writes a fresh self-signed certificate for `localhost`/`127.0.0.1` into
    /// the temp dir and points `[tls]` at it; clients trust it via [`Ember::tls_cert`].
    TestCert,
    /// `[tls]` cert and key empty: ember generates its own (clients cannot verify it).
    Generated,
    /// No TLS listener.
    Off,
}

/// The `[turn]` settings a test varies; [`Default`] is the contract's example config.
#[derive(Debug, Clone)]
pub struct TurnOptions {
    /// `turn.relay_ip`.
    pub relay_ip: Vec<String>,
    /// `turn.allowed_peers`; empty means the default policy (loopback denied).
    pub allowed_peers: Vec<String>,
    /// `turn.users`.
    pub users: Vec<(String, String)>,
    /// `turn.auth_secrets`.
    pub auth_secrets: Vec<String>,
    /// `turn.realm`.
    pub realm: String,
    /// `turn.user_quota` (0 = unlimited).
    pub user_quota: u32,
    /// `turn.total_quota` (0 = unlimited).
    pub total_quota: u32,
    /// Where the TLS certificate comes from.
    pub tls: TlsMode,
    /// Extra raw TOML lines appended to the `[turn]` table.
    pub extra_turn_toml: String,
    /// `selftest.token` (the self-test page listens on 127.0.0.1:0 over HTTP).
    pub selftest_token: String,
}

impl Default for TurnOptions {
    fn default() -> Self {
        TurnOptions {
            relay_ip: vec!["127.0.0.1".into()],
            allowed_peers: vec!["127.0.0.0/8".into(), "::1/128".into()],
            users: vec![("alice".into(), "alicepw".into())],
            auth_secrets: vec!["s3cret".into(), "older-secret".into()],
            realm: "ember.test".into(),
            user_quota: 0,
            total_quota: 0,
            tls: TlsMode::TestCert,
            extra_turn_toml: String::new(),
            selftest_token: "selftest-token-for-tests".into(),
        }
    }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", v.join(", "))
}

impl TurnOptions {
    /// The config file text; `cert` is the certificate written for [`TlsMode::TestCert`].
    pub fn to_toml(&self, cert: Option<&TestCert>) -> String {
        let users: Vec<String> = self
            .users
            .iter()
            .map(|(u, p)| format!("{} = {}", q(u), q(p)))
            .collect();
        let tls_listen = if self.tls == TlsMode::Off {
            "[]".to_string()
        } else {
            list(&["127.0.0.1:0".to_string()])
        };
        let (cert_path, key_path) = match cert {
            Some(c) => (
                c.cert_path.display().to_string(),
                c.key_path.display().to_string(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "[turn]\n\
             listen = [\"127.0.0.1:0\"]\n\
             tls_listen = {tls_listen}\n\
             relay_ip = {relay_ip}\n\
             allowed_peers = {allowed}\n\
             realm = {realm}\n\
             users = {{ {users} }}\n\
             auth_secrets = {secrets}\n\
             user_quota = {uq}\n\
             total_quota = {tq}\n\
             {extra}\n\
             [tls]\n\
             cert = {cert}\n\
             key = {key}\n\
             \n\
             [metrics]\n\
             listen = \"127.0.0.1:0\"\n\
             \n\
             [selftest]\n\
             listen = [\"127.0.0.1:0\"]\n\
             token = {selftest_token}\n",
            relay_ip = list(&self.relay_ip),
            allowed = list(&self.allowed_peers),
            realm = q(&self.realm),
            users = users.join(", "),
            secrets = list(&self.auth_secrets),
            uq = self.user_quota,
            tq = self.total_quota,
            extra = self.extra_turn_toml,
            cert = q(&cert_path),
            key = q(&key_path),
            selftest_token = q(&self.selftest_token),
        )
    }
}

/// A running `ember` process; SIGTERM (then SIGKILL) on drop.
pub struct Ember {
    child: Option<Child>,
    dir: tempfile::TempDir,
    listening: Vec<(String, SocketAddr)>,
    cert: Option<TestCert>,
}

impl Ember {
    /// Starts `ember turn` with `opts` and waits until it is ready. Panics (quoting its
    /// output) when it exits, prints something unexpected, or is not ready in time.
    pub fn start_turn(opts: &TurnOptions) -> Ember {
        let dir = tempfile::Builder::new()
            .prefix("ember-e2e-")
            .tempdir()
            .expect("temp dir");
        let cert = (opts.tls == TlsMode::TestCert).then(|| TestCert::generate(dir.path()));
        let config = dir.path().join("ember.toml");
        fs::write(&config, opts.to_toml(cert.as_ref())).expect("write config");
        Ember::spawn(
            dir,
            cert,
            &["turn".as_ref(), "--config".as_ref(), config.as_os_str()],
        )
    }

    /// Starts `ember storage` with `storage_toml` (the body of its `[storage]` table;
    /// `data_dir` defaults to `data` in the temp dir) and waits until it is ready.
    pub fn start_storage(storage_toml: &str) -> Ember {
        let dir = tempfile::Builder::new()
            .prefix("ember-e2e-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("ember.toml");
        let data = dir.path().join("data");
        let text = format!(
            "[storage]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = {}\n{storage_toml}\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            q(&data.display().to_string())
        );
        fs::write(&config, text).expect("write config");
        Ember::spawn(
            dir,
            None,
            &["storage".as_ref(), "--config".as_ref(), config.as_os_str()],
        )
    }

    /// Starts `ember im` with `im_toml` appended to the `[im]` table (listeners on
    /// ephemeral loopback ports, fresh secrets, the database in the temp dir) and waits until
    /// it is ready. The secrets are in the returned [`crate::im::ImSecrets`].
    pub fn start_im(im_toml: &str) -> (Ember, crate::im::ImSecrets) {
        let dir = tempfile::Builder::new()
            .prefix("ember-e2e-")
            .tempdir()
            .expect("temp dir");
        let secrets = crate::im::ImSecrets::generate();
        let config = dir.path().join("ember.toml");
        let text = format!(
            "[im]\nmqtt_listen = [\"127.0.0.1:0\"]\nws_listen = [\"127.0.0.1:0\"]\n\
             http_listen = [\"127.0.0.1:0\"]\nadmin_listen = [\"127.0.0.1:0\"]\n\
             admin_secret = {}\ntoken_key = {}\ndatabase = {}\n{im_toml}\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            q(&secrets.admin_secret),
            q(&secrets.token_key),
            q(&dir.path().join("im.sqlite3").display().to_string())
        );
        fs::write(&config, text).expect("write config");
        let ember = Ember::spawn(
            dir,
            None,
            &["im".as_ref(), "--config".as_ref(), config.as_os_str()],
        );
        (ember, secrets)
    }

    /// SIGKILLs the process (no cleanup, as in a crash) and starts it again with the same
    /// arguments, config and data; waits until it is ready.
    pub fn kill9_and_restart(self, args: &[&str]) -> Ember {
        let mut this = self;
        this.kill();
        let dir = std::mem::replace(
            &mut this.dir,
            tempfile::Builder::new()
                .prefix("ember-e2e-moved-")
                .tempdir()
                .expect("temp dir"),
        );
        let config = dir.path().join("ember.toml");
        let mut argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        argv.extend(["--config".as_ref(), config.as_os_str()]);
        Ember::spawn(dir, this.cert.take(), &argv)
    }

    fn spawn(dir: tempfile::TempDir, cert: Option<TestCert>, args: &[&std::ffi::OsStr]) -> Ember {
        let bin = ember_bin();
        let log = fs::File::create(dir.path().join("ember.log")).expect("create log file");
        let mut child = Command::new(&bin)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining after `ready` so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut ember = Ember {
            child: Some(child),
            dir,
            listening: Vec::new(),
            cert,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => ember.fail(&format!(
                    "not ready within {READY_TIMEOUT:?}; stdout so far: {seen:?}"
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = ember.wait_exit(Duration::from_secs(5));
                    ember.fail(&format!(
                        "exited before `ember: ready` ({status:?}); stdout: {seen:?}"
                    ))
                }
            };
            seen.push(line.clone());
            if line.trim() == "ember: ready" {
                break;
            }
            if let Some(rest) = line.strip_prefix("ember: listening ") {
                let mut parts = rest.split_whitespace();
                let (Some(what), Some(addr), None) = (parts.next(), parts.next(), parts.next())
                else {
                    ember.fail(&format!("malformed listening line {line:?}"));
                };
                let addr: SocketAddr = addr
                    .parse()
                    .unwrap_or_else(|e| ember.fail(&format!("bad address in {line:?}: {e}")));
                ember.listening.push((what.to_string(), addr));
            }
        }
        ember
    }

    /// Panics with `msg`, the config and the log.
    fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        let config = fs::read_to_string(self.dir.path().join("ember.toml")).unwrap_or_default();
        panic!(
            "ember: {msg}\n--- config ---\n{config}\n--- ember.log ---\n{}",
            self.log()
        );
    }

    /// The address printed as `ember: listening WHAT ADDR` (e.g. `"turn/udp"`).
    pub fn addr(&self, what: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| {
                panic!(
                    "ember printed no `listening {what}` line: {:?}",
                    self.listening
                )
            })
    }

    /// Every `listening` line, in order.
    pub fn listening(&self) -> &[(String, SocketAddr)] {
        &self.listening
    }

    pub fn turn_udp(&self) -> SocketAddr {
        self.addr("turn/udp")
    }
    pub fn turn_tcp(&self) -> SocketAddr {
        self.addr("turn/tcp")
    }
    pub fn turn_tls(&self) -> SocketAddr {
        self.addr("turn/tls")
    }
    /// The self-test page's HTTP listener (`http://ADDR/selftest`).
    pub fn selftest_http(&self) -> SocketAddr {
        self.addr("selftest/http")
    }
    pub fn metrics_addr(&self) -> SocketAddr {
        self.addr("metrics/http")
    }

    /// The certificate the TLS listener serves ([`TlsMode::TestCert`] only).
    pub fn tls_cert(&self) -> &TestCert {
        self.cert.as_ref().expect("started with TlsMode::TestCert")
    }

    /// The server's temp dir (config, certificate, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything ember logged to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("ember.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(self.child.as_mut()?, Instant::now() + timeout)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit. `None` when it did not exit within [`STOP_TIMEOUT`]
    /// (it is then killed). The temp dir (and [`Ember::log`]) stays until drop.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(STOP_TIMEOUT);
        if status.is_some() {
            self.child = None;
        } else {
            self.kill();
        }
        status
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(STOP_TIMEOUT).is_some() {
            self.child = None;
        } else {
            self.kill();
        }
    }
}

/// Waits for `child` to exit until `deadline` (polling); `None` if it is still running
/// then (or cannot be waited for).
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// [`wait_until`], and past the deadline kill and reap the child (`None`).
pub fn wait_or_kill(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let status = wait_until(child, deadline);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
