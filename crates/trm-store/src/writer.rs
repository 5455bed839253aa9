//! The one commit pipeline: a thread of its own, outside the async runtime, takes every
//! request waiting at the time, runs them one after the other in one engine transaction
//! (each under a savepoint, so a request that fails leaves nothing and fails no other),
//! signs the audit head, and commits once: one durable point for the whole group. Then it
//! answers each request with its own result. A failed durable point latches: from then on
//! every write is refused, because what the group wrote may already have been seen.
//! A disk that cannot take writes now (full, read-only: [`Engine::write_refusal`]) refuses
//! each group before anything is written, and only as long as it lasts.

use std::{
    any::Any,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, TryRecvError},
        Arc, Mutex, PoisonError, RwLock,
    },
};

use tokio::sync::oneshot;
use tracing::error;

use crate::{
    engine::{Engine, EngineTx, WriteRefusal},
    keys::KeyRing,
    repo::audit::sign_head,
    tx::{Effects, Note, Tx},
    StoreError,
};

/// The most requests one group takes.
const MAX_GROUP: usize = 512;

/// Why a request failed, type-erased for the trip through the writer.
pub(crate) enum JobFail {
    Abort(Box<dyn Any + Send>),
    Store(StoreError),
}

pub(crate) type JobOutput = Result<(Box<dyn Any + Send>, Vec<Note>), JobFail>;
pub(crate) type JobFn = Box<dyn FnMut(&mut Tx<'_>) -> Result<Box<dyn Any + Send>, JobFail> + Send>;

/// A request waiting for the writer.
pub(crate) struct Job {
    pub run: JobFn,
    pub reply: oneshot::Sender<JobOutput>,
}

/// The store's health: whether a durable point failed (and why), and whether the disk
/// refused the last group (and why).
#[derive(Debug)]
pub struct Health {
    failed: Mutex<Option<String>>,
    changes: tokio::sync::watch::Sender<Option<String>>,
    refusing: Mutex<Option<WriteRefusal>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            failed: Mutex::default(),
            changes: tokio::sync::watch::channel(None).0,
            refusing: Mutex::default(),
        }
    }
}

impl Health {
    /// Returns why the store stopped taking writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns a receiver that sees the failure when it happens.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.changes.subscribe()
    }

    /// Notes that the disk refuses writes (logged once when it starts, and again only when
    /// its cause changes: "full" to "read-only", not every time the free space moves, which
    /// would flood a log that may be on the same disk). Returns whether it logged.
    fn refuse(&self, why: &WriteRefusal) -> bool {
        let mut r = self.refusing.lock().unwrap_or_else(PoisonError::into_inner);
        if r.as_ref().is_some_and(|was| was.same_cause(why)) {
            return false;
        }
        tracing::warn!(
            reason = %why,
            "storage refuses writes: every write is answered UNAVAILABLE until the data folder takes writes again"
        );
        *r = Some(why.clone());
        true
    }

    /// Notes that the disk takes writes (logged once, when a refusal ends).
    fn writable(&self) {
        let mut r = self.refusing.lock().unwrap_or_else(PoisonError::into_inner);
        if r.take().is_some() {
            tracing::info!("storage takes writes again");
        }
    }

    fn fail(&self, why: String) {
        let mut f = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            error!(reason = %why, "a durable point failed: the node takes no more writes until it is restarted");
            *f = Some(why.clone());
            self.changes.send_replace(Some(why));
        }
    }
}

/// Counts the node keeps in memory (the metrics read them; no scan).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    queued: Mutex<std::collections::HashMap<trm_core::ids::NodeId, u64>>,
    dead_letters: AtomicU64,
    /// When the queues were last counted from the store (replicas count again when asked,
    /// see [`crate::Store::outbox_depth`]); held while counting, so one count serves every
    /// caller waiting.
    pub(crate) counted_at: Mutex<Option<std::time::Instant>>,
}

impl Counts {
    /// Replaces every count with what a count of the store found.
    pub(crate) fn replace(
        &self,
        queued: std::collections::HashMap<trm_core::ids::NodeId, u64>,
        dead: u64,
    ) {
        *self.queued.lock().unwrap_or_else(PoisonError::into_inner) = queued;
        self.dead_letters.store(dead, Ordering::SeqCst);
    }

