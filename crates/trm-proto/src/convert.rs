//! Conversions wire <-> domain. Input is parsed here, once: a bad field is refused with a
//! [`FieldError`] naming it (the node maps it to INVALID_ARGUMENT); a zero `*_UNSPECIFIED`
//! enum value is always refused. Nothing beyond parsing happens here.

use prost_types::Timestamp;
use time::{Date, OffsetDateTime};
use trm_core::{
    consent::Consent,
    hearing::{HearingRecord, HearingStatus},
    ids::{parse_id, NodeId},
    limits::{MAX_ITEMS, MAX_SHORT, MAX_TEXT},
    model::{format_date, parse_date},
    referral::{ReferralRecord, ReferralStatus},
    returns::{ReturnDecision, ReturnRecord, ReturnStatus, RiskAssessment, RiskLevel},
    FieldError,
};
use uuid::Uuid;

use crate::v1 as w;

/// Domain enums of other modules, in the `d` namespace the enum table below uses.
mod d {
    pub use trm_core::hearing::ProtectiveMeasure;
    pub use trm_core::model::*;
    pub use trm_core::remedies::{AttestDecision, ClaimKind, ClaimStatus, VictimStatusState};
    pub use trm_core::safety::{SafetyAlertKind, SafetyAlertStatus};
}

/// A domain enum with a wire counterpart.
pub trait WireEnum: Sized + Copy {
    /// Parses a wire value; zero and unknown values are refused naming `field`.
    fn from_wire(field: &str, v: i32) -> Result<Self, FieldError>;
    /// Returns the wire value.
    fn to_wire(self) -> i32;
}

