//! The node's reaction to federation traffic ([`FlowHandler`]): inbound payloads applied
//! inside the transaction that records their receipt, and peers' receipts for what we sent.

use std::sync::Arc;

use time::OffsetDateTime;
use trm_core::{
    hearing::{check_child_measures, HearingEvent, HearingRecord, HearingStatus, HearingStep},
    ids::{HearingId, NodeId, ReferralId, ReturnId, WitnessRecord},
    messages::{EnvelopeKind, PeerMessage, Topic},
    model::{DisclosedCase, NeedKind, Purpose},
    policy,
    referral::{ReferralEvent, ReferralRecord, ReferralStep},
    returns::ReturnRecord,
};
use trm_crypto::signing::Signer;
use trm_federation::{outbox, FlowHandler, Inbound, PeerDirectory, Rejection};
use trm_proto::v1::ReceiptOutcome;
use trm_store::{repo::outbox::OutboxItem, Tx, TxFail};

/// Applies the flows' payloads for node `id`.
#[derive(Debug)]
pub struct Flows {
    pub id: NodeId,
    /// Signs replies queued while applying (erasure confirmations).
    pub identity: Arc<Signer>,
    /// Knows peers' keys, for their announcements of new ones.
    pub directory: Arc<PeerDirectory>,
}

use crate::lifecycle::{self, transition, unknown, FlowResult};

fn policy(why: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection::PolicyViolation(why.into()))
}

fn malformed(why: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection::Malformed(why.into()))
}

/// Refuses an id a peer chose for a new record when it names any record this node holds,
/// of whatever kind: a peer never reaches a local record through an id it picked.
fn id_is_new(tx: &mut Tx<'_>, id: uuid::Uuid, field: &str) -> FlowResult {
    if tx.names_a_record(id)? {
        return Err(transition(format!(
            "{field} names a record that already exists"
        )));
    }
    Ok(())
}

impl Flows {
    fn referral_offer(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        referral_id: ReferralId,
        disclosed: &DisclosedCase,
        requested_services: &[NeedKind],
    ) -> FlowResult {
        check_disclosure(inbound, disclosed, Purpose::ReferralAssistance)?;
        id_is_new(tx, referral_id.uuid(), "referral_id")?;
        let record = ReferralRecord::received(
            referral_id,
            inbound.sender,
            self.id,
            disclosed.clone(),
            requested_services.to_vec(),
            OffsetDateTime::now_utc(),
        );
        tx.put_referral(&record)?;
        tx.remember_received_ref(
            inbound.sender,
            &inbound.case_ref,
            WitnessRecord::Referral(referral_id),
            disclosed,
        )?;
        Ok(())
    }

    /// Erases what the origin disclosed under a withdrawn consent: the copy becomes a
    /// tombstone with ids only, its data key is destroyed (so earlier copies, in backups or
    /// queued, stay unreadable), and a signed confirmation goes back.
    fn erasure_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        id: uuid::Uuid,
        reason: &str,
    ) -> FlowResult {
        let now = OffsetDateTime::now_utc();
        lifecycle::erase_any_copy(self.id, tx, inbound.sender, id, reason, now)?;
        // Nothing held (never arrived, or erased before) is erased as well: confirm either way.
        let confirmation = PeerMessage::ErasureConfirmation {
            subject_id: id,
            erased_at: Some(now),
        };
        outbox::enqueue(
            tx,
            &self.identity.current(),
            inbound.sender,
            Topic::Erasure(id),
            &inbound.case_ref,
            trm_proto::peer::to_wire(&confirmation),
        )?;
        Ok(())
    }

    fn erasure_confirmation(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        id: uuid::Uuid,
    ) -> FlowResult {
        if !lifecycle::confirm_any_erasure(self.id, tx, inbound.sender, id)? {
            return Err(unknown("no such subject"));
        }
        Ok(())
    }

    fn return_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        return_id: ReturnId,
        disclosed: &DisclosedCase,
        hearing_pending: bool,
        compensation_pending: bool,
    ) -> FlowResult {
        check_disclosure(inbound, disclosed, Purpose::ReturnPlanning)?;
        id_is_new(tx, return_id.uuid(), "return_id")?;
        let record = ReturnRecord::received(
            return_id,
            inbound.sender,
            self.id,
            disclosed.clone(),
            hearing_pending,
            compensation_pending,
            OffsetDateTime::now_utc(),
        );
        tx.put_return_plan(&record)?;
        tx.remember_received_ref(
            inbound.sender,
            &inbound.case_ref,
            WitnessRecord::Return(return_id),
            disclosed,
        )?;
        Ok(())
    }

    /// A hearing request for a witness here: the reference must resolve to a record
    /// exchanged with the requesting country; a child witness needs the child measures.
    fn hearing_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        hearing_id: HearingId,
        request: HearingAsked<'_>,
    ) -> FlowResult {
        let record = tx
            .resolve_ref(inbound.sender, &inbound.case_ref)?
            .ok_or_else(|| {
                unknown("no record was exchanged with the requesting country under it")
            })?;
        let witness = tx
            .witness_of(record, inbound.sender)?
            .ok_or_else(|| unknown("the record is gone"))?;
        check_child_measures(witness.is_child, request.measures).map_err(|g| policy(g.reason))?;
        id_is_new(tx, hearing_id.uuid(), "hearing_id")?;
        let now = OffsetDateTime::now_utc();
        let record = HearingRecord {
            hearing_id,
            requesting_country: inbound.sender,
            witness_country: self.id,
            status: HearingStatus::Requested,
            case_ref: inbound.case_ref.clone(),
            subject: record,
            proceeding_reference: request.proceeding_reference.to_owned(),
            legal_basis: request.legal_basis.to_owned(),
            measures: request.measures.to_vec(),
            language: request.language.to_owned(),
            proposed_times: request.proposed_times.to_vec(),
            scheduled_at: None,
            status_reason: String::new(),
            minutes_reference: String::new(),
            created_at: now,
            updated_at: now,
        };
        tx.put_hearing(&record)?;
        Ok(())
    }
}

