//! TLS for every Ember listener: one rustls (ring) server config that picks, per
//! connection, the certificate for the server name the client asks for (SNI).
//!
//! Certificates come from PEM files: the default `[tls] cert`/`key`, and any number of
//! `[[tls.certificates]]`, each chosen for the DNS names in its own subjectAltName (read
//! from the certificate, so there is no name → file mapping to keep in sync). An exact name
//! beats a one-label wildcard (`*.example.com`); a client that sends no name, or one no
//! certificate covers, gets the default. With no `cert`/`key` the default is generated
//! self-signed for development. Names are indexed when a certificate is loaded, so a
//! handshake costs a hash lookup or two, never a certificate parse.
//!
//! Every file pair is reloaded without a restart when one of its files changes (polled
//! every 2 s), and all of them on SIGHUP; a reload that fails keeps that pair's old
//! certificate and logs an error naming the file. Adding or removing entries needs a
//! restart. Each (re)load logs the names the certificate serves and its expiry, which is
//! also exported as `ember_tls_certificate_expiry_seconds{name}`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntGaugeVec, Opts};
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

/// A certificate (re)loaded with less than this left before it expires is logged as a
/// warning, seconds.
const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// Name of the expiry gauge.
const EXPIRY_METRIC: &str = "ember_tls_certificate_expiry_seconds";

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `tls.cert` and `tls.key` is set.
    #[error(
        "tls.cert and tls.key must both be set, or both be empty for a self-signed dev certificate"
    )]
    Incomplete,
    /// An entry of `tls.certificates` lacks its `cert` or its `key`.
    #[error("tls.certificates[{index}]: cert and key must both be set")]
    IncompleteEntry {
        /// Position in `tls.certificates`, from 0.
        index: usize,
    },
    /// A problem with one entry of `tls.certificates` (the source says which).
    #[error("tls.certificates[{index}]")]
    Entry {
        /// Position in `tls.certificates`, from 0.
        index: usize,
        /// What went wrong with its files.
        #[source]
        source: Box<TlsError>,
    },
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
    /// The first certificate of the file is not a well-formed X.509 certificate.
    #[error("{}: cannot parse the certificate", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What webpki said.
        #[source]
        source: webpki::Error,
    },
    /// A certificate of `tls.certificates` names no DNS name, so no client would get it.
    #[error(
        "{}: the certificate has no DNS name in its subjectAltName, so no server name (SNI) \
         selects it",
        path.display()
    )]
    NoNames {
        /// The file.
        path: PathBuf,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
}

/// What one certificate serves: for `ember check-config`, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The certificate file; `None` for the generated self-signed certificate.
    pub cert: Option<PathBuf>,
    /// The DNS names of its subjectAltName, lower case, wildcards as `*.example.com`, in
    /// certificate order.
    pub names: Vec<String>,
    /// When it expires (notAfter), Unix seconds; `None` when it could not be read.
    pub not_after: Option<i64>,
}

/// The TLS server side shared by every listener. Cheap to keep; the certificates behind
/// [`server_config`](Self::server_config) change in place on reload.
pub struct TlsProvider {
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

/// Where one certificate comes from.
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { cert_pem: String },
}

impl Source {
    fn cert_path(&self) -> Option<&Path> {
        match self {
            Source::Files { cert, .. } => Some(cert),
            Source::SelfSigned { .. } => None,
        }
    }

    /// The certificate file, or "self-signed", for logs.
    fn label(&self) -> String {
        self.cert_path()
            .map_or_else(|| "self-signed".into(), |p| p.display().to_string())
    }
}

/// One loaded certificate and what selection and operations need from it.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The leaf's DNS names, [normalized](normalize), wildcards as `*.parent`, no repeats.
    names: Vec<String>,
    /// The leaf's notAfter, Unix seconds, when readable.
    not_after: Option<i64>,
    /// The same, as written in logs.
    not_after_text: Option<String>,
}