macro_rules! wire_enum {
    ($dom:ident <=> $wire:ident { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl WireEnum for d::$dom {
            fn from_wire(field: &str, v: i32) -> Result<Self, FieldError> {
                match w::$wire::try_from(v) {
                    $(Ok(w::$wire::$w) => Ok(d::$dom::$d),)+
                    _ => Err(FieldError::new(field, "must be a known value other than *_UNSPECIFIED")),
                }
            }
            fn to_wire(self) -> i32 {
                match self { $(d::$dom::$d => w::$wire::$w as i32,)+ }
            }
        }
    };
}

wire_enum!(Gender <=> Gender { Female <=> Female, Male <=> Male, Other <=> Other });
wire_enum!(NeedKind <=> NeedKind {
    Shelter <=> Shelter, Medical <=> Medical, Psychological <=> Psychological, Legal <=> Legal,
    Interpretation <=> Interpretation, Financial <=> Financial, Education <=> Education,
    Employment <=> Employment, FamilyTracing <=> FamilyTracing,
});
wire_enum!(Urgency <=> Urgency { Routine <=> Routine, Urgent <=> Urgent, Emergency <=> Emergency });
wire_enum!(ExploitationType <=> ExploitationType {
    Sexual <=> Sexual, ForcedLabour <=> ForcedLabour, ForcedCriminality <=> ForcedCriminality,
    DomesticServitude <=> DomesticServitude, ForcedMarriage <=> ForcedMarriage,
    Begging <=> Begging, OrganRemoval <=> OrganRemoval, Other <=> Other,
});
wire_enum!(AgeBand <=> AgeBand {
    B0To8 <=> AgeBand08, B9To17 <=> AgeBand917, B18To20 <=> AgeBand1820,
    B21To23 <=> AgeBand2123, B24To26 <=> AgeBand2426, B27To29 <=> AgeBand2729,
    B30To38 <=> AgeBand3038, B39To47 <=> AgeBand3947, B48Plus <=> AgeBand48Plus,
});
wire_enum!(Purpose <=> Purpose {
    ReferralAssistance <=> ReferralAssistance, ReturnPlanning <=> ReturnPlanning,
    WitnessHearing <=> WitnessHearing, Safety <=> Safety, LegalRemedies <=> LegalRemedies,
});
wire_enum!(SafetyAlertKind <=> SafetyAlertKind {
    Extradition <=> Extradition, Release <=> Release, Escape <=> Escape, Other <=> Other,
});
wire_enum!(SafetyAlertStatus <=> SafetyAlertStatus {
    Raised <=> Raised, Delivered <=> Delivered, Acknowledged <=> Acknowledged,
});
wire_enum!(ProtectiveMeasure <=> ProtectiveMeasure {
    Anonymity <=> Anonymity, VoiceDistortion <=> VoiceDistortion,
    ImageDistortion <=> ImageDistortion, SupportPerson <=> SupportPerson,
    PsychologistPresent <=> PsychologistPresent, NoDefendantVisible <=> NoDefendantVisible,
    ChildFriendlyRoom <=> ChildFriendlyRoom, ClosedSession <=> ClosedSession,
    Interpreter <=> Interpreter,
});
wire_enum!(IdentificationStage <=> IdentificationStage {
    Presumed <=> Presumed, ReasonableGrounds <=> ReasonableGrounds, Conclusive <=> Conclusive,
    NotIdentified <=> NotIdentified,
});
wire_enum!(ResidenceStatus <=> ResidenceStatus {
    None <=> None, ReflectionPeriod <=> ReflectionPeriod, TemporaryPermit <=> TemporaryPermit,
    PermanentPermit <=> PermanentPermit, AsylumPending <=> AsylumPending, Refugee <=> Refugee,
    SubsidiaryProtection <=> SubsidiaryProtection,
});
wire_enum!(ClaimKind <=> ClaimKind {
    CriminalCompensation <=> CriminalCompensation, CivilDamages <=> CivilDamages,
    StateFund <=> StateFund, UnpaidWages <=> UnpaidWages, ConfiscatedAssets <=> ConfiscatedAssets,
});
wire_enum!(ClaimStatus <=> ClaimStatus {
    Filed <=> Filed, UnderReview <=> UnderReview, Awarded <=> Awarded, Paid <=> Paid,
    Rejected <=> Rejected, Withdrawn <=> Withdrawn,
});
wire_enum!(VictimStatusState <=> VictimStatusState {
    Requested <=> Requested, Attested <=> Attested, Declined <=> Declined,
});
wire_enum!(AttestDecision <=> AttestationDecision { Attest <=> Attest, Decline <=> Decline });
wire_enum!(DataCategory <=> DataCategory {
    Identity <=> Identity, Contact <=> Contact, Demographics <=> Demographics, Needs <=> Needs,
    Exploitation <=> Exploitation, Child <=> Child, Proceedings <=> Proceedings,
});

/// Parses a referral status (used for inbound updates).
pub fn referral_status_from_wire(field: &str, v: i32) -> Result<ReferralStatus, FieldError> {
    use w::ReferralStatus as W;
    Ok(match W::try_from(v) {
        Ok(W::Draft) => ReferralStatus::Draft,
        Ok(W::Sent) => ReferralStatus::Sent,
        Ok(W::Delivered) => ReferralStatus::Delivered,
        Ok(W::Accepted) => ReferralStatus::Accepted,
        Ok(W::Declined) => ReferralStatus::Declined,
        Ok(W::InAssistance) => ReferralStatus::InAssistance,
        Ok(W::Closed) => ReferralStatus::Closed,
        Ok(W::Withdrawn) => ReferralStatus::Withdrawn,
        _ => return Err(FieldError::new(field, "must be a known referral status")),
    })
}

/// Returns the wire value of a referral status.
pub fn referral_status_to_wire(s: ReferralStatus) -> w::ReferralStatus {
    use w::ReferralStatus as W;
    match s {
        ReferralStatus::Draft => W::Draft,
        ReferralStatus::Sent => W::Sent,
        ReferralStatus::Delivered => W::Delivered,
        ReferralStatus::Accepted => W::Accepted,
        ReferralStatus::Declined => W::Declined,
        ReferralStatus::InAssistance => W::InAssistance,
        ReferralStatus::Closed => W::Closed,
        ReferralStatus::Withdrawn => W::Withdrawn,
    }
}

/// Parses a list of enum values: at most [`MAX_ITEMS`], duplicates dropped, order kept.
pub fn enums<T: WireEnum + PartialEq>(field: &str, values: &[i32]) -> Result<Vec<T>, FieldError> {
    check_items(field, values.len())?;
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let parsed = T::from_wire(&format!("{field}[{i}]"), *v)?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// Returns the wire values of a list of enums.
pub fn enums_to_wire<T: WireEnum>(values: &[T]) -> Vec<i32> {
    values.iter().map(|v| v.to_wire()).collect()
}

fn check_items(field: &str, n: usize) -> Result<(), FieldError> {
    if n > MAX_ITEMS {
        return Err(FieldError::new(field, format!("at most {MAX_ITEMS} items")));
    }
    Ok(())
}

/// Parses a short string (names, references): at most [`MAX_SHORT`] characters, no control
/// characters; `required` refuses an empty one.
pub fn short(field: &str, s: &str, required: bool) -> Result<String, FieldError> {
    if required && s.trim().is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if s.chars().count() > MAX_SHORT {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_SHORT} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.trim().to_owned())
}

/// Parses free text: at most [`MAX_TEXT`] characters.
pub fn text(field: &str, s: &str) -> Result<String, FieldError> {
    if s.chars().count() > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_TEXT} characters"),
        ));
    }
    Ok(s.to_owned())
}

/// Parses a required country code.
pub fn country(field: &str, s: &str) -> Result<NodeId, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    NodeId::parse(field, s)
}

/// Parses a list of country codes.
pub fn countries(field: &str, values: &[String]) -> Result<Vec<NodeId>, FieldError> {
    check_items(field, values.len())?;
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let c = NodeId::parse(&format!("{field}[{i}]"), v)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses an ISO 639 language code (2 or 3 lower-case letters).
pub fn language(field: &str, s: &str) -> Result<String, FieldError> {
    let ok = (2..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be an ISO 639 code (2 or 3 lower-case letters)",
        ))
    }
}

