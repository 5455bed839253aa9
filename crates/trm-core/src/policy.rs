//! The disclosure policy: a versioned table purpose -> fields (each field belongs to a data
//! category). It is the single place that decides what may cross a border, applied when an
//! outbound payload is built ([`disclose`]) and when an inbound one is accepted
//! ([`check_inbound`]). Health details and free-text notes have no field here: they never
//! leave a node.

use std::collections::BTreeSet;

use time::Date;

use crate::model::{
    AgeBand, CaseRecord, DataCategory, DisclosedCase, DisclosedIdentity, DisclosedNeeds, NeedKind,
    Purpose,
};

/// Version of the table below; carried in every envelope as `policy_version`.
/// `trm-policy-2` added the purposes SAFETY and LEGAL_REMEDIES.
pub const POLICY_VERSION: &str = "trm-policy-2";

/// A field of a disclosed case, named as in the proto contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    AgeBand,
    Gender,
    Citizenship,
    Languages,
    NeedKinds,
    Urgency,
    ExploitationTypes,
    ExploitationCountries,
    Child,
    GivenName,
    FamilyName,
    DateOfBirth,
    DocumentNumber,
    Address,
    Phone,
}

impl Field {
    /// Every field, in contract order.
    pub const ALL: [Field; 15] = [
        Field::AgeBand,
        Field::Gender,
        Field::Citizenship,
        Field::Languages,
        Field::NeedKinds,
        Field::Urgency,
        Field::ExploitationTypes,
        Field::ExploitationCountries,
        Field::Child,
        Field::GivenName,
        Field::FamilyName,
        Field::DateOfBirth,
        Field::DocumentNumber,
        Field::Address,
        Field::Phone,
    ];

    /// Returns the category the field belongs to.
    pub fn category(self) -> DataCategory {
        match self {
            Field::AgeBand | Field::Gender | Field::Citizenship | Field::Languages => {
                DataCategory::Demographics
            }
            Field::NeedKinds | Field::Urgency => DataCategory::Needs,
            Field::ExploitationTypes | Field::ExploitationCountries => DataCategory::Exploitation,
            Field::Child => DataCategory::Child,
            Field::GivenName | Field::FamilyName | Field::DateOfBirth | Field::DocumentNumber => {
                DataCategory::Identity
            }
            Field::Address | Field::Phone => DataCategory::Contact,
        }
    }

    /// Returns the field's path in `DisclosedCase`.
    pub fn path(self) -> &'static str {
        match self {
            Field::AgeBand => "disclosed.age_band",
            Field::Gender => "disclosed.gender",
            Field::Citizenship => "disclosed.citizenship",
            Field::Languages => "disclosed.languages",
            Field::NeedKinds => "disclosed.needs.kinds",
            Field::Urgency => "disclosed.needs.urgency",
            Field::ExploitationTypes => "disclosed.exploitation.types",
            Field::ExploitationCountries => "disclosed.exploitation.countries",
            Field::Child => "disclosed.child",
            Field::GivenName => "disclosed.identity.given_name",
            Field::FamilyName => "disclosed.identity.family_name",
            Field::DateOfBirth => "disclosed.identity.date_of_birth",
            Field::DocumentNumber => "disclosed.identity.document_number",
            Field::Address => "disclosed.identity.address",
            Field::Phone => "disclosed.identity.phone",
        }
    }
}

/// Returns the fields `purpose` allows to cross (before consent narrows them).
pub fn allowed_fields(purpose: Purpose) -> &'static [Field] {
    use Field::*;
    match purpose {
        Purpose::ReferralAssistance => &[
            AgeBand,
            Gender,
            Citizenship,
            Languages,
            NeedKinds,
            Urgency,
            ExploitationTypes,
            ExploitationCountries,
            Child,
        ],
        Purpose::ReturnPlanning => &[
            AgeBand,
            Gender,
            Citizenship,
            Languages,
            NeedKinds,
            Urgency,
            Child,
            GivenName,
            FamilyName,
            DateOfBirth,
            DocumentNumber,
            Address,
            Phone,
        ],
        // Language and child flags only; support needs only.
        Purpose::WitnessHearing => &[Languages, NeedKinds, Child],
        // Whether the person is a child (a child's safety weighs first), nothing else.
        Purpose::Safety => &[Child],
        // A payment needs a name: identity crosses only where the consent lists it.
        Purpose::LegalRemedies => &[
            AgeBand,
            Gender,
            Citizenship,
            Languages,
            Child,
            GivenName,
            FamilyName,
            DateOfBirth,
            DocumentNumber,
        ],
    }
}

