//! `ember-bench storage`: S3 PUT/GET load against Ember's object store (`ember storage`,
//! fs backend) and the reference `s3s-fs`, both started fresh on the same disk, plus a
//! plain file copy with fdatasync as the disk's baseline. See `bench/README.md`.

mod client;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::RngCore;
use serde_json::json;

use client::{repeated_sha256, Conn, RepeatBody, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerChoice {
    Ember,
    #[value(name = "s3s-fs")]
    S3sFs,
    Both,
}

#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Server(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub server: ServerChoice,
    /// Ember binary [default: $CARGO_TARGET_DIR/release/ember, else next to ember-bench].
    #[arg(long)]
    pub ember_bin: Option<PathBuf>,
    /// s3s-fs binary (`cargo install s3s-fs --version 0.14.1 --locked`).
    #[arg(long, default_value = "s3s-fs")]
    pub s3s_fs_bin: PathBuf,
    /// Directory under which the servers' data dirs and the baseline files are created
    /// (the disk being measured).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of small-object PUTs, then the same of GETs.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Concurrent requests (one keep-alive connection each).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Small object size, bytes.
    #[arg(long, default_value_t = 4096)]
    pub small_size: usize,
    /// Large object size, MiB.
    #[arg(long, default_value_t = 64)]
    pub large_mib: usize,
    /// Large objects PUT (each a new key), then GET.
    #[arg(long, default_value_t = 3)]
    pub large_reps: usize,
    /// Send `x-amz-content-sha256: UNSIGNED-PAYLOAD` instead of the body's SHA-256.
    #[arg(long)]
    pub unsigned_payload: bool,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

const AK: &str = "benchak";
const SK: &str = "benchsecretkey0123456789abcdef";
const BUCKET: &str = "bench";
const REGION: &str = "us-east-1";
const MB: f64 = 1e6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ember,
    S3sFs,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ember => "ember",
            Kind::S3sFs => "s3s-fs",
        }
    }
    fn fsync_note(self) -> &'static str {
        match self {
            Kind::Ember => "fdatasync + rename before the PUT is acknowledged",
            Kind::S3sFs => "no fsync: temp file, BufWriter flush, rename (data in page cache)",
        }
    }
}

struct Server {
    kind: Kind,
    addr: SocketAddr,
    pid: u32,
    child: Option<Child>,
    log: PathBuf,
    /// Its data directory, config and log; handed to the caller once the server has stopped.
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let l: Vec<&str> = s.lines().collect();
        l[l.len().saturating_sub(20)..].join("\n")
    }
    fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited ({st}); log tail:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
        }
        Ok(())
    }
    /// SIGTERM, SIGKILL after 5 s.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system, all threads) `pid` has used so far, seconds (`/proc/PID/stat`).
fn proc_cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces), from field 3 (state) on:
    // utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// VmHWM and VmRSS of `pid`, bytes (`/proc/PID/status`).
