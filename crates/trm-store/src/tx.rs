//! The transaction a closure runs in ([`Tx`]): what it reads sees what earlier requests of
//! the same group wrote; what it writes is kept only if it returns `Ok`. The typed
//! repositories (`repo::*`) are methods on it; the primitives below are theirs alone.

use serde::{de::DeserializeOwned, Serialize};
use trm_core::ids::NodeId;

use crate::{engine::EngineTx, keys::KeyRing, repo::layout, subject::Subject, Result, StoreError};

/// What a committed transaction asks of the node once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Envelopes are queued for this peer: wake its delivery worker.
    Wake(NodeId),
    /// What this peer announced changed: reload its keys into the directory.
    PeerKeys(NodeId),
}

/// What one request did besides its writes, kept with them or dropped with them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Effects {
    pub notes: Vec<Note>,
    /// Data-key slots shredded: forgotten from the key cache once durable.
    pub shredded: Vec<Vec<u8>>,
    /// The highest outbox sequence written.
    pub outbox_seq: Option<u64>,
    /// Whether the audit chain grew.
    pub audited: bool,
    /// Change in the number of envelopes queued per peer.
    pub queued: std::collections::HashMap<NodeId, i64>,
    /// Change in the number of dead letters.
    pub dead_letters: i64,
    /// What the journal must hold before this commits (besides the shredded keys).
    pub journal: Vec<crate::journal::Entry>,
    /// The highest event number written.
    pub event_seq: Option<u64>,
}

impl Effects {
    pub(crate) fn merge(&mut self, other: Effects) {
        for n in other.notes {
            if !self.notes.contains(&n) {
                self.notes.push(n);
            }
        }
        self.shredded.extend(other.shredded);
        self.outbox_seq = self.outbox_seq.max(other.outbox_seq);
        self.audited |= other.audited;
        for (peer, d) in other.queued {
            *self.queued.entry(peer).or_default() += d;
        }
        self.dead_letters += other.dead_letters;
        self.journal.extend(other.journal);
        self.event_seq = self.event_seq.max(other.event_seq);
    }
}

/// One request's view of the store inside the writer's transaction.
pub struct Tx<'a> {
    /// The node whose store it is.
    pub(crate) node: NodeId,
    pub(crate) etx: &'a mut dyn EngineTx,
    pub(crate) keys: &'a KeyRing,
    pub(crate) fx: &'a mut Effects,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| StoreError::Encode)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Decode(what))
}

/// Length of a trusted row's authentication tag.
const TAG: usize = 32;

fn row_mac_input(key: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut m = b"trm/row/v1\0".to_vec();
    m.extend_from_slice(&(key.len() as u32).to_be_bytes());
    m.extend_from_slice(key);
    m.extend_from_slice(plain);
    m
}

/// Returns a row the node trusts without a seal as stored: its bytes, then an HMAC over
/// the row's key and bytes under a key derived from the master key. Whoever can write the
/// database but holds no key of the node cannot write a row the node accepts (a peer it
/// would trust, a revocation it would forget).
pub(crate) fn authenticate(keys: &KeyRing, key: &[u8], mut plain: Vec<u8>) -> Vec<u8> {
    let tag = keys.row_key().mac(&row_mac_input(key, &plain));
    plain.extend_from_slice(&tag);
    plain
}

/// Returns the bytes of an authenticated row, or [`StoreError::Forged`].
pub(crate) fn verify_row<'a>(
    keys: &KeyRing,
    what: &'static str,
    key: &[u8],
    row: &'a [u8],
) -> Result<&'a [u8]> {
    let split = row.len().checked_sub(TAG).ok_or(StoreError::Forged(what))?;
    let (plain, tag) = row.split_at(split);
    if keys.row_key().verify_mac(&row_mac_input(key, plain), tag) {
        Ok(plain)
    } else {
        Err(StoreError::Forged(what))
    }
}

/// Length of the key generation that prefixes sealed bytes.
const GEN_LEN: usize = 4;

