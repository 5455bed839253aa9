//! The node's reaction to federation traffic ([`FlowHandler`]): inbound payloads applied
//! inside the transaction that records their receipt, and peers' receipts for what we sent.

use std::sync::Arc;

use time::OffsetDateTime;
use trm_core::{
    exchange::{ErasableRecord, SharedRecord},
    hearing::{
        with_child_measures, HearingEvent, HearingParties, HearingRecord, HearingStatus,
        HearingStep, HearingTerms,
    },
    ids::{ClaimId, HearingId, NodeId, ReferralId, ReturnId, Shared, WitnessRecord},
    messages::{EnvelopeKind, PeerMessage, Topic},
    model::{DisclosedCase, NeedKind, Purpose, Urgency},
    policy,
    referral::{ReferralEvent, ReferralRecord, ReferralStep},
    remedies::{
        ClaimKind, ClaimRecord, ClaimStep, SignedAttestation, StatusRequestId, StatusStep,
        VictimStatusRecord, ATTESTATION_TAG,
    },
    returns::{ReturnEvent, ReturnRecord, StepDetails},
    safety::{AlertTerms, SafetyAlertRecord, SafetyAlertStatus},
    tasks::{due, DueTimes, Task, TaskKind},
};
use trm_crypto::signing::Signer;
use trm_federation::{inbound::peer_actor, outbox, FlowHandler, Inbound, Rejection};
use trm_proto::v1::ReceiptOutcome;
use trm_store::{
    repo::{
        flows::{Replaced, StoredRecord},
        outbox::OutboxItem,
    },
    Tx, TxFail,
};

/// Applies the flows' payloads for node `id`.
#[derive(Debug)]
pub struct Flows {
    pub id: NodeId,
    /// Signs replies queued while applying (erasure confirmations).
    pub identity: Arc<Signer>,
    /// When the tasks an arrival opens fall due (`[tasks]`).
    pub due: DueTimes,
    /// The peers' signing keys: an attestation is verified against its issuer's.
    pub directory: Arc<trm_federation::directory::PeerDirectory>,
    /// How old what a peer signed may be (`policy.replay_window_days`).
    pub replay_window: time::Duration,
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
fn id_is_new<R: SharedRecord>(
    tx: &mut Tx<'_>,
    inbound: &Inbound,
    id: R::Id,
    field: &str,
) -> FlowResult {
    let arriving = (R::KIND, inbound.sender, inbound.case_ref.as_str());
    if tx.names_a_record_arriving(trm_core::ids::RecordId::to_uuid(id), arriving)? {
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
        id_is_new::<ReferralRecord>(tx, inbound, referral_id, "referral_id")?;
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
        let urgent = disclosed
            .needs
            .as_ref()
            .and_then(|n| n.urgency)
            .is_some_and(|u| u != Urgency::Routine);
        let within = match urgent {
            true => self.due.answer_urgent_referral,
            false => self.due.answer_referral,
        };
        let now = OffsetDateTime::now_utc();
        tx.open_task(&Task::due_in(
            TaskKind::AnswerReferral,
            referral_id.uuid(),
            within,
            now,
        ))?;
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
        // What an alert of the case said of the person (the child flags) goes with the copy.
        let (sender, case_ref) = (inbound.sender, inbound.case_ref.as_str());
        for mut a in tx.alerts_of_copy(sender, case_ref)? {
            if a.child.take().is_some() {
                tx.put_record(&a)?;
            }
        }
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
        (hearing_pending, compensation_pending): (bool, bool),
        risk_assessed_at: Option<OffsetDateTime>,
    ) -> FlowResult {
        check_disclosure(inbound, disclosed, Purpose::ReturnPlanning)?;
        // A safety alert of the sender's about the case, naming this country, stands until
        // the sender assessed the risk again.
        crate::safety::check_copy(
            tx,
            self.id,
            (inbound.sender, &inbound.case_ref),
            risk_assessed_at,
        )?
        .map_err(|g| policy(g.to_string()))?;
        id_is_new::<ReturnRecord>(tx, inbound, return_id, "return_id")?;
        let known_as = tx.resolve_ref(inbound.sender, &inbound.case_ref)?;
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
        let now = OffsetDateTime::now_utc();
        tx.open_task(&Task::due_in(
            TaskKind::AnswerReturn,
            return_id.uuid(),
            self.due.answer_return,
            now,
        ))?;
        if let Some(subject) = known_as {
            crate::returns::tell_of_arriving_witness(tx, self.id, subject, return_id, now)?;
        }
        Ok(())
    }

    /// A hearing request for a witness here: the reference must resolve to a record
    /// exchanged with the requesting country; a child witness is heard with the child measures.
    fn hearing_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        hearing_id: HearingId,
        terms: HearingTerms,
    ) -> FlowResult {
        let record = tx
            .resolve_ref(inbound.sender, &inbound.case_ref)?
            .ok_or_else(|| {
                unknown("no record was exchanged with the requesting country under it")
            })?;
        let witness = tx
            .witness_of(record, inbound.sender)?
            .ok_or_else(|| unknown("the record is gone"))?;
        // The requesting country may not know that the witness is a child (its copy holds
        // what the consent let cross): the child's measures are added here, never asked
        // for in a refusal, which would tell it.
        let mut terms = terms;
        terms.measures = with_child_measures(witness.is_child, &terms.measures);
        id_is_new::<HearingRecord>(tx, inbound, hearing_id, "hearing_id")?;
        let parties = HearingParties {
            hearing_id,
            requesting_country: inbound.sender,
            witness_country: self.id,
            case_ref: inbound.case_ref.clone(),
            subject: record,
        };
        let now = OffsetDateTime::now_utc();
        let hearing = HearingRecord::requested(parties, terms, now);
        tx.put_hearing(&hearing)?;
        let by = peer_actor(inbound.sender);
        crate::returns::after_hearing(tx, &self.identity, (self.id, &by), &hearing)?;
        let answer = Task::due_in(
            TaskKind::AnswerHearing,
            hearing_id.uuid(),
            self.due.answer_hearing,
            now,
        );
        tx.open_task(&answer)?;
        Ok(())
    }
}

