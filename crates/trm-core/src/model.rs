//! Victim records and the enums of the contract, as the domain sees them: every value here
//! has been parsed and checked at the edge.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::{
    error::FieldError,
    ids::{CaseId, NodeId, OrgId},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Gender {
    Female,
    Male,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NeedKind {
    Shelter,
    Medical,
    Psychological,
    Legal,
    Interpretation,
    Financial,
    Education,
    Employment,
    FamilyTracing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Urgency {
    Routine,
    Urgent,
    Emergency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExploitationType {
    Sexual,
    ForcedLabour,
    ForcedCriminality,
    DomesticServitude,
    ForcedMarriage,
    Begging,
    OrganRemoval,
    Other,
}

/// The broad age bands the Counter Trafficking Data Collaborative (CTDC) publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AgeBand {
    B0To8,
    B9To17,
    B18To20,
    B21To23,
    B24To26,
    B27To29,
    B30To38,
    B39To47,
    B48Plus,
}

impl AgeBand {
    /// Returns the band of someone born on `born` as of `today`.
    pub fn of(born: Date, today: Date) -> AgeBand {
        let mut age = today.year() - born.year();
        if (today.month() as u8, today.day()) < (born.month() as u8, born.day()) {
            age -= 1;
        }
        match age {
            i32::MIN..=8 => AgeBand::B0To8,
            9..=17 => AgeBand::B9To17,
            18..=20 => AgeBand::B18To20,
            21..=23 => AgeBand::B21To23,
            24..=26 => AgeBand::B24To26,
            27..=29 => AgeBand::B27To29,
            30..=38 => AgeBand::B30To38,
            39..=47 => AgeBand::B39To47,
            _ => AgeBand::B48Plus,
        }
    }
}

/// Why data is disclosed to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Purpose {
    ReferralAssistance,
    ReturnPlanning,
    WitnessHearing,
    /// A safety alert about the victim (an offender extradited or released): child only.
    Safety,
    /// Compensation claims and non-punishment: demographics, child, proceedings; identity
    /// only where the consent lists it.
    LegalRemedies,
}

impl Purpose {
    /// Returns the purpose's name as used in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::ReferralAssistance => "referral_assistance",
            Purpose::ReturnPlanning => "return_planning",
            Purpose::WitnessHearing => "witness_hearing",
            Purpose::Safety => "safety",
            Purpose::LegalRemedies => "legal_remedies",
        }
    }
}

/// The category each field of a victim record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DataCategory {
    Identity,
    Contact,
    Demographics,
    Needs,
    Exploitation,
    Child,
    Proceedings,
}

impl DataCategory {
    /// Returns the category's name as used in audit entries and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            DataCategory::Identity => "identity",
            DataCategory::Contact => "contact",
            DataCategory::Demographics => "demographics",
            DataCategory::Needs => "needs",
            DataCategory::Exploitation => "exploitation",
            DataCategory::Child => "child",
            DataCategory::Proceedings => "proceedings",
        }
    }
}

/// A victim's personal data, as collected by the node's own users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: Option<Date>,
    pub gender: Gender,
    pub citizenship: Vec<NodeId>,
    pub languages: Vec<String>,
    pub document_number: String,
    pub address: String,
    pub phone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Needs {
    pub kinds: Vec<NeedKind>,
    pub urgency: Option<Urgency>,
    /// Free text for the local case worker; never leaves the node.
    pub notes: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exploitation {
    pub types: Vec<ExploitationType>,
    pub countries: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChildInfo {
    pub is_child: bool,
    pub guardian_assigned: bool,
    pub best_interests_determined: bool,
}

/// A new case as a client submits it, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCase {
    pub person: Person,
    pub needs: Needs,
    pub exploitation: Exploitation,
    pub child: ChildInfo,
    pub identified_on: Option<Date>,
}

/// The stage of the formal identification of a victim (DESIGN.md, "Cases over time").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdentificationStage {
    /// Presumed a victim (first indicators); assistance starts.
    Presumed,
    /// Reasonable grounds to believe the person is a victim: where recorded, this decision
    /// starts the reflection period.
    ReasonableGrounds,
    /// Conclusively identified as a victim.
    Conclusive,
    /// Found not to be a victim.
    NotIdentified,
}

impl IdentificationStage {
    /// Returns the stage's name as used in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentificationStage::Presumed => "presumed",
            IdentificationStage::ReasonableGrounds => "reasonable_grounds",
            IdentificationStage::Conclusive => "conclusive",
            IdentificationStage::NotIdentified => "not_identified",
        }
    }
}

