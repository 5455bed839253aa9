//! The node's reaction to federation traffic ([`FlowHandler`]): inbound payloads applied
//! inside the transaction that records their receipt, and peers' receipts for what we sent.

use std::sync::Arc;

use time::OffsetDateTime;
use trm_core::{
    hearing::{check_child_measures, HearingEvent, HearingRecord, HearingStatus, HearingStep},
    ids::{HearingId, NodeId, ReferralId, ReturnId, WitnessRecord},
    messages::{EnvelopeKind, Topic},
    model::Purpose,
    policy,
    referral::{next, ReferralEvent, ReferralRecord, ReferralStatus},
    returns::{ReturnEvent, ReturnRecord, ReturnStatus, Side, StepDetails},
};
use trm_crypto::signing::Signer;
use trm_federation::{
    directory::{key_from_stored, merge_keys, stored_from_key},
    outbox, FlowHandler, Inbound, PeerDirectory, PeerKey, Rejection,
};
use trm_proto::{
    convert,
    convert::ts,
    v1::{
        envelope_body::Payload, ErasureConfirmation, ErasureRequest, HearingRequest, HearingUpdate,
        ReceiptOutcome, ReferralOffer, ReferralUpdate, ReturnRequest, ReturnUpdate,
    },
};
use trm_store::{repo::outbox::OutboxItem, Note, Subject, Tx, TxFail};

use crate::{erasure::tombstone, hearing::witness_of};

/// Applies the flows' payloads for node `id`.
#[derive(Debug)]
pub struct Flows {
    pub id: NodeId,
    /// Signs replies queued while applying (erasure confirmations).
    pub identity: Arc<Signer>,
    /// Knows peers' keys, for their announcements of new ones.
    pub directory: Arc<PeerDirectory>,
}

type FlowResult = Result<(), TxFail<Rejection>>;

fn reject(reason: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection(reason.into()))
}

/// Refuses an id a peer chose for a new record when it names any record this node holds,
/// of whatever kind: a peer never reaches a local record through an id it picked.
fn id_is_new(tx: &mut Tx<'_>, id: uuid::Uuid, field: &str) -> FlowResult {
    if tx.names_a_record(id)? {
        return Err(reject(format!(
            "invalid transition: {field} names a record that already exists"
        )));
    }
    Ok(())
}

impl Flows {
    fn referral_offer(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        offer: &ReferralOffer,
    ) -> FlowResult {
        let referral_id = ReferralId::parse("referral_id", &offer.referral_id)
            .map_err(|_| reject("malformed: referral_id"))?;
        let disclosed = inbound_disclosure(
            inbound,
            offer.disclosed.as_ref(),
            Purpose::ReferralAssistance,
        )?;
        let requested_services = convert::enums("requested_services", &offer.requested_services)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        id_is_new(tx, referral_id.uuid(), "referral_id")?;
        let now = OffsetDateTime::now_utc();
        let record = ReferralRecord {
            referral_id,
            origin: inbound.sender,
            destination: self.id,
            status: ReferralStatus::Delivered,
            disclosed,
            requested_services,
            case_id: None,
            organisation: None,
            status_reason: String::new(),
            consent_ids: vec![],
            erasure_requested: false,
            erasure_confirmed: false,
            created_at: now,
            updated_at: now,
        };
        tx.put_referral(&record)?;
        tx.remember_received_ref(
            inbound.sender,
            &inbound.case_ref,
            WitnessRecord::Referral(referral_id),
        )?;
        Ok(())
    }

    fn referral_update(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        update: &ReferralUpdate,
    ) -> FlowResult {
        let referral_id = ReferralId::parse("referral_id", &update.referral_id)
            .map_err(|_| reject("malformed: referral_id"))?;
        let status = convert::referral_status_from_wire("status", update.status)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        let mut r = tx
            .referral(referral_id)?
            .ok_or_else(|| reject("unknown case reference: no such referral"))?;
        if r.peer(self.id) != inbound.sender {
            return Err(reject(
                "unknown case reference: referral not shared with the sender",
            ));
        }
        let from_destination = r.destination == inbound.sender;
        let event = ReferralEvent::leading_to(status, from_destination).ok_or_else(|| {
            reject(format!(
                "invalid transition: {} from this sender",
                status.as_str()
            ))
        })?;
        r.status = next(r.status, event)
            .map_err(|g| reject(format!("invalid transition: {}", g.reason)))?;
        r.status_reason = convert::text("reason", &update.reason)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        r.updated_at = OffsetDateTime::now_utc();
        tx.put_referral(&r)?;
        Ok(())
    }