/// Parses a list of language codes.
pub fn languages(field: &str, values: &[String]) -> Result<Vec<String>, FieldError> {
    check_items(field, values.len())?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| language(&format!("{field}[{i}]"), v))
        .collect()
}

/// Parses an optional date (`""`: none).
pub fn opt_date(field: &str, s: &str) -> Result<Option<Date>, FieldError> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_date(field, s).map(Some)
    }
}

/// Parses a required record id.
pub fn id(field: &str, s: &str) -> Result<Uuid, FieldError> {
    parse_id(field, s)
}

/// Returns a protobuf timestamp.
pub fn ts(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

/// Parses a protobuf timestamp.
pub fn from_ts(field: &str, t: Option<&Timestamp>) -> Result<OffsetDateTime, FieldError> {
    let t = t.ok_or_else(|| FieldError::new(field, "is required"))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldError::new(field, "nanos out of range"));
    }
    OffsetDateTime::from_unix_timestamp(t.seconds)
        .map(|base| base + time::Duration::nanoseconds(i64::from(t.nanos)))
        .map_err(|_| FieldError::new(field, "out of range"))
}

fn opt_date_text(d: Option<Date>) -> String {
    d.map(format_date).unwrap_or_default()
}

/// Parses `CreateCaseRequest`.
pub fn new_case(req: &w::CreateCaseRequest, today: Date) -> Result<d::NewCase, FieldError> {
    let person = person(req.person.as_ref(), today)?;
    let needs = needs(req.needs.as_ref())?;
    let exploitation = exploitation(req.exploitation.as_ref())?;
    let identified_on = opt_date("identified_on", &req.identified_on)?;
    if identified_on.is_some_and(|day| day > today) {
        return Err(FieldError::new(
            "identified_on",
            "must not be in the future",
        ));
    }
    Ok(d::NewCase {
        person,
        needs,
        exploitation,
        child: child(req.child.as_ref()),
        identified_on,
    })
}

/// Parses a case's `person` (required, with a given or a family name).
pub fn person(p: Option<&w::Person>, today: Date) -> Result<d::Person, FieldError> {
    let p = p.ok_or_else(|| FieldError::new("person", "is required"))?;
    let date_of_birth = opt_date("person.date_of_birth", &p.date_of_birth)?;
    if date_of_birth.is_some_and(|dob| dob > today) {
        return Err(FieldError::new(
            "person.date_of_birth",
            "must not be in the future",
        ));
    }
    let person = d::Person {
        given_name: short("person.given_name", &p.given_name, false)?,
        family_name: short("person.family_name", &p.family_name, false)?,
        date_of_birth,
        gender: d::Gender::from_wire("person.gender", p.gender)?,
        citizenship: countries("person.citizenship", &p.citizenship)?,
        languages: languages("person.languages", &p.languages)?,
        document_number: short("person.document_number", &p.document_number, false)?,
        address: short("person.address", &p.address, false)?,
        phone: short("person.phone", &p.phone, false)?,
    };
    if person.given_name.is_empty() && person.family_name.is_empty() {
        return Err(FieldError::new(
            "person.given_name",
            "a given or family name is required",
        ));
    }
    Ok(person)
}

/// Parses a case's `needs` (none: no needs recorded).
pub fn needs(n: Option<&w::Needs>) -> Result<d::Needs, FieldError> {
    Ok(match n {
        Some(n) => d::Needs {
            kinds: enums("needs.kinds", &n.kinds)?,
            urgency: Some(d::Urgency::from_wire("needs.urgency", n.urgency)?),
            notes: text("needs.notes", &n.notes)?,
        },
        None => d::Needs::default(),
    })
}

/// Parses a case's `exploitation` (none: nothing recorded).
pub fn exploitation(e: Option<&w::Exploitation>) -> Result<d::Exploitation, FieldError> {
    Ok(match e {
        Some(e) => d::Exploitation {
            types: enums("exploitation.types", &e.types)?,
            countries: countries("exploitation.countries", &e.countries)?,
        },
        None => d::Exploitation::default(),
    })
}

/// Parses a case's `child` information (none: not a child).
pub fn child(c: Option<&w::ChildInfo>) -> d::ChildInfo {
    c.copied().map(child_from_wire).unwrap_or_default()
}

fn child_from_wire(c: w::ChildInfo) -> d::ChildInfo {
    d::ChildInfo {
        is_child: c.is_child,
        guardian_assigned: c.guardian_assigned,
        best_interests_determined: c.best_interests_determined,
    }
}

fn child_to_wire(c: d::ChildInfo) -> w::ChildInfo {
    w::ChildInfo {
        is_child: c.is_child,
        guardian_assigned: c.guardian_assigned,
        best_interests_determined: c.best_interests_determined,
    }
}

fn countries_to_wire(c: &[NodeId]) -> Vec<String> {
    c.iter().map(ToString::to_string).collect()
}

