//! The metrics endpoint answers raw HTTP/1.1 requests on a loopback port and stops on
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use ember_common::metrics::{registry, MetricsServer};
use prometheus::{IntCounter, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

async fn get(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn serves_metrics_healthz_and_404() {
    let reg = Registry::new();
    let counter = IntCounter::new("test_things_total", "Things.").unwrap();
    reg.register(Box::new(counter.clone())).unwrap();
    counter.inc_by(42);

    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), reg)
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    timeout(LIMIT, async {
        let r = get(addr, &request("GET", "/metrics")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{r}"
        );
        assert!(
            r.contains("\r\n\r\n# HELP test_things_total Things.\n"),
            "{r}"
        );
        assert!(r.contains("\ntest_things_total 42\n"), "{r}");

        let r = get(addr, &request("GET", "/healthz")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nok"), "{r}");

        let r = get(addr, &request("GET", "/nope")).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

        let r = get(addr, &request("POST", "/metrics")).await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");

        // Garbage gets an error or a closed connection, and the server keeps serving.
        let r = get(addr, "NOT HTTP\r\n\r\n").await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
        let r = get(addr, &request("GET", "/healthz")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    })
    .await
    .expect("requests timed out");

    // An idle keep-alive connection does not hold up shutdown.
    let _idle = TcpStream::connect(addr).await.unwrap();
    shutdown.cancel();
    timeout(LIMIT, task)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn global_registry_has_build_info() {
    let families = registry().gather();
    assert!(families.iter().any(|f| f.get_name() == "ember_build_info"));
}
