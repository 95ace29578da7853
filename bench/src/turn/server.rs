//! Starting, watching and stopping the server under test: Ember (`ember turn --config`),
//! Debian's coturn (`turnserver` with an equivalent command line), or an external server
//! that is already running. Each started server gets a private temp directory (config,
//! logs, pid file, coturn's user db) and a listen port checked free first: coturn binds with
//! `SO_REUSEPORT`, so a second server on a busy port would silently share its traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::client::{binding_probe, Creds};
use super::sys::{self, now_ns, ProcSample};

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ember,
    Coturn,
    External,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ember => "ember",
            Kind::Coturn => "coturn",
            Kind::External => "external",
        }
    }
}

/// How to start the servers the bench owns.
#[derive(Debug, Clone)]
pub struct LaunchOpts {
    pub ember_bin: PathBuf,
    pub coturn_bin: PathBuf,
    /// Relay port range, identical for both servers.
    pub relay_ports: (u16, u16),
    /// Data-path threads (0 = the server's default: one per core for both).
    pub threads: usize,
    pub realm: String,
    pub creds: Creds,
    /// Extra lines appended to Ember's `[turn]` section.
    pub ember_extra: Vec<String>,
    /// Extra coturn command-line options.
    pub coturn_extra: Vec<String>,
}