/// One identification decision recorded on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identification {
    pub stage: IdentificationStage,
    /// The day the decision was taken (never in the future when recorded).
    pub decided_on: Date,
    /// The organisation that recorded the decision.
    pub organisation: OrgId,
    pub recorded_at: OffsetDateTime,
}

/// A victim's residence status in the country of the node (DESIGN.md, "Cases over time").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResidenceStatus {
    /// No residence right.
    None,
    /// Staying under the recovery and reflection period.
    ReflectionPeriod,
    TemporaryPermit,
    PermanentPermit,
    AsylumPending,
    Refugee,
    SubsidiaryProtection,
}

impl ResidenceStatus {
    /// Returns whether the status trips the `non_refoulement` guard of any return: an asylum
    /// claim pending, refugee status or subsidiary protection (UNHCR guidance, paper §60).
    pub fn trips_non_refoulement(self) -> bool {
        matches!(
            self,
            ResidenceStatus::AsylumPending
                | ResidenceStatus::Refugee
                | ResidenceStatus::SubsidiaryProtection
        )
    }

    /// Returns the status's name as used in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            ResidenceStatus::None => "none",
            ResidenceStatus::ReflectionPeriod => "reflection_period",
            ResidenceStatus::TemporaryPermit => "temporary_permit",
            ResidenceStatus::PermanentPermit => "permanent_permit",
            ResidenceStatus::AsylumPending => "asylum_pending",
            ResidenceStatus::Refugee => "refugee",
            ResidenceStatus::SubsidiaryProtection => "subsidiary_protection",
        }
    }
}

/// The residence status last recorded on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residence {
    pub status: ResidenceStatus,
    /// The last day of the permit, if it has one.
    pub valid_until: Option<Date>,
    pub recorded_at: OffsetDateTime,
}

/// A victim record held by the node that collected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub case_id: CaseId,
    pub person: Person,
    pub needs: Needs,
    pub exploitation: Exploitation,
    pub child: ChildInfo,
    /// The day the victim was identified; starts the reflection period.
    pub identified_on: Date,
    /// The service provider organisation that owns the case.
    pub organisation: OrgId,
    pub created_at: OffsetDateTime,
    /// Every identification decision recorded, in the order recorded (the last is the
    /// case's current identification). Empty in cases stored before it existed.
    #[serde(default)]
    pub identifications: Vec<Identification>,
    /// The residence status last recorded; none in cases stored before it existed.
    #[serde(default)]
    pub residence: Option<Residence>,
}

impl Person {
    /// Returns what identifies the person for finding a second case of the same person on
    /// one node: the words of the names, lower case, in order, and the date of birth; none
    /// without a date of birth or a name (too many different people would share it). Only
    /// ever used under a key of the node (a blind index), never stored.
    pub fn match_input(&self) -> Option<String> {
        let dob = self.date_of_birth?;
        let names = format!("{} {}", self.given_name, self.family_name).to_lowercase();
        let mut words: Vec<&str> = names
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return None;
        }
        words.sort_unstable();
        Some(format!("{}|{}", words.join(" "), format_date(dob)))
    }
}

impl CaseRecord {
    /// Returns the identification decision recorded last, if any.
    pub fn identification(&self) -> Option<&Identification> {
        self.identifications.last()
    }

    /// Returns the day the recovery and reflection period starts: the day of the
    /// reasonable-grounds decision recorded last, where one is recorded, else the day the
    /// victim was identified (`identified_on`). The return guards and `Case` use this one
    /// start.
    pub fn reflection_starts_on(&self) -> Date {
        self.identifications
            .iter()
            .rev()
            .find(|i| i.stage == IdentificationStage::ReasonableGrounds)
            .map_or(self.identified_on, |i| i.decided_on)
    }

    /// Returns the day a reflection period of `days` days ends: its start plus `days` (the
    /// latest representable date if that overflows).
    pub fn reflection_period_ends_on(&self, days: u32) -> Date {
        self.reflection_starts_on()
            .checked_add(time::Duration::days(i64::from(days)))
            .unwrap_or(Date::MAX)
    }
}

/// Needs as they may cross a border: no free-text notes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DisclosedNeeds {
    pub kinds: Vec<NeedKind>,
    pub urgency: Option<Urgency>,
}

/// Identity and contact data as they may cross a border (return planning only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DisclosedIdentity {
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: Option<Date>,
    pub document_number: String,
    /// Contact category.
    pub address: String,
    /// Contact category.
    pub phone: String,
}

