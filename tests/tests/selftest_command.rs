//! `ember selftest` end to end: the real binary's `selftest` subcommand against a real
//! `ember turn` (healthy and deliberately misconfigured) and against coturn's
//! `turnserver`, judged by its `--json` report and its exit status.
//!
//! - Healthy Ember, static user, every transport: exit 0, every check passes (the IPv6
//!   relay and the expired REST credential are skipped: no IPv6 relay address, no
//!   `--secret`), no data lost, ICE gathering finds a relay candidate.
//! - `--secret`: the expired REST credential is refused.
//! - Misconfigurations, each named by its hint: a loopback relay without `--allow-private`
//!   (a warning; `--strict` makes it fail), a wrong secret, a closed TCP port, a
//!   certificate nobody trusts (`--ca` not given), a peer policy that denies loopback.
//! - The table output and a bad target (exit 2).
//! - coturn with a static user and with a REST secret passes on UDP, TCP and TLS, ICE
//!   gathering included (its data checks may warn about loss: see [`coturn_run`]).
//!
//! Every run is killed after [`RUN_TIMEOUT`]; each test starts its own servers on
//! ephemeral ports, so they run in parallel.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_tests::coturn::{CoturnAuth, CoturnOptions, CoturnServer};
use ember_tests::process::{ember_bin, wait_or_kill};
use ember_tests::{Ember, TurnOptions};
use serde_json::Value;

/// Longest one `ember selftest` run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Every check id of a full run on udp,tcp,tls with credentials and an IPv4 relay.
const ALL_CHECKS: &[&str] = &[
    "dns",
    "binding.udp",
    "auth.required",
    "allocate.udp",
    "connect.tcp",
    "binding.tcp",
    "allocate.tcp",
    "connect.tls",
    "tls.certificate",
    "binding.tls",
    "allocate.tls",
    "relay_address.ipv4",
    "data.udp",
    "data.tcp",
    "data.tls",
    "auth.wrong_password",
    "auth.expired_rest",
    "relay_ipv6",
    "relay_ports",
    "ice",
];

/// One finished (or killed) `ember selftest` run.
struct Run {
    args: Vec<String>,
    /// Exit code; `None` when killed at [`RUN_TIMEOUT`] or ended by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// More to show when something fails (e.g. the server's log).
    context: String,
}

impl Run {
    /// Everything about the run, for failure messages.
    fn describe(&self) -> String {
        format!(
            "ember selftest {}\nexit code {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr,
            self.context
        )
    }

    fn assert_code(&self, want: i32) {
        assert_eq!(
            self.code,
            Some(want),
            "expected exit code {want}\n{}",
            self.describe()
        );
    }

    /// The `--json` report.
    fn report(&self) -> Report<'_> {
        let json: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document: {e}\n{}", self.describe())
        });
        Report { run: self, json }
    }
}

/// Runs `ember selftest ARGS`; kills it after [`RUN_TIMEOUT`].
fn selftest(args: &[String]) -> Run {
    let bin = ember_bin();
    let dir = tempfile::Builder::new()
        .prefix("ember-e2e-selftest-")
        .tempdir()
        .expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("selftest")
        .args(args)
        .current_dir(dir.path())
        // Credentials come from the arguments only.
        .env_remove("EMBER_SELFTEST_PASSWORD")
        .env_remove("EMBER_SELFTEST_SECRET")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = started + RUN_TIMEOUT;
    let status = wait_or_kill(&mut child, deadline);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Run {
        args: args.to_vec(),
        code: status.and_then(|s| s.code()),
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed: started.elapsed(),
        context: String::new(),
    }
}

/// The parsed `--json` report of a run.
struct Report<'a> {
    run: &'a Run,
    json: Value,
}

