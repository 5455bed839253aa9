//! The node's reaction to federation traffic ([`FlowHandler`]): inbound payloads applied
//! inside the transaction that records their receipt, and peers' receipts for what we sent.

use std::sync::Arc;

use time::OffsetDateTime;
use trm_core::{
    ids::NodeId,
    model::Purpose,
    policy,
    referral::{next, ReferralEvent, ReferralRecord, ReferralStatus},
};
use trm_crypto::signing::SigningIdentity;
use trm_federation::{outbox, FlowHandler, Inbound, OutboxItem, Rejection};
use trm_proto::{
    convert,
    convert::ts,
    v1::{
        envelope_body::Payload, ErasureConfirmation, ErasureRequest, ReceiptOutcome, ReferralOffer,
        ReferralUpdate,
    },
};
use trm_store::{TreeName, Tx, TxFail};
use uuid::Uuid;

use crate::ctx::inbound_ref_key;

/// Applies the flows' payloads for node `id`.
#[derive(Debug)]
pub struct Flows {
    pub id: NodeId,
    /// Signs replies queued while applying (erasure confirmations).
    pub identity: Arc<SigningIdentity>,
}

type FlowResult = Result<(), TxFail<Rejection>>;

fn reject(reason: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection(reason.into()))
}

impl Flows {
    fn referral_offer(
        &self,
        tx: &Tx<'_>,
        inbound: &Inbound<'_>,
        offer: &ReferralOffer,
    ) -> FlowResult {
        let referral_id =
            Uuid::try_parse(&offer.referral_id).map_err(|_| reject("malformed: referral_id"))?;
        let wire = offer
            .disclosed
            .as_ref()
            .ok_or_else(|| reject("malformed: disclosed is required"))?;
        let disclosed = convert::disclosed_from_wire(wire)
            .map_err(|e| reject(format!("policy violation: {e}")))?;
        policy::check_inbound(Purpose::ReferralAssistance, &disclosed)
            .map_err(|v| reject(v.to_string()))?;
        if disclosed.case_ref != inbound.case_ref {
            return Err(reject(
                "malformed: disclosed.case_ref differs from the envelope's case_ref",
            ));
        }
        let requested_services = convert::enums("requested_services", &offer.requested_services)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        if tx
            .get_sealed::<ReferralRecord>(TreeName::Referrals, referral_id.as_bytes())?
            .is_some()
        {
            return Err(reject("invalid transition: referral already exists"));
        }
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
        tx.put_sealed(TreeName::Referrals, referral_id.as_bytes(), &record)?;
        tx.put_json(
            TreeName::CaseRefs,
            &inbound_ref_key(inbound.sender, inbound.case_ref),
            &referral_id.to_string(),
        )?;
        Ok(())
    }

    fn referral_update(
        &self,
        tx: &Tx<'_>,
        inbound: &Inbound<'_>,
        update: &ReferralUpdate,
    ) -> FlowResult {
        let referral_id =
            Uuid::try_parse(&update.referral_id).map_err(|_| reject("malformed: referral_id"))?;
        let status = convert::referral_status_from_wire("status", update.status)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        let mut r = tx
            .get_sealed::<ReferralRecord>(TreeName::Referrals, referral_id.as_bytes())?
            .ok_or_else(|| reject("unknown case reference: no such referral"))?;
        if r.peer(self.id) != inbound.sender {
            return Err(reject(
                "unknown case reference: referral not shared with the sender",
            ));
        }
        let from_destination = r.destination == inbound.sender;
        let event = match (status, from_destination) {
            (ReferralStatus::Accepted, true) => ReferralEvent::Accept,
            (ReferralStatus::Declined, true) => ReferralEvent::Decline,
            (ReferralStatus::InAssistance, true) => ReferralEvent::Assign,
            (ReferralStatus::Closed, _) => ReferralEvent::Close,
            (ReferralStatus::Withdrawn, _) => ReferralEvent::Withdraw,
            _ => {
                return Err(reject(format!(
                    "invalid transition: {} from this sender",
                    status.as_str()
                )))
            }
        };
        r.status = next(r.status, event)
            .map_err(|g| reject(format!("invalid transition: {}", g.reason)))?;
        r.status_reason = convert::text("reason", &update.reason)
            .map_err(|e| reject(format!("malformed: {e}")))?;
        r.updated_at = OffsetDateTime::now_utc();
        tx.put_sealed(TreeName::Referrals, referral_id.as_bytes(), &r)?;
        Ok(())
    }
}

