//! Backups of a running store, restores into a stopped one, and the erasure journal that
//! keeps a restore from bringing an erased record back.
//!
//! A backup is a folder: `store.kv` (every record, as the store holds it: sealed records stay
//! sealed), `keys.kek` (the key file, its KEKs wrapped by the master key, which is never in
//! a backup) and `manifest.json` (the node, the time, and each file's size and SHA-256). It is
//! taken as one job of the writer, so no write lands half in it.
//!
//! The erasure journal (`<key_store>.erasures`, beside the key store, never in a backup)
//! lists every data key destroyed, with its time: the journal is synced before the commit
//! that destroys the key. A restore removes every key it lists from the restored store, so
//! whatever was erased after the backup was taken stays erased.

use std::{
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{engine::postgres, EngineOptions, Result, Store, StoreError, StoreOptions, TxFail};

/// The format name in a backup's manifest.
pub const FORMAT: &str = "trm-backup/1";
const STORE_FILE: &str = "store.kv";
const KEY_FILE: &str = "keys.kek";
const MANIFEST: &str = "manifest.json";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub node: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub records: u64,
    pub files: Vec<FileDigest>,
}

impl Manifest {
    /// Total bytes of the backup's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// One line of the erasure journal: a destroyed data key (its slot) and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Erased {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    slot: String,
}

/// Returns the erasure journal of the key store at `key_store`.
pub fn journal_path(key_store: &Path) -> PathBuf {
    key_store.with_extension("erasures")
}

/// Appends destroyed data keys to the journal and syncs it (before their commit).
pub(crate) fn journal_erasures(journal: &Path, slots: &[Vec<u8>]) -> std::io::Result<()> {
    let at = OffsetDateTime::now_utc();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal)?;
    let mut text = String::new();
    for s in slots {
        let line = serde_json::to_string(&Erased {
            at,
            slot: hex::encode(s),
        })
        .map_err(std::io::Error::other)?;
        text.push_str(&line);
        text.push('\n');
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn read_journal(journal: &Path) -> Result<Vec<Vec<u8>>> {
    let f = match std::fs::File::open(journal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Erased =
            serde_json::from_str(&line).map_err(|_| StoreError::Decode("erasure journal"))?;
        out.push(hex::decode(&e.slot).map_err(|_| StoreError::Decode("erasure journal"))?);
    }
    Ok(out)
}

fn digest(dir: &Path, name: &str) -> Result<FileDigest> {
    let mut f = std::fs::File::open(dir.join(name))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(FileDigest {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(trm_crypto::sha256(&bytes)),
    })
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

fn read_frame(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut b)?;
    Ok(Some(b))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes every record and the key file into `target`; runs as one writer job, so nothing
/// else is written while it runs.
fn dump(tx: &mut crate::Tx<'_>, target: &Path, key_store: &Path) -> Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(target.join(STORE_FILE))?);
    let mut records = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = tx.scan_raw(b"", after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in page {
            write_frame(&mut out, &k)?;
            write_frame(&mut out, &v)?;
            records += 1;
        }
    }
    let f = out
        .into_inner()
        .map_err(|e| StoreError::Io(e.into_error()))?;
    f.sync_all()?;
    std::fs::copy(key_store, target.join(KEY_FILE))?;
    std::fs::File::open(target.join(KEY_FILE))?.sync_all()?;
    Ok(records)
}

impl Store {
    /// Writes a consistent backup of the running store into `dir` (created; it must not
    /// exist or be empty). Returns its manifest.
    pub async fn backup(&self, dir: &Path) -> Result<Manifest> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is not empty", dir.display()),
            )));
        }
        std::fs::create_dir_all(dir)?;
        let (target, key_store) = (dir.to_path_buf(), self.key_store_path().to_path_buf());
        let records = self
            .commit::<u64, (), _>(move |tx| Ok(dump(tx, &target, &key_store)?))
            .await
            .map_err(TxFail::into_store)?
            .value;
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            node: self.node().to_string(),
            created_at: OffsetDateTime::now_utc(),
            records,
            files: vec![digest(dir, STORE_FILE)?, digest(dir, KEY_FILE)?],
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|_| StoreError::Encode)?;
        let mut f = std::fs::File::create(dir.join(MANIFEST))?;
        f.write_all(&text)?;
        f.sync_all()?;
        sync_dir(dir)?;
        Ok(manifest)
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub manifest: Manifest,
    /// Data keys destroyed again from the erasure journal.
    pub erasures_applied: usize,
}

