//! The TLS provider serves its certificate over a real handshake on loopback and swaps it
//! when the files change: on `reload()` and through the mtime watcher.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ember_common::config::TlsConfig;
use ember_common::tls::TlsProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn make_cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        der: c.cert.der().clone(),
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
    }
}

/// Writes both files and moves their mtime forward, so that even a filesystem with
/// coarse timestamps sees a change.
fn write_files(dir: &Path, cert: &Cert, bump: u64) {
    write_files_at(dir, cert, SystemTime::now() + Duration::from_secs(bump));
}

fn write_files_at(dir: &Path, cert: &Cert, t: SystemTime) {
    for (name, pem) in [("cert.pem", &cert.cert_pem), ("key.pem", &cert.key_pem)] {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

fn client(trusted: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    // A resumed session shows the certificate of the first handshake: always do full ones.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// One handshake against a fresh loopback listener; returns the server's certificate.
async fn handshake(
    acceptor: TlsAcceptor,
    connector: &TlsConnector,
    name: &str,
) -> CertificateDer<'static> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"hello");
    server.await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn reloads_on_demand_and_when_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (make_cert(), make_cert(), make_cert());
    write_files(dir.path(), &a, 0);
    let cfg = TlsConfig {
        cert: dir.path().join("cert.pem").display().to_string(),
        key: dir.path().join("key.pem").display().to_string(),
        ..TlsConfig::default()
    };
    let shutdown = CancellationToken::new();
    let tls = TlsProvider::new(&cfg, shutdown.clone()).await.unwrap();
    assert!(tls.self_signed_cert_pem().is_none());
    let trusting_all = client(&[&a.der, &b.der, &c.der]);

    timeout(LIMIT, async {
        // Client trusting only A completes the handshake.
        assert_eq!(
            handshake(tls.acceptor(), &client(&[&a.der]), "localhost").await,
            a.der
        );

        // Explicit reload picks up B.
        write_files(dir.path(), &b, 10);
        tls.reload().unwrap();
        assert_eq!(
            handshake(tls.acceptor(), &trusting_all, "localhost").await,
            b.der
        );

        // A broken file: reload fails and B stays in service.
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(
            handshake(tls.acceptor(), &trusting_all, "localhost").await,
            b.der
        );
        // A key that does not match the certificate is refused too.
        std::fs::write(dir.path().join("cert.pem"), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &c.key_pem).unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        assert_eq!(
            handshake(tls.acceptor(), &trusting_all, "localhost").await,
            b.der
        );
    })
    .await
    .expect("handshakes timed out");

    // The watcher notices new files within a few poll intervals, with no reload() call.
    write_files(dir.path(), &c, 20);
    let seen = timeout(LIMIT, async {
        loop {
            if handshake(tls.acceptor(), &trusting_all, "localhost").await == c.der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "watcher did not load the new certificate");

    // SIGHUP reloads even when the poll sees nothing: same mtime, same lengths.
    let mtime = std::fs::metadata(dir.path().join("cert.pem"))
        .unwrap()
        .modified()
        .unwrap();
    let d = loop {
        let d = make_cert();
        if d.cert_pem.len() == c.cert_pem.len() && d.key_pem.len() == c.key_pem.len() {
            break d;
        }
    };
    write_files_at(dir.path(), &d, mtime);
    let trusting_d = client(&[&d.der, &c.der]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        handshake(tls.acceptor(), &trusting_d, "localhost").await,
        c.der
    );
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let seen = timeout(LIMIT, async {
        while handshake(tls.acceptor(), &trusting_d, "localhost").await != d.der {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "SIGHUP did not reload the certificate");
    shutdown.cancel();
}

#[tokio::test]
async fn self_signed_for_localhost_and_loopback_ips() {
    let tls = TlsProvider::new(&TlsConfig::default(), CancellationToken::new())
        .await
        .unwrap();
    let pem = tls.self_signed_cert_pem().expect("self-signed");
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    tls.reload().unwrap();
    let connector = client(&[&der]);
    timeout(LIMIT, async {
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert_eq!(handshake(tls.acceptor(), &connector, name).await, der);
        }
    })
    .await
    .expect("handshakes timed out");
}

#[tokio::test]
async fn bad_config_is_an_error() {
    let half = TlsConfig {
        cert: "/nonexistent/cert.pem".into(),
        key: String::new(),
        ..TlsConfig::default()
    };
    assert!(TlsProvider::new(&half, CancellationToken::new())
        .await
        .is_err());
    let missing = TlsConfig {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        ..TlsConfig::default()
    };
    let err = TlsProvider::new(&missing, CancellationToken::new())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
