//! Errors of the local services. Their gRPC codes come from the one map of
//! `trm_proto::status`; storage details are logged there and never sent to the client.

use tonic::Status;
use trm_core::{FieldError, GuardError};
use trm_proto::status::{to_status, ErrorCode, ServiceError};
use trm_store::{StoreError, TxFail};

/// What a local RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input, naming the field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A guard refused, naming the guard.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Naming what (never a value).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Exists(String),
    /// No usable or a revoked client certificate.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Over a rate or size limit.
    #[error("{0}")]
    Exhausted(&'static str),
    /// A capability this node does not offer.
    #[error("{0}")]
    Unimplemented(String),
    /// The detail is logged, not sent.
    #[error("storage unavailable")]
    Store(String),
}

impl ServiceError for ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::Field(_) => ErrorCode::InvalidArgument,
            ApiError::Guard(_) => ErrorCode::FailedPrecondition,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Denied(_) => ErrorCode::PermissionDenied,
            ApiError::Exists(_) => ErrorCode::AlreadyExists,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Exhausted(_) => ErrorCode::ResourceExhausted,
            ApiError::Unimplemented(_) => ErrorCode::Unimplemented,
            ApiError::Store(_) => ErrorCode::Unavailable,
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            ApiError::Store(detail) => Some(detail),
            _ => None,
        }
    }
}

impl From<trm_core::access::Denied> for ApiError {
    fn from(e: trm_core::access::Denied) -> Self {
        ApiError::Denied(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e.to_string())
    }
}

impl From<TxFail<ApiError>> for ApiError {
    fn from(e: TxFail<ApiError>) -> Self {
        match e {
            TxFail::Abort(api) => api,
            TxFail::Store(s) => s.into(),
        }
    }
}

impl From<ApiError> for TxFail<ApiError> {
    fn from(e: ApiError) -> Self {
        TxFail::Abort(e)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        to_status(&e)
    }
}

/// Result alias of the local services.
pub type ApiResult<T> = Result<T, ApiError>;
