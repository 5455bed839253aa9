//! The operator CLI's library: the sandbox federation ([`sandbox`]), admin-port commands
//! ([`admin`]), monitoring statistics ([`stats`]), victim-status attestations verified
//! offline ([`attestation`]), local client certificates ([`client`]),
//! a node's own keys ([`keys`]), a production node's folder ([`node`]), gRPC connections with a node's client certificates
//! ([`connect`]), how it prints times and errors ([`out`]), the sandbox story ([`scenario`]), and the command line itself ([`cli`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod attestation;
pub mod cli;
pub mod client;
pub mod connect;
pub mod keys;
pub mod node;
pub mod out;
pub mod sandbox;
pub mod scenario;
pub mod stats;
pub mod table;
