//! The TRM node: one country's national focal point in the federation.
//!
//! Parts:
//! - [`config`]: the TOML configuration, parsed strictly and validated;
//! - [`server`]: wiring of storage, delivery and the four ports (`services`, `federation`,
//!   `admin`, `metrics`), from bound listeners to graceful shutdown;
//! - [`authz`]: principals from client certificates and what each role may do;
//! - [`referral`]: `ReferralService` (cases, consent, referrals);
//! - [`returns`]: `ReturnPlanningService` (guards, plans, every step across the border);
//! - [`hearing`]: `WitnessHearingService` (MLA video-conference hearings);
//! - [`safety`]: `SafetyService` (safety alerts and the block they put on returns);
//! - [`remedies`]: `RemediesService` (compensation claims, victim-status attestations);
//! - [`work`]: `WorkService` (the task queue), and [`watch`]: its event streams;
//! - [`console`]: the browser console (HTML over HTTPS, through the same services);
//! - [`disclosure`]: what leaves the node for a purpose, under consent, and its record;
//! - [`erasure`]: erasure requests to the recipients of a disclosure;
//! - [`ctx`]: what every service shares (store, signer, directory, delivery);
//! - [`flows`]: the node's reaction to peers' envelopes and receipts;
//! - [`lifecycle`]: every shared record's pipelines (a local step, the other node's
//!   update, the erasure of a copy), written once;
//! - [`admin`]: `AdminService`; [`metrics`]: the plain-HTTP probes;
//! - [`statistics`]: monthly reports published once, kept and added up into periods;
//! - [`listen`]: accepting TLS connections under limits (handshake deadline, connection cap);
//! - [`gate`]: the per-request checks (revoked certificates, request rates);
//! - [`rpc`]: what every local RPC shares: the one adapter to a gRPC status, idempotent
//!   commits with their replay, pages;
//! - [`error`]: the local services' errors (their gRPC codes come from `trm_proto::status`);
//! - [`cli`]: the `trm-node --config FILE` command.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod console;
pub mod ctx;
pub mod disclosure;
pub mod drafts;
pub mod erasure;
pub mod error;
pub mod flows;
pub mod gate;
pub mod hearing;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod referral;
pub mod remedies;
pub mod replicas;
pub mod returns;
pub mod rpc;
pub mod safety;
pub mod server;
pub mod statistics;
pub mod watch;
pub mod work;

pub use config::NodeConfig;
pub use server::{run, run_with, Addrs, Listeners, NodeError, NodeHandle, NodeOptions};

/// Installs the process-wide rustls crypto provider (ring). Call once at start-up, before
/// any TLS configuration is built; later calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
