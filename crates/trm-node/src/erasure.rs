//! Erasure at the recipients of a disclosure (consent withdrawn, case erased): the origin
//! side of the exchange, for every kind of record that carries a victim's data. The
//! recipient's side is [`crate::lifecycle::erase_any_copy`].

use time::OffsetDateTime;
use trm_core::{
    exchange::ErasableRecord,
    ids::{RecordId, Shared},
    messages::PeerMessage,
};
use trm_federation::outbox;
use trm_store::{repo::flows::StoredRecord, Subject, Tx};

use crate::ctx::{Ctx, TxResult};

pub(crate) const REASON: &str = "consent withdrawn";

/// Asks the recipient of disclosure `shared` (a referral or a return plan this node sent)
/// to erase its copy: the record is withdrawn (or halted), its data key shredded so queued
/// copies not yet delivered are gone too, and a signed erasure request is queued. Returns
/// whether a request was queued (not when erasure was already requested or the record is
/// unknown).
///
/// With `erase_local` (the whole case is erased), this node's own record of what it sent
/// keeps nothing but the pairwise reference as well.
pub fn request(ctx: &Ctx, tx: &mut Tx<'_>, shared: Shared, erase_local: bool) -> TxResult<bool> {
    trm_core::on_shared!(shared, R, id => request_for::<R>(ctx, tx, id, erase_local))
}

fn request_for<R: StoredRecord + ErasableRecord>(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    id: R::Id,
    erase_local: bool,
) -> TxResult<bool> {
    let now = OffsetDateTime::now_utc();
    let Some(mut r) = tx.record::<R>(id)? else {
        return Ok(false);
    };
    if r.origin() != ctx.id {
        return Ok(false);
    }
    let held = r.disclosed().clone();
    if !r.request_erasure(REASON, erase_local, now) {
        // Asked for before; what this node kept of the copy may only now be erased (the
        // whole case erased after a consent was withdrawn): sealed again under a new key.
        if *r.disclosed() != held {
            tx.shred(&Subject::of_record(R::KIND, id.to_uuid().as_bytes()))?;
            tx.put_record(&r)?;
        }
        return Ok(false);
    }
    tx.shred(&Subject::of_record(R::KIND, id.to_uuid().as_bytes()))?;
    tx.put_record(&r)?;
    // The record ended here (an open plan halted): nothing waits on it any more, as at the
    // other node once its copy is erased.
    tx.close_tasks_of(id.to_uuid())?;
    send_request(ctx, tx, &r)?;
    Ok(true)
}

/// Queues the signed request to erase the copy of `r` at the other node.
fn send_request<R: StoredRecord + ErasableRecord>(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    r: &R,
) -> TxResult<()> {
    let request = PeerMessage::ErasureRequest {
        subject_id: r.id().to_uuid(),
        reason: REASON.into(),
    };
    outbox::enqueue(
        tx,
        &ctx.identity.current(),
        r.destination(),
        r.topic(),
        r.case_ref(),
        trm_proto::peer::to_wire(&request),
    )?;
    Ok(())
}

/// Asks again for the erasures a restore found asked for after its backup (the requests
/// queued then were not in the backup), before the node serves: the other nodes would
/// otherwise keep the victims' data. Returns how many.
pub async fn resume_requests(ctx: &Ctx) -> Result<usize, trm_store::StoreError> {
    let c = ctx.clone();
    ctx.commit(move |tx| {
        let pending = tx.pending_erasures()?;
        for shared in &pending {
            let shared = *shared;
            trm_core::on_shared!(shared, R, id => {
                if let Some(r) = tx.record::<R>(id)? {
                    send_request(&c, tx, &r)?;
                }
            });
            tx.forget_pending_erasure(shared)?;
            tx.audit(
                trm_store::audit::AuditRecord::new(
                    "node",
                    "erasure.request",
                    shared.record().1.to_string(),
                    "sent again",
                )
                .detail("after a restore"),
            )?;
        }
        Ok(pending.len())
    })
    .await
    .map_err(|e| trm_store::StoreError::Engine(e.to_string()))
    .inspect(|resumed| {
        if *resumed > 0 {
            tracing::info!(resumed, "erasure requests queued again after a restore");
        }
    })
}
