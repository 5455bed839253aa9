//! Domain of the TRM federation: identifiers, victim records, consent, the disclosure policy
//! and the flow state machines. No I/O, no async: every rule here is a pure function that the
//! node, the store and the federation layer call.
//!
//! Parts:
//! - [`ids`]: node ids (country codes), organisations, roles, record ids.
//! - [`model`]: victim records and the enums of the contract.
//! - [`consent`]: the victim's consent and whether it covers a disclosure.
//! - [`policy`]: the versioned disclosure table, applied outbound and inbound.
//! - [`messages`]: the kinds of envelope between nodes, the record each is about, and a
//!   peer's payloads as domain messages.
//! - [`exchange`]: the one lifecycle of every shared record (its kind, sides, events,
//!   erasure of the other copy), which the referral, return plan and hearing implement.
//! - [`events`]: what changed on a node (ids, kinds, statuses), and who may see it.
//! - [`access`]: the role table and the one rule for reaching a record.
//! - [`referral`]: the referral state machine.
//! - [`returns`]: return-planning guards and the return state machine.
//! - [`hearing`]: witness-hearing states and the child-witness rule.
//! - [`safety`]: safety alerts and the block they put on returns.
//! - [`remedies`]: compensation claims and victim-status attestations (non-punishment).
//! - [`stats`]: monitoring statistics: the counted cells, closed periods, suppression.
#![forbid(unsafe_code)]

pub mod access;
pub mod consent;
pub mod error;
pub mod events;
pub mod exchange;
pub mod hearing;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod model;
pub mod policy;
pub mod referral;
pub mod remedies;
pub mod returns;
pub mod safety;
pub mod stats;
pub mod tasks;

pub use error::{FieldError, Guard, GuardError};
