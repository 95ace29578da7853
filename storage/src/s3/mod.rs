//! The S3 dialect: its authentication (socket-free) and its HTTP API.
//!
//! - [`sigv4`]: AWS Signature Version 4 verification (header and presigned URLs), the
//!   canonical request, and a client-side signer / [`sigv4::presign_url`].
//! - [`chunked`]: aws-chunked bodies (`STREAMING-*` payloads): the chunk-signature chain and an
//!   incremental decoder with bounded memory.
//! - [`checksum`]: `x-amz-checksum-*` algorithms, used for trailers and headers.
//! - [`error`]: [`AuthError`], one variant per S3 error code.
//! - [`api`]: the S3 HTTP API as an axum router over a [`crate::backend::Backend`]
//!   ([`api::router`], [`api::S3Config`]): addressing, auth and permissions, streaming
//!   verified bodies, the bucket, object, listing and multipart operations.
//! - [`xml`]: S3's XML documents: response writers and request parsers.

pub mod api;
pub mod checksum;
pub mod chunked;
pub mod error;
pub mod sigv4;
pub mod xml;

pub use api::{router, Access, S3Config};
pub use error::AuthError;