/// Parses the terms of a hearing request, from a local request or a peer's payload (the
/// same fields on both).
pub fn hearing_terms(
    proceeding_reference: &str,
    legal_basis: &str,
    measures: &[i32],
    language_tag: &str,
    proposed_times: &[Timestamp],
) -> Result<trm_core::hearing::HearingTerms, FieldError> {
    Ok(trm_core::hearing::HearingTerms {
        proceeding_reference: short("proceeding_reference", proceeding_reference, true)?,
        legal_basis: short("legal_basis", legal_basis, true)?,
        measures: enums("measures", measures)?,
        language: language("language", language_tag)?,
        proposed_times: timestamps("proposed_times", proposed_times)?,
    })
}

/// Returns the wire form of a victim record (for its own node's authorised readers only).
///
/// `consents` are the case's consents (withdrawn ones included), `reflection_period_days`
/// the node's period, from which `reflection_period_ends_on` is computed.
pub fn case_to_wire(
    c: &d::CaseRecord,
    consents: &[Consent],
    reflection_period_days: u32,
) -> w::Case {
    let p = &c.person;
    w::Case {
        case_id: c.case_id.to_string(),
        person: Some(w::Person {
            given_name: p.given_name.clone(),
            family_name: p.family_name.clone(),
            date_of_birth: opt_date_text(p.date_of_birth),
            gender: p.gender.to_wire(),
            citizenship: countries_to_wire(&p.citizenship),
            languages: p.languages.clone(),
            document_number: p.document_number.clone(),
            address: p.address.clone(),
            phone: p.phone.clone(),
        }),
        needs: Some(w::Needs {
            kinds: enums_to_wire(&c.needs.kinds),
            urgency: c.needs.urgency.map(WireEnum::to_wire).unwrap_or_default(),
            notes: c.needs.notes.clone(),
        }),
        exploitation: Some(w::Exploitation {
            types: enums_to_wire(&c.exploitation.types),
            countries: countries_to_wire(&c.exploitation.countries),
        }),
        child: Some(child_to_wire(c.child)),
        identified_on: format_date(c.identified_on),
        organisation: c.organisation.to_string(),
        created_at: Some(ts(c.created_at)),
        consents: consents.iter().map(consent_to_wire).collect(),
        identification: c.identification().map(|i| w::Identification {
            stage: i.stage.to_wire(),
            decided_on: format_date(i.decided_on),
            organisation: i.organisation.to_string(),
        }),
        reflection_period_ends_on: format_date(c.reflection_period_ends_on(reflection_period_days)),
        residence: c.residence.as_ref().map(|r| w::Residence {
            status: r.status.to_wire(),
            valid_until: opt_date_text(r.valid_until),
            recorded_at: Some(ts(r.recorded_at)),
        }),
    }
}

/// A parsed `RecordConsentRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentInput {
    pub case_id: trm_core::ids::CaseId,
    pub purposes: Vec<d::Purpose>,
    pub recipients: Vec<NodeId>,
    pub expires_on: Option<Date>,
    pub information_language: String,
    pub categories: Vec<d::DataCategory>,
}

/// Parses `RecordConsentRequest`. A consent must be informed, name at least one purpose and
/// one recipient, and not be expired already.
pub fn consent_input(
    req: &w::RecordConsentRequest,
    today: Date,
) -> Result<ConsentInput, FieldError> {
    let case_id = trm_core::ids::CaseId::parse("case_id", &req.case_id)?;
    let purposes = enums("purposes", &req.purposes)?;
    if purposes.is_empty() {
        return Err(FieldError::new(
            "purposes",
            "at least one purpose is required",
        ));
    }
    let recipients = countries("recipients", &req.recipients)?;
    if recipients.is_empty() {
        return Err(FieldError::new(
            "recipients",
            "at least one recipient country is required",
        ));
    }
    if !req.informed {
        return Err(FieldError::new(
            "informed",
            "must be true: consent counts only when the victim was informed",
        ));
    }
    let expires_on = opt_date("expires_on", &req.expires_on)?;
    if expires_on.is_some_and(|last| last < today) {
        return Err(FieldError::new("expires_on", "is in the past"));
    }
    Ok(ConsentInput {
        case_id,
        purposes,
        recipients,
        expires_on,
        information_language: language("information_language", &req.information_language)?,
        categories: enums("categories", &req.categories)?,
    })
}

/// Returns the wire form of a consent.
pub fn consent_to_wire(c: &Consent) -> w::Consent {
    w::Consent {
        consent_id: c.consent_id.to_string(),
        case_id: c.case_id.to_string(),
        purposes: enums_to_wire(&c.purposes),
        recipients: countries_to_wire(&c.recipients),
        expires_on: opt_date_text(c.expires_on),
        informed: c.informed,
        information_language: c.information_language.clone(),
        categories: enums_to_wire(&c.categories),
        recorded_at: Some(ts(c.recorded_at)),
        withdrawn_at: c.withdrawn_at.map(ts),
    }
}

