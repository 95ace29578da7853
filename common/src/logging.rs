//! The tracing subscriber every Ember binary uses: filter from `RUST_LOG`, else
//! `[log] level`; text or JSON lines on stderr (stdout is for machine-readable status).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. A second call (tests) is ignored. A bad `RUST_LOG`
/// falls back to `cfg.level` with a warning; a bad `cfg.level` (not validated) to "info".
pub fn init(cfg: &LogConfig) {
    let mut complaint = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::builder().parse(&s).map_err(|e| {
            complaint = Some(format!("ignoring RUST_LOG={s:?}: {e}"));
        }),
        _ => Err(()),
    }
    .or_else(|()| EnvFilter::builder().parse(&cfg.level))
    .unwrap_or_else(|_| EnvFilter::new("info"));

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = if cfg.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let (Ok(()), Some(msg)) = (installed, complaint) {
        tracing::warn!("{msg}");
    }
}