/// Returns the categories `purpose` allows (proceedings travel as coordination flags of the
/// flow messages, not inside a disclosed case).
pub fn allowed_categories(purpose: Purpose) -> BTreeSet<DataCategory> {
    let mut set: BTreeSet<DataCategory> = allowed_fields(purpose)
        .iter()
        .map(|f| f.category())
        .collect();
    if matches!(
        purpose,
        Purpose::ReturnPlanning | Purpose::WitnessHearing | Purpose::LegalRemedies
    ) {
        set.insert(DataCategory::Proceedings);
    }
    set
}

/// Need kinds that count as support needs for a witness hearing.
const HEARING_SUPPORT_NEEDS: [NeedKind; 3] = [
    NeedKind::Psychological,
    NeedKind::Interpretation,
    NeedKind::Legal,
];

/// Builds what crosses the border for `purpose`: only fields the purpose allows whose
/// category `granted` holds (the consent scope). Age band replaces the date of birth outside
/// identity; free-text notes never leave.
pub fn disclose(
    case: &CaseRecord,
    purpose: Purpose,
    granted: &BTreeSet<DataCategory>,
    case_ref: String,
    today: Date,
) -> DisclosedCase {
    let may = |f: Field| allowed_fields(purpose).contains(&f) && granted.contains(&f.category());
    let p = &case.person;
    let mut d = DisclosedCase {
        case_ref,
        ..DisclosedCase::default()
    };
    if may(Field::AgeBand) {
        d.age_band = p.date_of_birth.map(|born| AgeBand::of(born, today));
    }
    if may(Field::Gender) {
        d.gender = Some(p.gender);
    }
    if may(Field::Citizenship) {
        d.citizenship = p.citizenship.clone();
    }
    if may(Field::Languages) {
        d.languages = p.languages.clone();
    }
    if may(Field::NeedKinds) || may(Field::Urgency) {
        let mut kinds = if may(Field::NeedKinds) {
            case.needs.kinds.clone()
        } else {
            vec![]
        };
        if purpose == Purpose::WitnessHearing {
            kinds.retain(|k| HEARING_SUPPORT_NEEDS.contains(k));
        }
        d.needs = Some(DisclosedNeeds {
            kinds,
            urgency: if may(Field::Urgency) {
                case.needs.urgency
            } else {
                None
            },
        });
    }
    if may(Field::ExploitationTypes) || may(Field::ExploitationCountries) {
        let mut e = case.exploitation.clone();
        if !may(Field::ExploitationCountries) {
            e.countries.clear();
        }
        if !may(Field::ExploitationTypes) {
            e.types.clear();
        }
        d.exploitation = Some(e);
    }
    if may(Field::Child) {
        d.child = Some(case.child);
    }
    let identity = DisclosedIdentity {
        given_name: pick(may(Field::GivenName), &p.given_name),
        family_name: pick(may(Field::FamilyName), &p.family_name),
        date_of_birth: p.date_of_birth.filter(|_| may(Field::DateOfBirth)),
        document_number: pick(may(Field::DocumentNumber), &p.document_number),
        address: pick(may(Field::Address), &p.address),
        phone: pick(may(Field::Phone), &p.phone),
    };
    if identity.has_identity() || identity.has_contact() {
        d.identity = Some(identity);
    }
    d
}

fn pick(allowed: bool, value: &str) -> String {
    if allowed {
        value.to_owned()
    } else {
        String::new()
    }
}

