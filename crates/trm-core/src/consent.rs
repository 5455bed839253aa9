//! The victim's consent to a disclosure: per purpose, per recipient country, with an expiry,
//! optionally narrowed to some data categories. Checked at the moment of every disclosure.

use std::collections::BTreeSet;

use crate::ids::{CaseId, ConsentId};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::{
    error::{Guard, GuardError},
    ids::NodeId,
    model::{DataCategory, Purpose},
    policy,
};

/// One recorded consent. Several consents are separate grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub consent_id: ConsentId,
    pub case_id: CaseId,
    pub purposes: Vec<Purpose>,
    pub recipients: Vec<NodeId>,
    /// Last day the consent is valid; `None`: no expiry.
    pub expires_on: Option<Date>,
    pub informed: bool,
    /// ISO 639 code of the language the victim was informed in.
    pub information_language: String,
    /// Empty: everything the purpose allows except contact.
    pub categories: Vec<DataCategory>,
    pub recorded_at: OffsetDateTime,
    pub withdrawn_at: Option<OffsetDateTime>,
}

impl Consent {
    /// Returns whether the consent is in force on `today`.
    pub fn is_active(&self, today: Date) -> bool {
        self.informed
            && self.withdrawn_at.is_none()
            && self.expires_on.is_none_or(|last| today <= last)
    }

    /// Returns whether the consent covers a disclosure for `purpose` to `recipient` on `today`.
    pub fn covers(&self, purpose: Purpose, recipient: NodeId, today: Date) -> bool {
        self.is_active(today)
            && self.purposes.contains(&purpose)
            && self.recipients.contains(&recipient)
    }

    /// Returns the categories this consent grants for `purpose` (within what the purpose allows).
    pub fn granted_categories(&self, purpose: Purpose) -> BTreeSet<DataCategory> {
        let allowed = policy::allowed_categories(purpose);
        if self.categories.is_empty() {
            // Contact crosses only where listed; so does identity for legal remedies.
            allowed
                .into_iter()
                .filter(|c| *c != DataCategory::Contact)
                .filter(|c| purpose != Purpose::LegalRemedies || *c != DataCategory::Identity)
                .collect()
        } else {
            self.categories
                .iter()
                .copied()
                .filter(|c| allowed.contains(c))
                .collect()
        }
    }
}

/// What the victim's consents allow for one disclosure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The union of the categories every covering consent grants.
    pub categories: BTreeSet<DataCategory>,
    /// The consents the disclosure relies on: withdrawing any of them erases it.
    pub consent_ids: Vec<ConsentId>,
}