    pub(crate) fn apply(
        &self,
        queued: &std::collections::HashMap<trm_core::ids::NodeId, i64>,
        dead: i64,
    ) {
        let mut q = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        for (peer, d) in queued {
            let n = q.entry(*peer).or_default();
            *n = n.saturating_add_signed(*d);
        }
        let _ = self
            .dead_letters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add_signed(dead))
            });
    }

    pub(crate) fn queued(&self, peer: trm_core::ids::NodeId) -> u64 {
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::SeqCst)
    }
}

/// What the writer shares with the store handle.
pub(crate) struct Shared {
    pub node: trm_core::ids::NodeId,
    pub engine: Arc<dyn Engine>,
    pub keys: Arc<KeyRing>,
    pub health: Arc<Health>,
    /// The highest outbox sequence known durable: delivery reads nothing beyond it.
    pub outbox_durable: Arc<AtomicU64>,
    /// Signs the audit head at each durable point, once the node's key is known.
    pub signer: RwLock<Option<Arc<trm_crypto::signing::Signer>>>,
    /// The chain was found rewritten: nothing is signed over it again.
    pub tampered: AtomicBool,
    pub counts: Counts,
    /// The journal folder (see [`crate::journal`]): written before each commit that needs it.
    pub journal: std::path::PathBuf,
    /// How long each durable point (commit and sync) takes.
    pub sync_latency: crate::histogram::Histogram,
    /// Commits begun (an engine may show what a commit wrote before its sync returns) and
    /// commits returned: while the first is ahead, what is seen may not be durable yet.
    pub commits_begun: AtomicU64,
    pub commits_returned: AtomicU64,
    /// The highest event number known durable: a watcher reads nothing beyond it.
    pub events_durable: AtomicU64,
    /// Tells watchers that events became durable (the number of the last).
    pub event_changes: tokio::sync::watch::Sender<u64>,
}

/// Runs groups of requests until every sender is gone.
pub(crate) fn run(shared: Arc<Shared>, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        run_group(&shared, group);
    }
}

fn refuse_all(group: Vec<Job>, why: &str) {
    for job in group {
        let _ = job
            .reply
            .send(Err(JobFail::Store(StoreError::Unavailable(why.to_owned()))));
    }
}

/// How often a group is run again after a serialization conflict (replicas writing at
/// once) before its requests are answered UNAVAILABLE.
const CONFLICT_RETRIES: u32 = 32;

/// The wait before retry `attempt` after a conflict: random, up to a bound that doubles
/// with each attempt (from 1 ms to 64 ms), so two replicas racing for the same rows (the
/// audit head, the outbox sequence) stop colliding.
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    let bound_us = 1000u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_fields().0) % bound_us;
    std::time::Duration::from_micros(jitter)
}

/// A group's attempt that must not be answered: run it again.
struct Conflicted;

fn run_group(shared: &Shared, mut group: Vec<Job>) {
    if let Some(why) = shared.health.failure() {
        return refuse_all(group, &why);
    }
    if let Some(why) = shared.engine.write_refusal() {
        shared.health.refuse(&why);
        return refuse_all(group, &why.to_string());
    }
    shared.health.writable();
    for attempt in 0..=CONFLICT_RETRIES {
        match attempt_group(shared, &mut group) {
            Ok(Some((outputs, all))) => return finish_group(shared, group, outputs, all),
            Ok(None) => return,
            Err(Conflicted) if attempt < CONFLICT_RETRIES => {
                tracing::debug!(
                    attempt,
                    "write conflict with another replica; running the group again"
                );
                std::thread::sleep(conflict_backoff(attempt));
            }
            Err(Conflicted) => break,
        }
    }
    refuse_all(group, "write conflicts with another replica; retry")
}

/// A failed commit or sync: with sled the lost writes may already be visible (the node
/// stops taking writes); with PostgreSQL the commit is atomic (the group is refused and the
/// next one tries again).
fn commit_failed(shared: &Shared, group: Vec<Job>, e: &StoreError) {
    if shared.engine.latches_on_failed_commit() {
        shared.health.fail(e.to_string());
    }
    refuse_all(group, &e.to_string())
}