/// Returns the fields that carry data in a disclosed case.
pub fn fields_present(d: &DisclosedCase) -> Vec<Field> {
    let mut present = Vec::new();
    let mut mark = |cond: bool, f: Field| {
        if cond {
            present.push(f);
        }
    };
    mark(d.age_band.is_some(), Field::AgeBand);
    mark(d.gender.is_some(), Field::Gender);
    mark(!d.citizenship.is_empty(), Field::Citizenship);
    mark(!d.languages.is_empty(), Field::Languages);
    if let Some(n) = &d.needs {
        mark(!n.kinds.is_empty(), Field::NeedKinds);
        mark(n.urgency.is_some(), Field::Urgency);
    }
    if let Some(e) = &d.exploitation {
        mark(!e.types.is_empty(), Field::ExploitationTypes);
        mark(!e.countries.is_empty(), Field::ExploitationCountries);
    }
    mark(d.child.is_some(), Field::Child);
    if let Some(i) = &d.identity {
        mark(!i.given_name.is_empty(), Field::GivenName);
        mark(!i.family_name.is_empty(), Field::FamilyName);
        mark(i.date_of_birth.is_some(), Field::DateOfBirth);
        mark(!i.document_number.is_empty(), Field::DocumentNumber);
        mark(!i.address.is_empty(), Field::Address);
        mark(!i.phone.is_empty(), Field::Phone);
    }
    present
}

/// A payload carries a field its purpose does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy violation: {}", self.detail())]
pub struct PolicyViolation {
    pub purpose: Purpose,
    pub field: Field,
}

impl PolicyViolation {
    /// Returns which field is not allowed for which purpose.
    pub fn detail(&self) -> String {
        format!(
            "{} ({}) is not allowed for {}",
            self.field.path(),
            self.field.category().as_str(),
            self.purpose.as_str()
        )
    }
}