/// Returns the wire form of a disclosed case.
pub fn disclosed_to_wire(x: &d::DisclosedCase) -> w::DisclosedCase {
    w::DisclosedCase {
        case_ref: x.case_ref.clone(),
        age_band: x.age_band.map(WireEnum::to_wire).unwrap_or_default(),
        gender: x.gender.map(WireEnum::to_wire).unwrap_or_default(),
        citizenship: countries_to_wire(&x.citizenship),
        languages: x.languages.clone(),
        needs: x.needs.as_ref().map(|n| w::Needs {
            kinds: enums_to_wire(&n.kinds),
            urgency: n.urgency.map(WireEnum::to_wire).unwrap_or_default(),
            notes: String::new(),
        }),
        exploitation: x.exploitation.as_ref().map(|e| w::Exploitation {
            types: enums_to_wire(&e.types),
            countries: countries_to_wire(&e.countries),
        }),
        child: x.child.map(child_to_wire),
        identity: x.identity.as_ref().map(|i| w::Person {
            given_name: i.given_name.clone(),
            family_name: i.family_name.clone(),
            date_of_birth: opt_date_text(i.date_of_birth),
            document_number: i.document_number.clone(),
            address: i.address.clone(),
            phone: i.phone.clone(),
            ..Default::default()
        }),
    }
}

fn opt_enum<T: WireEnum>(field: &str, v: i32) -> Result<Option<T>, FieldError> {
    if v == 0 {
        Ok(None)
    } else {
        T::from_wire(field, v).map(Some)
    }
}

/// Parses a disclosed case received from a peer. Zero enums mean "not disclosed". Anything
/// the wire can carry but no purpose may (free-text notes; gender, citizenship or languages
/// inside `identity`) is refused here, naming the field.
pub fn disclosed_from_wire(x: &w::DisclosedCase) -> Result<d::DisclosedCase, FieldError> {
    let f = |name: &str| format!("disclosed.{name}");
    let needs = match &x.needs {
        Some(n) => {
            if !n.notes.is_empty() {
                return Err(FieldError::new(
                    f("needs.notes"),
                    "free-text notes never cross a border",
                ));
            }
            Some(d::DisclosedNeeds {
                kinds: enums(&f("needs.kinds"), &n.kinds)?,
                urgency: opt_enum(&f("needs.urgency"), n.urgency)?,
            })
        }
        None => None,
    };
    let identity = match &x.identity {
        Some(p) => {
            if p.gender != 0 || !p.citizenship.is_empty() || !p.languages.is_empty() {
                return Err(FieldError::new(
                    f("identity"),
                    "gender, citizenship and languages travel outside identity",
                ));
            }
            Some(d::DisclosedIdentity {
                given_name: short(&f("identity.given_name"), &p.given_name, false)?,
                family_name: short(&f("identity.family_name"), &p.family_name, false)?,
                date_of_birth: opt_date(&f("identity.date_of_birth"), &p.date_of_birth)?,
                document_number: short(&f("identity.document_number"), &p.document_number, false)?,
                address: short(&f("identity.address"), &p.address, false)?,
                phone: short(&f("identity.phone"), &p.phone, false)?,
            })
        }
        None => None,
    };
    Ok(d::DisclosedCase {
        case_ref: short(&f("case_ref"), &x.case_ref, true)?,
        age_band: opt_enum(&f("age_band"), x.age_band)?,
        gender: opt_enum(&f("gender"), x.gender)?,
        citizenship: countries(&f("citizenship"), &x.citizenship)?,
        languages: languages(&f("languages"), &x.languages)?,
        needs,
        exploitation: match &x.exploitation {
            Some(e) => Some(d::Exploitation {
                types: enums(&f("exploitation.types"), &e.types)?,
                countries: countries(&f("exploitation.countries"), &e.countries)?,
            }),
            None => None,
        },
        child: x.child.map(child_from_wire),
        identity,
    })
}

/// Returns the wire form of a referral as this node holds it.
pub fn referral_to_wire(r: &ReferralRecord) -> w::Referral {
    w::Referral {
        referral_id: r.referral_id.to_string(),
        origin: r.origin.to_string(),
        destination: r.destination.to_string(),
        status: referral_status_to_wire(r.status) as i32,
        disclosed: Some(disclosed_to_wire(&r.disclosed)),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        erasure_confirmed: r.erasure.confirmed(),
        erasure_requested: r.erasure.requested(),
        requested_services: enums_to_wire(&r.requested_services),
        case_id: r.case_id.map(|c| c.to_string()).unwrap_or_default(),
        status_reason: r.status_reason.clone(),
        assigned_organisation: match (r.case_id, &r.organisation) {
            (None, Some(org)) => org.to_string(),
            _ => String::new(),
        },
    }
}

