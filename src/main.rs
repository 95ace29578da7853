//! `ember`: one binary for every Ember service. `ember init` writes a commented config,
//! `ember up` runs every enabled service, `ember turn` only the relay, and
//! `ember check-config` validates a config without starting anything.
//!
//! Started services print one line per listening socket to stdout, in the exact form
//! `ember: listening <service>/<proto> <addr>`, then `ember: ready` (tests parse them).

mod selftest;
mod services;

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ember_common::config::{process_env, Config, ConfigError};
use ember_common::template::{random_secret, render_config_template};
use ember_common::tls::TlsError;
use ember_common::{logging, shutdown};
use ember_turn::StartError;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use services::{Service, DEV_PORT_SUBSTITUTES};

/// How long services get to finish after SIGINT/SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Exit status for a config that cannot be loaded or is invalid.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "ember", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented config file with fresh secrets.
    Init {
        /// Where to write it.
        #[arg(long, default_value = "ember.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run every enabled service. Without --config: built-in development defaults.
    Up {
        /// Config file (TOML); keys can be overridden by EMBER_<SECTION>__<KEY> variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run only the object store (S3 and Qiniu APIs, bucket domains) and the metrics endpoint.
    Storage {
        /// Config file (TOML); keys can be overridden by EMBER_<SECTION>__<KEY> variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run only the messaging core (MQTT, short-link HTTP and admin APIs) and the metrics
    /// endpoint.
    Im {
        /// Config file (TOML); keys can be overridden by EMBER_<SECTION>__<KEY> variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run only the STUN/TURN relay (and the metrics endpoint).
    Turn {
        /// Config file (TOML); keys can be overridden by EMBER_<SECTION>__<KEY> variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a TURN server (Ember's or any other) before going live: STUN, allocations over
    /// UDP/TCP/TLS, the certificate, credentials both ways, the relay address, data through
    /// the relay, the port range and ICE gathering. Exit status 0 only if all pass.
    Selftest(selftest::Args),
    /// Load and validate a config, print its warnings, start nothing.
    CheckConfig {
        /// Config file (TOML); without it the built-in defaults and EMBER_* variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Which services a run starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// `ember up`: every service enabled in the config.
    All,
    /// `ember turn`: the relay, enabled or not.
    Turn,
    /// `ember storage`: the object store, enabled or not.
    Storage,
    /// `ember im`: the messaging core, enabled or not.
    Im,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Selftest(args) => return selftest::main(args),
        Command::Init { path, force } => init(&path, force),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Up { config } => serve(config, Scope::All),
        Command::Turn { config } => serve(config, Scope::Turn),
        Command::Storage { config } => serve(config, Scope::Storage),
        Command::Im { config } => serve(config, Scope::Im),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config_error = e.chain().any(|c| {
                c.is::<ConfigError>()
                    || c.is::<TlsError>()
                    || matches!(c.downcast_ref(), Some(StartError::Config(_)))
            });
            for line in format!("{e:#}").lines() {
                eprintln!("ember: {line}");
            }
            ExitCode::from(if config_error { EXIT_CONFIG } else { 1 })
        }
    }
}

/// `ember init`: writes the template, mode 0600 (it holds secrets).
fn init(path: &Path, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            )
        }
        r => r.with_context(|| format!("cannot create {}", path.display()))?,
    };
    // An existing file keeps its mode on open; secrets must not stay world-readable.
    file.set_permissions(Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(render_config_template().as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// Loads the config file, or the built-in defaults when there is none; both with the
/// `EMBER_<SECTION>__<KEY>` overrides of the environment.
fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::defaults_with_env(process_env()),
    }
}

/// Name of the config source in messages.
fn source_name(path: Option<&Path>) -> String {
    path.map_or_else(|| "built-in defaults".into(), |p| p.display().to_string())
}

/// `ember check-config`.
fn check_config(path: Option<&Path>) -> anyhow::Result<()> {
    let name = source_name(path);
    let cfg = load(path)?;
    let warnings = cfg.validate().with_context(|| name.clone())?;
    ember_common::tls::check(&cfg.tls).context("[tls]")?;
    for cert in ember_common::tls::inspect(&cfg.tls).context("[tls]")? {
        let file = cert
            .cert
            .as_deref()
            .map_or("self-signed".to_owned(), |p| p.display().to_string());
        let names = if cert.names.is_empty() {
            "no DNS names".to_owned()
        } else {
            cert.names.join(", ")
        };
        let expiry = cert
            .not_after
            .and_then(|t| u64::try_from(t).ok())
            .map_or("unknown".to_owned(), |t| {
                ember_storage::time::UtcDateTime::from_unix(t).iso8601_extended()
            });
        println!("tls: {file}: {names}; expires {expiry}");
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    println!(
        "{name}: OK ({} warning{})",
        warnings.len(),
        if warnings.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `ember up` and `ember turn`.
fn serve(path: Option<PathBuf>, scope: Scope) -> anyhow::Result<()> {
    let mut cfg = load(path.as_deref())?;
    let run_turn = scope == Scope::Turn || (scope == Scope::All && cfg.turn.enabled);
    let run_storage = scope == Scope::Storage || (scope == Scope::All && cfg.storage.enabled);
    let run_im = scope == Scope::Im || (scope == Scope::All && cfg.im.enabled);
    let dev = path.is_none();
    // Built-in defaults have no credentials: make one up for this run, so the relay is
    // usable right away (and validation does not complain about it).
    let dev_secret =
        (dev && run_turn && cfg.turn.users.is_empty() && cfg.turn.auth_secrets.is_empty())
            .then(random_secret);
    cfg.turn.auth_secrets.extend(dev_secret.clone());
    // Likewise a token for the self-test page's one-click credentials.
    let dev_token = (dev
        && run_turn
        && cfg.selftest.enabled
        && cfg.selftest.token.is_empty()
        && !cfg.turn.auth_secrets.is_empty())
    .then(random_secret);
    if let Some(t) = &dev_token {
        cfg.selftest.token = t.clone();
    }
    // Likewise an access key for the object store.
    let dev_storage_key = (dev && run_storage && cfg.storage.credentials.is_empty()).then(|| {
        (
            ember_common::template::random_access_key(),
            ember_common::template::random_token(30),
        )
    });
    if let Some((ak, sk)) = &dev_storage_key {
        cfg.storage.credentials.insert(ak.clone(), sk.clone());
    }
    if !cfg.storage.enabled && scope == Scope::Storage {
        cfg.storage.enabled = true;
    }
    // And the messaging core's admin secret and token key (tokens die with the process).
    let dev_im_secret = (dev && run_im && cfg.im.admin_secret.is_empty()).then(|| {
        cfg.im.token_key = ember_common::template::random_token(40);
        ember_common::template::random_token(40)
    });
    if let Some(s) = &dev_im_secret {
        cfg.im.admin_secret = s.clone();
    }
    if !cfg.im.enabled && scope == Scope::Im {
        cfg.im.enabled = true;
    }
    let warnings = cfg
        .validate()
        .with_context(|| source_name(path.as_deref()))?;
    if !run_turn && !run_storage && !run_im {
        return Err(anyhow::Error::new(ConfigError::Validation(vec![
            ember_common::config::Problem {
                key: "turn.enabled, storage.enabled, im.enabled".into(),
                message: "every service is disabled, nothing to run".into(),
            },
        ])));
    }

    logging::init(&cfg.log);
    for w in warnings {
        warn!("config: {w}");
    }
    if dev {
        warn!(
            "no --config given: running on BUILT-IN DEVELOPMENT DEFAULTS \
             (ephemeral secret, self-signed TLS); run `ember init` for a real config"
        );
        for s in DEV_PORT_SUBSTITUTES {
            warn!(
                "{}: port {} instead of the standard {} (unprivileged)",
                s.service, s.used, s.standard
            );
        }
    }
    if let Some(secret) = &dev_secret {
        print_dev_secret(secret, &cfg.turn.realm);
    }
    if let Some(token) = &dev_token {
        println!(
            "ember: ephemeral self-test token (dev only, valid for this run): {token}\n\
             ember:   one-click relay test: http://127.0.0.1:{port}/selftest#token={token}",
            port = cfg.selftest.listen.first().map_or(8088, |a| a.port()),
        );
        flush();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if let Some((ak, sk)) = &dev_storage_key {
        let port = cfg.storage.listen.first().map_or(9000, |a| a.port());
        println!(
            "ember: ephemeral storage access key (dev only, valid for this run): {ak} / {sk}\n\
             ember:   AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} aws --endpoint-url http://127.0.0.1:{port} s3 ls"
        );
        flush();
    }
    if let Some(secret) = &dev_im_secret {
        let port = cfg.im.admin_listen.first().map_or(18080, |a| a.port());
        println!(
            "ember: ephemeral IM admin secret (dev only, valid for this run): {secret}\n\
             ember:   admin API on 127.0.0.1:{port}, signed as docs/PROTOCOL.md says"
        );
        flush();
    }
    runtime.block_on(run(cfg, run_turn, run_storage, run_im))
}

fn print_dev_secret(secret: &str, realm: &str) {
    println!(
        "ember: ephemeral TURN auth secret (dev only, valid for this run): {secret}\n\
         ember:   derive a credential (TURN REST API, realm {realm:?}) valid for one hour:\n\
         ember:     username=\"$(( $(date +%s) + 3600 )):alice\"\n\
         ember:     password=\"$(printf %s \"$username\" | openssl dgst -binary -sha1 -hmac '{secret}' | base64)\"\n\
         ember:   for a permanent secret run `ember init` and start with --config ember.toml"
    );
    flush();
}

fn flush() {
    // Nothing useful to do when stdout is gone; the logs on stderr still work.
    let _ = std::io::stdout().flush();
}

/// Starts the services, announces their sockets, and waits for a signal (or a service
/// that stops on its own), then shuts everything down within [`SHUTDOWN_GRACE`].
async fn run(cfg: Config, run_turn: bool, run_storage: bool, run_im: bool) -> anyhow::Result<()> {
    let shutdown = shutdown::shutdown_token();
    // Own SIGHUP for the whole run, so that it never kills the process: TLS certificates
    // reload on it (ember_common::tls), nothing else does yet.
    match shutdown::sighup() {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP received");
                }
            });
        }
        Err(e) => warn!("cannot handle SIGHUP: {e}"),
    }

    let mut started: Vec<Service> = Vec::new();
    let result = async {
        let tls = services::tls_provider(&cfg, run_turn, run_storage, run_im, &shutdown).await?;
        if run_turn {
            started.push(services::start_turn(&cfg, tls.as_ref(), &shutdown).await?);
            let turn = started.last();
            let token = cfg.selftest.token.clone();
            if let Some(s) =
                services::start_selftest(&cfg, &token, turn, tls.as_ref(), &shutdown).await?
            {
                started.push(s);
            }
        }
        if run_storage {
            started.push(services::start_storage(&cfg, tls.as_ref(), &shutdown).await?);
        }
        if run_im {
            started.extend(services::start_im(&cfg, tls.as_ref(), &shutdown).await?);
        }
        if let Some(m) = services::start_metrics(&cfg, &shutdown).await? {
            started.push(m);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        shutdown.cancel();
        return Err(e);
    }

    let mut running = JoinSet::new();
    for service in started {
        for (proto, addr) in &service.listening {
            println!("ember: listening {}/{proto} {addr}", service.name);
            flush();
        }
        let name = service.name;
        running.spawn(async move {
            service.stopped.await;
            name
        });
    }
    println!("ember: ready");
    flush();
    info!("ready");

    let mut failed = None;
    tokio::select! {
        // Cancellation first: a signal also makes services finish, and that is no failure.
        biased;
        () = shutdown.cancelled() => {}
        Some(stopped) = running.join_next() => {
            // After a signal a stopping service is expected, not a failure.
            if !shutdown.is_cancelled() {
                let name = stopped.unwrap_or("a service");
                error!("{name} stopped unexpectedly, shutting down");
                failed = Some(name);
                shutdown.cancel();
            }
        }
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => info!("stopped"),
        Err(_) => warn!("services did not stop within {SHUTDOWN_GRACE:?}, exiting anyway"),
    }
    match failed {
        Some(name) => bail!("{name} stopped unexpectedly"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["ember", "up", "--config", "x.toml"]).unwrap();
        assert!(matches!(cli.command, Command::Up { config: Some(p) } if p == Path::new("x.toml")));
        let cli = Cli::try_parse_from(["ember", "init"]).unwrap();
        assert!(
            matches!(cli.command, Command::Init { path, force: false } if path == Path::new("ember.toml"))
        );
        assert!(Cli::try_parse_from(["ember", "check-config", "-c", "a.toml"]).is_ok());
        assert!(Cli::try_parse_from(["ember", "turn"]).is_ok());
    }

    #[test]
    fn init_refuses_to_overwrite_and_writes_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.toml");
        std::fs::write(&path, "keep").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(init(&path, false).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");

        init(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.turn.auth_secrets.len(), 1);
    }
}