/// Why a group's attempt stopped before its commit.
enum Stop {
    /// A serialization conflict: run the group again.
    Conflict,
    /// The transaction cannot go on: nothing of it is committed and every request of the
    /// group is refused with `why`; `latch` also stops the store taking writes.
    Refuse { why: String, latch: bool },
}

/// Runs every job of the group in one transaction with one durable point. `Ok(None)`: the
/// group was answered (refused); `Err`: a conflict, run it again.
#[allow(clippy::type_complexity)]
fn attempt_group(
    shared: &Shared,
    group: &mut Vec<Job>,
) -> Result<Option<(Vec<JobOutput>, Effects)>, Conflicted> {
    let begun = shared.engine.begin().and_then(|mut etx| {
        read_hot_keys(shared, &mut *etx)?;
        Ok(etx)
    });
    let mut etx = match begun {
        Ok(t) => t,
        Err(StoreError::Conflict) => return Err(Conflicted),
        Err(e) => {
            refuse_all(std::mem::take(group), &e.to_string());
            return Ok(None);
        }
    };
    let staged = run_jobs(shared, &mut *etx, group).and_then(|(outputs, all)| {
        sign_audit_head(shared, &mut *etx, &all)?;
        journal_before_commit(shared, &all)?;
        Ok((outputs, all))
    });
    let (outputs, all) = match staged {
        Ok(staged) => staged,
        Err(Stop::Conflict) => return Err(Conflicted),
        Err(Stop::Refuse { why, latch }) => {
            // Nothing of the transaction is committed.
            drop(etx);
            if latch {
                shared.health.fail(why.clone());
            }
            refuse_all(std::mem::take(group), &why);
            return Ok(None);
        }
    };
    commit_group(shared, etx, group, outputs, all)
}

/// Reads, in one round trip, what nearly every group reads once: the audit head and the
/// head the node signed, the event and outbox sequences, and (with replicas) the KEK
/// epoch. On PostgreSQL each read is a statement: this saves four or five a group. The
/// transaction keeps what it read, so the jobs read them from there.
fn read_hot_keys(shared: &Shared, etx: &mut dyn EngineTx) -> Result<(), StoreError> {
    let mut keys = crate::repo::audit::head_keys().to_vec();
    keys.extend([
        crate::repo::layout::meta(crate::repo::events::SEQ),
        crate::repo::layout::meta(crate::repo::outbox::SEQ),
    ]);
    if shared.keys.is_shared() {
        keys.push(crate::repo::layout::meta(crate::keys::KEK_EPOCH));
    }
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    etx.get_many(&refs).map(drop)
}

/// Runs each job of the group under its own savepoint: a job that fails leaves nothing
/// and fails no other. Returns each job's output and the effects of those that succeeded.
fn run_jobs(
    shared: &Shared,
    etx: &mut dyn EngineTx,
    group: &mut [Job],
) -> Result<(Vec<JobOutput>, Effects), Stop> {
    let mut outputs: Vec<JobOutput> = Vec::with_capacity(group.len());
    let mut all = Effects::default();
    for job in group.iter_mut() {
        if let Err(e) = etx.savepoint() {
            outputs.push(Err(JobFail::Store(e)));
            continue;
        }
        let mut fx = Effects::default();
        let result = {
            let mut tx = Tx {
                node: shared.node,
                etx: &mut *etx,
                keys: &shared.keys,
                fx: &mut fx,
            };
            (job.run)(&mut tx)
        };
        match result {
            Ok(value) => match etx.release_savepoint() {
                Ok(()) => {
                    outputs.push(Ok((value, fx.notes.clone())));
                    all.merge(fx);
                }
                Err(e) => outputs.push(Err(JobFail::Store(e))),
            },
            Err(JobFail::Store(StoreError::Conflict)) => return Err(Stop::Conflict),
            Err(fail) => {
                if let Err(e) = etx.rollback_to_savepoint() {
                    // The transaction can no longer be trusted: nothing of it is committed.
                    return Err(Stop::Refuse {
                        why: e.to_string(),
                        latch: true,
                    });
                }
                outputs.push(Err(fail));
            }
        }
    }
    Ok((outputs, all))
}

