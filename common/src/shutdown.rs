//! Process signals: a [`CancellationToken`] that SIGINT or SIGTERM cancels (every service
//! watches it to stop gracefully), and SIGHUP streams for "reload your files".

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A token cancelled on the first SIGINT or SIGTERM. The signal handlers are installed
/// before this returns, so a signal that arrives right after is not lost. Call it once,
/// inside the tokio runtime, and hand clones to every service.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let fire = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            () = recv(term, "SIGTERM") => "SIGTERM",
            () = recv(int, "SIGINT") => "SIGINT",
            () = fire.cancelled() => return,
        };
        info!("received {name}, shutting down");
        fire.cancel();
    });
    token
}

/// A new stream of SIGHUP signals ("reload certificates and files"). tokio lets several
/// streams coexist; the first one replaces SIGHUP's default action (terminate the process)
/// for good, so the binary should create one at start even when nothing reloads.
pub fn sighup() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Waits for one delivery; never resolves when the handler could not be installed.
async fn recv(sig: std::io::Result<Signal>, name: &str) {
    match sig {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            error!("cannot install the {name} handler: {e}");
            std::future::pending::<()>().await;
        }
    }
}
