//! SIGTERM cancels the shutdown token; SIGHUP reaches a `sighup()` stream and does not
//! kill the process. Signals go to this test process only, after the handlers exist.

use std::time::Duration;

use ember_common::shutdown::{shutdown_token, sighup};
use tokio::time::timeout;

fn signal_self(sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_cancels_and_sighup_is_delivered() {
    let mut hup = sighup().unwrap();
    signal_self("-HUP");
    timeout(Duration::from_secs(10), hup.recv())
        .await
        .expect("SIGHUP not delivered");

    let token = shutdown_token();
    assert!(!token.is_cancelled());
    signal_self("-TERM");
    timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("SIGTERM did not cancel the token");
}
