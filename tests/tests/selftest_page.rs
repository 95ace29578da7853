//! The relay self-test page (`GET /selftest`) in Debian's headless Chromium against the real
//! `ember turn`.
//!
//! `tests/browser/selftest_page.mjs` (playwright-core driving `/usr/bin/chromium`) opens the
//! page, runs one scenario, prints what the page shows as JSON and saves a full-page
//! screenshot to `target/selftest/<scenario>.png` under the workspace root:
//! - one-click with the right token: the page gets TURN REST credentials from
//!   `POST /selftest/credentials`, gathers a relay candidate on 127.0.0.1 (a loopback relay,
//!   so the verdict is `warn` with relay scope `loopback`, not `pass`), and two relay-only
//!   peer connections exchange pings through the relay;
//! - the form with alice and a wrong password: `icecandidateerror` 401 and verdict `fail`;
//! - one-click with a wrong token: the endpoint's 401 message is shown, nothing is gathered;
//! - one-click against a relay whose peer policy denies loopback: relay candidates, but the
//!   relay-to-relay round trip fails, with the reason on the page.
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`) and Node; runs `npm ci` in
//! `tests/browser` when its `node_modules` is missing. One browser runs at a time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ember_tests::metrics;
use ember_tests::process::wait_or_kill;
use ember_tests::{Ember, TurnOptions};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "selftest-token-for-tests";
/// Longest run of the browser script (it bounds itself at 90 s; this is the backstop).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(150);
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn browser_dir() -> PathBuf {
    workspace_root().join("tests").join("browser")
}

/// Runs `cmd` with its output in files, killed after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration, what: &str) -> (ExitStatus, String, String) {
    let dir = tempfile::Builder::new()
        .prefix("ember-browser-")
        .tempdir()
        .expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + timeout;
    let Some(status) = wait_or_kill(&mut child, deadline) else {
        panic!(
            "{what} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(&out_path).unwrap_or_default(),
            fs::read_to_string(&err_path).unwrap_or_default()
        );
    };
    (
        status,
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// Checks for Chromium and Node, and installs playwright-core (`npm ci`) once.
fn ensure_browser_env() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if !Path::new(CHROMIUM).is_file() {
            return Err(format!(
                "{CHROMIUM} is missing: these tests drive Debian's Chromium; install it with \
                 `apt-get install chromium`"
            ));
        }
        match Command::new("node").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            _ => {
                return Err("`node` is missing: install Node.js 20+ and npm \
                            (`apt-get install nodejs npm`)"
                    .into())
            }
        }
        let dir = browser_dir();
        if !dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
        {
            let (status, out, err) = run_bounded(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir),
                NPM_TIMEOUT,
                "`npm ci` in tests/browser",
            );
            if !status.success() {
                return Err(format!(
                    "`npm ci --no-audit --no-fund` in {} failed ({status}):\n{out}\n{err}",
                    dir.display()
                ));
            }
        }
        Ok(())
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// Opens `http://<selftest>/selftest<fragment>` in Chromium, runs `scenario`
/// (`oneclick` or `form`) with `extra` arguments, saves `target/selftest/<name>.png`, and
/// returns what the page showed.
fn run_page(ember: &Ember, name: &str, scenario: &str, fragment: &str, extra: &[&str]) -> Value {
    ensure_browser_env();
    // Two cores: one browser at a time keeps the timings of the others sane.
    static ONE_BROWSER: Mutex<()> = Mutex::new(());
    let _one = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);

    let shots = workspace_root().join("target").join("selftest");
    fs::create_dir_all(&shots).expect("create target/selftest");
    let shot = shots.join(format!("{name}.png"));
    let _ = fs::remove_file(&shot);
    let url = format!("http://{}/selftest{fragment}", ember.selftest_http());
    let started = Instant::now();
    let (status, out, err) = run_bounded(
        Command::new("node")
            .arg(browser_dir().join("selftest_page.mjs"))
            .args(["--url", &url, "--scenario", scenario, "--screenshot"])
            .arg(&shot)
            .args(["--chromium", CHROMIUM])
            .args(extra)
            .current_dir(browser_dir()),
        BROWSER_TIMEOUT,
        "the browser script",
    );
    if !status.success() {
        panic!(
            "selftest_page.mjs ({name}) failed ({status}):\n{err}\n--- stdout ---\n{out}\n\
             --- ember.log ---\n{}",
            ember.log()
        );
    }
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("selftest_page.mjs ({name}) printed no JSON ({e}):\n{out}\n{err}")
    });
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    eprintln!(
        "{name}: browser run {:.1} s, screenshot {}",
        started.elapsed().as_secs_f64(),
        shot.display()
    );
    v
}