/// Parses a `Direction` (required).
pub fn direction(field: &str, v: i32) -> Result<trm_core::referral::Direction, FieldError> {
    match w::Direction::try_from(v) {
        Ok(w::Direction::Incoming) => Ok(trm_core::referral::Direction::Incoming),
        Ok(w::Direction::Outgoing) => Ok(trm_core::referral::Direction::Outgoing),
        _ => Err(FieldError::new(
            field,
            "must be DIRECTION_INCOMING or DIRECTION_OUTGOING",
        )),
    }
}

/// Parses a risk level (required).
pub fn risk_level(field: &str, v: i32) -> Result<RiskLevel, FieldError> {
    match w::RiskLevel::try_from(v) {
        Ok(w::RiskLevel::Low) => Ok(RiskLevel::Low),
        Ok(w::RiskLevel::Medium) => Ok(RiskLevel::Medium),
        Ok(w::RiskLevel::High) => Ok(RiskLevel::High),
        _ => Err(FieldError::new(
            field,
            "must be RISK_LEVEL_LOW, _MEDIUM or _HIGH",
        )),
    }
}

fn risk_level_to_wire(l: RiskLevel) -> i32 {
    match l {
        RiskLevel::Low => w::RiskLevel::Low as i32,
        RiskLevel::Medium => w::RiskLevel::Medium as i32,
        RiskLevel::High => w::RiskLevel::High as i32,
    }
}

/// Parses a list of short strings (at most [`MAX_ITEMS`], each at most [`MAX_SHORT`]).
pub fn shorts(field: &str, values: &[String]) -> Result<Vec<String>, FieldError> {
    check_items(field, values.len())?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| short(&format!("{field}[{i}]"), v, true))
        .collect()
}

/// Returns the wire form of a risk assessment.
pub fn risk_to_wire(r: &RiskAssessment) -> w::RiskAssessment {
    w::RiskAssessment {
        assessment_id: r.assessment_id.to_string(),
        case_id: r.case_id.to_string(),
        level: risk_level_to_wire(r.level),
        non_refoulement_concern: r.non_refoulement_concern,
        retrafficking_risk: r.retrafficking_risk,
        family_at_risk: r.family_at_risk,
        factors: r.factors.clone(),
        recorded_at: Some(ts(r.recorded_at)),
    }
}

/// Returns the wire form of a return decision.
pub fn decision_to_wire(d: &ReturnDecision) -> w::ReturnDecision {
    w::ReturnDecision {
        case_id: d.case_id.to_string(),
        voluntary: d.voluntary,
        informed: d.informed,
        reflection_period_waived: d.reflection_period_waived,
        recorded_at: Some(ts(d.recorded_at)),
    }
}

/// Parses a return status (for inbound updates).
pub fn return_status_from_wire(field: &str, v: i32) -> Result<ReturnStatus, FieldError> {
    use w::ReturnStatus as W;
    Ok(match W::try_from(v) {
        Ok(W::Proposed) => ReturnStatus::Proposed,
        Ok(W::Requested) => ReturnStatus::Requested,
        Ok(W::ReceptionConfirmed) => ReturnStatus::ReceptionConfirmed,
        Ok(W::ConcernRaised) => ReturnStatus::ConcernRaised,
        Ok(W::Scheduled) => ReturnStatus::Scheduled,
        Ok(W::Travelled) => ReturnStatus::Travelled,
        Ok(W::Arrived) => ReturnStatus::Arrived,
        Ok(W::FollowUp) => ReturnStatus::FollowUp,
        Ok(W::Closed) => ReturnStatus::Closed,
        Ok(W::Halted) => ReturnStatus::Halted,
        _ => return Err(FieldError::new(field, "must be a known return status")),
    })
}

/// Returns the wire value of a return status.
pub fn return_status_to_wire(s: ReturnStatus) -> i32 {
    use w::ReturnStatus as W;
    (match s {
        ReturnStatus::Proposed => W::Proposed,
        ReturnStatus::Requested => W::Requested,
        ReturnStatus::ReceptionConfirmed => W::ReceptionConfirmed,
        ReturnStatus::ConcernRaised => W::ConcernRaised,
        ReturnStatus::Scheduled => W::Scheduled,
        ReturnStatus::Travelled => W::Travelled,
        ReturnStatus::Arrived => W::Arrived,
        ReturnStatus::FollowUp => W::FollowUp,
        ReturnStatus::Closed => W::Closed,
        ReturnStatus::Halted => W::Halted,
    }) as i32
}

/// Returns the wire form of a return plan as this node holds it.
pub fn return_to_wire(r: &ReturnRecord) -> w::ReturnPlan {
    w::ReturnPlan {
        return_id: r.return_id.to_string(),
        origin: r.origin.to_string(),
        destination: r.destination.to_string(),
        status: return_status_to_wire(r.status),
        disclosed: Some(disclosed_to_wire(&r.disclosed)),
        hearing_pending: r.hearing_pending,
        compensation_pending: r.compensation_pending,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        status_reason: r.status_reason.clone(),
        reception_details: r.reception_details.clone(),
        travel_at: r.travel_at.map(ts),
        travel_details: r.travel_details.clone(),
        follow_ups: r
            .follow_ups
            .iter()
            .map(|f| w::FollowUp {
                recorded_at: Some(ts(f.recorded_at)),
                notes: f.notes.clone(),
            })
            .collect(),
        case_id: r.case_id.map(|c| c.to_string()).unwrap_or_default(),
        erasure_requested: r.erasure.requested(),
        erasure_confirmed: r.erasure.confirmed(),
    }
}