impl Report<'_> {
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.run.describe())
    }

    fn checks(&self) -> &[Value] {
        self.json["checks"]
            .as_array()
            .unwrap_or_else(|| self.fail("no \"checks\" array"))
    }

    fn ids(&self) -> Vec<&str> {
        self.checks()
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default())
            .collect()
    }

    fn check(&self, id: &str) -> &Value {
        let mut found = self.checks().iter().filter(|c| c["id"] == id);
        let c = found
            .next()
            .unwrap_or_else(|| self.fail(&format!("no check {id:?}")));
        if found.next().is_some() {
            self.fail(&format!("check {id:?} appears twice"));
        }
        c
    }

    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap_or_default()
    }

    fn assert_status(&self, id: &str, want: &str) {
        if self.status(id) != want {
            self.fail(&format!(
                "check {id:?} is {:?}, expected {want:?}: {}",
                self.status(id),
                self.check(id)
            ));
        }
    }

    /// The check's hint; fails when it has none or it does not mention `needle`.
    fn assert_hint_mentions(&self, id: &str, needle: &str) {
        let hint = self.check(id)["hint"].as_str().unwrap_or_default();
        if !hint.contains(needle) {
            self.fail(&format!(
                "the hint of {id:?} does not mention {needle:?}: {}",
                self.check(id)
            ));
        }
    }

    fn assert_result_mentions(&self, id: &str, needle: &str) {
        let result = self.check(id)["result"].as_str().unwrap_or_default();
        if !result.contains(needle) {
            self.fail(&format!(
                "the result of {id:?} does not mention {needle:?}: {}",
                self.check(id)
            ));
        }
    }

    /// Every check passes except those in `skipped`, which are skipped; exactly the checks
    /// in `ids` ran; the summary and `ok` agree.
    fn assert_all_pass(&self, ids: &[&str], skipped: &[&str]) {
        let mut got = self.ids();
        let mut want = ids.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            self.fail(&format!("checks ran: {got:?}, expected {want:?}"));
        }
        for c in self.checks() {
            let id = c["id"].as_str().unwrap_or_default();
            if skipped.contains(&id) {
                self.assert_status(id, "skip");
            } else {
                self.assert_status(id, "pass");
            }
        }
        let s = &self.json["summary"];
        let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX) as usize;
        if (n("pass"), n("warn"), n("fail"), n("skip"))
            != (ids.len() - skipped.len(), 0, 0, skipped.len())
        {
            self.fail(&format!("summary {s} does not match the checks"));
        }
        if self.json["ok"] != true {
            self.fail("\"ok\" is not true");
        }
    }

    /// The data check for `proto` carried traffic with no loss at all.
    fn assert_no_loss(&self, proto: &str) {
        let id = format!("data.{proto}");
        let d = &self.check(&id)["details"];
        let sent = d["sent"].as_u64().unwrap_or(0);
        if sent == 0 || d["lost"] != 0 || d["loss_percent"].as_f64() != Some(0.0) {
            self.fail(&format!("{id}: expected packets and 0% loss: {d}"));
        }
    }

    /// The relay candidates webrtc-rs gathered (the report's `ice` section).
    fn relay_candidates(&self) -> Vec<SocketAddr> {
        let candidates = self.json["ice"]["candidates"]
            .as_array()
            .unwrap_or_else(|| self.fail("no ice.candidates"));
        candidates
            .iter()
            .filter(|c| c["kind"] == "relay")
            .map(|c| {
                let ip: Option<IpAddr> = c["address"].as_str().and_then(|a| a.parse().ok());
                match (ip, c["port"].as_u64().and_then(|p| u16::try_from(p).ok())) {
                    (Some(ip), Some(port)) => SocketAddr::new(ip, port),
                    _ => self.fail(&format!("bad relay candidate {c}")),
                }
            })
            .collect()
    }

    /// The relayed addresses of `allocate.PROTO`.
    fn relayed(&self, proto: &str) -> Vec<SocketAddr> {
        let id = format!("allocate.{proto}");
        self.check(&id)["details"]["relayed"]
            .as_array()
            .unwrap_or_else(|| self.fail(&format!("{id} has no details.relayed")))
            .iter()
            .map(|a| {
                a.as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| self.fail(&format!("{id}: bad relayed address {a}")))
            })
            .collect()
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// `turn:127.0.0.1:PORT` for Ember's UDP/TCP listener (one port for both).
fn ember_target(ember: &Ember) -> String {
    let (udp, tcp) = (ember.turn_udp(), ember.turn_tcp());
    assert_eq!(
        udp.port(),
        tcp.port(),
        "the selftest takes one port for UDP and TCP; ember listens on {udp} and {tcp}"
    );
    format!("turn:{udp}")
}

