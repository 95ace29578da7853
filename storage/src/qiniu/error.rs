//! Errors of the Qiniu dialect. Each variant is one of Qiniu's HTTP codes with the `error`
//! text its servers put in the JSON body (`{"error":"bad token"}`), so the HTTP layer answers
//! with `status()` and `json_body()`.
//!
//! Texts are the ones Qiniu documents or that its servers are seen returning; where Qiniu's
//! exact text is not documented (noted per variant) a descriptive one is used.

/// A Qiniu-style failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QiniuError {
    /// 401: no upload or management token at all.
    #[error("token not specified")]
    TokenNotSpecified,
    /// 401: unknown access key, bad signature, undecodable policy.
    #[error("bad token")]
    BadToken,
    /// 401: the upload token's `deadline` has passed.
    #[error("expired token")]
    ExpiredToken,
    /// 401: a private-bucket download without `token`.
    #[error("download token not specified")]
    DownloadTokenNotSpecified,
    /// 401: a download token that does not verify.
    #[error("download token auth failed")]
    DownloadTokenAuthFailed,
    /// 401: a download URL whose `e` has passed.
    #[error("token out of date")]
    DownloadTokenExpired,
    /// 403: the key is not the one (or not under the prefix) the policy's scope names.
    #[error("key doesn't match with scope")]
    KeyNotMatchScope,
    /// 403: the file's MIME type is outside `mimeLimit`.
    #[error("limited mimeType: this file type is forbidden to upload")]
    MimeLimited,
    /// 403: the file is smaller than `fsizeMin` (text not documented by Qiniu).
    #[error("file size too small")]
    FileTooSmall,
    /// 403: `X-Qiniu-Date` is more than 15 minutes from the server's clock.
    #[error("request time too skewed")]
    RequestTimeTooSkewed,
    /// 413: the file is larger than `fsizeLimit` (or the server's maximum).
    #[error("exceed FsizeLimit")]
    FileTooLarge,
    /// 614: insert-only upload onto an existing key with different content.
    #[error("file exists")]
    FileExists,
    /// 400: malformed request parameters.
    #[error("{0}")]
    InvalidArgument(String),
}

impl QiniuError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            QiniuError::TokenNotSpecified
            | QiniuError::BadToken
            | QiniuError::ExpiredToken
            | QiniuError::DownloadTokenNotSpecified
            | QiniuError::DownloadTokenAuthFailed
            | QiniuError::DownloadTokenExpired => 401,
            QiniuError::KeyNotMatchScope
            | QiniuError::MimeLimited
            | QiniuError::FileTooSmall
            | QiniuError::RequestTimeTooSkewed => 403,
            QiniuError::FileTooLarge => 413,
            QiniuError::FileExists => 614,
            QiniuError::InvalidArgument(_) => 400,
        }
    }

    /// The JSON body Qiniu answers with: `{"error":"<text>"}`.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.to_string() }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies() {
        assert_eq!(QiniuError::BadToken.status(), 401);
        assert_eq!(QiniuError::BadToken.json_body(), r#"{"error":"bad token"}"#);
        assert_eq!(QiniuError::ExpiredToken.to_string(), "expired token");
        assert_eq!(QiniuError::FileExists.status(), 614);
        assert_eq!(QiniuError::FileTooLarge.status(), 413);
        assert_eq!(
            QiniuError::InvalidArgument("bad \"x\"".into()).json_body(),
            r#"{"error":"bad \"x\""}"#
        );
    }
}
