//! Erasure at the recipients of a disclosure (consent withdrawn, case erased): the origin
//! side of the exchange. The recipient's side is in [`crate::flows`].

use time::OffsetDateTime;
use trm_core::model::DisclosedCase;
use trm_core::{
    referral::{ReferralRecord, ReferralStatus},
    returns::{ReturnRecord, ReturnStatus},
};
use trm_federation::outbox;
use trm_proto::v1::{envelope_body::Payload, ErasureRequest};
use trm_store::{Subject, TreeName, Tx};
use uuid::Uuid;

use crate::ctx::{Ctx, TxResult};

const REASON: &str = "consent withdrawn";

/// Asks the recipient of disclosure `id` (a referral or a return plan this node sent) to
/// erase its copy: the record is withdrawn (or halted), its data key shredded so queued
/// copies not yet delivered are gone too, and a signed erasure request is queued. Returns
/// whether a request was queued (not when erasure was already requested or `id` is unknown).
///
/// With `erase_local` (the whole case is erased), this node's own record of what it sent
/// keeps nothing but the pairwise reference as well.
pub fn request(ctx: &Ctx, tx: &Tx<'_>, id: &Uuid, erase_local: bool) -> TxResult<bool> {
    let key = id.as_bytes();
    let (recipient, case_ref, tree) =
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
            let case_ref = r.disclosed.case_ref.clone();
            if erase_local {
                r.disclosed = tombstone(&r.disclosed);
                r.requested_services.clear();
            }
            tx.shred(&Subject::of(TreeName::Referrals, key))?;
            tx.put_sealed(TreeName::Referrals, key, &r)?;
            (r.destination, case_ref, TreeName::Referrals)
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
            let case_ref = r.disclosed.case_ref.clone();
            if erase_local {
                r.disclosed = tombstone(&r.disclosed);
                r.reception_details.clear();
                r.travel_details.clear();
                r.follow_ups.clear();
            }
            tx.shred(&Subject::of(TreeName::Returns, key))?;
            tx.put_sealed(TreeName::Returns, key, &r)?;
            (r.destination, case_ref, TreeName::Returns)
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
        outbox::About {
            id: &id.to_string(),
            sealed_under: &Subject::of(tree, key),
        },
        &case_ref,
        Payload::ErasureRequest(request),
    )?;
    Ok(true)
}

/// Returns what is kept of an erased copy: the pairwise reference, nothing else.
pub fn tombstone(d: &DisclosedCase) -> DisclosedCase {
    DisclosedCase {
        case_ref: d.case_ref.clone(),
        ..Default::default()
    }
}
