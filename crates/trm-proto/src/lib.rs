//! The `trm.v1` wire contract: prost messages and tonic services generated from `proto/`,
//! and beside them the conversions wire <-> domain (`convert`), where input is parsed; a
//! peer's payloads parsed into domain messages (`peer`); statistics cells in the wire's
//! terms (`stats`); and the one map from every port's errors to gRPC statuses (`status`).
#![forbid(unsafe_code)]

pub mod command;
pub mod convert;
pub mod peer;
pub mod stats;
pub mod status;

/// A request that changes state and takes an optional client-chosen `request_id`
/// (AIP-155): a retry with the same id returns the original result and changes nothing.
/// Implemented, by the build, for every message of the contract with a `request_id`.
pub trait Retryable: prost::Message + Clone {
    /// The request's full name in the contract (`trm.v1.CloseReferralRequest`): two
    /// requests of different RPCs may encode to the same bytes.
    const NAME: &'static str;
    /// Returns the request's `request_id` (empty: none).
    fn request_id(&self) -> &str;
    /// Clears it (what is left tells a retry from another request under the same id).
    fn clear_request_id(&mut self);
}

include!(concat!(env!("OUT_DIR"), "/retryable.rs"));

/// Generated code of package `trm.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("trm.v1");

    /// The encoded descriptor set of every `trm.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/trm_v1_descriptor.bin"));
}
