//! The `trm.v1` wire contract: prost messages and tonic services generated from `proto/`,
//! and beside them the conversions wire <-> domain (`convert`), where input is parsed; a
//! peer's payloads parsed into domain messages (`peer`); statistics cells in the wire's
//! terms (`stats`); and the one map from every port's errors to gRPC statuses (`status`).
#![forbid(unsafe_code)]

pub mod convert;
pub mod peer;
pub mod stats;
pub mod status;

/// Generated code of package `trm.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("trm.v1");

    /// The encoded descriptor set of every `trm.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/trm_v1_descriptor.bin"));
}