impl Flows {
    /// Erases what the origin disclosed under a withdrawn consent: the copy becomes a
    /// tombstone with ids only, its data key is destroyed, and a signed confirmation goes back.
    fn erasure_request(
        &self,
        tx: &Tx<'_>,
        inbound: &Inbound<'_>,
        req: &ErasureRequest,
    ) -> FlowResult {
        let id = Uuid::try_parse(&req.subject_id).map_err(|_| reject("malformed: subject_id"))?;
        if let Some(mut r) = tx.get_sealed::<ReferralRecord>(TreeName::Referrals, id.as_bytes())? {
            if r.origin != inbound.sender || r.destination != self.id {
                return Err(reject(
                    "unknown case reference: subject not received from the sender",
                ));
            }
            r.disclosed = trm_core::model::DisclosedCase {
                case_ref: r.disclosed.case_ref.clone(),
                ..Default::default()
            };
            r.requested_services.clear();
            r.status = ReferralStatus::Withdrawn;
            r.status_reason = convert::text("reason", &req.reason).unwrap_or_default();
            r.updated_at = OffsetDateTime::now_utc();
            // Destroys the old data key: earlier copies, in backups or queued, stay unreadable.
            tx.shred(id.as_bytes())?;
            tx.put_sealed(TreeName::Referrals, id.as_bytes(), &r)?;
        }
        // Nothing held (never arrived, or erased before) is erased as well: confirm either way.
        let confirmation = ErasureConfirmation {
            subject_id: id.to_string(),
            erased_at: Some(ts(OffsetDateTime::now_utc())),
        };
        outbox::enqueue(
            tx,
            &self.identity,
            self.id,
            inbound.sender,
            &id.to_string(),
            inbound.case_ref,
            Payload::ErasureConfirmation(confirmation),
        )?;
        Ok(())
    }

    fn erasure_confirmation(
        &self,
        tx: &Tx<'_>,
        inbound: &Inbound<'_>,
        c: &ErasureConfirmation,
    ) -> FlowResult {
        let id = Uuid::try_parse(&c.subject_id).map_err(|_| reject("malformed: subject_id"))?;
        let mut r = tx
            .get_sealed::<ReferralRecord>(TreeName::Referrals, id.as_bytes())?
            .ok_or_else(|| reject("unknown case reference: no such subject"))?;
        if r.destination != inbound.sender || r.origin != self.id {
            return Err(reject(
                "unknown case reference: subject not sent to the sender",
            ));
        }
        if !r.erasure_requested {
            return Err(reject("invalid transition: no erasure was requested"));
        }
        r.erasure_confirmed = true;
        r.updated_at = OffsetDateTime::now_utc();
        tx.put_sealed(TreeName::Referrals, id.as_bytes(), &r)?;
        Ok(())
    }
}

impl FlowHandler for Flows {
    fn apply(&self, tx: &Tx<'_>, inbound: &Inbound<'_>) -> FlowResult {
        match inbound.payload {
            Payload::ReferralOffer(offer) => self.referral_offer(tx, inbound, offer),
            Payload::ReferralUpdate(update) => self.referral_update(tx, inbound, update),
            Payload::ErasureRequest(req) => self.erasure_request(tx, inbound, req),
            Payload::ErasureConfirmation(c) => self.erasure_confirmation(tx, inbound, c),
            other => Err(reject(format!(
                "unsupported payload: {} is not handled by this node yet",
                trm_federation::payload_kind(other)
            ))),
        }
    }

    fn on_receipt(
        &self,
        tx: &Tx<'_>,
        item: &OutboxItem,
        outcome: ReceiptOutcome,
        reason: &str,
    ) -> FlowResult {
        if item.kind != "referral_offer" {
            return Ok(());
        }
        let Ok(id) = Uuid::try_parse(&item.subject) else {
            return Ok(());
        };
        let Some(mut r) = tx.get_sealed::<ReferralRecord>(TreeName::Referrals, id.as_bytes())?
        else {
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
        tx.put_sealed(TreeName::Referrals, id.as_bytes(), &r)?;
        Ok(())
    }
}
