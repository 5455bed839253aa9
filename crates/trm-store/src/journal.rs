//! The journal: what happened that a restore must never undo, kept beside the key file and
//! never in a backup (DESIGN "Storage engines, erasure and backups").
//!
//! - **Erasures**: every data key destroyed. A restore destroys them again, so a backup
//!   never brings an erased record back; while the live store runs, a key the journal
//!   names is never unwrapped again (a database row written back from an old copy stays
//!   shut).
//! - **Distrust**: client-certificate revocations, the operator's peer directory after
//!   each change, the keys peers announced (their windows only ever end) and this node's
//!   own signing keys. A restore re-applies them; and whatever the database says, the node
//!   never trusts what the journal distrusts: a revocation deleted from the database, a
//!   removed peer's row written back, a retired key's old window.
//! - **Published statistics**: each month's report as first published, so a restore does
//!   not publish a month a second time with other cells.
//!
//! Entries hold subject ids, serials, node ids, public keys, aggregate counts and times:
//! no personal data. They are written before the transaction that makes them true commits
//! (a group of a writer's transaction at once), each group as one file created whole (a
//! temporary file synced, then renamed into place, then the folder synced): replicas of a
//! node sharing the key file's folder, also on a network file system, never see a torn or
//! half-written entry and never lose one to another's write. Files are owner-only.
//! Erasure files older than the backup retention are pruned (no backup that predates them
//! can be restored any more); the others are small and kept.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::stats::Month;

use crate::{
    repo::{
        directory::{DirectoryChanges, LearnedKeys, OwnKey, Revoked},
        stats::PublishedReport,
    },
    Result, StoreError,
};

/// One thing a restore must not undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A destroyed data key (its slot, hex).
    Erased { slot: String },
    /// A revoked client certificate.
    Revoked { revoked: Revoked },
    /// The operator's directory changes after a change.
    Directory { changes: DirectoryChanges },
    /// The keys peers announced, after an announcement.
    LearnedKeys { keys: LearnedKeys },
    /// This node's signing keys, after a rotation.
    OwnKeys { keys: Vec<OwnKey> },
    /// The node's rows were first authenticated with this journal beside them: from
    /// then on a row without the node's tag is refused, never adopted.
    Baseline,
    /// A month's statistics report as first published.
    Published {
        month: Month,
        report: PublishedReport,
    },
}

impl Entry {
    fn class(&self) -> Class {
        match self {
            Entry::Erased { .. } => Class::Erasures,
            Entry::Published { .. } => Class::Statistics,
            Entry::Revoked { .. }
            | Entry::Directory { .. }
            | Entry::LearnedKeys { .. }
            | Entry::OwnKeys { .. }
            | Entry::Baseline => Class::Trust,
        }
    }
}

/// One entry and when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub entry: Entry,
}

/// The journal's folders, by what their entries are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Erasures,
    Trust,
    Statistics,
}

impl Class {
    const ALL: [Class; 3] = [Class::Erasures, Class::Trust, Class::Statistics];

    fn folder(self) -> &'static str {
        match self {
            Class::Erasures => "erasures",
            Class::Trust => "trust",
            Class::Statistics => "statistics",
        }
    }
}

/// Returns the journal folder of the key file at `key_store`.
pub fn path(key_store: &Path) -> PathBuf {
    key_store.with_extension("journal")
}

/// The erasure journal of earlier versions: one line per destroyed key, still read.
fn legacy_path(key_store: &Path) -> PathBuf {
    key_store.with_extension("erasures")
}

/// Creates `dir` (and missing parents) owner-only, each new folder's entry in its parent
/// synced.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    // The folders it creates, so that each one's entry in its parent is made durable: a
    // file synced in a folder whose own entry was not is lost with it on a power cut.
    let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)?;
    for d in created {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Creates `path` owner-only for writing; it must not exist.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Writes `bytes` as the new file `name` in `dir` whole: a synced temporary file renamed
/// into place, then the folder synced.
pub(crate) fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = create_private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Appends `entries` (one group of a transaction) to the journal of `journal`, durably.
pub(crate) fn append(journal: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let at = OffsetDateTime::now_utc();
    let stamp = at.unix_timestamp_nanos();
    for class in Class::ALL {
        let records: Vec<Record> = entries
            .iter()
            .filter(|e| e.class() == class)
            .map(|e| Record {
                at,
                entry: e.clone(),
            })
            .collect();
        if records.is_empty() {
            continue;
        }
        let dir = journal.join(class.folder());
        create_private_dir(&dir)?;
        let text = serde_json::to_vec(&records).map_err(std::io::Error::other)?;
        // Names sort in time order; the random part keeps replicas' files apart.
        let name = format!("{stamp:024}-{}.json", uuid::Uuid::new_v4().simple());
        write_whole(&dir, &name, &text)?;
    }
    Ok(())
}

fn read_class(journal: &Path, class: Class) -> Result<Vec<Record>> {
    let dir = journal.join(class.folder());
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let bytes = std::fs::read(dir.join(&n))?;
        let records: Vec<Record> =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::Decode("journal entry"))?;
        out.extend(records);
    }
    Ok(out)
}

/// Everything the journal of the key file `key_store` holds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub erased: Vec<Vec<u8>>,
    pub trust: Vec<Record>,
    pub published: Vec<(Month, PublishedReport)>,
}

