//! What the federation port answers a peer with when it does not take a request. Codes come
//! from the one map of `trm_proto::status`; a storage fault's detail is logged, never sent.

use tonic::Status;
use trm_proto::status::{to_status, ErrorCode, ServiceError};

use crate::{sequence::OutOfTurn, Refusal};

/// A request the federation port does not take.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Refused before any effect, with the reason DESIGN.md names.
    #[error("{}: {detail}", refusal.label())]
    Refused { refusal: Refusal, detail: String },
    /// A pipelined batch that cannot take its turn: the sender starts again.
    #[error(transparent)]
    OutOfTurn(#[from] OutOfTurn),
    /// The detail is logged, not sent.
    #[error("storage unavailable")]
    Storage(String),
}

impl ServiceError for FederationError {
    fn code(&self) -> ErrorCode {
        match self {
            FederationError::Refused { refusal, .. } => match refusal {
                Refusal::UnknownPeer
                | Refusal::UntrustedCertificate
                | Refusal::UnknownKey
                | Refusal::BadSignature
                | Refusal::RetiredKey => ErrorCode::Unauthenticated,
                Refusal::SenderMismatch | Refusal::RemovedPeer => ErrorCode::PermissionDenied,
                Refusal::Malformed | Refusal::WrongRecipient | Refusal::Stale | Refusal::Future => {
                    ErrorCode::InvalidArgument
                }
                Refusal::Oversize | Refusal::TooManyRequests => ErrorCode::ResourceExhausted,
            },
            FederationError::OutOfTurn(_) | FederationError::Storage(_) => ErrorCode::Unavailable,
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            FederationError::Storage(detail) => Some(detail),
            _ => None,
        }
    }
}

impl From<FederationError> for Status {
    fn from(e: FederationError) -> Self {
        to_status(&e)
    }
}