impl Flows {
    /// A safety alert about a case whose copy this node received from the sender, under the
    /// envelope's reference: kept, a task to acknowledge it opened, and, when it names this
    /// country, every open return of that copy halted here and told to the sender.
    fn safety_alert(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        alert_id: trm_core::ids::AlertId,
        terms: AlertTerms,
        raised_at: OffsetDateTime,
        disclosed: &DisclosedCase,
    ) -> FlowResult {
        check_disclosure(inbound, disclosed, Purpose::Safety)?;
        // A copy received from the sender under the reference (a referral or return plan,
        // or a claim): never a reference this node gave it for a case of its own.
        let (sender, case_ref) = (inbound.sender, inbound.case_ref.as_str());
        let held = tx.received_under(sender, case_ref)?.is_some()
            || !tx
                .records_where::<ClaimRecord>(|c| {
                    c.origin == sender && c.disclosed.case_ref == case_ref
                })?
                .is_empty();
        if !held {
            return Err(unknown("no copy was received from the sender under it"));
        }
        id_is_new::<SafetyAlertRecord>(tx, inbound, alert_id, "alert_id")?;
        let now = OffsetDateTime::now_utc();
        let record = SafetyAlertRecord::received(
            alert_id,
            (inbound.sender, self.id),
            terms,
            inbound.case_ref.clone(),
            disclosed.child,
            raised_at,
            now,
        );
        tx.put_record(&record)?;
        let within = match crate::safety::is_child(disclosed.child) {
            true => self.due.answer_urgent_referral,
            false => due::ACKNOWLEDGE_SAFETY_ALERT,
        };
        tx.open_task(&Task::due_in(
            TaskKind::AcknowledgeSafetyAlert,
            alert_id.uuid(),
            within,
            now,
        ))?;
        if terms.country == self.id {
            self.halt_copies(tx, inbound)?;
        }
        Ok(())
    }