/// The arguments of a full run against `ember` with the static user: target, credentials,
/// the TLS port and the test certificate as CA, JSON output.
fn ember_args(ember: &Ember) -> Vec<String> {
    vec![
        ember_target(ember),
        s("--user"),
        s("alice"),
        s("--password"),
        s("alicepw"),
        s("--tls-port"),
        ember.turn_tls().port().to_string(),
        s("--ca"),
        ember.tls_cert().cert_path.display().to_string(),
        s("--json"),
    ]
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|a| s(a)));
    args
}

#[test]
fn passes_against_ember_on_every_transport() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let run = selftest(&with(ember_args(&ember), &["--allow-private"]));
    let report = run.report();
    report.assert_all_pass(ALL_CHECKS, &["relay_ipv6", "auth.expired_rest"]);
    run.assert_code(0);

    assert_eq!(
        report.json["transports"],
        serde_json::json!(["udp", "tcp", "tls"])
    );
    assert_eq!(report.json["address"], "127.0.0.1");
    assert_eq!(report.json["strict"], false);
    for proto in ["udp", "tcp", "tls"] {
        let relayed = report.relayed(proto);
        if relayed.is_empty() || relayed.iter().any(|a| a.ip() != LOCALHOST) {
            report.fail(&format!(
                "allocate.{proto}: expected relay addresses on 127.0.0.1, got {relayed:?}"
            ));
        }
        report.assert_no_loss(proto);
    }
    report.assert_result_mentions("auth.required", "ember.test");
    report.assert_result_mentions("relay_ipv6", "440");
    report.assert_result_mentions("tls.certificate", "valid for 127.0.0.1");
    let ports = &report.check("relay_ports")["details"];
    if ports["ports"].as_array().map(Vec::len) != Some(8)
        || ports["unreachable"] != serde_json::json!([])
    {
        report.fail(&format!(
            "relay_ports: expected 8 reachable allocations: {ports}"
        ));
    }

    // ICE gathering by webrtc-rs: relay candidates on the relay address.
    let relay = report.relay_candidates();
    if relay.is_empty() || relay.iter().any(|a| a.ip() != LOCALHOST) {
        report.fail(&format!(
            "ice: expected relay candidates on 127.0.0.1, got {relay:?}"
        ));
    }
    report.assert_result_mentions("ice", "relay");
}

#[test]
fn expired_rest_credential_is_refused() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let run = selftest(&[
        ember_target(&ember),
        s("--secret"),
        s("s3cret"),
        s("--transport"),
        s("udp"),
        s("--allow-private"),
        s("--no-ice"),
        s("--json"),
    ]);
    let report = run.report();
    report.assert_all_pass(
        &[
            "dns",
            "binding.udp",
            "auth.required",
            "allocate.udp",
            "relay_address.ipv4",
            "data.udp",
            "auth.wrong_password",
            "auth.expired_rest",
            "relay_ipv6",
            "relay_ports",
            "ice",
        ],
        &["relay_ipv6", "ice"],
    );
    run.assert_code(0);
    report.assert_result_mentions("auth.expired_rest", "401");
    report.assert_result_mentions("auth.wrong_password", "401");
    report.assert_no_loss("udp");
}

#[test]
fn private_relay_address_warns_and_fails_with_strict() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let args = with(ember_args(&ember), &["--no-ice"]);

    let run = selftest(&args);
    let report = run.report();
    report.assert_status("relay_address.ipv4", "warn");
    report.assert_result_mentions("relay_address.ipv4", "loopback");
    report.assert_hint_mentions("relay_address.ipv4", "turn.external_ip");
    if report.json["summary"]["warn"] != 1 || report.json["summary"]["fail"] != 0 {
        report.fail("expected exactly one warning and no failure");
    }
    // Data through a loopback relay still works from here.
    for proto in ["udp", "tcp", "tls"] {
        report.assert_status(&format!("data.{proto}"), "pass");
    }
    assert_eq!(report.json["ok"], true, "{}", run.describe());
    run.assert_code(0);

    let strict = selftest(&with(args, &["--strict"]));
    let report = strict.report();
    report.assert_status("relay_address.ipv4", "warn");
    assert_eq!(report.json["strict"], true, "{}", strict.describe());
    assert_eq!(report.json["ok"], false, "{}", strict.describe());
    strict.assert_code(1);
}

