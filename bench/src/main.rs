//! `ember-bench`: load generators for Ember, run side by side with reference servers.
//!
//! Subcommands:
//! - `turn`: TURN relay throughput, latency, CPU per packet and memory per allocation,
//!   Ember vs coturn (see `bench/README.md`).

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
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Turn(a) => turn::run(*a),
    };
    if let Err(e) = r {
        eprintln!("ember-bench: {e:#}");
        std::process::exit(1);
    }
}
