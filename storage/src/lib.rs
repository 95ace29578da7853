//! Ember's object store (S3/MinIO- and Qiniu-compatible gateway on https bucket domains).
//!
//! `server` is the entry point: it opens the backend and routes each request to a bucket
//! download domain (`domains`), the Qiniu API (`qiniu::api`) or the S3 API (`s3::api`), all
//! over one `backend::Backend`. The authentication layers (`s3::sigv4`, `s3::sigv2`,
//! `s3::chunked`, `qiniu::token`, `time`) are socket-free: pure functions and sans-IO state
//! machines over bytes. Every input is treated as hostile (no panics, bounded memory) and every
//! error maps to the dialect's own error code.
//!
//! ```text
//! storage/src/
//!   lib.rs           this overview
//!   server.rs        backend selection, bucket creation, per-request dialect dispatch
//!   domains.rs       GET/HEAD on bucket download domains (public or signed)
//!   grants.rs        presigned PUTs, Qiniu upload tokens and download URLs for the
//!                    messaging core (in-process, and the `/_ember/v1/grants/` HTTP API)
//!   backend/         the Backend trait; memory.rs (reference model), fs.rs (local disk)
//!   time.rs          UTC calendar maths, ISO 8601 basic and HTTP dates
//!   s3/              the S3 dialect
//!     sigv4.rs       SigV4 verification (Authorization header, presigned URLs), canonical
//!                    request, signer and presign_url
//!     sigv4/tests.rs AWS's published SigV4 examples, malformed input, round trips
//!     sigv2.rs       SigV2 verification (Authorization: AWS, AWSAccessKeyId/Signature/Expires
//!                    query auth), string to sign, signer and presign_url
//!     sigv2/tests.rs AWS's published SigV2 examples, malformed input, round trips
//!     chunked.rs     aws-chunked bodies: chunk-signature chain, incremental decoder, encoder
//!     chunked/tests.rs
//!     checksum.rs    x-amz-checksum-* (CRC32, CRC32C, CRC64NVME, SHA1, SHA256)
//!     error.rs       AuthError: S3 error code, HTTP status, S3's message
//!     api.rs, api/   the S3 HTTP API (axum): addressing, auth, CORS, streaming verified bodies
//!     xml.rs         S3's XML documents
//!   qiniu/           the Qiniu (Kodo) dialect
//!     token.rs       upload tokens + put policy, private download URLs, QBox / Qiniu
//!                    management signatures
//!     token/tests.rs
//!     etag.rs        qetag, incremental
//!     magic.rs       returnBody / saveKey variables
//!     error.rs       QiniuError: Qiniu HTTP code and error text
//!     api/           the Qiniu HTTP API: form.rs, v1.rs, v2.rs (resumable), manage.rs,
//!                    staging.rs (resumable blocks/parts on disk)
//! ```

pub mod backend;
pub mod domains;
pub mod grants;
pub mod qiniu;
pub mod s3;
pub mod server;
pub mod time;