    /// Erases what the origin disclosed under a withdrawn consent: the copy becomes a
    /// tombstone with ids only, its data key is destroyed, and a signed confirmation goes back.
    fn erasure_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        req: &ErasureRequest,
    ) -> FlowResult {
        let id =
            uuid::Uuid::try_parse(&req.subject_id).map_err(|_| reject("malformed: subject_id"))?;
        let reason = convert::text("reason", &req.reason).unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        let not_from_sender =
            || reject("unknown case reference: subject not received from the sender");
        // The copy becomes a tombstone with ids only; destroying the old data key keeps
        // earlier copies, in backups or queued, unreadable.
        let referral_id = ReferralId::from_uuid(id);
        let return_id = ReturnId::from_uuid(id);
        if let Some(mut r) = tx.referral(referral_id)? {
            if r.origin != inbound.sender || r.destination != self.id {
                return Err(not_from_sender());
            }
            r.disclosed = tombstone(&r.disclosed);
            r.requested_services.clear();
            r.status = ReferralStatus::Withdrawn;
            r.status_reason = reason;
            r.updated_at = now;
            tx.shred(&Subject::referral(referral_id))?;
            tx.put_referral(&r)?;
        } else if let Some(mut r) = tx.return_plan(return_id)? {
            if r.origin != inbound.sender || r.destination != self.id {
                return Err(not_from_sender());
            }
            r.disclosed = tombstone(&r.disclosed);
            r.reception_details.clear();
            r.travel_details.clear();
            r.follow_ups.clear();
            if !r.status.is_final() {
                r.status = ReturnStatus::Halted;
            }
            r.status_reason = reason;
            r.updated_at = now;
            tx.shred(&Subject::return_plan(return_id))?;
            tx.put_return_plan(&r)?;
        }
        // Nothing held (never arrived, or erased before) is erased as well: confirm either way.
        let confirmation = ErasureConfirmation {
            subject_id: id.to_string(),
            erased_at: Some(ts(now)),
        };
        outbox::enqueue(
            tx,
            &self.identity.current(),
            inbound.sender,
            Topic::Erasure(id),
            &inbound.case_ref,
            Payload::ErasureConfirmation(confirmation),
        )?;
        Ok(())
    }

    fn erasure_confirmation(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        c: &ErasureConfirmation,
    ) -> FlowResult {
        let id =
            uuid::Uuid::try_parse(&c.subject_id).map_err(|_| reject("malformed: subject_id"))?;
        let not_sent = || reject("unknown case reference: subject not sent to the sender");
        let no_request = || reject("invalid transition: no erasure was requested");
        if let Some(mut r) = tx.referral(ReferralId::from_uuid(id))? {
            if r.destination != inbound.sender || r.origin != self.id {
                return Err(not_sent());
            }
            if !r.erasure_requested {
                return Err(no_request());
            }
            r.erasure_confirmed = true;
            r.updated_at = OffsetDateTime::now_utc();
            tx.put_referral(&r)?;
        } else if let Some(mut r) = tx.return_plan(ReturnId::from_uuid(id))? {
            if r.destination != inbound.sender || r.origin != self.id {
                return Err(not_sent());
            }
            if !r.erasure_requested {
                return Err(no_request());
            }
            r.erasure_confirmed = true;
            r.updated_at = OffsetDateTime::now_utc();
            tx.put_return_plan(&r)?;
        } else {
            return Err(reject("unknown case reference: no such subject"));
        }
        Ok(())
    }

    fn return_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        req: &ReturnRequest,
    ) -> FlowResult {
        let return_id = ReturnId::parse("return_id", &req.return_id)
            .map_err(|_| reject("malformed: return_id"))?;
        let disclosed =
            inbound_disclosure(inbound, req.disclosed.as_ref(), Purpose::ReturnPlanning)?;
        id_is_new(tx, return_id.uuid(), "return_id")?;
        let now = OffsetDateTime::now_utc();
        let record = ReturnRecord {
            return_id,
            origin: inbound.sender,
            destination: self.id,
            status: ReturnStatus::Requested,
            disclosed,
            hearing_pending: req.hearing_pending,
            compensation_pending: req.compensation_pending,
            case_id: None,
            organisation: None,
            status_reason: String::new(),
            reception_details: String::new(),
            travel_at: None,
            travel_details: String::new(),
            follow_ups: vec![],
            consent_ids: vec![],
            erasure_requested: false,
            erasure_confirmed: false,
            created_at: now,
            updated_at: now,
        };
        tx.put_return_plan(&record)?;
        tx.remember_received_ref(
            inbound.sender,
            &inbound.case_ref,
            WitnessRecord::Return(return_id),
        )?;
        Ok(())
    }

    fn return_update(&self, tx: &mut Tx<'_>, inbound: &Inbound, u: &ReturnUpdate) -> FlowResult {
        let id = ReturnId::parse("return_id", &u.return_id)
            .map_err(|_| reject("malformed: return_id"))?;
        let status = convert::return_status_from_wire("status", u.status)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        let mut r = tx
            .return_plan(id)?
            .ok_or_else(|| reject("unknown case reference: no such return plan"))?;
        if r.peer(self.id) != inbound.sender {
            return Err(reject(
                "unknown case reference: return plan not shared with the sender",
            ));
        }
        let sender_side = if r.origin == inbound.sender {
            Side::Requesting
        } else {
            Side::Receiving
        };
        let event = ReturnEvent::leading_to(status, sender_side, r.status).ok_or_else(|| {
            reject(format!(
                "invalid transition: {} from this sender",
                status.as_str()
            ))
        })?;
        let step = StepDetails {
            reason: convert::text("reason", &u.reason)
                .map_err(|e| reject(format!("malformed: {e}")))?,
            details: convert::text("details", &u.details)
                .map_err(|e| reject(format!("malformed: {e}")))?,
            travel_at: match u.travel_at.as_ref() {
                Some(t) => Some(
                    convert::from_ts("travel_at", Some(t))
                        .map_err(|e| reject(format!("malformed: {e}")))?,
                ),
                None => None,
            },
        };
        r.apply(event, &step)
            .map_err(|g| reject(format!("invalid transition: {}", g.reason)))?;
        tx.put_return_plan(&r)?;
        Ok(())
    }

    /// A hearing request for a witness here: the reference must resolve to a record
    /// exchanged with the requesting country; a child witness needs the child measures.
    fn hearing_request(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        req: &HearingRequest,
    ) -> FlowResult {
        let malformed = |e: trm_core::FieldError| reject(format!("malformed: {e}"));
        let hearing_id = HearingId::parse("hearing_id", &req.hearing_id)
            .map_err(|_| reject("malformed: hearing_id"))?;
        let record = tx
            .resolve_ref(inbound.sender, &inbound.case_ref)?
            .ok_or_else(|| reject("unknown case reference: no record was exchanged with the requesting country under it"))?;
        let witness = witness_of(tx, record, inbound.sender)
            .map_err(|_| reject("unknown case reference"))?
            .ok_or_else(|| reject("unknown case reference: the record is gone"))?;
        let measures = convert::enums("measures", &req.measures).map_err(malformed)?;
        check_child_measures(witness.is_child, &measures)
            .map_err(|g| reject(format!("policy violation: {}", g.reason)))?;
        id_is_new(tx, hearing_id.uuid(), "hearing_id")?;
        let now = OffsetDateTime::now_utc();
        let record = HearingRecord {
            hearing_id,
            requesting_country: inbound.sender,
            witness_country: self.id,
            status: HearingStatus::Requested,
            case_ref: inbound.case_ref.clone(),
            subject: record,
            proceeding_reference: convert::short(
                "proceeding_reference",
                &req.proceeding_reference,
                true,
            )
            .map_err(malformed)?,
            legal_basis: convert::short("legal_basis", &req.legal_basis, true)
                .map_err(malformed)?,
            measures,
            language: convert::language("language", &req.language).map_err(malformed)?,
            proposed_times: convert::timestamps("proposed_times", &req.proposed_times)
                .map_err(malformed)?,
            scheduled_at: None,
            status_reason: String::new(),
            minutes_reference: String::new(),
            created_at: now,
            updated_at: now,
        };
        tx.put_hearing(&record)?;
        Ok(())
    }

    fn hearing_update(&self, tx: &mut Tx<'_>, inbound: &Inbound, u: &HearingUpdate) -> FlowResult {
        let malformed = |e: trm_core::FieldError| reject(format!("malformed: {e}"));
        let id = HearingId::parse("hearing_id", &u.hearing_id)
            .map_err(|_| reject("malformed: hearing_id"))?;
        let status = convert::hearing_status_from_wire("status", u.status).map_err(malformed)?;
        let mut h = tx
            .hearing(id)?
            .ok_or_else(|| reject("unknown case reference: no such hearing"))?;
        if h.peer(self.id) != inbound.sender {
            return Err(reject(
                "unknown case reference: hearing not shared with the sender",
            ));
        }
        let from_witness_side = h.witness_country == inbound.sender;
        let event = HearingEvent::leading_to(status)
            .filter(|e| e.allowed_for(from_witness_side))
            .ok_or_else(|| {
                reject(format!(
                    "invalid transition: {} from this sender",
                    status.as_str()
                ))
            })?;
        let step = HearingStep {
            reason: convert::text("reason", &u.reason).map_err(malformed)?,
            scheduled_at: match u.scheduled_at.as_ref() {
                Some(t) => Some(convert::from_ts("scheduled_at", Some(t)).map_err(malformed)?),
                None => None,
            },
            minutes_reference: convert::short("minutes_reference", &u.minutes_reference, false)
                .map_err(malformed)?,
        };
        h.apply(event, &step)
            .map_err(|g| reject(format!("invalid transition: {}", g.reason)))?;
        tx.put_hearing(&h)?;
        Ok(())
    }

    /// A peer's new signing key. Accepted only when signed by the peer's newest known key,
    /// valid from no earlier than the envelope's `created_at` and the signer's own start;
    /// the signer (and any older key still open) then ends where the new key starts, and no
    /// newer key is ever ended. A retired key verifies old messages; it never introduces
    /// keys. What is learned is kept apart from the operator's directory and applied to the
    /// in-memory directory only after the commit.
    fn key_announcement(
        &self,
        tx: &mut Tx<'_>,
        inbound: &Inbound,
        a: &trm_proto::v1::KeyAnnouncement,
    ) -> FlowResult {
        let k = a
            .key
            .as_ref()
            .ok_or_else(|| reject("malformed: key is required"))?;
        let public = trm_crypto::signing::public_from_bytes(&k.public_key)
            .map_err(|_| reject("malformed: key.public_key"))?;
        if trm_crypto::signing::key_id(&public) != k.key_id {
            return Err(reject(
                "malformed: key.key_id does not match key.public_key",
            ));
        }
        let valid_from = match k.valid_from.as_ref() {
            Some(t) => convert::from_ts("key.valid_from", Some(t))
                .map_err(|e| reject(format!("malformed: {e}")))?,
            None => inbound.created_at,
        };
        let base = self
            .directory
            .base_keys(inbound.sender)
            .ok_or_else(|| reject("unknown case reference: sender not in the directory"))?;
        let mut learned = tx.learned_keys()?;
        let mut known: Vec<PeerKey> = learned
            .peers
            .get(&inbound.sender)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| key_from_stored(k).ok())
                    .collect()
            })
            .unwrap_or_default();
        let peer = trm_federation::Peer {
            id: inbound.sender,
            endpoint: String::new(),
            tls_ca_pem: String::new(),
            tls_pin: None,
            keys: merge_keys(&base, &known),
        };
        if peer.key(&k.key_id).is_some() {
            return Ok(());
        }
        let signer = peer
            .key(&inbound.key_id)
            .ok_or_else(|| reject("policy violation: the announcement's signer is unknown"))?;
        if peer.newest_key().map(|n| n.key_id.as_str()) != Some(inbound.key_id.as_str()) {
            return Err(reject(
                "policy violation: a key announcement must be signed by the sender's newest key",
            ));
        }
        if valid_from < inbound.created_at {
            return Err(reject(
                "policy violation: key.valid_from is before the announcement's created_at",
            ));
        }
        if signer.valid_from.is_some_and(|from| valid_from < from) {
            return Err(reject(
                "policy violation: key.valid_from is before the signer's own valid_from",
            ));
        }
        let signer_from = signer.valid_from;
        // The signer is the newest key: ending it and the older keys still open never ends
        // a newer one.
        for old in peer
            .keys
            .iter()
            .filter(|o| o.valid_until.is_none() && o.valid_from <= signer_from)
        {
            let mut ended = old.clone();
            ended.valid_until = Some(valid_from);
            match known.iter_mut().find(|x| x.key_id == ended.key_id) {
                Some(x) => *x = ended,
                None => known.push(ended),
            }
        }
        known.push(PeerKey {
            key_id: k.key_id.clone(),
            public,
            valid_from: Some(valid_from),
            valid_until: None,
        });
        let stored = known
            .iter()
            .map(stored_from_key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| reject("malformed: key"))?;
        learned.peers.insert(inbound.sender, stored);
        tx.put_learned_keys(&learned)?;
        tx.note(Note::PeerKeys(inbound.sender));
        Ok(())
    }
}

