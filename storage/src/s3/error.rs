//! Authentication errors of the S3 dialect. Every variant maps to one S3 error code and HTTP
//! status, and its `Display` text is the `<Message>` S3 puts in the XML error document, so the
//! HTTP layer renders an error with `code()`, `status()` and `to_string()` alone.

use std::borrow::Cow;

/// Why a request failed SigV4 authentication (or its body failed aws-chunked decoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 403 `AccessDenied`: expired presigned URL, not-yet-valid URL, unsigned `x-amz-*`
    /// headers, missing date.
    #[error("{0}")]
    AccessDenied(Cow<'static, str>),
    /// 403 `InvalidAccessKeyId`.
    #[error("The AWS Access Key Id you provided does not exist in our records.")]
    InvalidAccessKeyId,
    /// 403 `SignatureDoesNotMatch` (request, chunk or trailer signature).
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your key and signing method."
    )]
    SignatureDoesNotMatch,
    /// 403 `RequestTimeTooSkewed`; S3 adds the two times and the allowed skew to the document.
    #[error("The difference between the request time and the current time is too large.")]
    RequestTimeTooSkewed {
        /// The request's time, as S3 prints it (`2013-05-24T00:00:00.000Z`).
        request_time: String,
        /// The server's time, same format.
        server_time: String,
        /// The allowed skew in milliseconds (`MaxAllowedSkewMilliseconds`).
        max_allowed_skew_ms: u64,
    },
    /// 400 `AuthorizationHeaderMalformed`.
    #[error("{0}")]
    AuthorizationHeaderMalformed(String),
    /// 400 `AuthorizationQueryParametersError`.
    #[error("{0}")]
    AuthorizationQueryParametersError(String),
    /// 400 `AuthorizationHeaderMalformed` (or `AuthorizationQueryParametersError` for a
    /// presigned URL): the credential scope names another region. S3 adds
    /// `<Region>expected</Region>` to the document, and clients (botocore, s3cmd) sign again
    /// for that region.
    #[error("{}", wrong_region_message(*.presigned, .region, .expected))]
    WrongRegion {
        /// The credential came from the query (`X-Amz-Credential`), not the header.
        presigned: bool,
        /// The region the client signed for.
        region: String,
        /// The region this endpoint serves.
        expected: String,
    },
    /// 400 `InvalidArgument`.
    #[error("{0}")]
    InvalidArgument(Cow<'static, str>),
    /// 400 `InvalidRequest` (also used for a malformed aws-chunked body).
    #[error("{0}")]
    InvalidRequest(Cow<'static, str>),
    /// 400 `InvalidToken`: an STS session token was sent; Ember issues none.
    #[error("The provided token is malformed or otherwise invalid.")]
    InvalidToken,
    /// 501 `NotImplemented` (SigV4a / ECDSA payload modes).
    #[error("{0}")]
    NotImplemented(Cow<'static, str>),
    /// 400 `XAmzContentSHA256Mismatch`: the body's SHA-256 differs from `x-amz-content-sha256`.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    XAmzContentSha256Mismatch,
    /// 400 `IncompleteBody`: the aws-chunked body ended early or its length is wrong.
    #[error("{0}")]
    IncompleteBody(Cow<'static, str>),
    /// 400 `MalformedTrailerError`.
    #[error("{0}")]
    MalformedTrailer(Cow<'static, str>),
    /// 400 `BadDigest`: a trailing `x-amz-checksum-*` does not match the data.
    #[error("{0}")]
    BadDigest(String),
}

/// S3's message for a credential scope naming the wrong region.
fn wrong_region_message(presigned: bool, region: &str, expected: &str) -> String {
    let prefix = if presigned {
        "Error parsing the X-Amz-Credential parameter; "
    } else {
        "The authorization header is malformed; "
    };
    format!("{prefix}the region '{region}' is wrong; expecting '{expected}'")
}

impl AuthError {
    /// The S3 error code (`<Code>`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::AccessDenied(_) => "AccessDenied",
            AuthError::InvalidAccessKeyId => "InvalidAccessKeyId",
            AuthError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            AuthError::RequestTimeTooSkewed { .. } => "RequestTimeTooSkewed",
            AuthError::AuthorizationHeaderMalformed(_) => "AuthorizationHeaderMalformed",
            AuthError::AuthorizationQueryParametersError(_) => "AuthorizationQueryParametersError",
            AuthError::WrongRegion {
                presigned: false, ..
            } => "AuthorizationHeaderMalformed",
            AuthError::WrongRegion {
                presigned: true, ..
            } => "AuthorizationQueryParametersError",
            AuthError::InvalidArgument(_) => "InvalidArgument",
            AuthError::InvalidRequest(_) => "InvalidRequest",
            AuthError::InvalidToken => "InvalidToken",
            AuthError::NotImplemented(_) => "NotImplemented",
            AuthError::XAmzContentSha256Mismatch => "XAmzContentSHA256Mismatch",
            AuthError::IncompleteBody(_) => "IncompleteBody",
            AuthError::MalformedTrailer(_) => "MalformedTrailerError",
            AuthError::BadDigest(_) => "BadDigest",
        }
    }

    /// The HTTP status S3 answers with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::AccessDenied(_)
            | AuthError::InvalidAccessKeyId
            | AuthError::SignatureDoesNotMatch
            | AuthError::RequestTimeTooSkewed { .. } => 403,
            AuthError::NotImplemented(_) => 501,
            AuthError::AuthorizationHeaderMalformed(_)
            | AuthError::AuthorizationQueryParametersError(_)
            | AuthError::WrongRegion { .. }
            | AuthError::InvalidArgument(_)
            | AuthError::InvalidRequest(_)
            | AuthError::InvalidToken
            | AuthError::XAmzContentSha256Mismatch
            | AuthError::IncompleteBody(_)
            | AuthError::MalformedTrailer(_)
            | AuthError::BadDigest(_) => 400,
        }
    }

    pub(crate) fn denied(msg: &'static str) -> Self {
        AuthError::AccessDenied(Cow::Borrowed(msg))
    }

    pub(crate) fn invalid_request(msg: &'static str) -> Self {
        AuthError::InvalidRequest(Cow::Borrowed(msg))
    }

    pub(crate) fn incomplete(msg: &'static str) -> Self {
        AuthError::IncompleteBody(Cow::Borrowed(msg))
    }

    pub(crate) fn malformed_trailer(msg: &'static str) -> Self {
        AuthError::MalformedTrailer(Cow::Borrowed(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        assert_eq!(
            AuthError::SignatureDoesNotMatch.code(),
            "SignatureDoesNotMatch"
        );
        assert_eq!(AuthError::SignatureDoesNotMatch.status(), 403);
        assert_eq!(
            AuthError::denied("Request has expired").to_string(),
            "Request has expired"
        );
        assert_eq!(
            AuthError::XAmzContentSha256Mismatch.code(),
            "XAmzContentSHA256Mismatch"
        );
        assert_eq!(
            AuthError::malformed_trailer("x").code(),
            "MalformedTrailerError"
        );
        assert_eq!(AuthError::NotImplemented("x".into()).status(), 501);
        assert_eq!(
            AuthError::AuthorizationHeaderMalformed("x".into()).status(),
            400
        );
    }

    #[test]
    fn wrong_region_codes_and_messages() {
        let header = AuthError::WrongRegion {
            presigned: false,
            region: "us-east-1".into(),
            expected: "eu-west-1".into(),
        };
        assert_eq!(header.code(), "AuthorizationHeaderMalformed");
        assert_eq!(header.status(), 400);
        assert_eq!(
            header.to_string(),
            "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'"
        );
        let query = AuthError::WrongRegion {
            presigned: true,
            region: "US".into(),
            expected: "eu-west-1".into(),
        };
        assert_eq!(query.code(), "AuthorizationQueryParametersError");
        assert_eq!(query.status(), 400);
        assert_eq!(
            query.to_string(),
            "Error parsing the X-Amz-Credential parameter; the region 'US' is wrong; expecting 'eu-west-1'"
        );
    }
}
