//! What every service of a node shares.

use std::sync::Arc;

use time::{Date, OffsetDateTime};
use trm_core::ids::{NodeId, Principal};
use trm_crypto::signing::Signer;
use trm_federation::{Delivery, PeerDirectory};
use trm_store::{audit::AuditRecord, Note, Store, Tx, TxFail};

use crate::{
    authz::actor,
    error::{ApiError, ApiResult},
};

/// Result of a transaction closure of a local service.
pub type TxResult<T> = Result<T, TxFail<ApiError>>;

/// The node's shared state, handed to each service.
#[derive(Clone)]
pub struct Ctx {
    pub id: NodeId,
    pub store: Store,
    pub identity: Arc<Signer>,
    pub directory: Arc<PeerDirectory>,
    pub delivery: Delivery,
    /// The node's recovery and reflection period (never below 30 days).
    pub reflection_period_days: u32,
    /// How many days before a residence permit ends it shows as a task
    /// (`[policy] residence_notice_days`).
    pub residence_notice_days: u32,
    /// Federation traffic counters, for the metrics port.
    pub counters: Arc<trm_federation::Counters>,
    /// Where the signing key lives (key rotation replaces it).
    pub signing_key_path: std::path::PathBuf,
    /// How long envelopes stay acceptable; a rotated key stays listed at least this long.
    pub replay_window_days: u32,
    /// Revoked client certificates, checked on every request.
    pub revocations: Arc<crate::gate::Revocations>,
    /// Statistics cells counting fewer persons are suppressed.
    pub min_cell_count: u64,
    /// The node's certificates and when each expires (read at start).
    pub expiries: Vec<(String, Option<OffsetDateTime>)>,
    /// Who issues the node's client certificates (the ids of its client CAs): a
    /// revocation by serial alone names a certificate of these.
    pub client_issuers: Vec<String>,
    /// How long a backup stays restorable.
    pub backup_retention: time::Duration,
    /// Turns true when the node is asked to stop: open streams end.
    pub stopped: tokio::sync::watch::Receiver<bool>,
    /// The open event streams of each caller.
    pub watchers: Arc<crate::watch::Watchers>,
}

impl Ctx {
    /// Commits `f` through the store's commit pipeline (it returns once durable), then does
    /// what the transaction asked for (waking the delivery workers of the peers it queued
    /// envelopes for): the caller answers only after this returns.
    pub async fn commit<R, F>(&self, f: F) -> ApiResult<R>
    where
        F: Fn(&mut Tx<'_>) -> TxResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let committed = self.store.commit(f).await?;
        self.after_commit(&committed.notes);
        Ok(committed.value)
    }

    /// Does what durable transactions asked for.
    pub fn after_commit(&self, notes: &[Note]) {
        self.delivery.wake_noted(notes);
        for n in notes {
            if let Note::PeerKeys(peer) = n {
                if let Err(e) = self.directory.reload_learned(&self.store, *peer) {
                    tracing::warn!(peer = %peer, error = %e, "cannot apply the keys a peer announced");
                }
            }
        }
    }

