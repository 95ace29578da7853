//! S3 error responses: [`S3Error`] (status, code, message, extra elements, headers) rendered
//! as S3's XML error document, and the mapping of the auth layer's [`AuthError`] and the
//! backend's [`StorageError`] to S3's codes and statuses.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::auth_error_in;
use crate::backend::{StorageError, MAX_KEY_BYTES};
use crate::s3::error::AuthError;
use crate::s3::xml;

/// An S3 error response: status, code, message, extra document elements and headers.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    pub extra: Vec<(&'static str, String)>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl S3Error {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        S3Error {
            status,
            code: code.into(),
            message: message.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    pub(crate) fn access_denied() -> Self {
        S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied")
    }

    pub(crate) fn invalid_argument(msg: impl Into<Cow<'static, str>>) -> Self {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", msg)
    }

    pub(crate) fn invalid_request(msg: impl Into<Cow<'static, str>>) -> Self {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidRequest", msg)
    }

    pub(crate) fn not_implemented() -> Self {
        S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
    }

    pub(crate) fn malformed_xml(detail: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "MalformedXML",
            format!("The XML you provided was not well-formed or did not validate against our published schema: {detail}"),
        )
    }

    pub(crate) fn precondition_failed(condition: &str) -> Self {
        S3Error::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
        .with("Condition", condition)
    }

    pub(crate) fn invalid_range(size: u64, requested: &str) -> Self {
        let mut e = S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        )
        .with("RangeRequested", requested)
        .with("ActualObjectSize", size.to_string());
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            e.headers.push((header::CONTENT_RANGE, v));
        }
        e
    }

    pub(crate) fn entity_too_large(limit: u64) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
        )
        .with("MaxSizeAllowed", limit.to_string())
    }

    pub(crate) fn no_such_bucket(bucket: &str) -> Self {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        )
        .with("BucketName", bucket)
    }

    /// The response: the XML document (no body for HEAD requests) and `Content-Type`.
    pub fn into_response(self, resource: &str, request_id: &str, head: bool) -> Response {
        let mut builder = Response::builder().status(self.status);
        for (n, v) in self.headers {
            builder = builder.header(n, v);
        }
        let body = if head {
            Body::empty()
        } else {
            builder = builder.header(header::CONTENT_TYPE, "application/xml");
            Body::from(
                xml::ErrorDocument {
                    code: &self.code,
                    message: &self.message,
                    extra: &self.extra,
                    resource,
                    request_id,
                }
                .to_xml(),
            )
        };
        builder
            .body(body)
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

impl From<AuthError> for S3Error {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut out = S3Error::new(status, e.code(), e.to_string());
        if let AuthError::RequestTimeTooSkewed {
            request_time,
            server_time,
            max_allowed_skew_ms,
        } = &e
        {
            out = out
                .with("RequestTime", request_time.clone())
                .with("ServerTime", server_time.clone())
                .with(
                    "MaxAllowedSkewMilliseconds",
                    max_allowed_skew_ms.to_string(),
                );
        }
        // As S3: the region to sign for, in the document (botocore and s3cmd read it and sign
        // again) and, since a HEAD response has no document, as `x-amz-bucket-region` (one
        // region serves every bucket here).
        if let AuthError::WrongRegion { expected, .. } = &e {
            if let Ok(v) = HeaderValue::from_str(expected) {
                out.headers
                    .push((HeaderName::from_static("x-amz-bucket-region"), v));
            }
            out = out.with("Region", expected.clone());
        }
        out
    }
}

impl From<StorageError> for S3Error {
    fn from(e: StorageError) -> Self {
        use StatusCode as S;
        match e {
            StorageError::NoSuchBucket => S3Error::new(
                S::NOT_FOUND,
                "NoSuchBucket",
                "The specified bucket does not exist",
            ),
            StorageError::NoSuchKey => {
                S3Error::new(S::NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
            }
            StorageError::BucketAlreadyExists => S3Error::new(
                S::CONFLICT,
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
            ),
            StorageError::BucketNotEmpty => S3Error::new(
                S::CONFLICT,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty",
            ),
            StorageError::InvalidBucketName(m) => S3Error::new(
                S::BAD_REQUEST,
                "InvalidBucketName",
                format!("The specified bucket is not valid: {m}"),
            ),
            StorageError::InvalidKey(m) if m.contains("longer than") => S3Error::new(
                S::BAD_REQUEST,
                "KeyTooLongError",
                "Your key is too long",
            )
            .with("MaxSizeAllowed", MAX_KEY_BYTES.to_string()),
            StorageError::InvalidKey(m) => S3Error::invalid_argument(format!("Invalid object key: {m}")),
            StorageError::NoSuchUpload => S3Error::new(
                S::NOT_FOUND,
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
            ),
            StorageError::InvalidPart => S3Error::new(
                S::BAD_REQUEST,
                "InvalidPart",
                "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
            ),
            StorageError::InvalidPartOrder => S3Error::new(
                S::BAD_REQUEST,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
            ),
            StorageError::EntityTooSmall => S3Error::new(
                S::BAD_REQUEST,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            ),
            StorageError::EntityTooLarge { limit } => S3Error::entity_too_large(limit),
            StorageError::BadDigest => S3Error::new(
                S::BAD_REQUEST,
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
            ),
            StorageError::AlreadyExists => S3Error::precondition_failed("If-None-Match"),
            StorageError::InsufficientStorage => S3Error::new(
                S::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                "There is not enough space left on the storage device to store the object.",
            ),
            StorageError::BodyError(e) | StorageError::Io(e) if auth_error_in(&e).is_some() => {
                auth_error_in(&e).cloned().map(S3Error::from).unwrap_or_else(S3Error::access_denied)
            }
            StorageError::BodyError(e) => S3Error::new(
                S::BAD_REQUEST,
                "IncompleteBody",
                format!("The request body could not be read completely: {e}"),
            ),
            StorageError::Io(e) => {
                tracing::warn!("s3: storage I/O error: {e}");
                S3Error::new(
                    S::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            }
            // The gateway's upstream failed: 503 (clients retry), the detail only in the log
            // (it can name internal hosts).
            StorageError::Upstream(m) => {
                tracing::warn!("s3: upstream error: {m}");
                S3Error::new(
                    S::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The storage service behind this gateway is unavailable. Please try again.",
                )
            }
        }
    }
}

/// The result of a handler step.
pub type S3Result<T> = Result<T, S3Error>;
