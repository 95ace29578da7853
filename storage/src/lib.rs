//! Ember's object store (S3/MinIO- and Qiniu-compatible gateway on https bucket domains).
//!
//! The authentication layers (`s3`, `qiniu`, `time`) are socket-free: pure functions and
//! sans-IO state machines over bytes that the HTTP server calls. Every input is treated as
//! hostile (no panics, bounded memory) and every error maps to the dialect's own error code.
//! `backend` is where objects live (see its module documentation).
//!
//! ```text
//! storage/src/
//!   lib.rs           this overview
//!   backend/         the Backend trait and its implementations
//!   time.rs          UTC calendar maths, ISO 8601 basic and HTTP dates
//!   s3/              the S3 dialect
//!     sigv4.rs       SigV4 verification (Authorization header, presigned URLs), canonical
//!                    request, signer and presign_url
//!     sigv4/tests.rs AWS's published SigV4 examples, malformed input, round trips
//!     chunked.rs     aws-chunked bodies: chunk-signature chain, incremental decoder, encoder
//!     chunked/tests.rs
//!     checksum.rs    x-amz-checksum-* (CRC32, CRC32C, CRC64NVME, SHA1, SHA256)
//!     error.rs       AuthError: S3 error code, HTTP status, S3's message
//!   qiniu/           the Qiniu (Kodo) dialect
//!     token.rs       upload tokens + put policy, private download URLs, QBox / Qiniu
//!                    management signatures
//!     token/tests.rs
//!     etag.rs        qetag, incremental
//!     magic.rs       returnBody / saveKey variables
//!     error.rs       QiniuError: Qiniu HTTP code and error text
//! ```

pub mod backend;
pub mod qiniu;
pub mod s3;
pub mod time;