/// Splits sealed bytes into the generation of the key that sealed them and the ciphertext.
pub(crate) fn split_generation(sealed: &[u8]) -> Result<(u32, &[u8])> {
    let (gen, rest) = sealed
        .split_at_checked(GEN_LEN)
        .ok_or(StoreError::Corrupt("sealed value"))?;
    let gen = u32::from_be_bytes(gen.try_into().map_err(|_| StoreError::Corrupt("sealed"))?);
    Ok((gen, rest))
}

/// Reads a row the node trusts without a seal through `get` (committed, or as a
/// transaction sees it): it must carry the node's authentication tag.
pub(crate) fn trusted_with<T: DeserializeOwned>(
    keys: &KeyRing,
    get: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>>,
    what: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    match get(key)? {
        Some(b) => decode(what, verify_row(keys, what, key, &b)?).map(Some),
        None => Ok(None),
    }
}

/// A subject's key generation as stored (0 when none is: its first).
fn gen_of(stored: Option<&[u8]>) -> u32 {
    stored
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Opens bytes sealed under `subject` (what [`Tx::seal`] made, bound to `aad`), the data
/// key that sealed them read through `get`; `None` when that key was shredded.
pub(crate) fn open_with(
    keys: &KeyRing,
    get: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>>,
    subject: &Subject,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Option<Vec<u8>>> {
    let (gen, ct) = split_generation(sealed)?;
    let slot = layout::data_key(subject, gen);
    if keys.is_erased(&slot) {
        return Ok(None);
    }
    match get(&slot)? {
        Some(stored) => Ok(Some(keys.unwrap(&slot, &stored)?.open(aad, ct)?)),
        None => Ok(None),
    }
}

/// Reads the value sealed under `subject` at `key` (what `put_sealed` wrote) through
/// `get`; `None` when there is none or its data key was shredded.
pub(crate) fn sealed_with<T: DeserializeOwned>(
    keys: &KeyRing,
    mut get: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    what: &'static str,
    key: &[u8],
    subject: &Subject,
) -> Result<Option<T>> {
    let Some(mut sealed) = get(key)? else {
        return Ok(None);
    };
    // Outside a transaction the value and its data key are read apart: a commit between
    // the two may have shredded that key and sealed the value again under the next one (an
    // erased copy keeps its tombstone). So the value is read again, and only when it has not
    // changed is it gone. In a transaction the second read answers the same.
    for _ in 0..SEALED_READ_TRIES {
        if let Some(plain) = open_with(keys, &mut get, subject, key, &sealed)? {
            return decode(what, &plain).map(Some);
        }
        match get(key)? {
            Some(again) if again != sealed => sealed = again,
            _ => return Ok(None),
        }
    }
    Err(StoreError::Unavailable(format!(
        "a stored {what} was sealed again under a new key at each of {SEALED_READ_TRIES} reads"
    )))
}

/// How many times a sealed read follows a value sealed again under a new key before it
/// answers that the store is too busy ([`StoreError::Unavailable`]): each time is a commit
/// of that very record between two reads.
const SEALED_READ_TRIES: usize = 8;

impl Tx<'_> {
    /// Returns the node whose store this is.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Asks the node to do `note` once this transaction is durable.
    pub fn note(&mut self, note: Note) {
        if !self.fx.notes.contains(&note) {
            self.fx.notes.push(note);
        }
    }

    /// Asks for `entry` to be written to the journal before this transaction commits.
    pub(crate) fn journal(&mut self, entry: crate::journal::Entry) {
        self.fx.journal.push(entry);
    }

    /// Runs `f` under a savepoint of its own: when it refuses, what it wrote (and asked for
    /// after the commit) is forgotten and the refusal returned, and the transaction goes on;
    /// when it fails on the store, what it wrote is forgotten and the error returned.
    pub fn attempt<R, E>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> std::result::Result<R, crate::TxFail<E>>,
    ) -> Result<std::result::Result<R, E>> {
        self.etx.savepoint()?;
        let saved = self.fx.clone();
        match f(self) {
            Ok(r) => {
                self.etx.release_savepoint()?;
                Ok(Ok(r))
            }
            Err(crate::TxFail::Abort(e)) => {
                self.etx.rollback_to_savepoint()?;
                *self.fx = saved;
                Ok(Err(e))
            }
            // Its savepoint is undone too, so that the caller's own (a job's, which the
            // writer rolls back when the job fails) is the one next undone: nothing of a
            // failed job stays in the group.
            Err(crate::TxFail::Store(e)) => {
                self.etx.rollback_to_savepoint()?;
                *self.fx = saved;
                Err(e)
            }
        }
    }

    pub(crate) fn get_raw(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.etx.get(key)
    }

    pub(crate) fn put_raw(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.etx.put(key, value)
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.etx.delete(key)
    }

    pub(crate) fn exists(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.etx.get(key)?.is_some())
    }

    /// Returns the values of `keys` in one round trip; the transaction's later reads of
    /// them cost none (it reads each committed value once).
    pub(crate) fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        self.etx.get_many(&keys)
    }

    /// Reads `keys` in one round trip ahead of the reads that will need them.
    pub(crate) fn prefetch(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        self.get_many(keys).map(drop)
    }

    /// Returns whether any of `keys` holds a value (one read for all of them).
    pub(crate) fn any_exists(&mut self, keys: &[Vec<u8>]) -> Result<bool> {
        Ok(self.get_many(keys)?.iter().any(Option::is_some))
    }

    /// Returns up to `limit` entries whose keys start with `prefix`, after `after` if given.
    pub(crate) fn scan_raw(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = crate::engine::scan_bounds(prefix, after);
        self.etx.range(&start, &end, limit)
    }

    pub(crate) fn get_json<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.etx.get(key)? {
            Some(b) => decode(what, &b).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn put_json<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<()> {
        self.etx.put(key, &encode(value)?)
    }

    /// Reads a row the node trusts without a seal (directory, revocations, keys, leases):
    /// it must carry the node's authentication tag (see [`authenticate`]).
    pub(crate) fn get_trusted<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        trusted_with(self.keys, |k| self.etx.get(k), what, key)
    }

    /// Writes a row the node trusts without a seal, with its authentication tag.
    pub(crate) fn put_trusted<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<()> {
        let plain = encode(value)?;
        let row = authenticate(self.keys, key, plain);
        self.etx.put(key, &row)
    }

    fn generation(&mut self, subject: &Subject) -> Result<u32> {
        Ok(gen_of(
            self.etx.get(&layout::generation(subject))?.as_deref(),
        ))
    }

    /// Seals `plain` under `subject`'s current data key (created on first use, in this
    /// transaction), bound to `aad`. The sealed bytes name the key's generation, so a later
    /// shred leaves them unreadable for good.
    pub fn seal(&mut self, subject: &Subject, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        // The generation and the first generation's key in one read: a subject is at its
        // first generation until it is shredded.
        let first = layout::data_key(subject, 0);
        let (gen, first_key) = match self
            .etx
            .get_many(&[&layout::generation(subject), &first])?
            .as_mut_slice()
        {
            [gen, first_key] => (gen_of(gen.as_deref()), first_key.take()),
            _ => return Err(StoreError::Engine("get_many: a value per key".into())),
        };
        let slot = layout::data_key(subject, gen);
        let stored = match gen {
            0 => first_key,
            _ => self.etx.get(&slot)?,
        };
        let dk = match stored {
            Some(stored) => self.keys.unwrap(&slot, &stored)?,
            None => {
                // With replicas, the KEK epoch is read from the database: a key made here
                // after another replica rotated the KEK is wrapped under the new one (this
                // read conflicts with the rotation's write, so no key slips under a KEK
                // about to be destroyed). Alone, this process's ring is always current.
                if self.keys.is_shared() {
                    let epoch = self
                        .etx
                        .get(&layout::meta(crate::keys::KEK_EPOCH))?
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    if epoch > self.keys.epochs().0 {
                        self.keys.reload()?;
                    }
                }
                let (dk, stored) = self.keys.new_data_key(&slot)?;
                self.etx.put(&slot, &stored)?;
                dk
            }
        };
        let mut out = gen.to_be_bytes().to_vec();
        out.extend(dk.seal(aad, plain)?);
        Ok(out)
    }

    /// Opens what [`Tx::seal`] sealed; `None` when its key was shredded.
    pub fn open(
        &mut self,
        subject: &Subject,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        open_with(self.keys, |k| self.etx.get(k), subject, aad, sealed)
    }

    pub(crate) fn put_sealed<T: Serialize>(
        &mut self,
        key: &[u8],
        subject: &Subject,
        value: &T,
    ) -> Result<()> {
        let sealed = self.seal(subject, key, &encode(value)?)?;
        self.etx.put(key, &sealed)
    }

    pub(crate) fn get_sealed<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
        subject: &Subject,
    ) -> Result<Option<T>> {
        // The value and the subject's first-generation key in one read (the key it is
        // sealed under unless the subject was shredded since).
        let first = layout::data_key(subject, 0);
        let read = self.etx.get_many(&[key, &first])?;
        let etx = &mut self.etx;
        sealed_with(
            self.keys,
            |k| match (k == key, k == first.as_slice()) {
                (true, _) => Ok(read.first().cloned().flatten()),
                (_, true) => Ok(read.get(1).cloned().flatten()),
                _ => etx.get(k),
            },
            what,
            key,
            subject,
        )
    }

    /// Reads the value sealed under `subject` at `key` though its key is listed as erased:
    /// only for a restore, which reads a record the backup still holds before destroying
    /// its key again, to end it as the erasure since ended it (see
    /// `backup::erasure_asked_since`).
    pub(crate) fn get_sealed_before_erasure<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
        subject: &Subject,
    ) -> Result<Option<T>> {
        let Some(sealed) = self.etx.get(key)? else {
            return Ok(None);
        };
        let (gen, ct) = split_generation(&sealed)?;
        let slot = layout::data_key(subject, gen);
        let Some(stored) = self.etx.get(&slot)? else {
            return Ok(None);
        };
        let plain = self.keys.unwrap(&slot, &stored)?.open(key, ct)?;
        decode(what, &plain).map(Some)
    }

    /// Destroys `subject`'s current data key in this transaction: what was sealed under it
    /// can never be opened again, here or from any later copy of the store; older copies
    /// stop opening once the KEK they hold it under is retired. What is sealed under the
    /// subject later in the transaction gets a new key.
    pub fn shred(&mut self, subject: &Subject) -> Result<()> {
        let gen = self.generation(subject)?;
        let slot = layout::data_key(subject, gen);
        self.etx.delete(&slot)?;
        self.etx
            .put(&layout::generation(subject), &(gen + 1).to_be_bytes())?;
        self.fx.shredded.push(slot);
        Ok(())
    }

    /// Destroys the data key in `slot` (as the erasure journal names it) and moves its
    /// subject past that generation: a restore re-applying an erasure. Returns the subject.
    pub(crate) fn destroy_data_key(&mut self, slot: &[u8]) -> Result<Subject> {
        let Some((subject, gen)) = slot_subject(slot) else {
            return Err(StoreError::Corrupt("an erasure journal entry"));
        };
        self.etx.delete(slot)?;
        if self.generation(&subject)? <= gen {
            self.etx
                .put(&layout::generation(&subject), &(gen + 1).to_be_bytes())?;
        }
        Ok(subject)
    }

    /// Returns the next value of the counter `name` (1 for the first).
    pub(crate) fn next_counter(&mut self, name: &str) -> Result<u64> {
        let next = self.counter(name)? + 1;
        self.set_counter(name, next)?;
        Ok(next)
    }

    /// Returns counter `name` as this transaction sees it (0 before its first use).
    pub(crate) fn counter(&mut self, name: &str) -> Result<u64> {
        Ok(self
            .etx
            .get(&layout::meta(name))?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Sets counter `name` to `value`.
    pub(crate) fn set_counter(&mut self, name: &str, value: u64) -> Result<()> {
        self.etx.put(&layout::meta(name), &value.to_be_bytes())
    }
}

/// Returns the subject and generation of the data key in `slot` (as the erasure journal
/// names it).
pub(crate) fn slot_subject(slot: &[u8]) -> Option<(Subject, u32)> {
    let rest = slot
        .strip_prefix(layout::DATA_KEYS)
        .filter(|rest| rest.len() >= 6)?;
    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let subject = rest.get(2..2 + len)?;
    let gen: [u8; 4] = rest.get(2 + len..)?.try_into().ok()?;
    Some((
        Subject::from_bytes(subject.to_vec()),
        u32::from_be_bytes(gen),
    ))
}
