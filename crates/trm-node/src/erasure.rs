//! Erasure at the recipients of a disclosure (consent withdrawn, case erased): the origin
//! side of the exchange. The recipient's side is in [`crate::flows`].

use time::OffsetDateTime;
use trm_core::{
    referral::{ReferralRecord, ReferralStatus},
    returns::{ReturnRecord, ReturnStatus},
};
use trm_federation::outbox;
use trm_proto::v1::{envelope_body::Payload, ErasureRequest};
use trm_store::{TreeName, Tx};
use uuid::Uuid;

use crate::ctx::{Ctx, TxResult};

const REASON: &str = "consent withdrawn";

/// Asks the recipient of disclosure `id` (a referral or a return plan this node sent) to
/// erase its copy: the record is withdrawn (or halted), its data key shredded so queued
/// copies not yet delivered are gone too, and a signed erasure request is queued. Returns
/// whether a request was queued (not when erasure was already requested or `id` is unknown).
pub fn request(ctx: &Ctx, tx: &Tx<'_>, id: &Uuid) -> TxResult<bool> {
    let key = id.as_bytes();
    let (recipient, case_ref) =
        if let Some(mut r) = tx.get_sealed::<ReferralRecord>(TreeName::Referrals, key)? {
            if r.erasure_requested || r.origin != ctx.id {
                return Ok(false);
            }
            if !r.status.is_final() {
                r.status = ReferralStatus::Withdrawn;
            }
            r.status_reason = REASON.into();
            r.erasure_requested = true;
            r.updated_at = OffsetDateTime::now_utc();
            tx.shred(key)?;
            tx.put_sealed(TreeName::Referrals, key, &r)?;
            (r.destination, r.disclosed.case_ref)
        } else if let Some(mut r) = tx.get_sealed::<ReturnRecord>(TreeName::Returns, key)? {
            if r.erasure_requested || r.origin != ctx.id {
                return Ok(false);
            }
            if !r.status.is_final() {
                r.status = ReturnStatus::Halted;
            }
            r.status_reason = REASON.into();
            r.erasure_requested = true;
            r.updated_at = OffsetDateTime::now_utc();
            tx.shred(key)?;
            tx.put_sealed(TreeName::Returns, key, &r)?;
            (r.destination, r.disclosed.case_ref)
        } else {
            return Ok(false);
        };
    let request = ErasureRequest {
        subject_id: id.to_string(),
        reason: REASON.into(),
    };
    outbox::enqueue(
        tx,
        &ctx.identity.current(),
        ctx.id,
        recipient,
        &id.to_string(),
        &case_ref,
        Payload::ErasureRequest(request),
    )?;
    Ok(true)
}
