//! The engine a test suite runs on: PostgreSQL when the environment variable
//! [`POSTGRES_URL_VAR`] names a database, sled otherwise. The same tests then run against
//! both engines (`.ci/run` runs them twice); a machine without PostgreSQL runs them on sled.
//! When the variable is set and the database cannot be reached, the tests fail: they never
//! fall back to sled.

use std::path::Path;

use crate::{engine::postgres::PostgresOptions, EngineOptions};

/// The environment variable naming the database of the PostgreSQL runs.
pub const POSTGRES_URL_VAR: &str = "TRM_TEST_POSTGRES_URL";

/// The database URL of the PostgreSQL runs, when this is one.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
}

/// The schema of the store kept in `dir`: made up (and remembered in `dir`) the first
/// time, so reopening the store of `dir` finds its data and no two folders share one.
pub fn schema_for(dir: &Path) -> std::io::Result<String> {
    let file = dir.join("pg-schema");
    match std::fs::read_to_string(&file) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let schema = format!("trm_test_{}", uuid::Uuid::new_v4().simple());
            std::fs::write(&file, &schema)?;
            Ok(schema)
        }
        Err(e) => Err(e),
    }
}

/// The engine of a store kept in `dir` under test.
pub fn engine_for(dir: &Path) -> std::io::Result<EngineOptions> {
    Ok(match postgres_url() {
        Some(url) => EngineOptions::Postgres(PostgresOptions {
            url,
            ca_file: None,
            schema: schema_for(dir)?,
            readers: 2,
        }),
        None => EngineOptions::default(),
    })
}