    /// Halts every open return plan received from the sender under the envelope's reference
    /// (HALTED, reason `safety_alert`), told to the sender.
    fn halt_copies(&self, tx: &mut Tx<'_>, inbound: &Inbound) -> FlowResult {
        let (sender, case_ref) = (inbound.sender, inbound.case_ref.as_str());
        let open = tx.records_where::<ReturnRecord>(|r| {
            r.origin == sender && r.disclosed.case_ref == case_ref && r.status.before_departure()
        })?;
        for mut r in open {
            let step = StepDetails {
                reason: trm_core::Guard::SafetyAlert.as_str().to_owned(),
                ..Default::default()
            };
            r.apply(ReturnEvent::Halt, &step)
                .map_err(|g| transition(g.reason))?;
            tx.put_record(&r)?;
            tx.close_tasks_of(r.return_id.uuid())?;
            outbox::enqueue(
                tx,
                &self.identity.current(),
                sender,
                r.topic(),
                case_ref,
                trm_proto::peer::to_wire(&r.update_message(&step)),
            )?;
            tx.audit(
                trm_store::audit::AuditRecord::new(
                    peer_actor(sender),
                    "return.halt",
                    r.return_id.to_string(),
                    "halted",
                )
                .detail("guard=safety_alert"),
            )?;
        }
        Ok(())
    }

    /// A recipient acknowledged an alert this node raised.
    fn alert_answered(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        alert_id: trm_core::ids::AlertId,
        status: SafetyAlertStatus,
    ) -> FlowResult {
        let mut a = tx
            .record::<SafetyAlertRecord>(alert_id)?
            .ok_or_else(|| unknown("no such safety alert"))?;
        if a.origin != self.id || !a.recipients.iter().any(|r| r.node == inbound.sender) {
            return Err(unknown("safety alert not sent to the sender"));
        }
        if status != SafetyAlertStatus::Acknowledged {
            return Err(transition(format!("{status:?} from this sender")));
        }
        if a.recipient_reached(inbound.sender, status) {
            tx.put_record(&a)?;
        }
        Ok(())
    }

    /// A claim filed in this node's forum: what crossed must be within LEGAL_REMEDIES.
    fn claim_notice(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        claim_id: ClaimId,
        kind: ClaimKind,
        disclosed: &DisclosedCase,
    ) -> FlowResult {
        check_disclosure(inbound, disclosed, Purpose::LegalRemedies)?;
        id_is_new::<ClaimRecord>(tx, inbound, claim_id, "claim_id")?;
        let record = ClaimRecord::received(
            claim_id,
            inbound.sender,
            self.id,
            kind,
            disclosed.clone(),
            OffsetDateTime::now_utc(),
        );
        tx.put_record(&record)?;
        Ok(())
    }

    /// A peer asks whether the person it knows by the envelope's reference (a case this
    /// node sent it) was identified as a victim: the request is kept and the focal point's
    /// task to answer it opens.
    fn victim_status_query(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        id: StatusRequestId,
    ) -> FlowResult {
        let subject = match tx.resolve_ref(inbound.sender, &inbound.case_ref)? {
            Some(WitnessRecord::Case(case)) => WitnessRecord::Case(case),
            _ => return Err(unknown("no case of this node was sent under it")),
        };
        id_is_new::<VictimStatusRecord>(tx, inbound, id, "status_request_id")?;
        let now = OffsetDateTime::now_utc();
        let record = VictimStatusRecord::requested(
            id,
            inbound.sender,
            self.id,
            inbound.case_ref.clone(),
            subject,
            now,
        );
        tx.put_record(&record)?;
        tx.open_task(&Task::due_in(
            TaskKind::AttestVictimStatus,
            id.uuid(),
            self.due.answer_hearing,
            now,
        ))?;
        Ok(())
    }

