//! A peer's payload parsed at the edge, the way mini-redis turns a frame into a `Command`
//! before applying it: every field is checked here and the flows see only a domain
//! [`PeerMessage`]. What fails is either malformed or, inside the disclosed case, a policy
//! violation (a field that may not cross, or cannot be represented). Outbound, the node
//! builds domain messages too, and [`to_wire`] (the mirror of [`parse`]) writes them.

use trm_core::{
    hearing::{HearingStatus, HearingStep},
    ids::{AlertId, ClaimId, HearingId, ReferralId, ReturnId, Shared},
    messages::{EnvelopeKind, PeerMessage},
    remedies::StatusRequestId,
    returns::{ReturnStatus, StepDetails},
    FieldError,
};

use crate::{
    convert::{
        attestation_to_wire, claim_status_from_wire, disclosed_from_wire, disclosed_to_wire, enums,
        enums_to_wire, from_ts, hearing_status_from_wire, hearing_status_to_wire,
        referral_status_from_wire, referral_status_to_wire, return_status_from_wire,
        return_status_to_wire, short, text, ts, victim_status_state_from_wire, WireEnum,
    },
    v1::{self as w, envelope_body::Payload},
};

/// Why a payload does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Malformed(FieldError),
    /// The disclosed case carries what may not cross a border, or cannot be read.
    #[error("{0}")]
    Disclosure(FieldError),
}

impl From<FieldError> for PayloadError {
    fn from(e: FieldError) -> Self {
        PayloadError::Malformed(e)
    }
}

fn disclosed(
    wire: Option<&w::DisclosedCase>,
) -> Result<trm_core::model::DisclosedCase, PayloadError> {
    let wire = wire.ok_or_else(|| FieldError::new("disclosed", "is required"))?;
    disclosed_from_wire(wire).map_err(PayloadError::Disclosure)
}

fn subject(field: &str, s: &str) -> Result<uuid::Uuid, FieldError> {
    uuid::Uuid::try_parse(s).map_err(|_| FieldError::new(field, "must be a UUID"))
}