/// Reads and checks a backup's manifest and every file's digest.
pub fn check(from: &Path) -> Result<Manifest> {
    let text = std::fs::read(from.join(MANIFEST))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|_| StoreError::Decode("backup manifest"))?;
    if manifest.format != FORMAT {
        return Err(StoreError::Corrupt("backup format"));
    }
    for f in &manifest.files {
        if digest(from, &f.name)? != *f {
            return Err(StoreError::Corrupt(
                "a backup file does not match its manifest digest",
            ));
        }
    }
    Ok(manifest)
}

/// Restores the backup in `from` into the stopped node of `options`: the store and its key
/// file are replaced (only with `force` when the node holds data), then every data key the
/// erasure journal lists is destroyed again. The master key is the node's own.
pub fn restore(options: StoreOptions, from: &Path, force: bool) -> Result<Restored> {
    let manifest = check(from)?;
    if manifest.node != options.node.to_string() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the backup is of node {}, not {}",
                manifest.node, options.node
            ),
        )));
    }
    let (holds_data, place) = match &options.engine {
        EngineOptions::Sled(_) => (
            options.data_dir.exists() && std::fs::read_dir(&options.data_dir)?.next().is_some(),
            options.data_dir.display().to_string(),
        ),
        EngineOptions::Postgres(pg) => (
            postgres::holds_data(pg)?,
            format!("the PostgreSQL schema {}", pg.schema),
        ),
    };
    if holds_data && !force {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{place} holds a store: stop the node and pass --force to replace it"),
        )));
    }
    let erased = read_journal(&journal_path(&options.key_store))?;
    if holds_data {
        match &options.engine {
            EngineOptions::Sled(_) => std::fs::remove_dir_all(&options.data_dir)?,
            EngineOptions::Postgres(pg) => postgres::drop_schema(pg)?,
        }
    }
    std::fs::copy(from.join(KEY_FILE), &options.key_store)?;
    std::fs::File::open(&options.key_store)?.sync_all()?;
    let anchor = options.key_store.with_extension("audit-anchor");
    if anchor.exists() {
        // Rewritten from the restored chain when the store closes.
        std::fs::remove_file(&anchor)?;
    }
    let store = Store::open(options)?;
    let mut input = std::io::BufReader::new(std::fs::File::open(from.join(STORE_FILE))?);
    loop {
        let mut batch = Vec::new();
        while batch.len() < 1000 {
            let Some(k) = read_frame(&mut input)? else {
                break;
            };
            let v = read_frame(&mut input)?.ok_or(StoreError::Corrupt("backup record"))?;
            batch.push((k, v));
        }
        if batch.is_empty() {
            break;
        }
        let batch = Arc::new(batch);
        store
            .commit_blocking::<(), (), _>(move |tx| {
                for (k, v) in batch.iter() {
                    tx.put_raw(k, v)?;
                }
                Ok(())
            })
            .map_err(TxFail::into_store)?;
    }
    let slots = Arc::new(erased);
    let applied = slots.len();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for slot in slots.iter() {
                tx.destroy_data_key(slot)?;
            }
            Ok(())
        })
        .map_err(TxFail::into_store)?;
    store.close()?;
    Ok(Restored {
        manifest,
        erasures_applied: applied,
    })
}