    /// Checks a signed attestation before it is kept: signed by a known key of the sender
    /// over the attestation tag and the exact bytes, issued by the sender, about the
    /// request's own reference.
    fn check_attestation(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        id: StatusRequestId,
        signed: &SignedAttestation,
    ) -> FlowResult {
        let record = tx
            .record::<VictimStatusRecord>(id)?
            .ok_or_else(|| unknown("no such victim status request"))?;
        let peer = self
            .directory
            .get(inbound.sender)
            .ok_or_else(|| unknown("the sender is not a peer"))?;
        let key = peer
            .key(&signed.key_id)
            .ok_or_else(|| policy("attestation.key_id names no key of the sender"))?;
        trm_crypto::signing::verify(
            &key.public,
            ATTESTATION_TAG,
            &signed.attestation,
            &signed.signature,
        )
        .map_err(|_| policy("attestation.signature does not verify"))?;
        let a = <trm_proto::v1::VictimStatusAttestation as prost::Message>::decode(
            signed.attestation.as_slice(),
        )
        .map_err(|_| malformed("attestation.attestation does not decode"))?;
        if a.issuer != inbound.sender.as_str() {
            return Err(policy("attestation.issuer is not the sender"));
        }
        if a.case_ref != record.case_ref {
            return Err(policy("attestation.case_ref is not the request's"));
        }
        let issued_at = trm_proto::convert::from_ts("attestation.issued_at", a.issued_at.as_ref())
            .map_err(|e| malformed(e.to_string()))?;
        if !key.valid_at(issued_at) {
            return Err(policy(
                "attestation.key_id was not valid when it was issued",
            ));
        }
        // Issued when the answer was sealed, or before it within the replay window (an
        // answer sent again): never dated back into an older key's time.
        let (sealed, skew) = (inbound.created_at, trm_federation::inbound::CLOCK_SKEW);
        if issued_at > sealed + skew || issued_at < sealed - self.replay_window {
            return Err(policy(
                "attestation.issued_at is far from the envelope's created_at",
            ));
        }
        if a.stage == 0 {
            return Err(policy("attestation.stage is unspecified"));
        }
        Ok(())
    }

    /// The other node's step of a record both hold.
    fn update(&self, tx: &mut Tx<'_>, inbound: &Inbound) -> FlowResult {
        let me = self.id;
        match &inbound.message {
            PeerMessage::ReferralUpdate {
                referral_id,
                status,
                reason,
            } => {
                let step = ReferralStep {
                    reason: reason.clone(),
                    assign: None,
                };
                let id = *referral_id;
                lifecycle::update_in::<ReferralRecord>(me, tx, inbound, id, *status, &step)?;
                Ok(())
            }
            PeerMessage::ReturnUpdate {
                return_id,
                status,
                step,
            } => {
                lifecycle::update_in::<ReturnRecord>(me, tx, inbound, *return_id, *status, step)?;
                Ok(())
            }
            PeerMessage::HearingUpdate {
                hearing_id,
                status,
                step,
            } => {
                let id = *hearing_id;
                let h = lifecycle::update_in::<HearingRecord>(me, tx, inbound, id, *status, step)?;
                self.refresh_flags(tx, inbound, crate::returns::after_hearing, &h)
            }
            PeerMessage::ClaimUpdate {
                claim_id,
                status,
                reason,
            } => {
                let step = ClaimStep {
                    reason: reason.clone(),
                };
                let c = lifecycle::update_in::<ClaimRecord>(
                    me, tx, inbound, *claim_id, *status, &step,
                )?;
                self.refresh_flags(tx, inbound, crate::returns::after_claim, &c)
            }
            PeerMessage::VictimStatusAnswer {
                status_request_id,
                state,
                attestation,
            } => {
                let id = *status_request_id;
                if let Some(signed) = attestation {
                    self.check_attestation(tx, inbound, id, signed)?;
                }
                let step = StatusStep {
                    attestation: attestation.clone(),
                };
                lifecycle::update_in::<VictimStatusRecord>(me, tx, inbound, id, *state, &step)?;
                Ok(())
            }
            _ => Err(malformed("not an update of a shared record")),
        }
    }
}

