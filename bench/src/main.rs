//! `ember-bench`: load generators for Ember, run side by side with reference servers.
//!
//! Subcommands:
//! - `turn`: TURN relay throughput, latency, CPU per packet and memory per allocation,
//!   Ember vs coturn (see `bench/README.md`).
//! - `storage`: S3 PUT/GET of small and large objects, Ember vs s3s-fs, plus a file-copy
//!   baseline.
//! - `im`: MQTT messaging (single chat, group, idle connections), Ember vs mosquitto.

mod ember;
mod im;
mod storage;
mod turn;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember-bench", version, about = "Load generators for Ember")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// TURN relay load: packets/s, loss, RTT, server CPU per packet and RSS (Ember vs coturn).
    Turn(Box<turn::TurnArgs>),
    /// Object store load: small-object ops/s and latency, large-object MB/s, RSS (Ember vs s3s-fs).
    Storage(Box<storage::StorageArgs>),
    /// MQTT messaging load: msg/s, end-to-end latency, server CPU and RSS (Ember vs mosquitto).
    Im(Box<im::ImArgs>),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Turn(a) => turn::run(*a),
        Cmd::Storage(a) => storage::run(*a),
        Cmd::Im(a) => im::run(*a),
    };
    if let Err(e) = r {
        eprintln!("ember-bench: {e:#}");
        std::process::exit(1);
    }
}
