//! The PostgreSQL suite: what only the PostgreSQL engine has, against a real server named by
//! `TRM_TEST_POSTGRES_URL` (`.ci/run` sets it; see README), and against servers the tests
//! start themselves ([`server`]: a crash and restart, the files on disk, TLS with
//! certificates of their own). The behavioural suite (the store tests and tests/e2e) runs
//! on PostgreSQL too, with the same variable. This target is built only with `--features
//! postgres-suite`, and fails when the variable is not set.

mod engine;
#[cfg(unix)]
mod replicas;
#[cfg(unix)]
mod restart;
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod tls;

/// The database of this suite.
pub fn url() -> String {
    trm_store::testing::postgres_url().unwrap_or_else(|| {
        panic!(
            "the PostgreSQL suite needs {} (e.g. postgres://root@127.0.0.1:5432/test)",
            trm_store::testing::POSTGRES_URL_VAR
        )
    })
}

/// A schema no other test uses.
pub fn fresh_schema() -> String {
    format!("trm_test_{}", uuid::Uuid::new_v4().simple())
}