/// Parses what crossed for `purpose` and checks it against the same disclosure table the
/// sender must apply: a field the purpose does not allow refuses the whole payload.
fn inbound_disclosure(
    inbound: &Inbound,
    wire: Option<&trm_proto::v1::DisclosedCase>,
    purpose: Purpose,
) -> Result<trm_core::model::DisclosedCase, TxFail<Rejection>> {
    let wire = wire.ok_or_else(|| reject("malformed: disclosed is required"))?;
    let disclosed =
        convert::disclosed_from_wire(wire).map_err(|e| reject(format!("policy violation: {e}")))?;
    policy::check_inbound(purpose, &disclosed).map_err(|v| reject(v.to_string()))?;
    if disclosed.case_ref != inbound.case_ref {
        return Err(reject(
            "malformed: disclosed.case_ref differs from the envelope's case_ref",
        ));
    }
    Ok(disclosed)
}

impl FlowHandler for Flows {
    fn apply(&self, tx: &mut Tx<'_>, inbound: &Inbound) -> FlowResult {
        match &inbound.payload {
            Payload::ReferralOffer(offer) => self.referral_offer(tx, inbound, offer),
            Payload::ReferralUpdate(update) => self.referral_update(tx, inbound, update),
            Payload::ReturnRequest(req) => self.return_request(tx, inbound, req),
            Payload::ReturnUpdate(u) => self.return_update(tx, inbound, u),
            Payload::HearingRequest(req) => self.hearing_request(tx, inbound, req),
            Payload::HearingUpdate(u) => self.hearing_update(tx, inbound, u),
            Payload::KeyAnnouncement(a) => self.key_announcement(tx, inbound, a),
            Payload::ErasureRequest(req) => self.erasure_request(tx, inbound, req),
            Payload::ErasureConfirmation(c) => self.erasure_confirmation(tx, inbound, c),
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
                match outcome {
                    ReceiptOutcome::Accepted | ReceiptOutcome::Duplicate
                        if r.status == ReferralStatus::Sent =>
                    {
                        r.status = ReferralStatus::Delivered;
                    }
                    ReceiptOutcome::Rejected => {
                        r.status_reason = format!("refused by {}: {reason}", item.peer);
                    }
                    _ => return Ok(()),
                }
                r.updated_at = OffsetDateTime::now_utc();
                tx.put_referral(&r)?;
            }
            (EnvelopeKind::HearingRequest, Topic::Hearing(id))
                if outcome == ReceiptOutcome::Rejected =>
            {
                let Some(mut h) = tx.hearing(id)? else {
                    return Ok(());
                };
                if h.status == HearingStatus::Requested {
                    h.status = HearingStatus::Cancelled;
                    h.status_reason = format!("refused by {}: {reason}", item.peer);
                    h.updated_at = OffsetDateTime::now_utc();
                    tx.put_hearing(&h)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
