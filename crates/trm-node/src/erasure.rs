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
    if r.origin() != ctx.id || !r.request_erasure(REASON, erase_local, now) {
        return Ok(false);
    }
    tx.shred(&Subject::of_record(R::KIND, id.to_uuid().as_bytes()))?;
    tx.put_record(&r)?;
    // The record ended here (an open plan halted): nothing waits on it any more, as at the
    // other node once its copy is erased.
    tx.close_tasks_of(id.to_uuid())?;
    let request = PeerMessage::ErasureRequest {
        subject_id: id.to_uuid(),
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
    Ok(true)
}