fn proc_mem(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |p: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn default_ember_bin() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("release").join("ember");
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ember")))
        .unwrap_or_else(|| PathBuf::from("target/release/ember"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn start_ember(bin: &Path, dir: &Path) -> Result<Server> {
    if !bin.exists() {
        bail!(
            "Ember binary {} not found: `cargo build --release -p ember` (same CARGO_TARGET_DIR) or --ember-bin",
            bin.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("ember-bench-ember-")
        .tempdir_in(dir)?;
    let data = tmp.path().join("data");
    let cfg = format!(
        "# written by ember-bench storage\n[storage]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = []\n\
         backend = \"fs\"\ndata_dir = {:?}\nregion = {REGION:?}\ncredentials = {{ {AK} = {SK:?} }}\n\
         buckets = [{BUCKET:?}]\nmax_object_size = {}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [selftest]\nenabled = false\n",
        data.display(),
        64u64 << 30
    );
    let cfg_path = tmp.path().join("ember.toml");
    std::fs::write(&cfg_path, cfg)?;
    let log = tmp.path().join("ember.log");
    let (child, rx) = crate::ember::spawn(bin, "storage", &cfg_path, &log)?;
    let pid = child.id();
    let mut srv = Server {
        kind: Kind::Ember,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        pid,
        child: Some(child),
        log,
        tmp: Some(tmp),
    };
    let until = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        if Instant::now() > until {
            bail!(
                "ember: no `ember: ready` within 30 s (stdout: {seen:?}); log:\n{}",
                srv.log_tail()
            );
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(rest) = line.split("listening storage/").nth(1) {
                    if let Some(a) = rest.split_whitespace().nth(1).and_then(|a| a.parse().ok()) {
                        srv.addr = a;
                    }
                }
                let done = line.trim() == "ember: ready";
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => {}
        }
        srv.check_alive()?;
    }
    if srv.addr.port() == 0 {
        bail!("ember did not print its storage address (stdout: {seen:?})");
    }
    Ok(srv)
}

fn start_s3s_fs(bin: &Path, dir: &Path) -> Result<Server> {
    let tmp = tempfile::Builder::new()
        .prefix("ember-bench-s3s-")
        .tempdir_in(dir)?;
    let root = tmp.path().join("data");
    // s3s-fs maps buckets to directories under its root.
    std::fs::create_dir_all(root.join(BUCKET))?;
    let port = free_port()?;
    let log = tmp.path().join("s3s-fs.log");
    let logf = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", AK, "--secret-key", SK])
        .arg(&root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install: cargo install s3s-fs --version 0.14.1 --locked)",
                bin.display()
            )
        })?;
    let mut srv = Server {
        kind: Kind::S3sFs,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        pid: child.id(),
        child: Some(child),
        log,
        tmp: Some(tmp),
    };
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&srv.addr, Duration::from_millis(200)).is_err() {
        srv.check_alive()?;
        if Instant::now() > until {
            bail!(
                "s3s-fs does not accept on {} after 30 s; log:\n{}",
                srv.addr,
                srv.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(srv)
}

#[derive(Debug, Default, Clone)]
struct Phase {
    ops: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Phase {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

#[derive(Debug, Default, Clone)]
struct Row {
    name: &'static str,
    fsync: &'static str,
    put: Phase,
    get: Phase,
    large_put_mbs: f64,
    large_get_mbs: f64,
    /// Server CPU (all threads) per body byte during the large PUTs / GETs, ns.
    large_put_cpu_ns: f64,
    large_get_cpu_ns: f64,
    hwm: u64,
    rss_idle: u64,
}

/// Small objects: every worker PUTs (or GETs) its own keys back to back until `secs` pass.
async fn small_phase(
    t: &Arc<Target>,
    a: &StorageArgs,
    get: bool,
    written: &[u64],
) -> Result<(Phase, Vec<u64>)> {
    let mut chunk = vec![0u8; a.small_size];
    rand::thread_rng().fill_bytes(&mut chunk);
    let chunk = Bytes::from(chunk);
    let sha: Arc<str> = repeated_sha256(&chunk, 1).into();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let t = t.clone();
        let chunk = chunk.clone();
        let sha = sha.clone();
        let have = written.get(w).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(t).await?;
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if get {
                    if have == 0 {
                        break;
                    }
                    let key = format!("s-{w}-{}", i % have);
                    let n = c.get(&key).await?;
                    if n != chunk.len() as u64 {
                        bail!("GET {key}: {n} bytes, expected {}", chunk.len());
                    }
                } else {
                    let key = format!("s-{w}-{i}");
                    c.put(&key, RepeatBody::new(chunk.clone(), 1), &sha).await?;
                }
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                i += 1;
            }
            anyhow::Ok((h, i))
        }));
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut counts = Vec::new();
    for t in tasks {
        let (wh, n) = t.await??;
        h.add(&wh)?;
        counts.push(n);
    }
    let secs = start.elapsed().as_secs_f64();
    let ms = |v: u64| v as f64 / 1e6;
    Ok((
        Phase {
            ops: h.len(),
            secs,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        },
        counts,
    ))
}

/// Large objects: MB/s of the PUTs and the GETs, and the server's CPU ns per byte in each.
async fn large_phase(t: &Arc<Target>, a: &StorageArgs, pid: u32) -> Result<[f64; 4]> {
    let mut chunk = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut chunk);
    let chunk = Bytes::from(chunk);
    let sha = repeated_sha256(&chunk, a.large_mib);
    let bytes = (a.large_mib as u64) << 20;
    let mut c = Conn::open(t.clone()).await?;
    let total = (bytes * a.large_reps as u64) as f64;
    let cpu0 = proc_cpu_secs(pid);
    let t0 = Instant::now();
    for r in 0..a.large_reps {
        c.put(
            &format!("large-{r}"),
            RepeatBody::new(chunk.clone(), a.large_mib),
            &sha,
        )
        .await?;
    }
    let put = total / t0.elapsed().as_secs_f64() / MB;
    let cpu1 = proc_cpu_secs(pid);
    let t0 = Instant::now();
    for r in 0..a.large_reps {
        let n = c.get(&format!("large-{r}")).await?;
        if n != bytes {
            bail!("GET large-{r}: {n} bytes, expected {bytes}");
        }
    }
    let get = total / t0.elapsed().as_secs_f64() / MB;
    let cpu2 = proc_cpu_secs(pid);
    let ns = |secs: f64| secs * 1e9 / total;
    Ok([put, get, ns(cpu1 - cpu0), ns(cpu2 - cpu1)])
}

