//! Starting the `ember` binary under test, shared by every bench: one subcommand with the
//! generated config file as its whole configuration (no `EMBER_*` overrides, no `RUST_LOG`),
//! stderr into a log file, stdout lines on a channel (drained until the process exits, so it
//! never blocks on a full pipe).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use anyhow::{Context, Result};

/// Spawns `bin subcommand --config cfg`; returns the child and its stdout lines.
pub fn spawn(
    bin: &Path,
    subcommand: &str,
    cfg: &Path,
    log: &Path,
) -> Result<(Child, Receiver<String>)> {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("EMBER_") {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd
        .arg(subcommand)
        .arg("--config")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("ember stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("ember-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Nobody may listen any more: keep draining anyway.
                let _ = tx.send(line);
            }
        })?;
    Ok((child, rx))
}
