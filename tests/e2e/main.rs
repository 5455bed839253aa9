//! Cross-node end-to-end tests: real nodes, real mutual TLS, real sled, on loopback. One
//! test binary for the whole crate.

mod access;
mod audit;
mod case_life;
mod case_update;
mod cli;
mod console;
#[cfg(unix)]
mod crash;
mod directory;
mod durability;
mod events;
#[cfg(unix)]
mod flood;
mod hearing;
mod matrix;
mod operator;
mod ops;
mod privacy;
mod read_faults;
mod referral;
mod remedies;
mod returns;
mod safety;
mod stats;
#[cfg(target_os = "linux")]
mod storage;
mod tasks;
mod transport;
mod trust;
mod until_departure;