/// Parses a hearing status (for inbound updates).
pub fn hearing_status_from_wire(field: &str, v: i32) -> Result<HearingStatus, FieldError> {
    use w::HearingStatus as W;
    Ok(match W::try_from(v) {
        Ok(W::Requested) => HearingStatus::Requested,
        Ok(W::Accepted) => HearingStatus::Accepted,
        Ok(W::Declined) => HearingStatus::Declined,
        Ok(W::Scheduled) => HearingStatus::Scheduled,
        Ok(W::Held) => HearingStatus::Held,
        Ok(W::Cancelled) => HearingStatus::Cancelled,
        _ => return Err(FieldError::new(field, "must be a known hearing status")),
    })
}

/// Returns the wire value of a hearing status.
pub fn hearing_status_to_wire(s: HearingStatus) -> i32 {
    use w::HearingStatus as W;
    (match s {
        HearingStatus::Requested => W::Requested,
        HearingStatus::Accepted => W::Accepted,
        HearingStatus::Declined => W::Declined,
        HearingStatus::Scheduled => W::Scheduled,
        HearingStatus::Held => W::Held,
        HearingStatus::Cancelled => W::Cancelled,
    }) as i32
}

/// Parses a list of timestamps.
pub fn timestamps(field: &str, values: &[Timestamp]) -> Result<Vec<OffsetDateTime>, FieldError> {
    check_items(field, values.len())?;
    values
        .iter()
        .enumerate()
        .map(|(i, t)| from_ts(&format!("{field}[{i}]"), Some(t)))
        .collect()
}

/// Returns the wire form of a hearing; `withheld` gives the view a service provider may
/// have: the id and the status, nothing else.
pub fn hearing_to_wire(h: &HearingRecord, withheld: bool) -> w::Hearing {
    if withheld {
        return w::Hearing {
            hearing_id: h.hearing_id.to_string(),
            status: hearing_status_to_wire(h.status),
            details_withheld: true,
            ..Default::default()
        };
    }
    w::Hearing {
        hearing_id: h.hearing_id.to_string(),
        requesting_country: h.requesting_country.to_string(),
        witness_country: h.witness_country.to_string(),
        status: hearing_status_to_wire(h.status),
        case_ref: h.case_ref.clone(),
        measures: enums_to_wire(&h.measures),
        language: h.language.clone(),
        scheduled_at: h.scheduled_at.map(ts),
        created_at: Some(ts(h.created_at)),
        updated_at: Some(ts(h.updated_at)),
        proceeding_reference: h.proceeding_reference.clone(),
        legal_basis: h.legal_basis.clone(),
        proposed_times: h.proposed_times.iter().copied().map(ts).collect(),
        status_reason: h.status_reason.clone(),
        minutes_reference: h.minutes_reference.clone(),
        details_withheld: false,
    }
}

/// Parses the `page_size` and `page_token` of a `List*` request: a negative size is
/// refused, zero means the default, more than the maximum is served the maximum.
pub fn page(size: i32, token: &str) -> Result<trm_core::limits::Page, FieldError> {
    use trm_core::limits::{Page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
    let size = match usize::try_from(size) {
        Err(_) => return Err(FieldError::new("page_size", "must not be negative")),
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
    };
    if token.len() > MAX_SHORT || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            "page_token",
            "is not a token this node gave",
        ));
    }
    Ok(Page {
        size,
        after: (!token.is_empty()).then(|| token.to_owned()),
    })
}

/// Returns the wire form of a claim as this node holds it.
pub fn claim_to_wire(c: &trm_core::remedies::ClaimRecord) -> w::Claim {
    w::Claim {
        claim_id: c.claim_id.to_string(),
        case_id: c.case_id.map(|id| id.to_string()).unwrap_or_default(),
        forum_country: c.forum_country.to_string(),
        kind: c.kind.to_wire(),
        status: c.status.to_wire(),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
        origin: c.origin.to_string(),
        case_ref: c.disclosed.case_ref.clone(),
        status_reason: c.status_reason.clone(),
        disclosed: (!c.is_local()).then(|| disclosed_to_wire(&c.disclosed)),
        erasure_requested: c.erasure.requested(),
        erasure_confirmed: c.erasure.confirmed(),
    }
}

/// Returns the wire form of a signed attestation.
pub fn attestation_to_wire(a: &trm_core::remedies::SignedAttestation) -> w::SignedAttestation {
    w::SignedAttestation {
        attestation: a.attestation.clone(),
        key_id: a.key_id.clone(),
        signature: a.signature.clone(),
    }
}

