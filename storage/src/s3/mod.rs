//! The S3 dialect: its authentication (socket-free) and its HTTP API.
//!
//! - [`sigv4`]: AWS Signature Version 4 verification (header and presigned URLs), the
//!   canonical request, and a client-side signer / [`sigv4::presign_url`].
//! - [`sigv2`]: AWS Signature Version 2 verification (`Authorization: AWS ...` and
//!   `AWSAccessKeyId`/`Signature`/`Expires` query auth), for older SDKs and boto3's presigned
//!   URLs, with the same credential lookup and result as SigV4.
//! - [`chunked`]: aws-chunked bodies (`STREAMING-*` payloads): the chunk-signature chain and an
//!   incremental decoder with bounded memory.
//! - [`checksum`]: `x-amz-checksum-*` algorithms, used for trailers and headers.
//! - [`error`]: [`AuthError`], one variant per S3 error code.
//! - [`api`]: the S3 HTTP API as an axum router over a [`crate::backend::Backend`]
//!   ([`api::router`], [`api::S3Config`]): addressing, auth (SigV4 or SigV2) and permissions,
//!   CORS, streaming verified bodies, the bucket, object, listing and multipart operations.
//! - [`xml`]: S3's XML documents: response writers and request parsers.

pub mod api;
pub mod checksum;
pub mod chunked;
pub mod error;
pub mod sigv2;
pub mod sigv4;
pub mod xml;

pub use api::{router, Access, S3Config};
pub use error::AuthError;