fn optional_ts(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<time::OffsetDateTime>, FieldError> {
    t.map(|t| from_ts(field, Some(t))).transpose()
}

/// The disclosed case of an update that carries only that: its status unspecified and
/// each field of a step (`empty`: each named with whether it is empty) left out.
fn copy_only(
    status: i32,
    empty: &[(&str, bool)],
    d: Option<&w::DisclosedCase>,
) -> Result<trm_core::model::DisclosedCase, PayloadError> {
    alone("disclosed", status, empty)?;
    disclosed(d)
}

/// Refuses an update that carries `what` (a copy's `disclosed`, a plan's `flags`) beside a
/// step: `status` must be unspecified and each of `empty` empty, naming the one that is not.
fn alone(what: &str, status: i32, empty: &[(&str, bool)]) -> Result<(), PayloadError> {
    if status != 0 {
        let problem = format!("must be unspecified when {what} is set");
        return Err(FieldError::new("status", problem).into());
    }
    if let Some((field, _)) = empty.iter().find(|(_, e)| !e) {
        let problem = format!("must be empty when {what} is set");
        return Err(FieldError::new(*field, problem).into());
    }
    Ok(())
}

/// Parses a peer's payload into the domain message.
pub fn parse(payload: &Payload) -> Result<PeerMessage, PayloadError> {
    Ok(match payload {
        Payload::ReferralOffer(o) => PeerMessage::ReferralOffer {
            referral_id: ReferralId::parse("referral_id", &o.referral_id)?,
            disclosed: disclosed(o.disclosed.as_ref())?,
            requested_services: enums("requested_services", &o.requested_services)?,
        },
        // A copy's new disclosed case comes with no step: one or the other.
        Payload::ReferralUpdate(u) if u.disclosed.is_some() => PeerMessage::CopyUpdate {
            subject: Shared::Referral(ReferralId::parse("referral_id", &u.referral_id)?),
            disclosed: copy_only(
                u.status,
                &[("reason", u.reason.is_empty())],
                u.disclosed.as_ref(),
            )?,
        },
        Payload::ReferralUpdate(u) => PeerMessage::ReferralUpdate {
            referral_id: ReferralId::parse("referral_id", &u.referral_id)?,
            status: referral_status_from_wire("status", u.status)?,
            reason: text("reason", &u.reason)?,
        },
        Payload::ReturnRequest(r) => PeerMessage::ReturnRequest {
            return_id: ReturnId::parse("return_id", &r.return_id)?,
            disclosed: disclosed(r.disclosed.as_ref())?,
            hearing_pending: r.hearing_pending,
            compensation_pending: r.compensation_pending,
            risk_assessed_at: optional_ts("risk_assessed_at", r.risk_assessed_at.as_ref())?,
        },
        Payload::ReturnUpdate(u) => return_update_from_wire(u)?,
        Payload::HearingRequest(h) => hearing_request_from_wire(h)?,
        Payload::HearingUpdate(u) => hearing_update_from_wire(u)?,
        Payload::ErasureRequest(e) => PeerMessage::ErasureRequest {
            subject_id: subject("subject_id", &e.subject_id)?,
            // The erasure happens whatever the reason says.
            reason: text("reason", &e.reason).unwrap_or_default(),
        },
        Payload::ErasureConfirmation(c) => PeerMessage::ErasureConfirmation {
            subject_id: subject("subject_id", &c.subject_id)?,
            erased_at: optional_ts("erased_at", c.erased_at.as_ref())?,
        },
        Payload::SafetyAlertNotice(n) => PeerMessage::SafetyAlertNotice {
            alert_id: AlertId::parse("alert_id", &n.alert_id)?,
            terms: crate::convert::alert_terms("country", &n.country, n.kind, &n.effective_on)?,
            raised_at: from_ts("raised_at", n.raised_at.as_ref())?,
            disclosed: disclosed(n.disclosed.as_ref())?,
        },
        Payload::SafetyAlertUpdate(u) => PeerMessage::SafetyAlertUpdate {
            alert_id: AlertId::parse("alert_id", &u.alert_id)?,
            status: WireEnum::from_wire("status", u.status)?,
        },
        Payload::ClaimNotice(n) => PeerMessage::ClaimNotice {
            claim_id: ClaimId::parse("claim_id", &n.claim_id)?,
            kind: WireEnum::from_wire("kind", n.kind)?,
            disclosed: disclosed(n.disclosed.as_ref())?,
        },
        Payload::ClaimUpdate(u) if u.disclosed.is_some() => PeerMessage::CopyUpdate {
            subject: Shared::Claim(ClaimId::parse("claim_id", &u.claim_id)?),
            disclosed: copy_only(
                u.status,
                &[("reason", u.reason.is_empty())],
                u.disclosed.as_ref(),
            )?,
        },
        Payload::ClaimUpdate(u) => PeerMessage::ClaimUpdate {
            claim_id: ClaimId::parse("claim_id", &u.claim_id)?,
            status: claim_status_from_wire("status", u.status)?,
            reason: text("reason", &u.reason)?,
        },
        Payload::VictimStatusQuery(q) => PeerMessage::VictimStatusQuery {
            status_request_id: StatusRequestId::parse("status_request_id", &q.status_request_id)?,
        },
        Payload::VictimStatusAnswer(a) => victim_status_answer(a)?,
        Payload::KeyAnnouncement(a) => key_announcement_from_wire(a)?,
    })
}

/// A return plan's update: a step, (with `disclosed`) the copy's new disclosed case, or
/// (with `flags`) its new coordination flags. One of the three.
fn return_update_from_wire(u: &w::ReturnUpdate) -> Result<PeerMessage, PayloadError> {
    let return_id = ReturnId::parse("return_id", &u.return_id)?;
    let step = [
        ("reason", u.reason.is_empty()),
        ("details", u.details.is_empty()),
        ("travel_at", u.travel_at.is_none()),
    ];
    if let Some(flags) = &u.flags {
        let mut empty = step.to_vec();
        empty.push(("disclosed", u.disclosed.is_none()));
        alone("flags", u.status, &empty)?;
        return Ok(PeerMessage::ReturnFlags {
            return_id,
            hearing_pending: flags.hearing_pending,
            compensation_pending: flags.compensation_pending,
        });
    }
    if u.disclosed.is_some() {
        return Ok(PeerMessage::CopyUpdate {
            subject: Shared::Return(return_id),
            disclosed: copy_only(u.status, &step, u.disclosed.as_ref())?,
        });
    }
    Ok(PeerMessage::ReturnUpdate {
        return_id,
        status: return_status_from_wire("status", u.status)?,
        step: StepDetails {
            reason: text("reason", &u.reason)?,
            details: text("details", &u.details)?,
            travel_at: optional_ts("travel_at", u.travel_at.as_ref())?,
        },
    })
}

fn hearing_request_from_wire(h: &w::HearingRequest) -> Result<PeerMessage, PayloadError> {
    Ok(PeerMessage::HearingRequest {
        hearing_id: HearingId::parse("hearing_id", &h.hearing_id)?,
        terms: crate::convert::hearing_terms(
            &h.proceeding_reference,
            &h.legal_basis,
            &h.measures,
            &h.language,
            &h.proposed_times,
        )?,
    })
}

fn hearing_update_from_wire(u: &w::HearingUpdate) -> Result<PeerMessage, PayloadError> {
    Ok(PeerMessage::HearingUpdate {
        hearing_id: HearingId::parse("hearing_id", &u.hearing_id)?,
        status: hearing_status_from_wire("status", u.status)?,
        step: HearingStep {
            reason: text("reason", &u.reason)?,
            scheduled_at: optional_ts("scheduled_at", u.scheduled_at.as_ref())?,
            minutes_reference: short("minutes_reference", &u.minutes_reference, false)?,
        },
    })
}

fn key_announcement_from_wire(a: &w::KeyAnnouncement) -> Result<PeerMessage, PayloadError> {
    let k = a
        .key
        .as_ref()
        .ok_or_else(|| FieldError::new("key", "is required"))?;
    Ok(PeerMessage::KeyAnnouncement {
        key_id: k.key_id.clone(),
        public_key: k.public_key.as_slice().try_into().map_err(|_| {
            FieldError::new("key.public_key", "must be 32 raw bytes of an ed25519 key")
        })?,
        valid_from: optional_ts("key.valid_from", k.valid_from.as_ref())?,
    })
}

/// Returns the kind of a payload.
pub fn kind(p: &Payload) -> EnvelopeKind {
    match p {
        Payload::ReferralOffer(_) => EnvelopeKind::ReferralOffer,
        Payload::ReferralUpdate(_) => EnvelopeKind::ReferralUpdate,
        Payload::ReturnRequest(_) => EnvelopeKind::ReturnRequest,
        Payload::ReturnUpdate(_) => EnvelopeKind::ReturnUpdate,
        Payload::HearingRequest(_) => EnvelopeKind::HearingRequest,
        Payload::HearingUpdate(_) => EnvelopeKind::HearingUpdate,
        Payload::ErasureRequest(_) => EnvelopeKind::ErasureRequest,
        Payload::ErasureConfirmation(_) => EnvelopeKind::ErasureConfirmation,
        Payload::KeyAnnouncement(_) => EnvelopeKind::KeyAnnouncement,
        Payload::SafetyAlertNotice(_) => EnvelopeKind::SafetyAlertNotice,
        Payload::SafetyAlertUpdate(_) => EnvelopeKind::SafetyAlertUpdate,
        Payload::ClaimNotice(_) => EnvelopeKind::ClaimNotice,
        Payload::ClaimUpdate(_) => EnvelopeKind::ClaimUpdate,
        Payload::VictimStatusQuery(_) => EnvelopeKind::VictimStatusQuery,
        Payload::VictimStatusAnswer(_) => EnvelopeKind::VictimStatusAnswer,
    }
}

/// Writes a domain message as the payload a peer parses back with [`parse`].
pub fn to_wire(m: &PeerMessage) -> Payload {
    match m {
        PeerMessage::ReferralOffer {
            referral_id,
            disclosed,
            requested_services,
        } => referral_offer(*referral_id, disclosed, requested_services),
        PeerMessage::ReferralUpdate {
            referral_id,
            status,
            reason,
        } => referral_update(*referral_id, *status, reason),
        PeerMessage::ReturnRequest {
            return_id,
            disclosed,
            hearing_pending,
            compensation_pending,
            risk_assessed_at,
        } => return_request(
            *return_id,
            disclosed,
            (*hearing_pending, *compensation_pending),
            *risk_assessed_at,
        ),
        PeerMessage::ReturnUpdate {
            return_id,
            status,
            step,
        } => Payload::ReturnUpdate(return_update(*return_id, *status, step)),
        PeerMessage::ReturnFlags {
            return_id,
            hearing_pending,
            compensation_pending,
        } => return_flags(*return_id, (*hearing_pending, *compensation_pending)),
        PeerMessage::HearingRequest { hearing_id, terms } => hearing_request(*hearing_id, terms),
        PeerMessage::HearingUpdate {
            hearing_id,
            status,
            step,
        } => Payload::HearingUpdate(hearing_update(*hearing_id, *status, step)),
        PeerMessage::CopyUpdate { subject, disclosed } => copy_update(*subject, disclosed),
        PeerMessage::ErasureRequest { subject_id, reason } => erasure_request(subject_id, reason),
        PeerMessage::ErasureConfirmation {
            subject_id,
            erased_at,
        } => erasure_confirmation(subject_id, *erased_at),
        PeerMessage::KeyAnnouncement {
            key_id,
            public_key,
            valid_from,
        } => key_announcement(key_id, public_key, *valid_from),
        PeerMessage::SafetyAlertNotice {
            alert_id,
            terms,
            raised_at,
            disclosed,
        } => alert_notice(*alert_id, terms, *raised_at, disclosed),
        PeerMessage::SafetyAlertUpdate { alert_id, status } => alert_update(*alert_id, *status),
        PeerMessage::ClaimNotice {
            claim_id,
            kind,
            disclosed,
        } => claim_notice(*claim_id, *kind, disclosed),
        PeerMessage::ClaimUpdate {
            claim_id,
            status,
            reason,
        } => claim_update(*claim_id, *status, reason),
        PeerMessage::VictimStatusQuery { status_request_id } => {
            Payload::VictimStatusQuery(w::VictimStatusQuery {
                status_request_id: status_request_id.to_string(),
            })
        }
        PeerMessage::VictimStatusAnswer {
            status_request_id,
            state,
            attestation,
        } => victim_status_answer_to_wire(*status_request_id, *state, attestation.as_ref()),
    }
}

/// A plan's new coordination flags: a `ReturnUpdate` carrying them alone.
fn return_flags(id: ReturnId, (hearing_pending, compensation_pending): (bool, bool)) -> Payload {
    Payload::ReturnUpdate(w::ReturnUpdate {
        return_id: id.to_string(),
        flags: Some(w::CoordinationFlags {
            hearing_pending,
            compensation_pending,
        }),
        ..Default::default()
    })
}

fn key_announcement(
    key_id: &str,
    public_key: &[u8; 32],
    valid_from: Option<time::OffsetDateTime>,
) -> Payload {
    Payload::KeyAnnouncement(w::KeyAnnouncement {
        key: Some(signing_key(key_id, public_key, valid_from)),
    })
}

fn referral_offer(
    referral_id: ReferralId,
    disclosed: &trm_core::model::DisclosedCase,
    requested_services: &[trm_core::model::NeedKind],
) -> Payload {
    Payload::ReferralOffer(w::ReferralOffer {
        referral_id: referral_id.to_string(),
        disclosed: Some(disclosed_to_wire(disclosed)),
        requested_services: enums_to_wire(requested_services),
    })
}

fn referral_update(
    referral_id: ReferralId,
    status: trm_core::referral::ReferralStatus,
    reason: &str,
) -> Payload {
    Payload::ReferralUpdate(w::ReferralUpdate {
        referral_id: referral_id.to_string(),
        status: referral_status_to_wire(status) as i32,
        reason: reason.to_owned(),
        disclosed: None,
    })
}

/// A return request; `pending`: a hearing, a compensation claim.
fn return_request(
    return_id: ReturnId,
    disclosed: &trm_core::model::DisclosedCase,
    (hearing_pending, compensation_pending): (bool, bool),
    risk_assessed_at: Option<time::OffsetDateTime>,
) -> Payload {
    Payload::ReturnRequest(w::ReturnRequest {
        return_id: return_id.to_string(),
        disclosed: Some(disclosed_to_wire(disclosed)),
        hearing_pending,
        compensation_pending,
        risk_assessed_at: risk_assessed_at.map(ts),
    })
}

fn victim_status_answer_to_wire(
    status_request_id: StatusRequestId,
    state: trm_core::remedies::VictimStatusState,
    attestation: Option<&trm_core::remedies::SignedAttestation>,
) -> Payload {
    Payload::VictimStatusAnswer(w::VictimStatusAnswer {
        status_request_id: status_request_id.to_string(),
        state: state.to_wire(),
        attestation: attestation.map(attestation_to_wire),
    })
}

fn alert_update(alert_id: AlertId, status: trm_core::safety::SafetyAlertStatus) -> Payload {
    Payload::SafetyAlertUpdate(w::SafetyAlertUpdate {
        alert_id: alert_id.to_string(),
        status: status.to_wire(),
    })
}

fn erasure_request(subject_id: &impl std::fmt::Display, reason: &str) -> Payload {
    Payload::ErasureRequest(w::ErasureRequest {
        subject_id: subject_id.to_string(),
        reason: reason.to_owned(),
    })
}

fn erasure_confirmation(
    subject_id: &impl std::fmt::Display,
    erased_at: Option<time::OffsetDateTime>,
) -> Payload {
    Payload::ErasureConfirmation(w::ErasureConfirmation {
        subject_id: subject_id.to_string(),
        erased_at: erased_at.map(ts),
    })
}

fn claim_notice(
    claim_id: ClaimId,
    kind: trm_core::remedies::ClaimKind,
    disclosed: &trm_core::model::DisclosedCase,
) -> Payload {
    Payload::ClaimNotice(w::ClaimNotice {
        claim_id: claim_id.to_string(),
        kind: kind.to_wire(),
        disclosed: Some(disclosed_to_wire(disclosed)),
    })
}

fn claim_update(
    claim_id: ClaimId,
    status: trm_core::remedies::ClaimStatus,
    reason: &str,
) -> Payload {
    Payload::ClaimUpdate(w::ClaimUpdate {
        claim_id: claim_id.to_string(),
        status: status.to_wire(),
        reason: reason.to_owned(),
        disclosed: None,
    })
}

fn hearing_request(hearing_id: HearingId, terms: &trm_core::hearing::HearingTerms) -> Payload {
    Payload::HearingRequest(w::HearingRequest {
        hearing_id: hearing_id.to_string(),
        proceeding_reference: terms.proceeding_reference.clone(),
        legal_basis: terms.legal_basis.clone(),
        measures: enums_to_wire(&terms.measures),
        language: terms.language.clone(),
        proposed_times: terms.proposed_times.iter().copied().map(ts).collect(),
    })
}

fn alert_notice(
    alert_id: AlertId,
    terms: &trm_core::safety::AlertTerms,
    raised_at: time::OffsetDateTime,
    disclosed: &trm_core::model::DisclosedCase,
) -> Payload {
    Payload::SafetyAlertNotice(w::SafetyAlertNotice {
        alert_id: alert_id.to_string(),
        country: terms.country.to_string(),
        kind: terms.kind.to_wire(),
        effective_on: trm_core::model::format_date(terms.effective_on),
        raised_at: Some(ts(raised_at)),
        disclosed: Some(disclosed_to_wire(disclosed)),
    })
}

/// An answer to a victim-status query: ATTESTED with its signed attestation (the bytes,
/// the key id and the signature, checked by the flow against the issuer's keys), DECLINED
/// with none.
fn victim_status_answer(a: &w::VictimStatusAnswer) -> Result<PeerMessage, PayloadError> {
    use trm_core::remedies::{SignedAttestation, VictimStatusState};
    let state = victim_status_state_from_wire("state", a.state)?;
    let attestation = match (state, a.attestation.as_ref()) {
        (VictimStatusState::Attested, Some(s)) => {
            if s.attestation.is_empty() || s.attestation.len() > trm_core::limits::MAX_TEXT {
                return Err(
                    FieldError::new("attestation.attestation", "must be 1 to 4000 bytes").into(),
                );
            }
            if s.signature.len() != 64 {
                return Err(FieldError::new("attestation.signature", "must be 64 bytes").into());
            }
            Some(SignedAttestation {
                attestation: s.attestation.clone(),
                key_id: short("attestation.key_id", &s.key_id, true)?,
                signature: s.signature.clone(),
            })
        }
        (VictimStatusState::Attested, None) => {
            return Err(FieldError::new("attestation", "is required with ATTESTED").into())
        }
        (VictimStatusState::Declined, None) => None,
        (VictimStatusState::Declined, Some(_)) => {
            return Err(FieldError::new("attestation", "must be empty with DECLINED").into())
        }
        (VictimStatusState::Requested, _) => {
            return Err(FieldError::new("state", "must be ATTESTED or DECLINED").into())
        }
    };
    Ok(PeerMessage::VictimStatusAnswer {
        status_request_id: StatusRequestId::parse("status_request_id", &a.status_request_id)?,
        state,
        attestation,
    })
}

/// A copy's new disclosed case: the record's update with `disclosed` and no step.
fn copy_update(subject: Shared, disclosed: &trm_core::model::DisclosedCase) -> Payload {
    let disclosed = Some(disclosed_to_wire(disclosed));
    match subject {
        Shared::Referral(id) => Payload::ReferralUpdate(w::ReferralUpdate {
            referral_id: id.to_string(),
            disclosed,
            ..Default::default()
        }),
        Shared::Return(id) => Payload::ReturnUpdate(w::ReturnUpdate {
            return_id: id.to_string(),
            disclosed,
            ..Default::default()
        }),
        Shared::Claim(id) => Payload::ClaimUpdate(w::ClaimUpdate {
            claim_id: id.to_string(),
            disclosed,
            ..Default::default()
        }),
    }
}

fn return_update(id: ReturnId, status: ReturnStatus, step: &StepDetails) -> w::ReturnUpdate {
    w::ReturnUpdate {
        return_id: id.to_string(),
        status: return_status_to_wire(status),
        reason: step.reason.clone(),
        details: step.details.clone(),
        travel_at: step.travel_at.map(ts),
        disclosed: None,
        flags: None,
    }
}

fn hearing_update(id: HearingId, status: HearingStatus, step: &HearingStep) -> w::HearingUpdate {
    w::HearingUpdate {
        hearing_id: id.to_string(),
        status: hearing_status_to_wire(status),
        reason: step.reason.clone(),
        scheduled_at: step.scheduled_at.map(ts),
        minutes_reference: step.minutes_reference.clone(),
    }
}

fn signing_key(
    key_id: &str,
    public_key: &[u8; 32],
    from: Option<time::OffsetDateTime>,
) -> w::SigningKey {
    w::SigningKey {
        key_id: key_id.to_owned(),
        public_key: public_key.to_vec(),
        valid_from: from.map(ts),
        valid_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_parsed_whole_or_refused_naming_the_field() {
        let id = uuid::Uuid::now_v7().to_string();
        let update = |status: w::ReferralStatus| {
            Payload::ReferralUpdate(w::ReferralUpdate {
                referral_id: id.clone(),
                status: status as i32,
                reason: "ok".into(),
                disclosed: None,
            })
        };
        assert!(matches!(
            parse(&update(w::ReferralStatus::Accepted)),
            Ok(PeerMessage::ReferralUpdate { .. })
        ));
        let err = parse(&update(w::ReferralStatus::Unspecified)).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Malformed(f) if f.field == "status"),
            "{err}"
        );
        let offer = Payload::ReferralOffer(w::ReferralOffer {
            referral_id: "not-an-id".into(),
            ..Default::default()
        });
        let err = parse(&offer).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Malformed(f) if f.field == "referral_id"),
            "{err}"
        );
        let leaky = Payload::ReturnRequest(w::ReturnRequest {
            return_id: id.clone(),
            disclosed: Some(w::DisclosedCase {
                case_ref: "c".into(),
                needs: Some(w::Needs {
                    notes: "free text".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(parse(&leaky), Err(PayloadError::Disclosure(_))));
    }

    /// An update carries a step or a copy's new disclosed case, never both.
    #[test]
    fn a_copy_update_with_a_status_is_refused() {
        let both = Payload::ReferralUpdate(w::ReferralUpdate {
            referral_id: uuid::Uuid::now_v7().to_string(),
            status: w::ReferralStatus::Accepted as i32,
            reason: String::new(),
            disclosed: Some(w::DisclosedCase {
                case_ref: "ref".into(),
                ..Default::default()
            }),
        });
        assert!(matches!(
            parse(&both),
            Err(PayloadError::Malformed(f)) if f.to_string().contains("status")
        ));
    }

    /// A plan's new flags come alone: with a step beside them the update is refused,
    /// naming `flags`.
    #[test]
    fn flags_with_a_step_are_refused() {
        let both = Payload::ReturnUpdate(w::ReturnUpdate {
            return_id: uuid::Uuid::now_v7().to_string(),
            status: w::ReturnStatus::Halted as i32,
            flags: Some(w::CoordinationFlags {
                hearing_pending: false,
                compensation_pending: true,
            }),
            ..Default::default()
        });
        assert!(matches!(
            parse(&both),
            Err(PayloadError::Malformed(f)) if f.to_string().contains("flags")
        ));
    }

    /// What the node writes, a peer parses back to the same message.
    #[test]
    fn every_message_written_parses_back_the_same() {
        use trm_core::{
            hearing::{HearingStatus, ProtectiveMeasure},
            model::{DisclosedCase, NeedKind},
            referral::ReferralStatus,
            returns::ReturnStatus,
        };
        let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let disclosed = DisclosedCase {
            case_ref: "ref".into(),
            ..Default::default()
        };
        let messages = [
            PeerMessage::ReferralOffer {
                referral_id: ReferralId::new(),
                disclosed: disclosed.clone(),
                requested_services: vec![NeedKind::Shelter],
            },
            PeerMessage::ReferralUpdate {
                referral_id: ReferralId::new(),
                status: ReferralStatus::Accepted,
                reason: "yes".into(),
            },
            PeerMessage::ReturnRequest {
                return_id: ReturnId::new(),
                disclosed: disclosed.clone(),
                hearing_pending: true,
                compensation_pending: false,
                risk_assessed_at: Some(at),
            },
            PeerMessage::ReturnUpdate {
                return_id: ReturnId::new(),
                status: ReturnStatus::Scheduled,
                step: StepDetails {
                    reason: String::new(),
                    details: "flight".into(),
                    travel_at: Some(at),
                },
            },
            PeerMessage::HearingRequest {
                hearing_id: HearingId::new(),
                terms: trm_core::hearing::HearingTerms {
                    proceeding_reference: "P-1".into(),
                    legal_basis: "UNTOC art. 18".into(),
                    measures: vec![ProtectiveMeasure::Interpreter],
                    language: "ro".into(),
                    proposed_times: vec![at],
                },
            },
            PeerMessage::HearingUpdate {
                hearing_id: HearingId::new(),
                status: HearingStatus::Scheduled,
                step: HearingStep {
                    reason: String::new(),
                    scheduled_at: Some(at),
                    minutes_reference: String::new(),
                },
            },
            PeerMessage::CopyUpdate {
                subject: Shared::Referral(ReferralId::new()),
                disclosed: disclosed.clone(),
            },
            PeerMessage::CopyUpdate {
                subject: Shared::Return(ReturnId::new()),
                disclosed: disclosed.clone(),
            },
            PeerMessage::ReturnFlags {
                return_id: ReturnId::new(),
                hearing_pending: false,
                compensation_pending: true,
            },
            PeerMessage::ErasureRequest {
                subject_id: uuid::Uuid::now_v7(),
                reason: "withdrawn".into(),
            },
            PeerMessage::ErasureConfirmation {
                subject_id: uuid::Uuid::now_v7(),
                erased_at: Some(at),
            },
            PeerMessage::KeyAnnouncement {
                key_id: "0123456789abcdef".into(),
                public_key: [7; 32],
                valid_from: Some(at),
            },
            PeerMessage::SafetyAlertNotice {
                alert_id: trm_core::ids::AlertId::new(),
                terms: trm_core::safety::AlertTerms {
                    country: "RO".parse().unwrap(),
                    kind: trm_core::safety::SafetyAlertKind::Extradition,
                    effective_on: time::macros::date!(2026 - 05 - 01),
                },
                raised_at: at,
                disclosed: DisclosedCase {
                    child: Some(trm_core::model::ChildInfo::default()),
                    ..disclosed.clone()
                },
            },
            PeerMessage::SafetyAlertUpdate {
                alert_id: trm_core::ids::AlertId::new(),
                status: trm_core::safety::SafetyAlertStatus::Acknowledged,
            },
            PeerMessage::ClaimNotice {
                claim_id: ClaimId::new(),
                kind: trm_core::remedies::ClaimKind::StateFund,
                disclosed: disclosed.clone(),
            },
            PeerMessage::ClaimUpdate {
                claim_id: ClaimId::new(),
                status: trm_core::remedies::ClaimStatus::Awarded,
                reason: "court order".into(),
            },
            PeerMessage::CopyUpdate {
                subject: Shared::Claim(ClaimId::new()),
                disclosed: disclosed.clone(),
            },
            PeerMessage::VictimStatusQuery {
                status_request_id: StatusRequestId::new(),
            },
            PeerMessage::VictimStatusAnswer {
                status_request_id: StatusRequestId::new(),
                state: trm_core::remedies::VictimStatusState::Attested,
                attestation: Some(trm_core::remedies::SignedAttestation {
                    attestation: vec![1, 2, 3],
                    key_id: "0123456789abcdef".into(),
                    signature: vec![9; 64],
                }),
            },
            PeerMessage::VictimStatusAnswer {
                status_request_id: StatusRequestId::new(),
                state: trm_core::remedies::VictimStatusState::Declined,
                attestation: None,
            },
        ];
        for m in messages {
            assert_eq!(parse(&to_wire(&m)), Ok(m.clone()), "{m:?}");
        }
    }
}