/// Where [`Resolver::resolve`] looks a server name up; rebuilt whenever a certificate
/// changes and swapped in atomically, so a handshake takes no lock.
struct Index {
    default: Arc<CertifiedKey>,
    /// Exact DNS name → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for a `*.example.com` name → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// Slot 0 is the default certificate, slot `i + 1` is `tls.certificates[i]`.
struct Resolver {
    sources: Vec<Source>,
    state: Mutex<State>,
    index: ArcSwap<Index>,
    provider: Arc<CryptoProvider>,
}

/// What reloads change, one at a time.
struct State {
    /// The current certificate of each slot.
    loaded: Vec<Arc<Loaded>>,
    /// Names this resolver has set in the expiry gauge.
    published: Vec<String>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self.sources.iter().map(Source::label).collect();
        f.debug_struct("Resolver")
            .field("sources", &sources)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.index.load().lookup(hello.server_name()).clone())
    }
}

impl Index {
    /// The certificates' names, the earlier slot winning a name two certificates share
    /// (the default first, then `tls.certificates` in order; logged as a warning). Also
    /// returns each name's expiry, for the gauge.
    fn build(sources: &[Source], loaded: &[Arc<Loaded>]) -> (Index, BTreeMap<String, i64>) {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        let mut expiry = BTreeMap::new();
        for (slot, l) in loaded.iter().enumerate() {
            for name in &l.names {
                if let Some(&first) = owner.get(name.as_str()) {
                    warn!(
                        "tls: {name} is in both {} and {}; {} is served for it",
                        sources[first].label(),
                        sources[slot].label(),
                        sources[first].label()
                    );
                    continue;
                }
                owner.insert(name, slot);
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), l.key.clone()),
                    None => exact.insert(name.clone(), l.key.clone()),
                };
                if let Some(t) = l.not_after {
                    expiry.insert(name.clone(), t);
                }
            }
        }
        let index = Index {
            default: loaded[0].key.clone(),
            exact,
            wildcard,
        };
        (index, expiry)
    }

    /// The certificate whose names cover `server_name`: an exact name, else a wildcard
    /// for its parent; `None` when neither.
    fn find(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = normalize(server_name);
        self.exact.get(name.as_ref()).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// The certificate to serve a client that sent `server_name` (SNI).
    fn lookup(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        server_name
            .and_then(|n| self.find(n))
            .unwrap_or(&self.default)
    }
}

impl Resolver {
    /// Loads every certificate `cfg` names (errors name the file, and the entry), or
    /// generates the self-signed default; indexes them.
    fn new(cfg: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<Resolver, TlsError> {
        let mut sources = file_sources(cfg)?;
        let mut loaded = Vec::with_capacity(sources.len() + 1);
        if !matches!(sources.first(), Some((0, _))) {
            let (key, cert_pem) = self_signed(&provider)?;
            warn!(
                "tls: no [tls] cert/key configured, using a self-signed certificate for {} \
                 (development only; clients will not trust it)",
                SELF_SIGNED_NAMES.join(", ")
            );
            loaded.push(Arc::new(inspect_key(key, Path::new("self-signed"))?));
            sources.insert(0, (0, Source::SelfSigned { cert_pem }));
        }
        for (slot, source) in &sources {
            if let Source::Files { cert, key } = source {
                let l = load_slot(*slot, cert, key, &provider)?;
                log_loaded(cert, &l, "loaded");
                loaded.push(Arc::new(l));
            }
        }
        let sources: Vec<Source> = sources.into_iter().map(|(_, s)| s).collect();
        let (index, expiry) = Index::build(&sources, &loaded);
        let mut state = State {
            loaded,
            published: Vec::new(),
        };
        publish_expiry(&mut state.published, &expiry);
        Ok(Resolver {
            sources,
            state: Mutex::new(state),
            index: ArcSwap::from_pointee(index),
            provider,
        })
    }

    /// Re-reads slot `slot`'s files and, when they are good, serves them from now on (the
    /// success is logged with `why`); on error nothing changes. A no-op for the
    /// self-signed certificate.
    fn reload(&self, slot: usize, why: &str) -> Result<(), TlsError> {
        let Source::Files { cert, key } = &self.sources[slot] else {
            return Ok(());
        };
        let loaded = Arc::new(load_slot(slot, cert, key, &self.provider)?);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.loaded[slot] = loaded.clone();
        let (index, expiry) = Index::build(&self.sources, &state.loaded);
        self.index.store(Arc::new(index));
        publish_expiry(&mut state.published, &expiry);
        drop(state);
        log_loaded(cert, &loaded, &format!("reloaded ({why})"));
        Ok(())
    }

    /// The files of each slot that has some: (slot, cert, key).
    fn files(&self) -> Vec<(usize, &Path, &Path)> {
        self.sources
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match s {
                Source::Files { cert, key } => Some((slot, cert.as_path(), key.as_path())),
                Source::SelfSigned { .. } => None,
            })
            .collect()
    }
}

