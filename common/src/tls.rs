//! TLS for every Ember listener: one rustls (ring) server config whose certificate comes
//! from PEM files, or is generated self-signed for development. File certificates are
//! reloaded without a restart when the files change (polled every 2 s) or on SIGHUP; a
//! reload that fails keeps the old certificate and logs an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::TlsConfig;

/// How often the certificate and key files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Names in the self-signed development certificate.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `tls.cert` and `tls.key` is set.
    #[error(
        "tls.cert and tls.key must both be set, or both be empty for a self-signed dev certificate"
    )]
    Incomplete,
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{}: invalid PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{}: no CERTIFICATE found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key block.
    #[error("{}: no PRIVATE KEY found (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is unsupported or does not belong to the certificate.
    #[error("key {} with certificate {}", key.display(), cert.display())]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said (e.g. the keys do not match).
        #[source]
        source: rustls::Error,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
}

/// The TLS server side shared by every listener. Cheap to keep; the certificate behind
/// [`server_config`](Self::server_config) changes in place on reload.
pub struct TlsProvider {
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

/// Where the certificate comes from.
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { cert_pem: String },
}

/// The current certificate, swapped atomically on reload.
struct Resolver {
    current: ArcSwap<CertifiedKey>,
    source: Source,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Files { cert, .. } => cert.display().to_string(),
            Source::SelfSigned { .. } => "self-signed".into(),
        };
        f.debug_struct("Resolver").field("source", &source).finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Resolver {
    fn reload(&self) -> Result<(), TlsError> {
        if let Source::Files { cert, key } = &self.source {
            let loaded = load_pem_files(cert, key, &self.provider)?;
            self.current.store(Arc::new(loaded));
        }
        Ok(())
    }
}

impl TlsProvider {
    /// Loads `cfg.cert`/`cfg.key`, or generates a self-signed certificate for
    /// localhost, 127.0.0.1 and ::1 when both are empty (logged as a warning). For files,
    /// spawns the watcher that reloads them on change or SIGHUP until `shutdown`.
    pub async fn new(
        cfg: &TlsConfig,
        shutdown: CancellationToken,
    ) -> Result<TlsProvider, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, source) = match (cfg.cert.is_empty(), cfg.key.is_empty()) {
            (true, true) => {
                let (key, cert_pem) = self_signed(&provider)?;
                warn!(
                    "tls: no [tls] cert/key configured, using a self-signed certificate for {} \
                     (development only; clients will not trust it)",
                    SELF_SIGNED_NAMES.join(", ")
                );
                (key, Source::SelfSigned { cert_pem })
            }
            (false, false) => {
                let (cert, key) = (PathBuf::from(&cfg.cert), PathBuf::from(&cfg.key));
                let loaded = load_pem_files(&cert, &key, &provider)?;
                info!(cert = %cert.display(), "tls: certificate loaded");
                (loaded, Source::Files { cert, key })
            }
            _ => return Err(TlsError::Incomplete),
        };
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(key),
            source,
            provider: provider.clone(),
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        if let Source::Files { cert, key } = &resolver.source {
            tokio::spawn(watch(resolver.clone(), cert.clone(), key.clone(), shutdown));
        }
        Ok(TlsProvider {
            resolver,
            config: Arc::new(config),
        })
    }

    /// The rustls server config for every TLS listener (no ALPN).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// A tokio acceptor over [`server_config`](Self::server_config).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }

    /// Re-reads the certificate files now; on error the old certificate stays in use.
    /// A no-op for the self-signed certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.resolver.reload()
    }

    /// The generated certificate in PEM when self-signed, for clients that must trust it.
    pub fn self_signed_cert_pem(&self) -> Option<String> {
        match &self.resolver.source {
            Source::SelfSigned { cert_pem } => Some(cert_pem.clone()),
            Source::Files { .. } => None,
        }
    }
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_pem_files(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Pem {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: key.to_owned(),
        })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Checks that `cfg` names a usable certificate (for `ember check-config`); empty = the
/// self-signed dev certificate, which is always usable.
pub fn check(cfg: &TlsConfig) -> Result<(), TlsError> {
    match (cfg.cert.is_empty(), cfg.key.is_empty()) {
        (true, true) => Ok(()),
        (false, false) => {
            let provider = rustls::crypto::ring::default_provider();
            load_pem_files(Path::new(&cfg.cert), Path::new(&cfg.key), &provider).map(drop)
        }
        _ => Err(TlsError::Incomplete),
    }
}

fn self_signed(provider: &CryptoProvider) -> Result<(CertifiedKey, String), TlsError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![generated.cert.der().clone()];
    let certified = CertifiedKey::from_der(chain, key, provider)?;
    Ok((certified, generated.cert.pem()))
}

/// Modification time and length of both files; `None` for a file that cannot be read.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

/// Reloads when either file changes (polled) or on SIGHUP, until `shutdown`.
async fn watch(resolver: Arc<Resolver>, cert: PathBuf, key: PathBuf, shutdown: CancellationToken) {
    let mut hup = crate::shutdown::sighup()
        .map_err(|e| warn!("tls: no SIGHUP reload: {e}"))
        .ok();
    let mut last = stamp(&cert, &key);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = stamp(&cert, &key);
                if now == last {
                    continue;
                }
                last = now;
                "files changed"
            }
            Some(()) = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                last = stamp(&cert, &key);
                "SIGHUP"
            }
        };
        match resolver.reload() {
            Ok(()) => info!(cert = %cert.display(), "tls: certificate reloaded ({why})"),
            Err(e) => error!(
                "tls: reload failed ({why}), keeping the previous certificate: {}",
                chain(&e)
            ),
        }
    }
}

/// `e` and its sources, `: `-separated, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