/// What a hearing request asks for.
struct HearingAsked<'a> {
    proceeding_reference: &'a str,
    legal_basis: &'a str,
    measures: &'a [trm_core::hearing::ProtectiveMeasure],
    language: &'a str,
    proposed_times: &'a [OffsetDateTime],
}

/// Checks what crossed for `purpose` against the same disclosure table the sender must
/// apply: a field the purpose does not allow refuses the whole payload.
fn check_disclosure(inbound: &Inbound, disclosed: &DisclosedCase, purpose: Purpose) -> FlowResult {
    policy::check_inbound(purpose, disclosed).map_err(|v| TxFail::Abort(Rejection::from(v)))?;
    if disclosed.case_ref != inbound.case_ref {
        return Err(malformed(
            "disclosed.case_ref differs from the envelope's case_ref",
        ));
    }
    Ok(())
}

impl FlowHandler for Flows {
    fn apply(&self, tx: &mut Tx<'_>, inbound: &Inbound) -> FlowResult {
        match &inbound.message {
            PeerMessage::ReferralOffer {
                referral_id,
                disclosed,
                requested_services,
            } => self.referral_offer(tx, inbound, *referral_id, disclosed, requested_services),
            PeerMessage::ReferralUpdate {
                referral_id,
                status,
                reason,
            } => {
                let step = ReferralStep {
                    reason: reason.clone(),
                    assign: None,
                };
                lifecycle::update_in::<ReferralRecord>(
                    self.id,
                    tx,
                    inbound,
                    *referral_id,
                    *status,
                    &step,
                )
            }
            PeerMessage::ReturnRequest {
                return_id,
                disclosed,
                hearing_pending,
                compensation_pending,
            } => self.return_request(
                tx,
                inbound,
                *return_id,
                disclosed,
                *hearing_pending,
                *compensation_pending,
            ),
            PeerMessage::ReturnUpdate {
                return_id,
                status,
                step,
            } => lifecycle::update_in::<ReturnRecord>(
                self.id, tx, inbound, *return_id, *status, step,
            ),
            PeerMessage::HearingRequest {
                hearing_id,
                proceeding_reference,
                legal_basis,
                measures,
                language,
                proposed_times,
            } => self.hearing_request(
                tx,
                inbound,
                *hearing_id,
                HearingAsked {
                    proceeding_reference,
                    legal_basis,
                    measures,
                    language,
                    proposed_times,
                },
            ),
            PeerMessage::HearingUpdate {
                hearing_id,
                status,
                step,
            } => lifecycle::update_in::<HearingRecord>(
                self.id,
                tx,
                inbound,
                *hearing_id,
                *status,
                step,
            ),
            // Taken by the directory before any flow (trm_federation::announce).
            PeerMessage::KeyAnnouncement { .. } => Err(malformed(
                "a key announcement is the directory's, not a flow's",
            )),
            PeerMessage::ErasureRequest { subject_id, reason } => {
                self.erasure_request(tx, inbound, *subject_id, reason)
            }
            PeerMessage::ErasureConfirmation { subject_id, .. } => {
                self.erasure_confirmation(tx, inbound, *subject_id)
            }
        }
    }

    fn on_receipt(
        &self,
        tx: &mut Tx<'_>,
        item: &OutboxItem,
        outcome: ReceiptOutcome,
        reason: &str,
    ) -> FlowResult {
        match (item.kind, item.topic) {
            (EnvelopeKind::ReferralOffer, Topic::Referral(id)) => {
                let Some(mut r) = tx.referral(id)? else {
                    return Ok(());
                };
                let now = OffsetDateTime::now_utc();
                match outcome {
                    ReceiptOutcome::Accepted | ReceiptOutcome::Duplicate => {
                        // Only a referral still `sent`: an answer may have overtaken it.
                        let status_reason = r.status_reason.clone();
                        if r.apply(ReferralEvent::Delivered, &status_reason, now)
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    ReceiptOutcome::Rejected => {
                        r.status_reason = format!("refused by {}: {reason}", item.peer);
                        r.updated_at = now;
                    }
                    _ => return Ok(()),
                }
                tx.put_referral(&r)?;
            }
            (EnvelopeKind::HearingRequest, Topic::Hearing(id))
                if outcome == ReceiptOutcome::Rejected =>
            {
                let Some(mut h) = tx.hearing(id)? else {
                    return Ok(());
                };
                // A request the witness's country refused outright is cancelled.
                if h.status == HearingStatus::Requested {
                    let step = HearingStep {
                        reason: format!("refused by {}: {reason}", item.peer),
                        ..HearingStep::default()
                    };
                    if h.apply(HearingEvent::Cancel, &step).is_ok() {
                        tx.put_hearing(&h)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
