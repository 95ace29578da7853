//! The object store as one HTTP service: opens the backend `[storage]` names, creates the
//! configured buckets, and routes each request to its dialect — a bucket download domain
//! (by Host), the grant API for the messaging core (`/_ember/v1/grants/`), the Qiniu API (by
//! its authorization schemes and paths), or S3 (everything else, path- or virtual-host-style).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use ember_common::config::{StorageBackend, StorageConfig};
use tower::ServiceExt;

use crate::backend::fs::FsBackend;
use crate::backend::s3::{GatewayError, S3Backend};
use crate::backend::{Backend, StorageError};
use crate::domains::Domains;
use crate::qiniu::api::{is_qiniu_request, QiniuConfig};
use crate::s3::api::{Access, S3Config};

/// Why the object store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the storage directory {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: StorageError,
    },
    /// `backend = "s3"`: the upstream is unusable (unreachable, credentials refused, ...).
    #[error("cannot use the upstream S3 server {endpoint} (backend = \"s3\"): {reason}")]
    Gateway {
        endpoint: String,
        reason: GatewayError,
    },
    #[error("cannot create bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: StorageError,
    },
}

/// Opens the configured backend and creates `[storage] buckets` that are missing.
pub async fn open_backend(cfg: &StorageConfig) -> Result<Arc<dyn Backend>, StartError> {
    let backend: Arc<dyn Backend> = match cfg.backend {
        StorageBackend::Fs => {
            Arc::new(
                FsBackend::open(&cfg.data_dir).map_err(|source| StartError::Open {
                    dir: cfg.data_dir.display().to_string(),
                    source,
                })?,
            )
        }
        StorageBackend::S3 => Arc::new(
            S3Backend::connect(&cfg.upstream, &cfg.buckets)
                .await
                .map_err(|reason| StartError::Gateway {
                    endpoint: cfg.upstream.endpoint.clone(),
                    reason,
                })?,
        ),
    };
    for bucket in &cfg.buckets {
        match backend.create_bucket(bucket).await {
            Ok(()) | Err(StorageError::BucketAlreadyExists) => {}
            Err(source) => {
                return Err(StartError::Bucket {
                    bucket: bucket.clone(),
                    source,
                })
            }
        }
    }
    Ok(backend)
}

struct Dispatch {
    domains: Domains,
    grants: Router,
    qiniu: Router,
    s3: Router,
}

/// The router serving every dialect over `backend`.
pub fn router(backend: Arc<dyn Backend>, cfg: &StorageConfig) -> Router {
    let read_only: BTreeSet<String> = cfg.read_only_keys.iter().cloned().collect();
    let credentials: HashMap<String, (String, Access)> = cfg
        .credentials
        .iter()
        .map(|(ak, sk)| {
            let access = Access {
                read_only: read_only.contains(ak),
                buckets: None,
            };
            (ak.clone(), (sk.clone(), access))
        })
        .collect();
    let s3 = Arc::new(S3Config {
        region: cfg.region.clone(),
        credentials,
        public_buckets: cfg.public_buckets.clone(),
        max_object_size: cfg.max_object_size,
        virtual_host_suffixes: cfg.s3_domains.clone(),
    });
    let mut qiniu = QiniuConfig::new(cfg.credentials.clone(), cfg.data_dir.join(".qiniu-staging"));
    qiniu.read_only_keys = read_only;
    qiniu.public_buckets = cfg.public_buckets.iter().cloned().collect();
    qiniu.max_object_size = cfg.max_object_size;
    qiniu.staging_ttl = Duration::from_secs(7 * 24 * 3600);
    let qiniu = Arc::new(qiniu);
    let dispatch = Arc::new(Dispatch {
        domains: Domains {
            backend: backend.clone(),
            map: cfg
                .bucket_domains
                .iter()
                .map(|(d, b)| (d.trim_end_matches('.').to_ascii_lowercase(), b.clone()))
                .collect(),
            qiniu: qiniu.clone(),
        },
        grants: crate::grants::router(cfg),
        qiniu: crate::qiniu::api::router(backend.clone(), qiniu),
        s3: crate::s3::api::router(backend, s3),
    });
    Router::new().fallback(route).with_state(dispatch)
}

async fn route(State(d): State<Arc<Dispatch>>, req: Request) -> Response {
    if let Some(bucket) = d.domains.bucket_for(&req) {
        return d.domains.serve(&bucket, req).await;
    }
    let target = if crate::grants::is_grant_request(req.uri().path()) {
        d.grants.clone()
    } else if is_qiniu_request(req.method(), req.uri().path(), req.headers()) {
        d.qiniu.clone()
    } else {
        d.s3.clone()
    };
    match target.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}