/// Runs every phase against a fresh `kind` server; also returns its directory (data, log),
/// which the caller removes at the very end (see [`run`]).
fn run_server(
    kind: Kind,
    a: &StorageArgs,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<(Row, Option<tempfile::TempDir>)> {
    let mut srv = match kind {
        Kind::Ember => start_ember(&a.ember_bin.clone().unwrap_or_else(default_ember_bin), dir)?,
        Kind::S3sFs => start_s3s_fs(&a.s3s_fs_bin, dir)?,
    };
    eprintln!("{}: started, pid {}, {}", kind.name(), srv.pid, srv.addr);
    let t = Arc::new(Target {
        addr: srv.addr,
        access_key: AK.into(),
        secret_key: SK.into(),
        region: REGION.into(),
        bucket: BUCKET.into(),
        unsigned: a.unsigned_payload,
    });
    let rss_idle = proc_mem(srv.pid).1;
    let r = rt.block_on(async {
        let (put, written) = small_phase(&t, a, false, &[]).await.context("small PUT")?;
        eprintln!("{}: small PUT {:.0} ops/s", kind.name(), put.ops_s());
        let (get, _) = small_phase(&t, a, true, &written)
            .await
            .context("small GET")?;
        eprintln!("{}: small GET {:.0} ops/s", kind.name(), get.ops_s());
        let large = large_phase(&t, a, srv.pid).await.context("large objects")?;
        eprintln!(
            "{}: large PUT {:.0} MB/s ({:.2} ns CPU/B), GET {:.0} MB/s ({:.2} ns CPU/B)",
            kind.name(),
            large[0],
            large[2],
            large[1],
            large[3]
        );
        anyhow::Ok((put, get, large))
    });
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = srv.check_alive();
            return Err(e.context(format!("{}; log tail:\n{}", kind.name(), srv.log_tail())));
        }
    };
    srv.check_alive()?;
    let hwm = proc_mem(srv.pid).0;
    srv.stop();
    let row = Row {
        name: kind.name(),
        fsync: kind.fsync_note(),
        put: r.0,
        get: r.1,
        large_put_mbs: r.2[0],
        large_get_mbs: r.2[1],
        large_put_cpu_ns: r.2[2],
        large_get_cpu_ns: r.2[3],
        hwm,
        rss_idle,
    };
    Ok((row, srv.tmp.take()))
}

/// Plain file copy of `mib` MiB (source already in the page cache, like the client's
/// upload data), 1 MiB reads and writes, fdatasync before the clock stops. MB/s, and the
/// directory holding the files (removed by the caller at the end).
fn baseline_copy(dir: &Path, mib: usize, reps: usize) -> Result<(f64, tempfile::TempDir)> {
    let tmp = tempfile::Builder::new()
        .prefix("ember-bench-copy-")
        .tempdir_in(dir)?;
    let src = tmp.path().join("src");
    let mut buf = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut buf);
    {
        let mut f = std::fs::File::create(&src)?;
        for _ in 0..mib {
            f.write_all(&buf)?;
        }
        f.sync_data()?;
    }
    let t0 = Instant::now();
    for r in 0..reps {
        let mut i = std::fs::File::open(&src)?;
        let mut o = std::fs::File::create(tmp.path().join(format!("dst-{r}")))?;
        loop {
            let n = i.read(&mut buf)?;
            if n == 0 {
                break;
            }
            o.write_all(&buf[..n])?;
        }
        o.sync_data()?;
    }
    let mbs = ((mib as u64) << 20) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / MB;
    Ok((mbs, tmp))
}

/// Writes every dirty page on the machine back (`sync`), so that a phase does not pay for
/// the writeback of an earlier one (s3s-fs leaves its objects unsynced) or of other work.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