#[test]
fn wrong_secret_fails_allocate_with_auth_secrets_hint() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let run = selftest(&[
        ember_target(&ember),
        s("--secret"),
        s("not-the-secret"),
        s("--transport"),
        s("udp"),
        s("--allow-private"),
        s("--no-ice"),
        s("--json"),
    ]);
    let report = run.report();
    report.assert_status("allocate.udp", "fail");
    report.assert_result_mentions("allocate.udp", "401");
    report.assert_hint_mentions("allocate.udp", "turn.auth_secrets");
    // The server did ask for credentials, and it is reachable.
    report.assert_status("auth.required", "pass");
    report.assert_status("binding.udp", "pass");
    assert_eq!(report.json["ok"], false, "{}", run.describe());
    run.assert_code(1);
}

#[test]
fn closed_tcp_port_fails_connect_with_listen_hint() {
    // A port nobody listens on: bound, then released.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("local addr").port()
    };
    let run = selftest(&[
        format!("turn:127.0.0.1:{port}"),
        s("--user"),
        s("alice"),
        s("--password"),
        s("alicepw"),
        s("--transport"),
        s("tcp"),
        s("--no-ice"),
        s("--json"),
    ]);
    let report = run.report();
    report.assert_status("connect.tcp", "fail");
    report.assert_result_mentions("connect.tcp", "refused");
    report.assert_hint_mentions("connect.tcp", "turn.listen");
    if report.ids().iter().any(|id| id.starts_with("allocate.")) {
        report.fail("no allocation can be tried without a connection");
    }
    run.assert_code(1);
}

#[test]
fn untrusted_certificate_fails_but_tls_still_allocates() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let run = selftest(&[
        ember_target(&ember),
        s("--user"),
        s("alice"),
        s("--password"),
        s("alicepw"),
        s("--transport"),
        s("tls"),
        s("--tls-port"),
        ember.turn_tls().port().to_string(),
        s("--allow-private"),
        s("--no-ice"),
        s("--json"),
    ]);
    let report = run.report();
    report.assert_status("tls.certificate", "fail");
    report.assert_result_mentions("tls.certificate", "UnknownIssuer");
    report.assert_hint_mentions("tls.certificate", "--ca");
    report.assert_status("connect.tls", "pass");
    report.assert_status("binding.tls", "pass");
    report.assert_status("allocate.tls", "pass");
    report.assert_status("data.tls", "pass");
    if report.json["summary"]["fail"] != 1 {
        report.fail("expected exactly one failure (tls.certificate)");
    }
    run.assert_code(1);
}

#[test]
fn denied_loopback_peer_fails_data_with_allowed_peers_hint() {
    let ember = Ember::start_turn(&TurnOptions {
        allowed_peers: Vec::new(),
        ..TurnOptions::default()
    });
    let run = selftest(&[
        ember_target(&ember),
        s("--user"),
        s("alice"),
        s("--password"),
        s("alicepw"),
        s("--transport"),
        s("udp"),
        s("--allow-private"),
        s("--no-ice"),
        s("--json"),
    ]);
    let report = run.report();
    report.assert_status("allocate.udp", "pass");
    report.assert_status("data.udp", "fail");
    report.assert_result_mentions("data.udp", "403");
    report.assert_hint_mentions("data.udp", "turn.allowed_peers");
    run.assert_code(1);
    // The relay says so in its log too (once a minute at most, at its next metrics flush).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ember.log().contains("refused a peer address by policy") {
        assert!(
            Instant::now() < deadline,
            "no log line about the refused peer:\n{}",
            ember.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn table_output_names_checks_hints_and_verdict() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let target = ember_target(&ember);

    let ok = selftest(&[
        target.clone(),
        s("--user"),
        s("alice"),
        s("--password"),
        s("alicepw"),
        s("--transport"),
        s("udp"),
        s("--allow-private"),
        s("--no-ice"),
    ]);
    ok.assert_code(0);
    for needle in [
        "Ember relay self-test of",
        "stun binding udp",
        "allocate udp",
        "data through relay udp",
        "wrong password refused",
        "\nOK: ",
    ] {
        assert!(
            ok.stdout.contains(needle),
            "table lacks {needle:?}\n{}",
            ok.describe()
        );
    }
    assert!(!ok.stdout.contains("FAILED"), "{}", ok.describe());
    // Progress goes to stderr, never into the table.
    assert!(
        ok.stderr.contains("ember selftest: checking allocate udp"),
        "{}",
        ok.describe()
    );
    assert!(!ok.stdout.contains("checking"), "{}", ok.describe());

    let failed = selftest(&[
        target,
        s("--secret"),
        s("not-the-secret"),
        s("--transport"),
        s("udp"),
        s("--allow-private"),
        s("--no-ice"),
    ]);
    failed.assert_code(1);
    let line = failed
        .stdout
        .lines()
        .find(|l| l.contains("FAIL") && l.contains("allocate udp"))
        .unwrap_or_else(|| panic!("no FAIL line for allocate udp\n{}", failed.describe()));
    assert!(line.contains("401"), "{line}");
    assert!(
        failed
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("hint:") && l.contains("turn.auth_secrets")),
        "no hint line\n{}",
        failed.describe()
    );
    assert!(
        failed
            .stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("FAILED: ")),
        "the last line is not the verdict\n{}",
        failed.describe()
    );
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        vec![s("turn:host:notaport"), s("--json")],
        vec![s("turn:"), s("--json")],
        vec![s("turn:127.0.0.1"), s("--timeout"), s("0")],
        vec![s("turn:127.0.0.1"), s("--user"), s("alice")],
        vec![s("turn:127.0.0.1"), s("--transport"), s("sctp")],
    ] {
        let run = selftest(&args);
        run.assert_code(2);
        assert!(
            run.stdout.is_empty(),
            "nothing on stdout\n{}",
            run.describe()
        );
        assert!(
            !run.stderr.is_empty(),
            "an explanation on stderr\n{}",
            run.describe()
        );
    }
    let run = selftest(&[s("turn:host:notaport")]);
    assert!(run.stderr.contains("bad port"), "{}", run.describe());
}