fn candidates<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|c| c["type"] == kind)
        .collect()
}

fn error_codes(v: &Value) -> Vec<i64> {
    v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["code"].as_i64())
        .collect()
}

fn ember_metric(ember: &Ember, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::scrape(ember.metrics_addr())
        .expect("scrape /metrics")
        .get(name, labels)
}

#[test]
fn one_click_with_the_right_token_relays_data() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let v = run_page(
        &ember,
        "oneclick-right-token",
        "oneclick",
        &format!("#token={TOKEN}"),
        &[],
    );
    let ctx = || format!("page result: {v:#}");

    // The token came from #token=, went only to the credentials endpoint, and left the URL.
    assert_eq!(v["oneclick"]["httpStatus"], 200, "{}", ctx());
    assert!(
        !v["location"].as_str().unwrap().contains(TOKEN),
        "{}",
        ctx()
    );
    let origin = format!("http://{}/", ember.selftest_http());
    for r in v["requests"].as_array().unwrap() {
        let url = r["url"].as_str().unwrap();
        assert!(
            url.starts_with(&origin),
            "request outside the page's origin: {r}"
        );
        if r["authorization"] == true {
            assert_eq!(
                (r["method"].as_str(), url.strip_prefix(&origin)),
                (Some("POST"), Some("selftest/credentials")),
                "token sent elsewhere: {r}"
            );
        }
    }

    // A relay on 127.0.0.1 is found: that is a loopback relay, so the page warns.
    assert_eq!(v["verdict"]["status"], "warn", "{}", ctx());
    assert_eq!(v["verdict"]["relayScope"], "loopback", "{}", ctx());
    assert!(
        v["verdict"]["title"].as_str().unwrap().contains("loopback"),
        "{}",
        ctx()
    );
    let relays = candidates(&v, "relay");
    assert!(!relays.is_empty(), "{}", ctx());
    for r in &relays {
        assert_eq!(r["address"], "127.0.0.1", "{}", ctx());
        assert_eq!(r["scope"], "loopback", "{}", ctx());
        assert_eq!(r["protocol"], "udp", "{}", ctx());
    }
    // relayProtocol (from getStats for UDP) and the server URL are shown per relay.
    let udp_url = format!("turn:127.0.0.1:{}?transport=udp", ember.turn_udp().port());
    let tcp_url = format!("turn:127.0.0.1:{}?transport=tcp", ember.turn_tcp().port());
    let by = |proto: &str, url: &str| {
        relays
            .iter()
            .any(|r| r["relayProtocol"] == proto && r["url"] == url)
    };
    assert!(
        by("udp", &udp_url),
        "no UDP relay from {udp_url}: {}",
        ctx()
    );
    assert!(
        by("tcp", &tcp_url),
        "no TCP relay from {tcp_url}: {}",
        ctx()
    );
    // turns: Chromium does not trust the test certificate, so that URL fails with 701
    // (explained on the page); it must not be a credential error.
    let tls_url = format!("turns:127.0.0.1:{}?transport=tcp", ember.turn_tls().port());
    let tls_ok = by("tls", &tls_url);
    let tls_701 = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["code"] == 701 && e["url"] == tls_url);
    assert!(tls_ok || tls_701, "{}", ctx());
    assert!(!error_codes(&v).contains(&401), "{}", ctx());
    // mDNS is off: host candidates carry real addresses.
    for c in v["candidates"].as_array().unwrap() {
        assert!(
            !c["address"].as_str().unwrap_or("").ends_with(".local"),
            "{}",
            ctx()
        );
    }

    // The relay-only data channel went relay to relay and every ping came back.
    let rtt = &v["rtt"];
    assert_eq!(rtt["status"], "pass", "{}", ctx());
    assert_eq!(rtt["pair"], "relay/relay", "{}", ctx());
    let median = rtt["medianMs"].as_f64().expect("median");
    let max = rtt["maxMs"].as_f64().expect("max");
    assert!(median > 0.0 && median <= max && max < 5000.0, "{}", ctx());
    assert_eq!(
        ember_metric(
            &ember,
            "ember_selftest_credentials_total",
            &[("result", "issued")]
        ),
        1.0
    );
    eprintln!("round trip through the relay: median {median} ms, max {max} ms");
}

