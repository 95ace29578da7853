//! The Qiniu (Kodo) dialect: authentication (socket-free) and the HTTP API.
//!
//! - [`api`]: the upload host (form upload, resumable v1 and v2) and the management API
//!   (stat, delete, list, move, copy) over a backend, as an axum router, plus the download
//!   authorization the bucket-domain layer calls.
//! - [`token`]: upload tokens and their put policy, private download URLs, and management
//!   request signing (`QBox` and `Qiniu` with `X-Qiniu-Date`).
//! - [`etag`]: the qetag content hash (`hash` in upload responses), incremental.
//! - [`magic`]: magic and custom variables of `returnBody` / `saveKey`.
//! - [`error`]: [`QiniuError`], one variant per Qiniu HTTP code and error text.
//!
//! Qiniu's "URL-safe base64" is RFC 4648 base64url *with* padding; decoding here also accepts
//! unpadded input.

pub mod api;
pub mod error;
pub mod etag;
pub mod magic;
pub mod token;

pub use error::QiniuError;

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

const URL_SAFE_PADDED: GeneralPurpose = base64::engine::general_purpose::URL_SAFE;
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Qiniu's `urlsafe_base64_encode`: base64url with padding.
pub fn urlsafe_b64_encode(data: &[u8]) -> String {
    URL_SAFE_PADDED.encode(data)
}

/// Decodes base64url, padded or not; `None` on anything else.
pub fn urlsafe_b64_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_LENIENT.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url() {
        assert_eq!(urlsafe_b64_encode(b"\xfb\xff"), "-_8=");
        assert_eq!(urlsafe_b64_decode("-_8=").unwrap(), b"\xfb\xff");
        assert_eq!(urlsafe_b64_decode("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(urlsafe_b64_decode("+/8="), None);
        assert_eq!(urlsafe_b64_decode("%%%"), None);
    }
}
