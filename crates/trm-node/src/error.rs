//! Errors of the local services, mapped to gRPC codes in one place. Storage and crypto
//! details are logged here and never sent to the client.

use tonic::Status;
use tracing::error;
use trm_core::{FieldError, GuardError};
use trm_store::{StoreError, TxFail};

/// What a local RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: INVALID_ARGUMENT naming the field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A guard refused: FAILED_PRECONDITION naming the guard.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// NOT_FOUND, naming what (never a value).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// PERMISSION_DENIED.
    #[error("{0}")]
    Denied(String),
    /// ALREADY_EXISTS.
    #[error("{0}")]
    Exists(String),
    /// UNAVAILABLE: the detail is logged, not sent.
    #[error("storage unavailable")]
    Store(String),
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
        match e {
            ApiError::Field(f) => Status::invalid_argument(f.to_string()),
            ApiError::Guard(g) => Status::failed_precondition(g.to_string()),
            ApiError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ApiError::Denied(why) => Status::permission_denied(why),
            ApiError::Exists(why) => Status::already_exists(why),
            ApiError::Store(detail) => {
                error!(detail = %detail, "storage fault");
                Status::unavailable("storage unavailable")
            }
        }
    }
}

/// Result alias of the local services.
pub type ApiResult<T> = Result<T, ApiError>;