/// Signs the audit head over what the group audited, once the node's key is known and
/// unless the chain was found rewritten (then it is marked tampered and left unsigned).
fn sign_audit_head(shared: &Shared, etx: &mut dyn EngineTx, all: &Effects) -> Result<(), Stop> {
    if !all.audited || shared.tampered.load(Ordering::SeqCst) {
        return Ok(());
    }
    let signer = shared
        .signer
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(signer) = signer else {
        return Ok(());
    };
    match sign_head(etx, &signer) {
        Ok(true) => Ok(()),
        Ok(false) => {
            shared.tampered.store(true, Ordering::SeqCst);
            error!(
                "the audit chain no longer holds the head this node signed: not signing over it"
            );
            Ok(())
        }
        Err(StoreError::Conflict) => Err(Stop::Conflict),
        Err(e) => Err(Stop::Refuse {
            why: e.to_string(),
            latch: false,
        }),
    }
}

/// Writes the group's erasures and journal entries to the journal. Before the commit: a
/// restore of an older backup must find every erasure, revocation and distrusted peer or
/// key.
fn journal_before_commit(shared: &Shared, all: &Effects) -> Result<(), Stop> {
    if all.shredded.is_empty() && all.journal.is_empty() {
        return Ok(());
    }
    let mut entries: Vec<crate::journal::Entry> = all
        .shredded
        .iter()
        .map(|slot| crate::journal::Entry::Erased {
            slot: hex::encode(slot),
        })
        .collect();
    entries.extend(all.journal.iter().cloned());
    crate::journal::append(&shared.journal, &entries).map_err(|e| Stop::Refuse {
        why: format!("cannot write the journal: {e}"),
        latch: true,
    })
}

/// Commits the group (its durable point), timing it. `Ok(None)`: the commit failed and the
/// group was refused; `Err`: a conflict, run it again.
#[allow(clippy::type_complexity)]
fn commit_group(
    shared: &Shared,
    etx: Box<dyn EngineTx + '_>,
    group: &mut Vec<Job>,
    outputs: Vec<JobOutput>,
    all: Effects,
) -> Result<Option<(Vec<JobOutput>, Effects)>, Conflicted> {
    let started = std::time::Instant::now();
    let n = shared.commits_begun.fetch_add(1, Ordering::SeqCst) + 1;
    let committed = etx.commit();
    // Durable, or not applied, or the store latched (which stops the anchor on its own).
    shared.commits_returned.fetch_max(n, Ordering::SeqCst);
    shared.sync_latency.observe(started.elapsed().as_secs_f64());
    match committed {
        Ok(()) => Ok(Some((outputs, all))),
        Err(StoreError::Conflict) => Err(Conflicted),
        Err(e) => {
            commit_failed(shared, std::mem::take(group), &e);
            Ok(None)
        }
    }
}

/// Does what a durable group asked for and answers its requests.
fn finish_group(shared: &Shared, group: Vec<Job>, outputs: Vec<JobOutput>, all: Effects) {
    for slot in &all.shredded {
        shared.keys.forget(slot);
    }
    shared.keys.mark_erased(all.shredded.iter().cloned());
    if let Some(seq) = all.outbox_seq {
        shared.outbox_durable.fetch_max(seq, Ordering::SeqCst);
    }
    shared.counts.apply(&all.queued, all.dead_letters);
    if let Some(seq) = all.event_seq {
        shared.events_durable.fetch_max(seq, Ordering::SeqCst);
        shared.event_changes.send_replace(seq);
    }
    for (job, output) in group.into_iter().zip(outputs) {
        let _ = job.reply.send(output);
    }
}

#[cfg(test)]
mod tests {
    use super::{Health, WriteRefusal};

    #[test]
    fn a_disk_refusing_writes_is_logged_once_per_cause_not_per_free_space_figure() {
        let full = |free_kib: u64| WriteRefusal::Full {
            free_bytes: free_kib << 10,
            reserve_bytes: 1024 << 10,
        };
        assert_eq!(
            full(900).to_string(),
            "the data folder is full: 900 KiB free, 1024 KiB kept in reserve"
        );
        let h = Health::default();
        assert!(h.refuse(&full(900)));
        assert!(!h.refuse(&full(899)));
        assert!(h.refuse(&WriteRefusal::ReadOnly));
        assert!(!h.refuse(&WriteRefusal::ReadOnly));
        h.writable();
        assert!(h.refuse(&full(10)));
    }
}
