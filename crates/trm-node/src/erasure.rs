//! Erasure at the recipients of a disclosure (consent withdrawn, case erased): the origin
//! side of the exchange. The recipient's side is in [`crate::flows`].

use time::OffsetDateTime;
use trm_core::{ids::Shared, messages::Topic};
use trm_federation::outbox;
use trm_proto::v1::{envelope_body::Payload, ErasureRequest};
use trm_store::{Subject, Tx};

use crate::ctx::{Ctx, TxResult};

const REASON: &str = "consent withdrawn";

/// Asks the recipient of disclosure `shared` (a referral or a return plan this node sent)
/// to erase its copy: the record is withdrawn (or halted), its data key shredded so queued
/// copies not yet delivered are gone too, and a signed erasure request is queued. Returns
/// whether a request was queued (not when erasure was already requested or the record is
/// unknown).
///
/// With `erase_local` (the whole case is erased), this node's own record of what it sent
/// keeps nothing but the pairwise reference as well.
pub fn request(ctx: &Ctx, tx: &mut Tx<'_>, shared: Shared, erase_local: bool) -> TxResult<bool> {
    let now = OffsetDateTime::now_utc();
    let (recipient, case_ref, topic) = match shared {
        Shared::Referral(id) => {
            let Some(mut r) = tx.referral(id)? else {
                return Ok(false);
            };
            if r.origin != ctx.id || !r.request_erasure(REASON, erase_local, now) {
                return Ok(false);
            }
            tx.shred(&Subject::referral(id))?;
            tx.put_referral(&r)?;
            (r.destination, r.disclosed.case_ref, Topic::Referral(id))
        }
        Shared::Return(id) => {
            let Some(mut r) = tx.return_plan(id)? else {
                return Ok(false);
            };
            if r.origin != ctx.id || !r.request_erasure(REASON, erase_local, now) {
                return Ok(false);
            }
            tx.shred(&Subject::return_plan(id))?;
            tx.put_return_plan(&r)?;
            (r.destination, r.disclosed.case_ref, Topic::Return(id))
        }
    };
    let subject_id = match shared {
        Shared::Referral(id) => id.to_string(),
        Shared::Return(id) => id.to_string(),
    };
    let request = ErasureRequest {
        subject_id,
        reason: REASON.into(),
    };
    outbox::enqueue(
        tx,
        &ctx.identity.current(),
        recipient,
        topic,
        &case_ref,
        Payload::ErasureRequest(request),
    )?;
    Ok(true)
}