    /// Announces a local step of a shared record to the other node (`peer`): the signed
    /// update is queued and the step audited, in the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn announce(
        &self,
        tx: &mut Tx<'_>,
        p: &Principal,
        peer: NodeId,
        topic: trm_core::messages::Topic,
        case_ref: &str,
        message: &trm_core::messages::PeerMessage,
        action: &str,
        outcome: &str,
    ) -> TxResult<()> {
        trm_federation::outbox::enqueue(
            tx,
            &self.identity.current(),
            peer,
            topic,
            case_ref,
            trm_proto::peer::to_wire(message),
        )?;
        tx.audit(AuditRecord::new(
            actor(p),
            action,
            topic.to_string(),
            outcome,
        ))?;
        Ok(())
    }

    /// Records a read of victim records (who, which ids, when) durably before the answer:
    /// a read whose audit entry cannot be written is refused.
    pub async fn audit_read(
        &self,
        p: &Principal,
        action: &str,
        subject: String,
        ids: String,
    ) -> ApiResult<()> {
        let record = AuditRecord::new(actor(p), action, subject, "ok").detail(ids);
        self.commit(move |tx| {
            tx.audit(record.clone())?;
            Ok(())
        })
        .await
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Returns today's date (UTC).
pub fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// A request that may be retried (AIP-155): the client certificate that made it, its
/// `request_id`, and a digest of the request's name and of the request without that id.
#[derive(Debug, Clone)]
pub struct Idempotent {
    client: String,
    request_id: uuid::Uuid,
    digest: Vec<u8>,
    /// The digest as versions before the name was in it kept it (of the bytes alone): a
    /// retry of a request remembered before an upgrade is still told apart.
    unnamed: Vec<u8>,
}

/// What a retryable request gave: done now, or done before (the key of its result).
#[derive(Debug)]
pub enum Done<R> {
    Now(R),
    Before(String),
}

pub use trm_proto::Retryable;

impl Idempotent {
    /// Reads the `request_id` of `request` (`None` when empty), and the digest of the
    /// request without it, which tells a retry from a different request under the same id.
    pub fn of<M: Retryable>(request: &tonic::Request<M>) -> ApiResult<Option<Self>> {
        let m = request.get_ref();
        if m.request_id().is_empty() {
            return Ok(None);
        }
        let id = uuid::Uuid::try_parse(m.request_id()).map_err(|_| {
            ApiError::from(trm_core::FieldError::new("request_id", "must be a UUID"))
        })?;
        let mut without_id = m.clone();
        without_id.clear_request_id();
        let bytes = without_id.encode_to_vec();
        let named = [M::NAME.as_bytes(), &[0], &bytes].concat();
        Ok(Some(Self {
            client: crate::authz::client_key(request),
            request_id: id,
            digest: trm_crypto::sha256(&named).to_vec(),
            unnamed: trm_crypto::sha256(&bytes).to_vec(),
        }))
    }

    /// Returns the key of the result of the same request made before, refusing the same id
    /// with a different request (INVALID_ARGUMENT naming `request_id`).
    pub fn before(&self, tx: &mut Tx<'_>) -> TxResult<Option<String>> {
        match tx.request(&self.client, self.request_id)? {
            Some(r) if r.digest == self.digest || r.digest == self.unnamed => Ok(Some(r.result)),
            Some(_) => Err(ApiError::from(trm_core::FieldError::new(
                "request_id",
                "was used for a different request",
            ))
            .into()),
            None => Ok(None),
        }
    }

    /// Remembers `result` (ids only, never personal data) as what the request gave.
    pub fn remember(&self, tx: &mut Tx<'_>, result: String) -> TxResult<()> {
        tx.put_request(
            &self.client,
            self.request_id,
            &trm_store::repo::requests::RequestRecord {
                digest: self.digest.clone(),
                result,
                at: OffsetDateTime::now_utc(),
            },
        )?;
        Ok(())
    }
}

impl Ctx {
    /// Returns the key of the result of `idem`'s request if it was done before (for
    /// requests whose effect is not one store commit, checked before acting).
    pub async fn done_before(&self, idem: &Option<Idempotent>) -> ApiResult<Option<String>> {
        let Some(i) = idem.clone() else {
            return Ok(None);
        };
        self.commit(move |tx| i.before(tx)).await
    }

    /// Remembers `result` as what `idem`'s request gave (after an effect that is not one
    /// store commit).
    pub async fn remember(&self, idem: Option<Idempotent>, result: String) -> ApiResult<()> {
        let Some(i) = idem else {
            return Ok(());
        };
        self.commit(move |tx| i.remember(tx, result.clone())).await
    }

    /// Commits a retryable request: when `idem` names a request already done, nothing is
    /// changed and the key of its result is returned; otherwise `f` runs, and the key of its
    /// result (`key`) is remembered with it in the same transaction.
    pub async fn commit_once<R, F, K>(
        &self,
        idem: Option<Idempotent>,
        key: K,
        f: F,
    ) -> ApiResult<Done<R>>
    where
        F: Fn(&mut Tx<'_>) -> TxResult<R> + Send + 'static,
        K: Fn(&R) -> String + Send + 'static,
        R: Send + 'static,
    {
        self.commit(move |tx| {
            if let Some(i) = &idem {
                if let Some(before) = i.before(tx)? {
                    return Ok(Done::Before(before));
                }
            }
            let r = f(tx)?;
            if let Some(i) = &idem {
                i.remember(tx, key(&r))?;
            }
            Ok(Done::Now(r))
        })
        .await
    }
}
