//! The S3 dialect's authentication, socket-free.
//!
//! - [`sigv4`]: AWS Signature Version 4 verification (header and presigned URLs), the
//!   canonical request, and a client-side signer / [`sigv4::presign_url`].
//! - [`chunked`]: aws-chunked bodies (`STREAMING-*` payloads): the chunk-signature chain and an
//!   incremental decoder with bounded memory.
//! - [`checksum`]: `x-amz-checksum-*` algorithms, used for trailers and headers.
//! - [`error`]: [`AuthError`], one variant per S3 error code.

pub mod checksum;
pub mod chunked;
pub mod error;
pub mod sigv4;

pub use error::AuthError;