impl Flows {
    /// After the sender's step on `record` (a hearing or a claim), the open return plans of
    /// its case take their coordination flags again through `after`
    /// (`returns::after_hearing` or `after_claim`), audited as the sender's.
    fn refresh_flags<R>(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        after: fn(&mut Tx<'_>, &Signer, (NodeId, &str), &R) -> trm_store::Result<()>,
        record: &R,
    ) -> FlowResult {
        let by = peer_actor(inbound.sender);
        Ok(after(tx, &self.identity, (self.id, &by), record)?)
    }

    /// The case behind a copy this node received changed at the sender (UpdateCase): the
    /// copy now holds `disclosed`, checked against the same disclosure table as when it
    /// first crossed, under the same reference. An erased copy stays erased.
    fn copy_update(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        subject: Shared,
        disclosed: &DisclosedCase,
    ) -> FlowResult {
        trm_core::on_shared!(subject, R, id => {
            check_disclosure(inbound, disclosed, R::PURPOSE)?;
            refresh_copy::<R>(tx, inbound, id, disclosed)
        })
    }
}

/// Replaces the disclosed case of record `id`, received from the sender of `inbound`, with
/// `disclosed`.
fn refresh_copy<R: StoredRecord + ErasableRecord>(
    tx: &mut Tx<'_>,
    inbound: &Inbound,
    id: R::Id,
    disclosed: &DisclosedCase,
) -> FlowResult {
    let mut r = tx
        .record::<R>(id)?
        .ok_or_else(|| unknown(format!("no such {}", R::KIND.name())))?;
    if r.origin() != inbound.sender {
        return Err(unknown(format!(
            "{} not received from the sender",
            R::KIND.name()
        )));
    }
    if r.is_final() {
        return Err(transition(format!("the {} has ended", R::KIND.name())));
    }
    let held = r.disclosed_mut();
    if held.is_tombstone() {
        return Err(transition("the copy was erased"));
    }
    if held.case_ref != disclosed.case_ref {
        return Err(malformed("disclosed.case_ref differs from the copy's"));
    }
    if !tx.newer_update::<R>(id, Replaced::DisclosedCase, inbound.message_id.uuid())? {
        tracing::info!(
            kind = R::KIND.name(),
            message = %inbound.message_id,
            "an older case update arrived after a newer one: the copy keeps the newer"
        );
        return Ok(());
    }
    *held = disclosed.clone();
    tx.put_record(&r)?;
    Ok(())
}

/// The plan's origin derived its coordination flags again (a hearing or a claim of the
/// case opened or ended there): the copy of plan `id` shows them. A plan this side ended
/// meanwhile (halted, closed) keeps what it showed: the flags crossed its end, and are not
/// worth a refusal the origin would have to handle.
fn return_flags(
    tx: &mut Tx<'_>,
    inbound: &Inbound,
    id: ReturnId,
    (hearing_pending, compensation_pending): (bool, bool),
) -> FlowResult {
    let mut r = tx
        .record::<ReturnRecord>(id)?
        .ok_or_else(|| unknown("no such return plan"))?;
    if r.origin != inbound.sender {
        return Err(unknown("return plan not received from the sender"));
    }
    if r.disclosed.case_ref != inbound.case_ref {
        return Err(malformed("case_ref differs from the plan's"));
    }
    if r.status.is_final() {
        return Ok(());
    }
    if !tx.newer_update::<ReturnRecord>(id, Replaced::ReturnFlags, inbound.message_id.uuid())? {
        tracing::info!(
            return_id = %id,
            message = %inbound.message_id,
            "older coordination flags arrived after newer ones: the plan keeps the newer"
        );
        return Ok(());
    }
    r.hearing_pending = hearing_pending;
    r.compensation_pending = compensation_pending;
    r.updated_at = OffsetDateTime::now_utc();
    tx.put_record(&r)?;
    Ok(())
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
            PeerMessage::ReferralUpdate { .. }
            | PeerMessage::ReturnUpdate { .. }
            | PeerMessage::HearingUpdate { .. }
            | PeerMessage::ClaimUpdate { .. }
            | PeerMessage::VictimStatusAnswer { .. } => self.update(tx, inbound),
            PeerMessage::ClaimNotice {
                claim_id,
                kind,
                disclosed,
            } => self.claim_notice(tx, inbound, *claim_id, *kind, disclosed),
            PeerMessage::VictimStatusQuery { status_request_id } => {
                self.victim_status_query(tx, inbound, *status_request_id)
            }
            PeerMessage::ReturnRequest {
                return_id,
                disclosed,
                hearing_pending,
                compensation_pending,
                risk_assessed_at,
            } => self.return_request(
                tx,
                inbound,
                *return_id,
                disclosed,
                (*hearing_pending, *compensation_pending),
                *risk_assessed_at,
            ),
            PeerMessage::SafetyAlertNotice {
                alert_id,
                terms,
                raised_at,
                disclosed,
            } => self.safety_alert(tx, inbound, *alert_id, *terms, *raised_at, disclosed),
            PeerMessage::SafetyAlertUpdate { alert_id, status } => {
                self.alert_answered(tx, inbound, *alert_id, *status)
            }
            PeerMessage::HearingRequest { hearing_id, terms } => {
                self.hearing_request(tx, inbound, *hearing_id, terms.clone())
            }
            // Taken by the directory before any flow (trm_federation::announce).
            PeerMessage::KeyAnnouncement { .. } => Err(malformed(
                "a key announcement is the directory's, not a flow's",
            )),
            PeerMessage::CopyUpdate { subject, disclosed } => {
                self.copy_update(tx, inbound, *subject, disclosed)
            }
            PeerMessage::ReturnFlags {
                return_id,
                hearing_pending,
                compensation_pending,
            } => return_flags(
                tx,
                inbound,
                *return_id,
                (*hearing_pending, *compensation_pending),
            ),
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
        match (item.kind, item.topic, outcome) {
            (EnvelopeKind::ReferralOffer, Topic::Referral(id), _) => {
                offer_receipt(tx, id, item, outcome, reason)
            }
            (
                EnvelopeKind::SafetyAlertNotice,
                Topic::SafetyAlert(id),
                ReceiptOutcome::Accepted | ReceiptOutcome::Duplicate,
            ) => {
                let Some(mut a) = tx.record::<SafetyAlertRecord>(id)? else {
                    return Ok(());
                };
                if a.recipient_reached(item.peer, SafetyAlertStatus::Delivered) {
                    tx.put_record(&a)?;
                }
                Ok(())
            }
            (_, _, ReceiptOutcome::Rejected) => self.refused(tx, item, reason),
            _ => Ok(()),
        }
    }