impl DisclosedIdentity {
    /// Returns whether any identity-category field is set.
    pub fn has_identity(&self) -> bool {
        !self.given_name.is_empty()
            || !self.family_name.is_empty()
            || self.date_of_birth.is_some()
            || !self.document_number.is_empty()
    }

    /// Returns whether any contact-category field is set.
    pub fn has_contact(&self) -> bool {
        !self.address.is_empty() || !self.phone.is_empty()
    }
}

/// What crosses a border for one purpose. Every part is optional: a part is present only
/// when the purpose and the consent allow its category.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DisclosedCase {
    /// Pairwise pseudonym of the case between the two nodes.
    pub case_ref: String,
    pub age_band: Option<AgeBand>,
    pub gender: Option<Gender>,
    pub citizenship: Vec<NodeId>,
    pub languages: Vec<String>,
    pub needs: Option<DisclosedNeeds>,
    pub exploitation: Option<Exploitation>,
    pub child: Option<ChildInfo>,
    pub identity: Option<DisclosedIdentity>,
}

impl DisclosedCase {
    /// Returns what is kept of an erased copy: the pairwise reference, nothing else.
    pub fn tombstone(&self) -> DisclosedCase {
        DisclosedCase {
            case_ref: self.case_ref.clone(),
            ..Default::default()
        }
    }

    /// Returns whether this is what is kept of an erased copy.
    pub fn is_tombstone(&self) -> bool {
        *self == self.tombstone()
    }
}

/// Parses a `YYYY-MM-DD` date; `field` names the input for the error.
pub fn parse_date(field: &str, s: &str) -> Result<Date, FieldError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, format).map_err(|_| FieldError::new(field, "must be a date YYYY-MM-DD"))
}