/// A server under test.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub creds: Creds,
    pub pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
    /// What the server printed on stdout (Ember).
    stdout_rx: Option<mpsc::Receiver<String>>,
    /// Server version string, for the report.
    pub version: String,
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Server {
    /// An already running server; `pid` (optional) enables the CPU and memory columns.
    pub fn external(addr: SocketAddr, creds: Creds, pid: Option<u32>) -> Result<Server> {
        if let Some(p) = pid {
            sys::proc_sample(p).with_context(|| format!("--pid {p}"))?;
        }
        if !binding_probe(addr, Duration::from_millis(1000)) {
            bail!("no STUN Binding answer from {addr} (is the server running on UDP there?)");
        }
        Ok(Server {
            kind: Kind::External,
            addr,
            creds,
            pid,
            child: None,
            log: None,
            _tmp: None,
            stdout_rx: None,
            version: String::new(),
        })
    }

    /// Starts `ember turn --config <tmp>/ember.toml` and waits for `ember: ready`.
    pub fn start_ember(o: &LaunchOpts) -> Result<Server> {
        if !o.ember_bin.exists() {
            bail!(
                "Ember binary {} not found: build it with `cargo build --release -p ember` \
                 (same CARGO_TARGET_DIR) or pass --ember-bin",
                o.ember_bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-bench-ember-")
            .tempdir()?;
        let port = sys::pick_free_port(LOCALHOST, o.relay_ports)?;
        let users = format!("{{ {} = {:?} }}", toml_key(&o.creds.user), o.creds.password);
        let mut cfg = format!(
            "# written by ember-bench\n[turn]\nlisten = [\"127.0.0.1:{port}\"]\ntls_listen = []\n\
             relay_ip = [\"127.0.0.1\"]\nrelay_ports = \"{}-{}\"\nallowed_peers = [\"127.0.0.0/8\"]\n\
             realm = {:?}\nusers = {users}\nthreads = {}\n",
            o.relay_ports.0, o.relay_ports.1, o.realm, o.threads
        );
        if o.relay_ports.1 - o.relay_ports.0 < 9999 {
            cfg.push_str("allow_small_port_range = true\n");
        }
        for l in &o.ember_extra {
            cfg.push_str(l);
            cfg.push('\n');
        }
        cfg.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[selftest]\nenabled = false\n");
        let cfg_path = tmp.path().join("ember.toml");
        std::fs::write(&cfg_path, &cfg)?;
        let log = tmp.path().join("ember.log");
        let (child, rx) = crate::ember::spawn(&o.ember_bin, "turn", &cfg_path, &log)?;
        let pid = child.id();
        let mut srv = Server {
            kind: Kind::Ember,
            addr: SocketAddr::new(LOCALHOST, port),
            creds: o.creds.clone(),
            pid: Some(pid),
            child: Some(child),
            log: Some(log),
            _tmp: Some(tmp),
            stdout_rx: None,
            version: version_of(&o.ember_bin, "--version"),
        };
        let until = now_ns() + 30_000_000_000;
        let mut seen = Vec::new();
        let mut ready = false;
        while now_ns() < until {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening turn/udp ").nth(1) {
                        if let Ok(a) = rest.trim().parse::<SocketAddr>() {
                            srv.addr = a;
                        }
                    }
                    let done = line.trim() == "ember: ready";
                    seen.push(line);
                    if done {
                        ready = true;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            srv.check_alive().with_context(|| {
                format!(
                    "ember did not start (stdout so far: {:?})",
                    seen.join(" | ")
                )
            })?;
        }
        srv.check_alive()
            .with_context(|| format!("ember did not start (stdout: {:?})", seen.join(" | ")))?;
        if !ready {
            bail!(
                "ember did not print `ember: ready` within 30 s (stdout: {:?}); log tail:\n{}",
                seen.join(" | "),
                srv.log_tail(20)
            );
        }
        srv.stdout_rx = Some(rx);
        if !binding_probe(srv.addr, Duration::from_secs(2)) {
            bail!(
                "ember is ready but does not answer a STUN Binding on {}; log tail:\n{}",
                srv.addr,
                srv.log_tail(20)
            );
        }
        Ok(srv)
    }

    /// Starts coturn's `turnserver` with the configuration equivalent to Ember's.
    pub fn start_coturn(o: &LaunchOpts) -> Result<Server> {
        let bin = find_in_path(&o.coturn_bin).ok_or_else(|| {
            anyhow!(
                "coturn's `{}` not found (Debian: apt-get install coturn; or pass --coturn-bin)",
                o.coturn_bin.display()
            )
        })?;
        let tmp = tempfile::Builder::new()
            .prefix("ember-bench-coturn-")
            .tempdir()?;
        let port = sys::pick_free_port(LOCALHOST, o.relay_ports)?;
        let d = tmp.path();
        let log = d.join("coturn.log");
        let mut args: Vec<String> = vec![
            "-n".into(),
            "--listening-ip=127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            format!("--min-port={}", o.relay_ports.0),
            format!("--max-port={}", o.relay_ports.1),
            "--lt-cred-mech".into(),
            format!("--user={}:{}", o.creds.user, o.creds.password),
            format!("--realm={}", o.realm),
            "--allow-loopback-peers".into(),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--no-cli".into(),
            "--no-rfc5780".into(),
            format!("--log-file={}", log.display()),
            "--simple-log".into(),
            "--no-stdout-log".into(),
            format!("--pidfile={}", d.join("turnserver.pid").display()),
            format!("--userdb={}", d.join("turndb").display()),
        ];
        if o.threads > 0 {
            args.push(format!("--relay-threads={}", o.threads));
        }
        args.extend(o.coturn_extra.iter().cloned());
        let out = std::fs::File::create(d.join("coturn.stdout"))?;
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut srv = Server {
            kind: Kind::Coturn,
            addr: SocketAddr::new(LOCALHOST, port),
            creds: o.creds.clone(),
            pid: Some(pid),
            child: Some(child),
            log: Some(log),
            _tmp: Some(tmp),
            stdout_rx: None,
            version: coturn_version(&bin),
        };
        let until = now_ns() + 15_000_000_000;
        loop {
            srv.check_alive().context("coturn did not start")?;
            if binding_probe(srv.addr, Duration::from_millis(200)) {
                break;
            }
            if now_ns() > until {
                bail!(
                    "coturn does not answer a STUN Binding on {} after 15 s; log tail:\n{}",
                    srv.addr,
                    srv.log_tail(20)
                );
            }
        }
        Ok(srv)
    }

    /// CPU and memory of the server process, when known.
    pub fn sample(&self) -> Option<ProcSample> {
        self.pid.and_then(|p| sys::proc_sample(p).ok())
    }

    /// Error (with the log tail) if the server process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = c.try_wait()? {
            self.child = None;
            let mut extra = String::new();
            if let Some(rx) = &self.stdout_rx {
                let lines: Vec<String> = rx.try_iter().collect();
                if !lines.is_empty() {
                    extra = format!("\nstdout tail: {}", lines.join(" | "));
                }
            }
            bail!(
                "{} exited ({status}); log tail:\n{}{extra}",
                self.kind.name(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// The last `n` lines of the server's log file.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(p) = &self.log else {
            return "(no log)".into();
        };
        tail(p, n)
    }

    /// Error lines the server logged (Ember: level ERROR or WARN, coturn: "ERROR"), at most `n`.
    pub fn log_problems(&self, n: usize) -> Vec<String> {
        let Some(p) = &self.log else {
            return Vec::new();
        };
        let Ok(s) = std::fs::read_to_string(p) else {
            return Vec::new();
        };
        s.lines()
            .filter(|l| l.contains("ERROR") || l.contains(" WARN ") || l.contains("panicked"))
            .filter(|l| !l.contains("allowed_peers opens peer ranges"))
            .filter(|l| !l.contains("allow_loopback_peers"))
            .take(n)
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM, then SIGKILL after 5 s. Returns the exit status text.
    pub fn stop(&mut self) -> Option<String> {
        let mut c = self.child.take()?;
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let until = now_ns() + 5_000_000_000;
        while now_ns() < until {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st.to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let st = c.wait().ok()?;
        Some(format!("{st} (did not stop within 5 s of SIGTERM: killed)"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(p: &Path, n: usize) -> String {
    match std::fs::read_to_string(p) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", p.display()),
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

fn find_in_path(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.exists().then(|| bin.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// First stdout line of `bin arg`; empty if it fails or does not exit within 3 s.
fn version_of(bin: &Path, arg: &str) -> String {
    let Ok(mut c) = Command::new(bin)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    let until = now_ns() + 3_000_000_000;
    loop {
        match c.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if now_ns() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return String::new();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut so) = c.stdout.take() {
        use std::io::Read;
        let _ = so.read_to_string(&mut out);
    }
    out.lines().next().unwrap_or("").trim().to_owned()
}

fn coturn_version(bin: &Path) -> String {
    // `turnserver --version` prints the bare version on stdout.
    let v = version_of(bin, "--version");
    if v.is_empty() {
        "coturn".into()
    } else {
        format!("coturn {v}")
    }
}