/// Returns what may be disclosed for `purpose` to `recipient` on `today`: the union of what
/// every active consent covering them grants. Refused with the `consent` guard when no
/// consent covers the disclosure.
pub fn grant(
    consents: &[Consent],
    purpose: Purpose,
    recipient: NodeId,
    today: Date,
) -> Result<Grant, GuardError> {
    let covering: Vec<&Consent> = consents
        .iter()
        .filter(|c| c.covers(purpose, recipient, today))
        .collect();
    if covering.is_empty() {
        // Name the consent that would have covered it, if one lapsed.
        let lapsed = consents
            .iter()
            .filter(|c| c.purposes.contains(&purpose) && c.recipients.contains(&recipient))
            .find_map(|c| match (c.withdrawn_at, c.expires_on) {
                (Some(_), _) => Some(format!("consent {} was withdrawn", c.consent_id)),
                (None, Some(last)) if today > last => Some(format!(
                    "consent {} expired on {}",
                    c.consent_id,
                    crate::model::format_date(last)
                )),
                _ => None,
            });
        let reason = match lapsed {
            Some(why) => format!(
                "{why}; no active consent covers purpose {} to {recipient}",
                purpose.as_str()
            ),
            None => format!(
                "no active consent covers purpose {} to {recipient}",
                purpose.as_str()
            ),
        };
        return Err(GuardError::new(Guard::Consent, reason));
    }
    Ok(Grant {
        categories: covering
            .iter()
            .flat_map(|c| c.granted_categories(purpose))
            .collect(),
        consent_ids: covering.iter().map(|c| c.consent_id).collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::{date, datetime};

    /// An informed consent for `purpose` to RO, with no expiry.
    pub(crate) fn consent_for(purpose: Purpose) -> Consent {
        consent(&[purpose], "RO", None)
    }

    fn consent(purposes: &[Purpose], to: &str, expires: Option<Date>) -> Consent {
        Consent {
            consent_id: ConsentId::from_uuid(uuid::Uuid::nil()),
            case_id: CaseId::from_uuid(uuid::Uuid::nil()),
            purposes: purposes.to_vec(),
            recipients: vec![to.parse().unwrap()],
            expires_on: expires,
            informed: true,
            information_language: "en".into(),
            categories: vec![],
            recorded_at: datetime!(2026-01-01 0:00 UTC),
            withdrawn_at: None,
        }
    }

    #[test]
    fn consent_scope_is_purpose_recipient_and_expiry() {
        let ro = "RO".parse().unwrap();
        let c = [consent(
            &[Purpose::ReferralAssistance],
            "RO",
            Some(date!(2026 - 03 - 01)),
        )];
        let today = date!(2026 - 02 - 01);
        assert!(grant(&c, Purpose::ReferralAssistance, ro, today).is_ok());
        assert_eq!(
            grant(&c, Purpose::ReturnPlanning, ro, today)
                .unwrap_err()
                .guard,
            Guard::Consent
        );
        assert!(grant(
            &c,
            Purpose::ReferralAssistance,
            "NG".parse().unwrap(),
            today
        )
        .is_err());
        assert!(grant(&c, Purpose::ReferralAssistance, ro, date!(2026 - 03 - 01)).is_ok());
        let expired =
            grant(&c, Purpose::ReferralAssistance, ro, date!(2026 - 03 - 02)).unwrap_err();
        assert!(
            expired.reason.contains("expired on 2026-03-01"),
            "{}",
            expired.reason
        );
        assert!(grant(&c, Purpose::ReferralAssistance, ro, date!(2026 - 03 - 02)).is_err());
    }

    #[test]
    fn an_uninformed_consent_is_not_named_as_expired() {
        let mut c = consent(
            &[Purpose::ReferralAssistance],
            "RO",
            Some(date!(2026 - 03 - 01)),
        );
        c.informed = false;
        // Before and on its last day: refused for want of information, never "expired".
        for today in [date!(2026 - 02 - 01), date!(2026 - 03 - 01)] {
            let refused = grant(
                std::slice::from_ref(&c),
                Purpose::ReferralAssistance,
                "RO".parse().unwrap(),
                today,
            )
            .unwrap_err();
            assert!(!refused.reason.contains("expired"), "{}", refused.reason);
            assert!(
                refused.reason.starts_with("no active consent covers"),
                "{}",
                refused.reason
            );
        }
    }

    #[test]
    fn withdrawn_consent_grants_nothing() {
        let mut c = consent(&[Purpose::ReferralAssistance], "RO", None);
        c.withdrawn_at = Some(datetime!(2026-01-02 0:00 UTC));
        let refused = grant(
            &[c.clone()],
            Purpose::ReferralAssistance,
            "RO".parse().unwrap(),
            date!(2026 - 01 - 03),
        )
        .unwrap_err();
        // The refusal names the lapsed consent and why, so a case worker knows what to ask.
        assert!(
            refused.reason.contains("was withdrawn"),
            "{}",
            refused.reason
        );
        assert!(!refused.reason.contains("expired"), "{}", refused.reason);
        // A consent for another recipient or purpose is not named as if it had lapsed.
        for (purpose, to) in [
            (Purpose::ReferralAssistance, "NG"),
            (Purpose::ReturnPlanning, "RO"),
        ] {
            let other = grant(
                &[c.clone()],
                purpose,
                to.parse().unwrap(),
                date!(2026 - 01 - 03),
            )
            .unwrap_err();
            assert!(!other.reason.contains("withdrawn"), "{}", other.reason);
        }
    }

    #[test]
    fn contact_only_when_listed_explicitly() {
        let ro = "RO".parse().unwrap();
        let today = date!(2026 - 01 - 03);
        let plain = consent(&[Purpose::ReturnPlanning], "RO", None);
        let got = grant(
            std::slice::from_ref(&plain),
            Purpose::ReturnPlanning,
            ro,
            today,
        )
        .unwrap();
        assert!(got.categories.contains(&DataCategory::Identity));
        assert!(!got.categories.contains(&DataCategory::Contact));
        let mut with_contact = plain.clone();
        with_contact.categories = vec![DataCategory::Contact, DataCategory::Demographics];
        with_contact.consent_id = ConsentId::from_uuid(uuid::Uuid::from_u128(2));
        let got = grant(&[plain, with_contact], Purpose::ReturnPlanning, ro, today).unwrap();
        assert_eq!(
            got.consent_ids,
            vec![
                ConsentId::from_uuid(uuid::Uuid::nil()),
                ConsentId::from_uuid(uuid::Uuid::from_u128(2))
            ]
        );
        let got = got.categories;
        assert!(got.contains(&DataCategory::Contact));
        assert!(got.contains(&DataCategory::Identity));
    }

    #[test]
    fn a_consent_category_the_purpose_does_not_allow_is_not_granted() {
        let mut c = consent(&[Purpose::ReferralAssistance], "RO", None);
        c.categories = vec![DataCategory::Identity, DataCategory::Needs];
        let got = grant(
            &[c],
            Purpose::ReferralAssistance,
            "RO".parse().unwrap(),
            date!(2026 - 01 - 03),
        )
        .unwrap();
        assert_eq!(
            got.categories.into_iter().collect::<Vec<_>>(),
            vec![DataCategory::Needs]
        );
    }
}