/// Checks an inbound disclosed case against the same table the sender must apply: a field
/// the purpose does not allow is a violation, and the whole payload is refused.
pub fn check_inbound(purpose: Purpose, d: &DisclosedCase) -> Result<(), PolicyViolation> {
    match fields_present(d)
        .into_iter()
        .find(|f| !allowed_fields(purpose).contains(f))
    {
        Some(field) => Err(PolicyViolation { purpose, field }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use time::macros::{date, datetime};

    fn case() -> CaseRecord {
        CaseRecord {
            case_id: crate::ids::CaseId::from_uuid(uuid::Uuid::nil()),
            person: Person {
                given_name: "Ana".into(),
                family_name: "Pop".into(),
                date_of_birth: Some(date!(2001 - 04 - 02)),
                gender: Gender::Female,
                citizenship: vec!["RO".parse().unwrap()],
                languages: vec!["ro".into()],
                document_number: "X1".into(),
                address: "Street 1".into(),
                phone: "+40".into(),
            },
            needs: Needs {
                kinds: vec![NeedKind::Shelter, NeedKind::Psychological],
                urgency: Some(Urgency::Urgent),
                notes: "private note".into(),
            },
            exploitation: Exploitation {
                types: vec![ExploitationType::Sexual],
                countries: vec!["AT".parse().unwrap()],
            },
            child: ChildInfo::default(),
            identified_on: date!(2026 - 01 - 01),
            organisation: "sp1".parse().unwrap(),
            created_at: datetime!(2026-01-01 0:00 UTC),
            identifications: vec![],
            residence: None,
        }
    }

    /// The purposes of the first version of the table.
    const FIRST_PURPOSES: [Purpose; 3] = [
        Purpose::ReferralAssistance,
        Purpose::ReturnPlanning,
        Purpose::WitnessHearing,
    ];

    /// Returns what crosses of the test case for `purpose` with `granted`, on 2026-06-01.
    fn disclosed(purpose: Purpose, granted: &BTreeSet<DataCategory>) -> DisclosedCase {
        disclose(&case(), purpose, granted, "r".into(), date!(2026 - 06 - 01))
    }

    #[test]
    fn each_field_is_named_by_its_path_in_the_disclosed_case() {
        let paths: Vec<&str> = Field::ALL.iter().map(|f| f.path()).collect();
        assert_eq!(
            paths,
            [
                "disclosed.age_band",
                "disclosed.gender",
                "disclosed.citizenship",
                "disclosed.languages",
                "disclosed.needs.kinds",
                "disclosed.needs.urgency",
                "disclosed.exploitation.types",
                "disclosed.exploitation.countries",
                "disclosed.child",
                "disclosed.identity.given_name",
                "disclosed.identity.family_name",
                "disclosed.identity.date_of_birth",
                "disclosed.identity.document_number",
                "disclosed.identity.address",
                "disclosed.identity.phone",
            ]
        );
        let v = PolicyViolation {
            purpose: Purpose::WitnessHearing,
            field: Field::Address,
        };
        assert_eq!(
            v.detail(),
            "disclosed.identity.address (contact) is not allowed for witness_hearing"
        );
        assert_eq!(v.to_string(), format!("policy violation: {}", v.detail()));
    }

    #[test]
    fn a_disclosure_carries_its_pairwise_reference() {
        for purpose in FIRST_PURPOSES {
            let d = disclose(
                &case(),
                purpose,
                &all(),
                "ref-AT-RO-1".into(),
                date!(2026 - 02 - 01),
            );
            assert_eq!(d.case_ref, "ref-AT-RO-1", "{purpose:?}");
        }
    }

    fn all() -> BTreeSet<DataCategory> {
        [
            DataCategory::Identity,
            DataCategory::Contact,
            DataCategory::Demographics,
            DataCategory::Needs,
            DataCategory::Exploitation,
            DataCategory::Child,
            DataCategory::Proceedings,
        ]
        .into()
    }

    #[test]
    fn every_purpose_discloses_exactly_its_fields_when_everything_is_granted() {
        for purpose in FIRST_PURPOSES {
            let d = disclosed(purpose, &all());
            let present: BTreeSet<Field> = fields_present(&d).into_iter().collect();
            let allowed: BTreeSet<Field> = allowed_fields(purpose).iter().copied().collect();
            assert_eq!(present, allowed, "{purpose:?}");
            assert!(check_inbound(purpose, &d).is_ok());
        }
    }

    /// A safety alert tells whether the person is a child and nothing else; a claim carries
    /// demographics and the child flags, and a name only where the consent lists identity.
    #[test]
    fn safety_carries_the_child_flags_only_and_remedies_a_name_only_when_listed() {
        let d = disclosed(Purpose::Safety, &all());
        assert_eq!(fields_present(&d), vec![Field::Child]);
        let unlisted = crate::consent::Consent {
            categories: vec![],
            ..crate::consent::tests::consent_for(Purpose::LegalRemedies)
        };
        let granted = unlisted.granted_categories(Purpose::LegalRemedies);
        assert!(!granted.contains(&DataCategory::Identity));
        assert!(granted.contains(&DataCategory::Proceedings));
        let d = disclosed(Purpose::LegalRemedies, &granted);
        assert!(d.identity.is_none());
        assert_eq!(
            fields_present(&d),
            vec![
                Field::AgeBand,
                Field::Gender,
                Field::Citizenship,
                Field::Languages,
                Field::Child
            ]
        );
        let listed = crate::consent::Consent {
            categories: vec![DataCategory::Identity, DataCategory::Contact],
            ..unlisted
        };
        let granted = listed.granted_categories(Purpose::LegalRemedies);
        let d = disclosed(Purpose::LegalRemedies, &granted);
        let id = d.identity.as_ref().expect("identity listed");
        assert_eq!((id.family_name.as_str(), id.address.as_str()), ("Pop", ""));
        assert!(check_inbound(Purpose::LegalRemedies, &d).is_ok());
        let more = disclosed(Purpose::ReferralAssistance, &all());
        assert!(check_inbound(Purpose::LegalRemedies, &more).is_err());
        assert!(check_inbound(Purpose::Safety, &more).is_err());
    }

    #[test]
    fn referral_carries_age_band_and_never_identity() {
        let d = disclosed(Purpose::ReferralAssistance, &all());
        assert_eq!(d.age_band, Some(AgeBand::B24To26));
        assert!(d.identity.is_none());
    }

    #[test]
    fn disclosure_matrix_every_purpose_by_every_granted_category() {
        let categories = all();
        for purpose in FIRST_PURPOSES {
            for category in &categories {
                let granted = [*category].into();
                let d = disclosed(purpose, &granted);
                let present: BTreeSet<Field> = fields_present(&d).into_iter().collect();
                let expected: BTreeSet<Field> = allowed_fields(purpose)
                    .iter()
                    .copied()
                    .filter(|f| f.category() == *category)
                    .collect();
                assert_eq!(
                    present, expected,
                    "{purpose:?} with only {category:?} granted"
                );
                assert!(check_inbound(purpose, &d).is_ok());
            }
        }
        // The table itself: identity never for a referral or a hearing, exploitation never
        // for return planning or a hearing.
        for (purpose, forbidden) in [
            (
                Purpose::ReferralAssistance,
                [DataCategory::Identity, DataCategory::Contact],
            ),
            (
                Purpose::WitnessHearing,
                [DataCategory::Identity, DataCategory::Contact],
            ),
            (
                Purpose::ReturnPlanning,
                [DataCategory::Exploitation, DataCategory::Exploitation],
            ),
        ] {
            for c in forbidden {
                assert!(
                    !allowed_categories(purpose).contains(&c),
                    "{purpose:?} {c:?}"
                );
            }
        }
    }

    #[test]
    fn consent_narrows_the_purpose() {
        let granted = [DataCategory::Needs].into();
        let d = disclosed(Purpose::ReferralAssistance, &granted);
        let present: Vec<Field> = fields_present(&d);
        assert_eq!(present, vec![Field::NeedKinds, Field::Urgency]);
    }

    #[test]
    fn inbound_check_refuses_every_field_outside_the_purpose() {
        let full = disclosed(Purpose::ReturnPlanning, &all());
        let full_ref = disclosed(Purpose::ReferralAssistance, &all());
        for purpose in FIRST_PURPOSES {
            for field in Field::ALL {
                let allowed = allowed_fields(purpose).contains(&field);
                // A case carrying just this one field.
                let source = if fields_present(&full).contains(&field) {
                    &full
                } else {
                    &full_ref
                };
                let one = only_field(source, field);
                assert_eq!(fields_present(&one), vec![field]);
                assert_eq!(
                    check_inbound(purpose, &one).is_ok(),
                    allowed,
                    "{purpose:?} {field:?}"
                );
            }
        }
    }

    /// Clears `f` in `d` (the other fields stay as they are).
    fn clear_field(d: &mut DisclosedCase, f: Field) {
        let needs = d.needs.get_or_insert_with(Default::default);
        let ex = d.exploitation.get_or_insert_with(Default::default);
        let id = d.identity.get_or_insert_with(Default::default);
        match f {
            Field::AgeBand => d.age_band = None,
            Field::Gender => d.gender = None,
            Field::Citizenship => d.citizenship.clear(),
            Field::Languages => d.languages.clear(),
            Field::NeedKinds => needs.kinds.clear(),
            Field::Urgency => needs.urgency = None,
            Field::ExploitationTypes => ex.types.clear(),
            Field::ExploitationCountries => ex.countries.clear(),
            Field::Child => d.child = None,
            Field::GivenName => id.given_name.clear(),
            Field::FamilyName => id.family_name.clear(),
            Field::DateOfBirth => id.date_of_birth = None,
            Field::DocumentNumber => id.document_number.clear(),
            Field::Address => id.address.clear(),
            Field::Phone => id.phone.clear(),
        }
    }

    /// Returns a case carrying only `f` of `from`.
    fn only_field(from: &DisclosedCase, f: Field) -> DisclosedCase {
        let mut one = from.clone();
        for other in Field::ALL.into_iter().filter(|g| *g != f) {
            clear_field(&mut one, other);
        }
        one
    }

    #[test]
    fn hearing_gets_support_needs_only() {
        let d = disclosed(Purpose::WitnessHearing, &all());
        assert_eq!(
            d.needs.map(|n| n.kinds),
            Some(vec![NeedKind::Psychological])
        );
        assert!(d.gender.is_none());
    }
}