    fn undelivered(&self, tx: &mut Tx<'_>, item: &OutboxItem, why: &str) -> FlowResult {
        let note = format!("not delivered to {}: {why}", item.peer);
        match (item.kind, item.topic) {
            // These only note why they wait, as for a signed refusal.
            (EnvelopeKind::ReferralOffer, Topic::Referral(id)) => {
                offer_receipt(tx, id, item, ReceiptOutcome::Rejected, why)
            }
            (EnvelopeKind::ReturnRequest, _) => self.refused(tx, item, why),
            // A claim is decided by its forum and a hearing answered by the witness's
            // country: one that never reached it stays open, saying why it waits.
            (EnvelopeKind::ClaimNotice, Topic::Claim(id)) => {
                if let Some(mut c) = tx.record::<ClaimRecord>(id)? {
                    if c.status == trm_core::remedies::ClaimStatus::Filed {
                        c.status_reason = note;
                        c.updated_at = OffsetDateTime::now_utc();
                        tx.put_record(&c)?;
                    }
                }
                Ok(())
            }
            (EnvelopeKind::HearingRequest, Topic::Hearing(id)) => {
                if let Some(mut h) = tx.hearing(id)? {
                    if h.status == HearingStatus::Requested {
                        h.status_reason = note;
                        h.updated_at = OffsetDateTime::now_utc();
                        tx.put_hearing(&h)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Flows {
    /// A request the other node refused outright (an operator may still retry it from the
    /// dead letters): the record says why, and whatever waited on it stops waiting.
    fn refused(&self, tx: &mut Tx<'_>, item: &OutboxItem, reason: &str) -> FlowResult {
        match (item.kind, item.topic) {
            // A refused return request: the plan says why, as a refused referral does.
            (EnvelopeKind::ReturnRequest, Topic::Return(id)) => {
                if let Some(mut r) = tx.record::<ReturnRecord>(id)? {
                    if r.status == trm_core::returns::ReturnStatus::Requested {
                        r.status_reason = refused_by(item, reason);
                        r.updated_at = OffsetDateTime::now_utc();
                        tx.put_record(&r)?;
                    }
                }
            }
            // A refused claim or status question is over: it waits for nothing (and no
            // return carries a claim that was never filed there).
            (EnvelopeKind::ClaimNotice, Topic::Claim(id)) => {
                let Some(mut c) = tx.record::<ClaimRecord>(id)? else {
                    return Ok(());
                };
                let step = ClaimStep {
                    reason: refused_by(item, reason),
                };
                if c.apply(trm_core::remedies::ClaimEvent::Reject, &step)
                    .is_ok()
                {
                    tx.put_record(&c)?;
                    let by = peer_actor(item.peer);
                    crate::returns::after_claim(tx, &self.identity, (self.id, &by), &c)?;
                }
            }
            (EnvelopeKind::VictimStatusQuery, Topic::VictimStatus(id)) => {
                let Some(mut v) = tx.record::<VictimStatusRecord>(id)? else {
                    return Ok(());
                };
                let declined = v.apply(
                    trm_core::remedies::AttestDecision::Decline,
                    &StatusStep::default(),
                );
                if declined.is_ok() {
                    tx.put_record(&v)?;
                }
            }
            // A hearing request the witness's country refused is cancelled.
            (EnvelopeKind::HearingRequest, Topic::Hearing(id)) => {
                let Some(mut h) = tx.hearing(id)? else {
                    return Ok(());
                };
                if h.status == HearingStatus::Requested {
                    let step = HearingStep {
                        reason: refused_by(item, reason),
                        ..HearingStep::default()
                    };
                    if h.apply(HearingEvent::Cancel, &step).is_ok() {
                        tx.put_hearing(&h)?;
                        let by = peer_actor(item.peer);
                        crate::returns::after_hearing(tx, &self.identity, (self.id, &by), &h)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The receipt of a referral offer: delivered (only a referral still `sent`: an answer may
/// have overtaken it), or refused with the peer's reason.
fn offer_receipt(
    tx: &mut Tx<'_>,
    id: ReferralId,
    item: &OutboxItem,
    outcome: ReceiptOutcome,
    reason: &str,
) -> FlowResult {
    let Some(mut r) = tx.referral(id)? else {
        return Ok(());
    };
    let now = OffsetDateTime::now_utc();
    match outcome {
        ReceiptOutcome::Accepted | ReceiptOutcome::Duplicate => {
            let status_reason = r.status_reason.clone();
            if r.apply(ReferralEvent::Delivered, &status_reason, now)
                .is_err()
            {
                return Ok(());
            }
        }
        ReceiptOutcome::Rejected => {
            r.status_reason = refused_by(item, reason);
            r.updated_at = now;
        }
        _ => return Ok(()),
    }
    tx.put_referral(&r)?;
    Ok(())
}

/// Why a record waits no more for an envelope the other node refused: who, and its reason.
fn refused_by(item: &OutboxItem, reason: &str) -> String {
    format!("refused by {}: {reason}", item.peer)
}