pub fn run(a: StorageArgs) -> Result<()> {
    let dir = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    if a.concurrency == 0 || a.duration <= 0.0 || a.large_mib == 0 || a.large_reps == 0 {
        bail!("--concurrency, --duration, --large-mib and --large-reps must be positive");
    }
    // The client runs on one thread, so the server keeps the other core(s).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kinds: &[Kind] = match a.server {
        ServerChoice::Ember => &[Kind::Ember],
        ServerChoice::S3sFs => &[Kind::S3sFs],
        ServerChoice::Both => &[Kind::Ember, Kind::S3sFs],
    };
    // Every file stays until all is measured: removing a run's data right after it (the
    // development VM's ext4 is mounted with `discard`) slowed whatever came next, the
    // baseline copy at times to half its speed.
    let mut keep = Vec::new();
    settle();
    let (copy, copy_dir) = baseline_copy(&dir, a.large_mib, a.large_reps)?;
    keep.push(copy_dir);
    eprintln!("baseline: file copy + fdatasync {copy:.0} MB/s");
    let mut rows = Vec::new();
    let mut failed = false;
    for &k in kinds {
        settle();
        match run_server(k, &a, &dir, &rt) {
            Ok((r, tmp)) => {
                rows.push(r);
                keep.extend(tmp);
            }
            Err(e) => {
                eprintln!("ember-bench: {}: {e:#}", k.name());
                failed = true;
            }
        }
    }
    if a.json {
        let servers: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "server": r.name,
                    "fsync": r.fsync,
                    "small_put": {"ops": r.put.ops, "secs": r.put.secs, "ops_s": r.put.ops_s(),
                                  "p50_ms": r.put.p50_ms, "p99_ms": r.put.p99_ms, "max_ms": r.put.max_ms},
                    "small_get": {"ops": r.get.ops, "secs": r.get.secs, "ops_s": r.get.ops_s(),
                                  "p50_ms": r.get.p50_ms, "p99_ms": r.get.p99_ms, "max_ms": r.get.max_ms},
                    "large_put_mb_s": r.large_put_mbs,
                    "large_get_mb_s": r.large_get_mbs,
                    "large_put_vs_copy": r.large_put_mbs / copy,
                    "large_put_server_cpu_ns_per_byte": r.large_put_cpu_ns,
                    "large_get_server_cpu_ns_per_byte": r.large_get_cpu_ns,
                    "peak_rss_bytes": r.hwm,
                    "idle_rss_bytes": r.rss_idle,
                })
            })
            .collect();
        let out = json!({
            "dir": dir.display().to_string(),
            "concurrency": a.concurrency,
            "small_size": a.small_size,
            "duration_s": a.duration,
            "large_mib": a.large_mib,
            "large_reps": a.large_reps,
            "payload": if a.unsigned_payload { "UNSIGNED-PAYLOAD" } else { "sha256" },
            "baseline_copy_fdatasync_mb_s": copy,
            "servers": servers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", table(&rows, copy, &a));
    }
    drop(keep);
    if failed {
        bail!("a server run failed (see above)");
    }
    Ok(())
}

fn table(rows: &[Row], copy: f64, a: &StorageArgs) -> String {
    let e = rows.iter().find(|r| r.name == "ember");
    let s = rows.iter().find(|r| r.name == "s3s-fs");
    let mut out =
        format!(
        "{} B objects x {} concurrent, {} s PUT then {} s GET; {} MiB objects x {}; payload {}\n\n",
        a.small_size,
        a.concurrency,
        a.duration,
        a.duration,
        a.large_mib,
        a.large_reps,
        if a.unsigned_payload { "UNSIGNED-PAYLOAD" } else { "SHA-256 signed" }
    );
    out += &format!(
        "| {:<26} | {:>10} | {:>10} | {:>12} |\n",
        "metric", "ember", "s3s-fs", "ember/s3s-fs"
    );
    out += &format!("|{:-<28}|{:->12}|{:->12}|{:->14}|\n", "", "", "", "");
    let line = |name: &str, f: &dyn Fn(&Row) -> f64, prec: usize| -> String {
        let ev = e.map(f);
        let sv = s.map(f);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        let ratio = match (ev, sv) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
            _ => "-".into(),
        };
        format!(
            "| {:<26} | {:>10} | {:>10} | {:>12} |\n",
            name,
            cell(ev),
            cell(sv),
            ratio
        )
    };
    out += &line("small PUT ops/s", &|r| r.put.ops_s(), 0);
    out += &line("small PUT p50 ms", &|r| r.put.p50_ms, 2);
    out += &line("small PUT p99 ms", &|r| r.put.p99_ms, 2);
    out += &line("small GET ops/s", &|r| r.get.ops_s(), 0);
    out += &line("small GET p50 ms", &|r| r.get.p50_ms, 2);
    out += &line("small GET p99 ms", &|r| r.get.p99_ms, 2);
    out += &line("large PUT MB/s", &|r| r.large_put_mbs, 0);
    out += &line("large GET MB/s", &|r| r.large_get_mbs, 0);
    out += &line("large PUT / file copy", &|r| r.large_put_mbs / copy, 2);
    out += &line("large PUT srv CPU ns/B", &|r| r.large_put_cpu_ns, 2);
    out += &line("large GET srv CPU ns/B", &|r| r.large_get_cpu_ns, 2);
    out += &line("peak RSS MB (VmHWM)", &|r| r.hwm as f64 / MB, 1);
    out += &format!(
        "\nbaseline: {} MiB file copy + fdatasync on the same disk: {copy:.0} MB/s (MB = 10^6 B)\n",
        a.large_mib
    );
    for r in rows {
        out += &format!("fsync: {}: {}\n", r.name, r.fsync);
    }
    out
}
