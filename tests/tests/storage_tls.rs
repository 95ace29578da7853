//! End to end through `ember storage` (the real binary): one HTTPS listener serves two
//! bucket download domains, each with its own certificate chosen by SNI from
//! `[[tls.certificates]]` (an exact name and a wildcard), the default certificate to
//! clients without SNI, and a replaced certificate file without a restart. Objects are
//! uploaded over plain HTTP (presigned S3 PUT) and downloaded over HTTPS by domain.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ember_storage::s3::sigv4::{presign_url, PresignRequest, SigningCredentials};
use ember_storage::time::UtcDateTime;
use ember_tests::metrics::scrape;
use ember_tests::Ember;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const AK: &str = "EMBERTESTACCESSKEY01";
const SK: &str = "ember-test-secret-key-0123456789";
/// Longest wait for the watcher to serve replaced files (it polls every 2 s).
const RELOAD_LIMIT: Duration = Duration::from_secs(10);
/// 2030-01-01T00:00:00Z, the expiry of every test certificate.
const NOT_AFTER: i64 = 1_893_456_000;

struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn make(names: &[&str]) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    Cert {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes `stem.pem` and `stem.key`, their mtime `bump` seconds ahead (so even coarse
/// timestamps change); returns the TOML of a `{ cert, key }` pair.
fn write(dir: &Path, stem: &str, c: &Cert, bump: u64) -> String {
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
        paths.push(format!("{:?}", path.display().to_string()));
    }
    format!("cert = {}\nkey = {}\n", paths[0], paths[1])
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that verifies against `trusted` only, or takes any certificate (to see
/// what is served to a name no certificate covers). Never resumes: every handshake shows
/// the certificate served now.
fn client(trusted: Option<&[&Cert]>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match trusted {
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.der.clone()).unwrap();
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ember_common::tls::AcceptAnyServerCert(
                ring(),
            )))
            .with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Splits a raw response into its head and body.
fn split(out: &[u8]) -> (String, Vec<u8>) {
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(out)));
    (
        String::from_utf8_lossy(&out[..at]).into_owned(),
        out[at + 4..].to_vec(),
    )
}

/// `GET path` over HTTPS with `Host: host`, the handshake as `sni` (a DNS name is sent as
/// SNI, an IP address is not). Returns the served certificate, the head and the body.
fn https_get(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    sni: &str,
    host: &str,
    path: &str,
) -> (CertificateDer<'static>, String, Vec<u8>) {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("request as {sni}: {e}"));
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer closing without close_notify after a complete response is fine here.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => panic!("response as {sni}: {e}"),
    }
    let cert = tls.conn.peer_certificates().expect("a server certificate")[0].clone();
    let (head, body) = split(&out);
    (cert, head, body)
}

/// A presigned PUT of `body` to `/bucket/key` over plain HTTP; returns the status line.
fn put(addr: SocketAddr, path: &str, body: &[u8]) -> String {
    let host = addr.to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = presign_url(&PresignRequest {
        method: "PUT",
        scheme: "http",
        host: &host,
        path,
        query: &[],
        headers: &[],
        credentials: SigningCredentials {
            access_key: AK,
            secret_key: SK,
        },
        region: "us-east-1",
        time: UtcDateTime::from_unix(now),
        expires_secs: 300,
    })
    .expect("presign");
    let target = url.split_once(&host).expect("host in url").1;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let (head, _) = split(&out);
    head.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn bucket_domains_get_their_own_certificates_and_reloads() {
    let certs = tempfile::tempdir().unwrap();
    let default = make(&["default.example.test", "127.0.0.1"]);
    let media = make(&["media.example.test"]);
    let img = make(&["*.img.example.test"]);
    let default_files = write(certs.path(), "default", &default, 0);
    let media_files = write(certs.path(), "media", &media, 0);
    let img_files = write(certs.path(), "img", &img, 0);
    // `start_storage` puts this inside `[storage]`; the `[tls]` tables after the storage
    // keys are a section of their own (the harness's `[metrics]` follows them).
    let ember = Ember::start_storage(&format!(
        "credentials = {{ {AK} = \"{SK}\" }}\n\
         buckets = [\"media\", \"img\"]\n\
         public_buckets = [\"media\", \"img\"]\n\
         bucket_domains = {{ \"media.example.test\" = \"media\", \"cdn.img.example.test\" = \"img\" }}\n\
         tls_listen = [\"127.0.0.1:0\"]\n\
         \n[tls]\n{default_files}\n\
         [[tls.certificates]]\n{media_files}\n\
         [[tls.certificates]]\n{img_files}\n"
    ));
    let http = ember.addr("storage/http");
    let https = ember.addr("storage/https");

    let cat: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let logo = b"<svg>logo</svg>".to_vec();
    assert!(put(http, "/media/cat.bin", &cat).contains(" 200 "));
    assert!(put(http, "/img/logo.svg", &logo).contains(" 200 "));

    // Each domain: its own certificate, verified by a client trusting only that one.
    let (cert, head, body) = https_get(
        https,
        &client(Some(&[&media])),
        "media.example.test",
        "media.example.test",
        "/cat.bin",
    );
    assert_eq!(cert, media.der);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, cat);
    let (cert, head, body) = https_get(
        https,
        &client(Some(&[&img])),
        "cdn.img.example.test",
        "cdn.img.example.test",
        "/logo.svg",
    );
    assert_eq!(cert, img.der);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, logo);

    // No SNI (by IP address): the default certificate; the Host still picks the bucket.
    let (cert, head, body) = https_get(
        https,
        &client(Some(&[&default])),
        "127.0.0.1",
        "media.example.test",
        "/cat.bin",
    );
    assert_eq!(cert, default.der);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, cat);
    // A name no certificate covers: the default too.
    let (cert, _, _) = https_get(
        https,
        &client(None),
        "unknown.example.test",
        "media.example.test",
        "/cat.bin",
    );
    assert_eq!(cert, default.der);

    // Expiry per served name, for alerts.
    let m = scrape(ember.metrics_addr()).expect("scrape");
    for name in [
        "media.example.test",
        "*.img.example.test",
        "default.example.test",
    ] {
        assert_eq!(
            m.get("ember_tls_certificate_expiry_seconds", &[("name", name)]),
            NOT_AFTER as f64,
            "{name}: {}",
            m.text
        );
    }

    // Replace the wildcard's files: served within a few polls, no restart, others kept.
    let img2 = make(&["*.img.example.test"]);
    write(certs.path(), "img", &img2, 10);
    let trusting_both = client(Some(&[&img, &img2]));
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let (cert, head, body) = https_get(
            https,
            &trusting_both,
            "cdn.img.example.test",
            "cdn.img.example.test",
            "/logo.svg",
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, logo);
        if cert == img2.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within {RELOAD_LIMIT:?}; log:\n{}",
            ember.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (cert, _, body) = https_get(
        https,
        &client(Some(&[&media])),
        "media.example.test",
        "media.example.test",
        "/cat.bin",
    );
    assert_eq!((cert, body), (media.der.clone(), cat));
    let log = ember.log();
    assert!(
        log.contains("tls: certificate reloaded (files changed)"),
        "{log}"
    );
}