/// Formats a date as `YYYY-MM-DD`.
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn age_band_counts_birthdays_not_years() {
        let today = date!(2026 - 06 - 15);
        assert_eq!(AgeBand::of(date!(2008 - 06 - 16), today), AgeBand::B9To17);
        assert_eq!(AgeBand::of(date!(2008 - 06 - 15), today), AgeBand::B18To20);
        assert_eq!(AgeBand::of(date!(1990 - 01 - 01), today), AgeBand::B30To38);
        assert_eq!(AgeBand::of(date!(1950 - 01 - 01), today), AgeBand::B48Plus);
        assert_eq!(AgeBand::of(date!(2025 - 01 - 01), today), AgeBand::B0To8);
    }

    #[test]
    fn dates_parse_strictly() {
        assert_eq!(
            parse_date("d", "2026-02-28").map(format_date),
            Ok("2026-02-28".into())
        );
        for bad in ["2026-02-30", "28.02.2026", "", "2026-2-3"] {
            let err = parse_date("person.date_of_birth", bad).unwrap_err();
            assert_eq!(err.field, "person.date_of_birth");
        }
    }
    /// Each CTDC band begins and ends on the birthday of its bounds.
    #[test]
    fn each_age_band_has_its_published_bounds() {
        use AgeBand as B;
        let born = date!(2000 - 03 - 10);
        let bands = [
            (0, B::B0To8),
            (8, B::B0To8),
            (9, B::B9To17),
            (17, B::B9To17),
            (18, B::B18To20),
            (20, B::B18To20),
            (21, B::B21To23),
            (23, B::B21To23),
            (24, B::B24To26),
            (26, B::B24To26),
            (27, B::B27To29),
            (29, B::B27To29),
            (30, B::B30To38),
            (38, B::B30To38),
            (39, B::B39To47),
            (47, B::B39To47),
            (48, B::B48Plus),
            (90, B::B48Plus),
        ];
        for (age, band) in bands {
            let birthday = born.replace_year(2000 + age).unwrap();
            assert_eq!(AgeBand::of(born, birthday), band, "age {age}");
        }
    }

    /// Any one identity field makes the identity category present, and any one contact
    /// field the contact category: the policy checks both before data crosses a border.
    #[test]
    fn one_field_is_enough_to_make_its_category_present() {
        let none = DisclosedIdentity::default();
        assert!(!none.has_identity() && !none.has_contact());
        let identity = [
            DisclosedIdentity {
                given_name: "A".into(),
                ..Default::default()
            },
            DisclosedIdentity {
                family_name: "B".into(),
                ..Default::default()
            },
            DisclosedIdentity {
                date_of_birth: Some(date!(2000 - 01 - 01)),
                ..Default::default()
            },
            DisclosedIdentity {
                document_number: "X1".into(),
                ..Default::default()
            },
        ];
        for one in identity {
            assert!(one.has_identity() && !one.has_contact(), "{one:?}");
        }
        let contact = [
            DisclosedIdentity {
                address: "Main St 1".into(),
                ..Default::default()
            },
            DisclosedIdentity {
                phone: "+43 1".into(),
                ..Default::default()
            },
        ];
        for one in contact {
            assert!(one.has_contact() && !one.has_identity(), "{one:?}");
        }
    }

    #[test]
    fn purpose_and_category_names_are_the_ones_audit_entries_use() {
        use DataCategory as C;
        use Purpose as P;
        let purposes: Vec<&str> = [P::ReferralAssistance, P::ReturnPlanning, P::WitnessHearing]
            .map(P::as_str)
            .to_vec();
        assert_eq!(
            purposes,
            ["referral_assistance", "return_planning", "witness_hearing"]
        );
        let categories: Vec<&str> = [
            C::Identity,
            C::Contact,
            C::Demographics,
            C::Needs,
            C::Exploitation,
            C::Child,
            C::Proceedings,
        ]
        .map(C::as_str)
        .to_vec();
        assert_eq!(
            categories,
            [
                "identity",
                "contact",
                "demographics",
                "needs",
                "exploitation",
                "child",
                "proceedings"
            ]
        );
    }

    /// Returns a case of a woman named "A" of organisation sp1, identified on `identified_on`.
    pub(crate) fn a_case(identified_on: Date) -> CaseRecord {
        CaseRecord {
            case_id: CaseId::new(),
            person: Person {
                given_name: "A".into(),
                family_name: String::new(),
                date_of_birth: None,
                gender: Gender::Female,
                citizenship: vec![],
                languages: vec![],
                document_number: String::new(),
                address: String::new(),
                phone: String::new(),
            },
            needs: Needs::default(),
            exploitation: Exploitation::default(),
            child: ChildInfo::default(),
            identified_on,
            organisation: "sp1".parse().unwrap(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            identifications: vec![],
            residence: None,
        }
    }

    fn decided(stage: IdentificationStage, on: Date) -> Identification {
        Identification {
            stage,
            decided_on: on,
            organisation: "nfp".parse().unwrap(),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// DESIGN.md, "Cases over time": the period runs from `identified_on`, or from the
    /// reasonable-grounds decision where one is recorded, whatever stage comes after it.
    #[test]
    fn the_reflection_period_starts_at_the_reasonable_grounds_decision_where_recorded() {
        use IdentificationStage as S;
        let mut case = a_case(date!(2026 - 01 - 10));
        assert_eq!(case.reflection_starts_on(), date!(2026 - 01 - 10));
        assert_eq!(case.reflection_period_ends_on(30), date!(2026 - 02 - 09));
        case.identifications
            .push(decided(S::Presumed, date!(2026 - 01 - 12)));
        assert_eq!(case.reflection_starts_on(), date!(2026 - 01 - 10));
        case.identifications
            .push(decided(S::ReasonableGrounds, date!(2026 - 02 - 01)));
        case.identifications
            .push(decided(S::Conclusive, date!(2026 - 03 - 01)));
        assert_eq!(case.identification().map(|i| i.stage), Some(S::Conclusive));
        assert_eq!(case.reflection_starts_on(), date!(2026 - 02 - 01));
        assert_eq!(case.reflection_period_ends_on(45), date!(2026 - 03 - 18));
        assert_eq!(
            a_case(Date::MAX).reflection_period_ends_on(30),
            Date::MAX,
            "no overflow"
        );
    }

    #[test]
    fn asylum_and_international_protection_trip_non_refoulement() {
        use ResidenceStatus as R;
        let tripping: Vec<R> = [
            R::None,
            R::ReflectionPeriod,
            R::TemporaryPermit,
            R::PermanentPermit,
            R::AsylumPending,
            R::Refugee,
            R::SubsidiaryProtection,
        ]
        .into_iter()
        .filter(|s| s.trips_non_refoulement())
        .collect();
        assert_eq!(
            tripping,
            [R::AsylumPending, R::Refugee, R::SubsidiaryProtection]
        );
    }

    #[test]
    fn an_erased_copy_keeps_only_its_pairwise_reference() {
        let copy = DisclosedCase {
            case_ref: "ref-1".into(),
            gender: Some(Gender::Male),
            languages: vec!["ro".into()],
            ..Default::default()
        };
        assert_eq!(
            copy.tombstone(),
            DisclosedCase {
                case_ref: "ref-1".into(),
                ..Default::default()
            }
        );
    }
}