impl Journal {
    /// Reads the whole journal (and the erasure journal of earlier versions).
    pub fn read(key_store: &Path) -> Result<Self> {
        let journal = path(key_store);
        let mut erased = read_legacy(&legacy_path(key_store))?;
        for r in read_class(&journal, Class::Erasures)? {
            if let Entry::Erased { slot } = r.entry {
                erased.push(hex::decode(slot).map_err(|_| StoreError::Decode("journal entry"))?);
            }
        }
        let published = read_class(&journal, Class::Statistics)?
            .into_iter()
            .filter_map(|r| match r.entry {
                Entry::Published { month, report } => Some((month, report)),
                _ => None,
            })
            .collect();
        Ok(Self {
            erased,
            trust: read_trust(key_store)?,
            published,
        })
    }

    /// Returns how many entries a restore re-applies, by kind, for its report.
    pub fn counts(&self) -> JournalCounts {
        let mut c = JournalCounts {
            erasures: self.erased.len(),
            published_months: self.published.len(),
            ..Default::default()
        };
        for r in &self.trust {
            match r.entry {
                Entry::Revoked { .. } => c.revocations += 1,
                Entry::Directory { .. } => c.directory_changes += 1,
                Entry::LearnedKeys { .. } | Entry::OwnKeys { .. } => c.key_changes += 1,
                _ => {}
            }
        }
        c
    }
}

/// How many entries of each kind a journal holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JournalCounts {
    pub erasures: usize,
    pub revocations: usize,
    pub directory_changes: usize,
    pub key_changes: usize,
    pub published_months: usize,
}

/// Reads the distrust entries only (what the node checks whenever it loads its directory
/// or revocations: a small folder).
pub fn read_trust(key_store: &Path) -> Result<Vec<Record>> {
    read_class(&path(key_store), Class::Trust)
}

/// Reads every erased slot (legacy file and journal).
pub fn read_erased(key_store: &Path) -> Result<Vec<Vec<u8>>> {
    Ok(Journal::read(key_store)?.erased)
}

fn read_legacy(file: &Path) -> Result<Vec<Vec<u8>>> {
    #[derive(Deserialize)]
    struct Line {
        slot: String,
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Line =
                serde_json::from_str(l).map_err(|_| StoreError::Decode("erasure journal"))?;
            hex::decode(line.slot).map_err(|_| StoreError::Decode("erasure journal"))
        })
        .collect()
}

/// Removes erasure files written before `before`: no backup older than that can be
/// restored any more, so nothing they list can come back. Returns how many it removed.
pub fn prune_erasures(key_store: &Path, before: OffsetDateTime) -> Result<usize> {
    let dir = path(key_store).join(Class::Erasures.folder());
    let cutoff = format!("{:024}", before.unix_timestamp_nanos());
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if !name.starts_with('.') && name.as_str() < cutoff.as_str() && name.ends_with(".json") {
            std::fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(removed)
}

/// What the distrust entries of the journal say, merged over what the database says: the
/// database's rows are authenticated (no one without the node's keys can write a row the
/// node accepts), but an old row may be written back. The journal, beside the key file,
/// settles it: revocations are the union; the operator's directory and the keys peers
/// announced are the journal's last snapshot when it is newer than the row (each counts
/// its versions); windows of this node's own keys only ever end. The journal never adds
/// trust the database does not hold, except as a newer snapshot the node itself wrote.
pub mod merge {
    use super::*;

    /// Returns the revocations of the database and the journal together.
    pub fn revoked(db: Vec<Revoked>, journal: &[Record]) -> Vec<Revoked> {
        let mut all = db;
        for r in journal {
            if let Entry::Revoked { revoked } = &r.entry {
                if !all.iter().any(|x| x.same_certificate(revoked)) {
                    all.push(revoked.clone());
                }
            }
        }
        all
    }

    /// Returns the operator's directory: the journal's last snapshot when it is newer than
    /// the database's row (the row was written back from an older copy), else the row.
    pub fn directory(db: DirectoryChanges, journal: &[Record]) -> DirectoryChanges {
        let last = journal.iter().rev().find_map(|r| match &r.entry {
            Entry::Directory { changes } => Some(changes),
            _ => None,
        });
        match last {
            Some(j) if j.version > db.version => j.clone(),
            _ => db,
        }
    }

    /// Returns the keys peers announced: the journal's last snapshot when it is newer than
    /// the database's row (the row was written back from an older copy), else the row.
    pub fn learned(db: LearnedKeys, journal: &[Record]) -> LearnedKeys {
        let last = journal.iter().rev().find_map(|r| match &r.entry {
            Entry::LearnedKeys { keys } => Some(keys),
            _ => None,
        });
        match last {
            Some(j) if j.version > db.version => j.clone(),
            _ => db,
        }
    }

    /// Returns this node's signing keys, with every window the journal ended ended (the
    /// journal never adds a key).
    pub fn own(mut db: Vec<OwnKey>, journal: &[Record]) -> Vec<OwnKey> {
        let min = |a: Option<OffsetDateTime>, b: Option<OffsetDateTime>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for r in journal {
            if let Entry::OwnKeys { keys } = &r.entry {
                for k in keys {
                    if let Some(x) = db.iter_mut().find(|x| x.key_id == k.key_id) {
                        x.valid_until = min(x.valid_until, k.valid_until);
                        x.listed_until = min(x.listed_until, k.listed_until);
                    }
                }
            }
        }
        db
    }
}
