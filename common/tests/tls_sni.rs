//! One certificate per domain over real handshakes on loopback: an HTTPS [`HttpServer`]
//! with a default certificate and two `tls.certificates` entries (an exact name and a
//! wildcard) serves each client the certificate for the name it sends (SNI), the default
//! without SNI or for an unknown name, and picks up one entry's new files without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use ember_common::config::{TlsCertificate, TlsConfig};
use ember_common::http::HttpServer;
use ember_common::tls::TlsProvider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn make(names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    Cert {
        der: c.cert.der().clone(),
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
    }
}

/// Writes `stem.pem` and `stem.key`, their mtime `bump` seconds ahead (so that even a
/// filesystem with coarse timestamps sees a change), and returns them as a config entry.
fn write(dir: &Path, stem: &str, c: &Cert, bump: u64) -> TlsCertificate {
    let t = SystemTime::now() + Duration::from_secs(bump);
    let mut paths = Vec::new();
    for (ext, pem) in [("pem", &c.cert_pem), ("key", &c.key_pem)] {
        let path = dir.join(format!("{stem}.{ext}"));
        std::fs::write(&path, pem).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        paths.push(path.display().to_string());
    }
    TlsCertificate {
        cert: paths[0].clone(),
        key: paths[1].clone(),
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(config: ClientConfig) -> TlsConnector {
    let mut config = config;
    // A resumed session shows the certificate of the first handshake: always do full ones.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// A client that verifies the server's certificate against `trusted`.
fn verifying(trusted: &[&Cert]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).unwrap();
    }
    connector(
        ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A client that takes any certificate (checking only the handshake signature), to see
/// what is served for a name no certificate covers.
fn accepting_any() -> TlsConnector {
    connector(
        ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ember_common::tls::AcceptAnyServerCert(
                ring(),
            )))
            .with_no_client_auth(),
    )
}

/// One HTTPS request to `addr` as `name` (a DNS name is sent as SNI, an IP address is
/// not); returns the certificate the server presented.
async fn fetch(addr: SocketAddr, connector: &TlsConnector, name: &str) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake as {name}: {e}"));
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn serves_each_domain_its_certificate_and_reloads_one() {
    let dir = tempfile::tempdir().unwrap();
    let default = make(&["default.example.test", "127.0.0.1"]);
    let media = make(&["media.example.test"]);
    let img = make(&["*.img.example.test"]);
    let d = write(dir.path(), "default", &default, 0);
    let cfg = TlsConfig {
        cert: d.cert,
        key: d.key,
        certificates: vec![
            write(dir.path(), "media", &media, 0),
            write(dir.path(), "img", &img, 0),
        ],
    };
    let shutdown = CancellationToken::new();
    let tls = TlsProvider::new(&cfg, shutdown.clone()).await.unwrap();
    assert!(tls.self_signed_cert_pem().is_none());
    assert!(tls.has_certificate_for("media.example.test"));
    assert!(tls.has_certificate_for("Cdn.IMG.example.test."));
    assert!(!tls.has_certificate_for("img.example.test"));
    assert!(!tls.has_certificate_for("other.example.test"));
    let names: Vec<Vec<String>> = tls.certificates().into_iter().map(|c| c.names).collect();
    assert_eq!(
        names,
        [
            vec!["default.example.test"],
            vec!["media.example.test"],
            vec!["*.img.example.test"]
        ]
    );

    let tls_addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = HttpServer::bind("test", &[], &[tls_addr], Some(tls.server_config()))
        .await
        .unwrap();
    let addr = server.local_addrs()[0].1;
    let router = Router::new().route("/", get(|| async { "ok" }));
    let serving = tokio::spawn(server.run(router, shutdown.clone()));

    let only = |c: &Cert| verifying(&[c]);
    let any = accepting_any();
    timeout(LIMIT, async {
        // Each client trusts only the certificate it must get, and verifies its name.
        assert_eq!(
            fetch(addr, &only(&media), "media.example.test").await,
            media.der
        );
        assert_eq!(
            fetch(addr, &only(&img), "a.img.example.test").await,
            img.der
        );
        assert_eq!(
            fetch(addr, &only(&img), "B.IMG.example.test").await,
            img.der
        );
        // No SNI (connecting by IP address): the default.
        assert_eq!(fetch(addr, &only(&default), "127.0.0.1").await, default.der);
        // Names no certificate covers: the default.
        for name in [
            "other.example.test",
            "img.example.test",
            "x.y.img.example.test",
        ] {
            assert_eq!(fetch(addr, &any, name).await, default.der, "{name}");
        }
    })
    .await
    .expect("requests timed out");

    // New files for media.example.test only: served within a few poll intervals, with no
    // restart and no reload() call; the other certificates stay.
    let media2 = make(&["media.example.test"]);
    write(dir.path(), "media", &media2, 10);
    let trusting_both = verifying(&[&media, &media2]);
    let seen = timeout(LIMIT, async {
        while fetch(addr, &trusting_both, "media.example.test").await != media2.der {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the new media certificate was not served");
    timeout(LIMIT, async {
        assert_eq!(
            fetch(addr, &only(&img), "c.img.example.test").await,
            img.der
        );
        assert_eq!(fetch(addr, &only(&default), "127.0.0.1").await, default.der);
    })
    .await
    .expect("requests timed out");

    // A broken replacement is not served: media2 stays in use.
    std::fs::write(
        dir.path().join("media.pem"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(tls.reload().is_err());
    timeout(LIMIT, async {
        assert_eq!(
            fetch(addr, &trusting_both, "media.example.test").await,
            media2.der
        );
    })
    .await
    .expect("requests timed out");

    shutdown.cancel();
    timeout(LIMIT, serving)
        .await
        .expect("server did not stop")
        .unwrap();
}