/// Returns the wire form of a victim-status request as this node holds it.
pub fn status_request_to_wire(
    r: &trm_core::remedies::VictimStatusRecord,
) -> w::VictimStatusRequest {
    w::VictimStatusRequest {
        status_request_id: r.status_request_id.to_string(),
        requesting_country: r.requesting_country.to_string(),
        issuing_country: r.issuing_country.to_string(),
        case_ref: r.case_ref.clone(),
        state: r.state.to_wire(),
        attestation: r.attestation.as_ref().map(attestation_to_wire),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        attestation_erased: r.attestation_erased,
        erasure_confirmed: r.erasure.confirmed(),
    }
}

/// Parses a claim status (required, for inbound updates and filters).
pub fn claim_status_from_wire(
    field: &str,
    v: i32,
) -> Result<trm_core::remedies::ClaimStatus, FieldError> {
    WireEnum::from_wire(field, v)
}

/// Parses a victim-status state (required, for inbound answers and filters).
pub fn victim_status_state_from_wire(
    field: &str,
    v: i32,
) -> Result<trm_core::remedies::VictimStatusState, FieldError> {
    WireEnum::from_wire(field, v)
}

/// Parses what a safety alert says (a local request's or a peer's notice).
pub fn alert_terms(
    country_field: &str,
    country_value: &str,
    kind: i32,
    effective_on: &str,
) -> Result<trm_core::safety::AlertTerms, FieldError> {
    Ok(trm_core::safety::AlertTerms {
        country: country(country_field, country_value)?,
        kind: WireEnum::from_wire("kind", kind)?,
        effective_on: parse_date("effective_on", effective_on)?,
    })
}

/// Returns the wire form of a safety alert as this node holds it.
pub fn alert_to_wire(a: &trm_core::safety::SafetyAlertRecord) -> w::SafetyAlert {
    w::SafetyAlert {
        alert_id: a.alert_id.to_string(),
        origin: a.origin.to_string(),
        country: a.terms.country.to_string(),
        kind: a.terms.kind.to_wire(),
        effective_on: format_date(a.terms.effective_on),
        case_ref: a.case_ref.clone(),
        status: a.status.to_wire(),
        created_at: Some(ts(a.created_at)),
        updated_at: Some(ts(a.updated_at)),
        case_id: a.case_id.map(|c| c.to_string()).unwrap_or_default(),
        recipients: a
            .recipients
            .iter()
            .map(|r| w::SafetyAlertRecipient {
                node_id: r.node.to_string(),
                status: r.status.to_wire(),
            })
            .collect(),
        raised_at: Some(ts(a.raised_at)),
        child: a.child.map(child_to_wire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn request() -> w::CreateCaseRequest {
        w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: "A".into(),
                gender: w::Gender::Female as i32,
                date_of_birth: "2000-01-01".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let today = date!(2026 - 01 - 01);
        assert!(new_case(&request(), today).is_ok());
        type Mutation = fn(&mut w::CreateCaseRequest);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.person = None, "person"),
            (|r| r.person.as_mut().unwrap().gender = 0, "person.gender"),
            (
                |r| r.person.as_mut().unwrap().date_of_birth = "2000-13-01".into(),
                "person.date_of_birth",
            ),
            (
                |r| r.person.as_mut().unwrap().citizenship = vec!["ro".into()],
                "person.citizenship[0]",
            ),
            (
                |r| r.person.as_mut().unwrap().given_name = "x".repeat(201),
                "person.given_name",
            ),
            (|r| r.identified_on = "2030-01-01".into(), "identified_on"),
            (
                |r| {
                    r.needs = Some(w::Needs {
                        kinds: vec![99],
                        urgency: 1,
                        notes: String::new(),
                    })
                },
                "needs.kinds[0]",
            ),
        ];
        for (mutate, field) in cases {
            let mut r = request();
            mutate(&mut r);
            assert_eq!(new_case(&r, today).unwrap_err().field, field);
        }
    }

    #[test]
    fn inbound_notes_and_identity_extras_are_refused() {
        let base = w::DisclosedCase {
            case_ref: "r".into(),
            ..Default::default()
        };
        assert!(disclosed_from_wire(&base).is_ok());
        let mut notes = base.clone();
        notes.needs = Some(w::Needs {
            notes: "x".into(),
            ..Default::default()
        });
        assert_eq!(
            disclosed_from_wire(&notes).unwrap_err().field,
            "disclosed.needs.notes"
        );
        let mut extra = base;
        extra.identity = Some(w::Person {
            gender: 1,
            ..Default::default()
        });
        assert_eq!(
            disclosed_from_wire(&extra).unwrap_err().field,
            "disclosed.identity"
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::nanoseconds(5);
        assert_eq!(from_ts("t", Some(&ts(t))).unwrap(), t);
        assert!(from_ts("t", None).is_err());
    }
}
