//! The one map from errors to gRPC statuses, for every port (as quickwit's
//! `ServiceErrorCode`): each error type says what kind of failure it is ([`ErrorCode`]) and
//! what the caller may be told (its `Display`); only [`to_status`] builds a `tonic::Status`.
//! The internal detail of a fault (storage, I/O, crypto) is logged here and never sent.

use tonic::{Code, Status};

/// The kinds of failure a caller is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad input, naming the field.
    InvalidArgument,
    /// A guard refused, naming the guard.
    FailedPrecondition,
    NotFound,
    AlreadyExists,
    /// The caller is known but may not do this.
    PermissionDenied,
    /// The caller could not be identified (certificate, key, signature).
    Unauthenticated,
    /// A size, rate or concurrency limit.
    ResourceExhausted,
    /// Worth retrying later (a storage fault, a peer's batch out of turn).
    Unavailable,
    /// Not offered by this node.
    Unimplemented,
}

impl ErrorCode {
    /// Returns the gRPC code.
    pub fn grpc(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Unimplemented => Code::Unimplemented,
        }
    }
}

/// An error a port answers with. Its `Display` is what the caller reads: it names fields,
/// guards and states, never values or internal details.
pub trait ServiceError: std::fmt::Display {
    /// What kind of failure it is.
    fn code(&self) -> ErrorCode;

    /// The internal detail of a fault: logged, never sent.
    fn detail(&self) -> Option<&str> {
        None
    }
}

/// Returns the gRPC status of `e` (logging its internal detail, if any).
pub fn to_status(e: &dyn ServiceError) -> Status {
    if let Some(detail) = e.detail() {
        tracing::error!(detail, "{e}");
    }
    Status::new(e.code().grpc(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fault;

    impl std::fmt::Display for Fault {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("storage unavailable")
        }
    }

    impl ServiceError for Fault {
        fn code(&self) -> ErrorCode {
            ErrorCode::Unavailable
        }

        fn detail(&self) -> Option<&str> {
            Some("io error at /var/lib/trm/db: disk full")
        }
    }

    #[test]
    fn a_faults_detail_is_never_sent() {
        let s = to_status(&Fault);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "storage unavailable");
    }
}
