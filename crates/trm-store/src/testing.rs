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

/// Checks what an engine's transaction reads with [`get_many`](crate::engine::EngineTx::get_many)
/// and `get`: each key's value as the transaction sees it (its own writes and deletions,
/// those of a savepoint rolled back forgotten, over what is committed, which it reads once),
/// in the order asked, a key asked twice answered twice, a missing key `None`; and the
/// engine's own `get_many` of committed values. Run by each engine's tests.
pub fn check_get_many(engine: &dyn crate::engine::Engine) -> crate::Result<()> {
    let fail = |what: &str| Err(crate::StoreError::Engine(format!("get_many: {what}")));
    let mut tx = engine.begin()?;
    tx.put(b"gm/a", b"1")?;
    tx.put(b"gm/b", b"2")?;
    tx.put(b"gm/c", b"3")?;
    tx.commit()?;

    let mut tx = engine.begin()?;
    tx.put(b"gm/b", b"20")?;
    tx.delete(b"gm/c")?;
    tx.put(b"gm/d", b"4")?;
    let keys: [&[u8]; 6] = [b"gm/d", b"gm/a", b"gm/none", b"gm/c", b"gm/b", b"gm/a"];
    let want: [Option<&[u8]>; 6] = [Some(b"4"), Some(b"1"), None, None, Some(b"20"), Some(b"1")];
    let got = tx.get_many(&keys)?;
    if got.iter().map(Option::as_deref).ne(want) {
        return fail("the transaction's view, in order");
    }
    drop(tx);

    // A committed value read once, then written and rolled back, reads as committed again;
    // one written and kept reads as written, by either read.
    let mut tx = engine.begin()?;
    let first = tx.get(b"gm/a")?;
    tx.savepoint()?;
    tx.put(b"gm/a", b"10")?;
    tx.delete(b"gm/b")?;
    let inside = (tx.get(b"gm/a")?, tx.get_many(&[b"gm/b"])?);
    tx.rollback_to_savepoint()?;
    let after = (tx.get(b"gm/a")?, tx.get_many(&[b"gm/a", b"gm/b"])?);
    tx.savepoint()?;
    tx.put(b"gm/b", b"21")?;
    tx.release_savepoint()?;
    let kept = (tx.get(b"gm/b")?, tx.get_many(&[b"gm/b"])?);
    drop(tx);
    let one = |v: &[u8]| Some(v.to_vec());
    if first != one(b"1")
        || inside != (one(b"10"), vec![None])
        || after != (one(b"1"), vec![one(b"1"), one(b"2")])
        || kept != (one(b"21"), vec![one(b"21")])
    {
        return fail("reads around a savepoint");
    }

    let mut tx = engine.begin()?;
    if !tx.get_many(&[])?.is_empty() {
        return fail("no keys, no values");
    }
    if tx.get_many(&[b"gm/b", b"gm/c"])? != [Some(b"2".to_vec()), Some(b"3".to_vec())] {
        return fail("an abandoned transaction changed nothing");
    }
    drop(tx);

    // Outside a transaction: what is committed, in the order asked.
    let keys: [&[u8]; 4] = [b"gm/c", b"gm/none", b"gm/a", b"gm/c"];
    let want: [Option<&[u8]>; 4] = [Some(b"3"), None, Some(b"1"), Some(b"3")];
    if engine
        .get_many(&keys)?
        .iter()
        .map(Option::as_deref)
        .ne(want)
    {
        return fail("committed values, in order");
    }
    if !engine.get_many(&[])?.is_empty() {
        return fail("no keys, no committed values");
    }
    Ok(())
}