/// A full run against coturn on UDP, TCP and TLS, ICE included; returns the run for more
/// assertions. (The burst's window is sized for the 64 KiB receive buffer coturn sets on its
/// relay sockets, so no loss is expected over loopback.)
fn coturn_run(server: &CoturnServer, creds: &[&str]) -> Run {
    let mut args = vec![format!("turn:{}", server.addr())];
    args.extend(creds.iter().map(|c| s(c)));
    args.extend([
        s("--tls-port"),
        server.tls_addr().port().to_string(),
        s("--ca"),
        server.tls_cert().cert_path.display().to_string(),
        s("--allow-private"),
        s("--json"),
    ]);
    let mut run = selftest(&args);
    run.context = format!(
        "\n--- coturn: turnserver {} ---\n{}",
        server.args().join(" "),
        server.log()
    );
    let report = run.report();
    let skipped: &[&str] = if creds.contains(&"--secret") {
        &["relay_ipv6"]
    } else {
        &["relay_ipv6", "auth.expired_rest"]
    };
    report.assert_all_pass(ALL_CHECKS, skipped);
    run.assert_code(0);
    // coturn's relay addresses come from its own range.
    let (min, max) = server.relay_ports();
    let in_range = |a: &SocketAddr| a.ip() == LOCALHOST && (min..=max).contains(&a.port());
    for proto in ["udp", "tcp", "tls"] {
        let relayed = report.relayed(proto);
        if relayed.is_empty() || !relayed.iter().all(in_range) {
            report.fail(&format!(
                "allocate.{proto}: expected relay addresses on 127.0.0.1:{min}-{max}, got {relayed:?}"
            ));
        }
    }
    report.assert_result_mentions("relay_ipv6", "440");
    let relay = report.relay_candidates();
    if relay.is_empty() || !relay.iter().all(in_range) {
        report.fail(&format!(
            "ice: expected relay candidates on 127.0.0.1:{min}-{max}, got {relay:?}"
        ));
    }
    drop(report);
    run
}

#[test]
fn passes_against_coturn_with_a_static_user() {
    let server = CoturnServer::start(&CoturnOptions::default());
    let run = coturn_run(&server, &["--user", "alice", "--password", "alicepw"]);
    run.report()
        .assert_result_mentions("auth.wrong_password", "401");
}

#[test]
fn passes_against_coturn_with_a_rest_secret() {
    let server = CoturnServer::start(&CoturnOptions {
        auth: CoturnAuth::Rest(s("s3cret")),
        ..CoturnOptions::default()
    });
    let run = coturn_run(&server, &["--secret", "s3cret"]);
    run.report()
        .assert_result_mentions("auth.expired_rest", "401");
}