#[test]
fn form_with_a_wrong_password_fails_with_401() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let v = run_page(
        &ember,
        "form-wrong-password",
        "form",
        "",
        &["--username", "alice", "--credential", "not-alicepw"],
    );
    let ctx = || format!("page result: {v:#}");
    assert_eq!(v["verdict"]["status"], "fail", "{}", ctx());
    assert!(candidates(&v, "relay").is_empty(), "{}", ctx());
    let udp_url = format!("turn:127.0.0.1:{}?transport=udp", ember.turn_udp().port());
    let e401 = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["code"] == 401 && e["url"] == udp_url)
        .unwrap_or_else(|| panic!("no 401 for {udp_url}: {}", ctx()));
    // Explained in plain words, pointing at the config.
    let text = e401["text"].as_str().unwrap();
    assert!(
        text.contains("wrong user name or password") && text.contains("turn.users"),
        "{}",
        ctx()
    );
    let detail = v["verdict"]["detail"].as_str().unwrap();
    assert!(detail.contains("401"), "{}", ctx());
    // No relay, so the round trip is skipped rather than left to time out.
    assert_eq!(v["rtt"]["status"], "skipped", "{}", ctx());
}

#[test]
fn one_click_with_a_wrong_token_shows_the_401_message() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let v = run_page(
        &ember,
        "oneclick-wrong-token",
        "oneclick",
        "#token=not-the-selftest-token",
        &[],
    );
    let ctx = || format!("page result: {v:#}");
    let msg = &v["oneclick"];
    assert_eq!(msg["httpStatus"], 401, "{}", ctx());
    assert_eq!(msg["status"], "error", "{}", ctx());
    let text = msg["text"].as_str().unwrap();
    assert!(text.contains("token was refused (401)"), "{}", ctx());
    // The endpoint's own message, quoted.
    assert!(text.contains("missing or wrong token"), "{}", ctx());
    assert_eq!(v["verdict"]["status"], "fail", "{}", ctx());
    assert!(v["candidates"].as_array().unwrap().is_empty(), "{}", ctx());
    assert_eq!(v["rtt"]["status"], "idle", "{}", ctx());
    assert_eq!(
        ember_metric(
            &ember,
            "ember_selftest_credentials_total",
            &[("result", "refused")]
        ),
        1.0
    );
}

#[test]
fn relay_to_relay_refused_fails_the_round_trip_with_an_explanation() {
    // The default peer policy denies loopback, so each relay refuses the other's relay
    // address as a peer: candidates are gathered, but no data can flow.
    let ember = Ember::start_turn(&TurnOptions {
        allowed_peers: Vec::new(),
        ..TurnOptions::default()
    });
    let v = run_page(
        &ember,
        "oneclick-peers-denied",
        "oneclick",
        &format!("#token={TOKEN}"),
        &[],
    );
    let ctx = || format!("page result: {v:#}");
    assert!(!candidates(&v, "relay").is_empty(), "{}", ctx());
    assert_eq!(v["rtt"]["status"], "fail", "{}", ctx());
    assert!(
        v["rtt"]["text"]
            .as_str()
            .unwrap()
            .contains("turn.allowed_peers"),
        "{}",
        ctx()
    );
    assert_eq!(v["verdict"]["status"], "fail", "{}", ctx());
    assert!(
        v["verdict"]["title"]
            .as_str()
            .unwrap()
            .contains("data does not flow"),
        "{}",
        ctx()
    );
    metrics::wait_for(
        ember.metrics_addr(),
        "a denied peer",
        Duration::from_secs(5),
        |m| m.get("ember_turn_denied_peer_total", &[]) > 0.0,
    );
}