impl TlsProvider {
    /// Loads `cfg.cert`/`cfg.key` (the default certificate) and every `cfg.certificates`
    /// entry, or generates a self-signed default certificate for localhost, 127.0.0.1 and
    /// ::1 when `cert` and `key` are both empty (logged as a warning). When there are
    /// files, spawns the watcher that reloads them on change or SIGHUP until `shutdown`.
    pub async fn new(
        cfg: &TlsConfig,
        shutdown: CancellationToken,
    ) -> Result<TlsProvider, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Resolver::new(cfg, provider.clone())?);
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        if !resolver.files().is_empty() {
            tokio::spawn(watch(resolver.clone(), shutdown));
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

    /// Re-reads every certificate's files now. A pair that fails keeps its old
    /// certificate; the first error is returned and any further ones are logged. A no-op
    /// for the self-signed certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut first = None;
        for slot in 0..self.resolver.sources.len() {
            if let Err(e) = self.resolver.reload(slot, "on request") {
                if first.is_none() {
                    first = Some(e);
                } else {
                    error!(
                        "tls: reload failed, keeping the previous certificate: {}",
                        chain(&e)
                    );
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The generated certificate in PEM when self-signed, for clients that must trust it.
    pub fn self_signed_cert_pem(&self) -> Option<String> {
        match &self.resolver.sources[0] {
            Source::SelfSigned { cert_pem } => Some(cert_pem.clone()),
            Source::Files { .. } => None,
        }
    }

    /// Whether some certificate names `server_name` (exactly or by wildcard), i.e. a client
    /// asking for it gets a certificate made for it rather than the default one.
    pub fn has_certificate_for(&self, server_name: &str) -> bool {
        self.resolver.index.load().find(server_name).is_some()
    }

    /// The certificates in service, the default first, then `tls.certificates` in order.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let state = self
            .resolver
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.resolver
            .sources
            .iter()
            .zip(&state.loaded)
            .map(|(s, l)| info_of(s.cert_path(), l))
            .collect()
    }
}

/// The file pairs `cfg` names, each with its slot (0 = the default).
fn file_sources(cfg: &TlsConfig) -> Result<Vec<(usize, Source)>, TlsError> {
    let files = |cert: &str, key: &str| Source::Files {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    };
    let mut sources = Vec::with_capacity(cfg.certificates.len() + 1);
    match (cfg.cert.is_empty(), cfg.key.is_empty()) {
        (true, true) => {}
        (false, false) => sources.push((0, files(&cfg.cert, &cfg.key))),
        _ => return Err(TlsError::Incomplete),
    }
    for (index, c) in cfg.certificates.iter().enumerate() {
        if c.cert.is_empty() || c.key.is_empty() {
            return Err(TlsError::IncompleteEntry { index });
        }
        sources.push((index + 1, files(&c.cert, &c.key)));
    }
    Ok(sources)
}

/// Loads the files of `slot`; errors of a `tls.certificates` entry say which one, and such
/// an entry must name at least one DNS name.
fn load_slot(
    slot: usize,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let loaded = load_pem_files(cert, key, provider).and_then(|k| inspect_key(k, cert));
    let loaded = match loaded {
        Ok(l) if slot > 0 && l.names.is_empty() => Err(TlsError::NoNames {
            path: cert.to_owned(),
        }),
        other => other,
    };
    loaded.map_err(|e| match slot {
        0 => e,
        _ => TlsError::Entry {
            index: slot - 1,
            source: Box::new(e),
        },
    })
}

/// Reads the names and the expiry of `key`'s leaf certificate (from file `path`).
fn inspect_key(key: CertifiedKey, path: &Path) -> Result<Loaded, TlsError> {
    let leaf = key.end_entity_cert()?;
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|source| TlsError::Parse {
        path: path.to_owned(),
        source,
    })?;
    // Used to pick a certificate, not to verify one: the client does that.
    let mut names: Vec<String> = Vec::new();
    for name in parsed.valid_dns_names() {
        let name = normalize(name).into_owned();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let validity = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .map(|(_, c)| c.validity().not_after);
    Ok(Loaded {
        names,
        not_after: validity.map(|t| t.timestamp()),
        not_after_text: validity.map(|t| t.to_string()),
        key: Arc::new(key),
    })
}

/// Lower case ASCII without a trailing dot: the form names are indexed and looked up in.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn info_of(cert: Option<&Path>, l: &Loaded) -> CertificateInfo {
    CertificateInfo {
        cert: cert.map(Path::to_owned),
        names: l.names.clone(),
        not_after: l.not_after,
    }
}

/// Logs what a (re)loaded certificate serves and when it expires; a warning when that is
/// soon or past.
fn log_loaded(cert: &Path, l: &Loaded, what: &str) {
    let names = if l.names.is_empty() {
        "(none: served only as the default)".to_owned()
    } else {
        l.names.join(", ")
    };
    let expires = l.not_after_text.as_deref().unwrap_or("unknown");
    info!(cert = %cert.display(), %names, %expires, "tls: certificate {what}");
    let Some(not_after) = l.not_after else {
        return;
    };
    let left = not_after - unix_now();
    if left < 0 {
        warn!(cert = %cert.display(), %expires, "tls: certificate has EXPIRED; clients will refuse it");
    } else if left < EXPIRY_WARNING_SECS {
        warn!(
            cert = %cert.display(),
            %expires,
            "tls: certificate expires in {} days",
            left / 86_400
        );
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The process-wide expiry gauge, registered on first use; `None` if that failed.
fn expiry_gauge() -> Option<&'static IntGaugeVec> {
    static GAUGE: OnceLock<Option<IntGaugeVec>> = OnceLock::new();
    GAUGE
        .get_or_init(|| {
            let gauge = IntGaugeVec::new(
                Opts::new(
                    EXPIRY_METRIC,
                    "Unix time at which the certificate served for this TLS server name \
                     (wildcards as *.example.com) expires.",
                ),
                &["name"],
            )
            .and_then(|g| {
                crate::metrics::registry().register(Box::new(g.clone()))?;
                Ok(g)
            });
            gauge
                .map_err(|e| warn!("tls: cannot register {EXPIRY_METRIC}: {e}"))
                .ok()
        })
        .as_ref()
}

/// Sets the gauge to `expiry` and drops the names in `published` it no longer has.
/// (The gauge is process-wide: one [`TlsProvider`] per process owns it.)
fn publish_expiry(published: &mut Vec<String>, expiry: &BTreeMap<String, i64>) {
    let Some(gauge) = expiry_gauge() else {
        return;
    };
    for gone in published.iter().filter(|n| !expiry.contains_key(*n)) {
        let _ = gauge.remove_label_values(&[gone.as_str()]);
    }
    for (name, t) in expiry {
        gauge.with_label_values(&[name.as_str()]).set(*t);
    }
    *published = expiry.keys().cloned().collect();
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

/// Loads every certificate `cfg` names, as [`TlsProvider::new`] would, and says what each
/// serves (for `ember check-config`): the default first when it has files, then
/// `tls.certificates` in order. The self-signed default is not generated or listed.
pub fn inspect(cfg: &TlsConfig) -> Result<Vec<CertificateInfo>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    file_sources(cfg)?
        .into_iter()
        .map(|(slot, source)| match &source {
            Source::Files { cert, key } => {
                load_slot(slot, cert, key, &provider).map(|l| info_of(Some(cert), &l))
            }
            Source::SelfSigned { .. } => unreachable!("file_sources lists files only"),
        })
        .collect()
}

/// Checks that `cfg` names usable certificates (for `ember check-config`); an empty
/// `cert`/`key` = the self-signed dev certificate, which is always usable.
pub fn check(cfg: &TlsConfig) -> Result<(), TlsError> {
    inspect(cfg).map(drop)
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

/// Reloads a pair when either of its files changes (polled), every pair on SIGHUP, until
/// `shutdown`.
async fn watch(resolver: Arc<Resolver>, shutdown: CancellationToken) {
    let files = resolver.files();
    let mut hup = crate::shutdown::sighup()
        .map_err(|e| warn!("tls: no SIGHUP reload: {e}"))
        .ok();
    let mut last: Vec<Stamp> = files.iter().map(|(_, c, k)| stamp(c, k)).collect();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (why, all) = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => ("files changed", false),
            Some(()) = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => ("SIGHUP", true),
        };
        for (&(slot, cert, key), last) in files.iter().zip(&mut last) {
            let now = stamp(cert, key);
            if !all && now == *last {
                continue;
            }
            *last = now;
            if let Err(e) = resolver.reload(slot, why) {
                error!(
                    cert = %cert.display(),
                    "tls: reload failed ({why}), keeping the previous certificate: {}",
                    chain(&e)
                );
            }
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

/// Client side: a server-certificate verifier that accepts any certificate, checking only the
/// handshake signatures. For the relay self-test after the verifying handshake has failed and
/// its reason has been reported (to test the rest over TLS), and for tests that look at which
/// certificate a server presents. Never for a connection whose peer matters.
#[derive(Debug)]
pub struct AcceptAnyServerCert(pub Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsCertificate;

    /// A self-signed certificate for `names`, expiring at the start of 2030.
    struct TestCert {
        der: CertificateDer<'static>,
        cert_pem: String,
        key_pem: String,
    }

    /// 2030-01-01T00:00:00Z.
    const NOT_AFTER: i64 = 1_893_456_000;

    fn make(names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `stem.pem` and `stem.key` in `dir`; returns them as a config entry.
    fn write(dir: &Path, stem: &str, c: &TestCert) -> TlsCertificate {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, &c.cert_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        TlsCertificate {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }
    }

    fn resolver(cfg: &TlsConfig) -> Result<Resolver, TlsError> {
        Resolver::new(cfg, Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// The leaf certificate served to a client sending `sni`.
    fn served(r: &Resolver, sni: Option<&str>) -> CertificateDer<'static> {
        r.index.load().lookup(sni).cert[0].clone()
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: TlsConfig,
        default: TestCert,
        media: TestCert,
        img: TestCert,
        star: TestCert,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let default = make(&["default.example.test", "shared.example.test"]);
        // The wildcard for example.test is listed before the exact names it must not win.
        let star = make(&["*.example.test", "shared.example.test"]);
        let media = make(&["media.example.test"]);
        let img = make(&["*.IMG.example.test"]);
        let d = write(dir.path(), "default", &default);
        let cfg = TlsConfig {
            cert: d.cert,
            key: d.key,
            certificates: vec![
                write(dir.path(), "star", &star),
                write(dir.path(), "media", &media),
                write(dir.path(), "img", &img),
            ],
        };
        Setup {
            dir,
            cfg,
            default,
            media,
            img,
            star,
        }
    }

    #[test]
    fn picks_exact_then_wildcard_then_default() {
        let s = setup();
        let r = resolver(&s.cfg).unwrap();
        let cases: [(Option<&str>, &TestCert); 14] = [
            (None, &s.default),
            (Some("default.example.test"), &s.default),
            (Some("media.example.test"), &s.media),
            (Some("MEDIA.Example.Test"), &s.media),
            (Some("media.example.test."), &s.media),
            (Some("a.img.example.test"), &s.img),
            (Some("B.Img.Example.TEST."), &s.img),
            // One label only: neither a deeper name nor the parent itself.
            (Some("a.b.img.example.test"), &s.default),
            (Some("img.example.test"), &s.star),
            (Some("other.example.test"), &s.star),
            (Some("example.test"), &s.default),
            (Some("unknown.test"), &s.default),
            (Some("localhost"), &s.default),
            // Named by both the default and an entry: the default, listed first, wins.
            (Some("shared.example.test"), &s.default),
        ];
        for (sni, want) in cases {
            assert_eq!(served(&r, sni), want.der, "{sni:?}");
        }
    }

    #[test]
    fn reload_swaps_one_pair_and_keeps_it_on_error() {
        let s = setup();
        let r = resolver(&s.cfg).unwrap();
        let before = r.index.load().lookup(Some("x.img.example.test")).clone();

        let media2 = make(&["media.example.test", "video.example.test"]);
        write(s.dir.path(), "media", &media2);
        r.reload(2, "test").unwrap();
        assert_eq!(served(&r, Some("media.example.test")), media2.der);
        assert_eq!(served(&r, Some("video.example.test")), media2.der);
        // The other pairs are the same objects as before, not re-read copies.
        assert!(Arc::ptr_eq(
            &before,
            r.index.load().lookup(Some("x.img.example.test"))
        ));
        assert_eq!(served(&r, None), s.default.der);

        // A broken certificate file: the error names the entry and the file, media2 stays.
        let media_pem = s.dir.path().join("media.pem");
        std::fs::write(&media_pem, "not a certificate").unwrap();
        let err = r.reload(2, "test").unwrap_err();
        let msg = chain(&err);
        assert!(msg.starts_with("tls.certificates[1]: "), "{msg}");
        assert!(msg.contains(&media_pem.display().to_string()), "{msg}");
        assert_eq!(served(&r, Some("media.example.test")), media2.der);

        // A key from another certificate is refused too.
        std::fs::write(&media_pem, &s.media.cert_pem).unwrap();
        std::fs::write(s.dir.path().join("media.key"), &s.img.key_pem).unwrap();
        let msg = chain(&r.reload(2, "test").unwrap_err());
        assert!(msg.contains("media.key"), "{msg}");
        assert_eq!(served(&r, Some("video.example.test")), media2.der);

        // A file missing: same.
        std::fs::remove_file(s.dir.path().join("img.key")).unwrap();
        assert!(r.reload(3, "test").is_err());
        assert_eq!(served(&r, Some("x.img.example.test")), s.img.der);

        // Fixed: served again, and the names media2 had alone are gone.
        std::fs::write(s.dir.path().join("media.key"), &s.media.key_pem).unwrap();
        r.reload(2, "test").unwrap();
        assert_eq!(served(&r, Some("media.example.test")), s.media.der);
        assert_eq!(served(&r, Some("video.example.test")), s.star.der);

        // The default pair reloads the same way.
        let default2 = make(&["default.example.test"]);
        write(s.dir.path(), "default", &default2);
        r.reload(0, "test").unwrap();
        assert_eq!(served(&r, None), default2.der);
        assert_eq!(served(&r, Some("shared.example.test")), s.star.der);
    }

    #[test]
    fn self_signed_default_with_entries() {
        let dir = tempfile::tempdir().unwrap();
        let media = make(&["media.example.test"]);
        let cfg = TlsConfig {
            certificates: vec![write(dir.path(), "media", &media)],
            ..TlsConfig::default()
        };
        let r = resolver(&cfg).unwrap();
        assert!(matches!(r.sources[0], Source::SelfSigned { .. }));
        assert_eq!(served(&r, Some("media.example.test")), media.der);
        let default = served(&r, None);
        assert_ne!(default, media.der);
        assert_eq!(served(&r, Some("other.example.test")), default);
        assert_eq!(served(&r, Some("localhost")), default);
        r.reload(0, "test").unwrap();
        assert_eq!(served(&r, None), default);
    }

    #[test]
    fn load_errors_name_the_entry_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good", &make(&["good.example.test"]));
        let ip_only = write(dir.path(), "ip", &make(&["192.0.2.1"]));
        let msg = |cfg: &TlsConfig| chain(&resolver(cfg).expect_err("an error"));

        let mut cfg = TlsConfig {
            certificates: vec![good.clone(), ip_only],
            ..TlsConfig::default()
        };
        let m = msg(&cfg);
        assert!(m.starts_with("tls.certificates[1]: "), "{m}");
        assert!(m.contains("ip.pem") && m.contains("no DNS name"), "{m}");
        assert_eq!(chain(&inspect(&cfg).unwrap_err()), m);

        cfg.certificates[1] = TlsCertificate {
            cert: "/nonexistent/x.pem".into(),
            key: good.key.clone(),
        };
        let m = msg(&cfg);
        assert!(
            m.starts_with("tls.certificates[1]: cannot read /nonexistent/x.pem"),
            "{m}"
        );

        cfg.certificates[1].cert.clear();
        assert!(matches!(
            resolver(&cfg),
            Err(TlsError::IncompleteEntry { index: 1 })
        ));

        // The default certificate may name no DNS name (it serves everyone else).
        let cfg = TlsConfig {
            cert: dir.path().join("ip.pem").display().to_string(),
            key: dir.path().join("ip.key").display().to_string(),
            certificates: vec![good],
        };
        assert!(resolver(&cfg).is_ok());
    }

    #[test]
    fn inspect_lists_names_and_expiry() {
        let s = setup();
        let info = inspect(&s.cfg).unwrap();
        let names: Vec<Vec<String>> = info.iter().map(|i| i.names.clone()).collect();
        assert_eq!(
            names,
            [
                vec!["default.example.test", "shared.example.test"],
                vec!["*.example.test", "shared.example.test"],
                vec!["media.example.test"],
                vec!["*.img.example.test"],
            ]
        );
        assert!(info.iter().all(|i| i.not_after == Some(NOT_AFTER)));
        assert_eq!(
            info[2].cert.as_deref(),
            Some(s.dir.path().join("media.pem").as_path())
        );
        assert!(check(&s.cfg).is_ok());
        assert!(inspect(&TlsConfig::default()).unwrap().is_empty());
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Media.Example.COM."), "media.example.com");
        assert_eq!(normalize("media.example.com"), "media.example.com");
        assert!(matches!(normalize("a.b"), Cow::Borrowed(_)));
        assert!(matches!(normalize("a.b."), Cow::Borrowed("a.b")));
    }

    #[test]
    fn expiry_gauge_follows_the_names_served() {
        let dir = tempfile::tempdir().unwrap();
        let a = make(&["gauge-a.example.test", "*.gauge.example.test"]);
        let cfg = TlsConfig {
            certificates: vec![write(dir.path(), "a", &a)],
            ..TlsConfig::default()
        };
        let r = resolver(&cfg).unwrap();
        let value = |name: &str| {
            crate::metrics::registry()
                .gather()
                .iter()
                .filter(|f| f.get_name() == EXPIRY_METRIC)
                .flat_map(|f| f.get_metric())
                .find(|m| m.get_label().iter().any(|l| l.get_value() == name))
                .map(|m| m.get_gauge().get_value() as i64)
        };
        assert_eq!(value("gauge-a.example.test"), Some(NOT_AFTER));
        assert_eq!(value("*.gauge.example.test"), Some(NOT_AFTER));
        write(dir.path(), "a", &make(&["gauge-b.example.test"]));
        r.reload(1, "test").unwrap();
        assert_eq!(value("gauge-b.example.test"), Some(NOT_AFTER));
        assert_eq!(value("gauge-a.example.test"), None);
        assert_eq!(value("*.gauge.example.test"), None);
    }
}
