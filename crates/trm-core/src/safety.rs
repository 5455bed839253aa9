//! Safety alerts across borders (paper §22): an offender extradited to, or released or
//! escaped in, a country endangers the victim there. The node that holds the case raises an
//! alert; it goes to every node holding a copy of the case (`raised -> delivered ->
//! acknowledged` for each), and on every node that holds the case or a copy a return of the
//! case to that country is refused, and an open one halted, until a risk assessment of the
//! case is recorded after the alert ([`blocks_return`]).
//!
//! The origin keeps one record per alert with the state of each recipient; a recipient keeps
//! its own copy, which names the case only by the pairwise reference the two nodes share.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::{
    error::{Guard, GuardError},
    exchange::{RecordKind, SharedRecord, Side},
    ids::{AlertId, CaseId, NodeId, OrgId},
    messages::{PeerMessage, Topic},
    model::ChildInfo,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SafetyAlertKind {
    /// The offender is extradited to the country.
    Extradition,
    /// The offender is released there.
    Release,
    /// The offender escaped.
    Escape,
    Other,
}

impl SafetyAlertKind {
    /// Returns the kind's name, as audit entries write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyAlertKind::Extradition => "extradition",
            SafetyAlertKind::Release => "release",
            SafetyAlertKind::Escape => "escape",
            SafetyAlertKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SafetyAlertStatus {
    Raised,
    /// The recipient's signed receipt arrived.
    Delivered,
    /// The recipient's focal point or judicial authority acknowledged it.
    Acknowledged,
}

impl SafetyAlertStatus {
    /// Returns the status name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyAlertStatus::Raised => "raised",
            SafetyAlertStatus::Delivered => "delivered",
            SafetyAlertStatus::Acknowledged => "acknowledged",
        }
    }

    /// Returns whether nothing is left to do with the alert.
    pub fn is_final(self) -> bool {
        self == SafetyAlertStatus::Acknowledged
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SafetyAlertEvent {
    /// The recipient acknowledges the alert.
    Acknowledge,
}

/// An acknowledgement carries nothing besides its event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafetyAlertStep;

/// What an alert says: the country where the danger is, why, and from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTerms {
    pub country: NodeId,
    pub kind: SafetyAlertKind,
    pub effective_on: Date,
}

/// One node that holds a copy of the case, as the origin tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecipient {
    pub node: NodeId,
    /// The pairwise reference of the case between the origin and this node.
    pub case_ref: String,
    /// Whether the person is a child, where the copy the node holds already says so.
    pub child: Option<ChildInfo>,
    pub status: SafetyAlertStatus,
}

/// A safety alert as one node holds it; `alert_id` is the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyAlertRecord {
    pub alert_id: AlertId,
    /// The node that holds the case and raised the alert.
    pub origin: NodeId,
    /// The node that holds this record: the origin itself, or a recipient.
    pub holder: NodeId,
    pub terms: AlertTerms,
    /// At a recipient: the pairwise reference of the case between the origin and it.
    pub case_ref: String,
    /// At a recipient: whether the person is a child, if its copy says so.
    pub child: Option<ChildInfo>,
    /// At the origin: the case, and the organisation that looks after it.
    pub case_id: Option<CaseId>,
    pub organisation: Option<OrgId>,
    /// At the origin: every node that holds a copy of the case.
    pub recipients: Vec<AlertRecipient>,
    pub status: SafetyAlertStatus,
    /// When the origin raised it (the origin's clock, on every node): a risk assessment
    /// recorded after this ends the block on returns.
    pub raised_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl SafetyAlertRecord {
    /// An alert just raised at `origin` for `case`, to be sent to `recipients`.
    pub fn raised(
        alert_id: AlertId,
        origin: NodeId,
        terms: AlertTerms,
        case: (CaseId, OrgId),
        recipients: Vec<AlertRecipient>,
        now: OffsetDateTime,
    ) -> Self {
        SafetyAlertRecord {
            alert_id,
            origin,
            holder: origin,
            terms,
            case_ref: String::new(),
            child: None,
            case_id: Some(case.0),
            organisation: Some(case.1),
            recipients,
            status: SafetyAlertStatus::Raised,
            raised_at: now,
            created_at: now,
            updated_at: now,
        }
    }

    /// The copy of an alert that arrived from `origin` at `holder`.
    pub fn received(
        alert_id: AlertId,
        (origin, holder): (NodeId, NodeId),
        terms: AlertTerms,
        case_ref: String,
        child: Option<ChildInfo>,
        raised_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Self {
        SafetyAlertRecord {
            alert_id,
            origin,
            holder,
            terms,
            case_ref,
            child,
            case_id: None,
            organisation: None,
            recipients: vec![],
            status: SafetyAlertStatus::Delivered,
            raised_at,
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns the notice that carries the alert to `recipient`.
    pub fn notice_to(&self, recipient: &AlertRecipient) -> PeerMessage {
        PeerMessage::SafetyAlertNotice {
            alert_id: self.alert_id,
            terms: self.terms,
            raised_at: self.raised_at,
            disclosed: crate::model::DisclosedCase {
                case_ref: recipient.case_ref.clone(),
                child: recipient.child,
                ..Default::default()
            },
        }
    }

    /// At the origin: `node`'s receipt arrived (`acknowledged`: or its acknowledgement).
    /// Returns whether anything changed.
    pub fn recipient_reached(&mut self, node: NodeId, to: SafetyAlertStatus) -> bool {
        let Some(r) = self.recipients.iter_mut().find(|r| r.node == node) else {
            return false;
        };
        if r.status >= to {
            return false;
        }
        r.status = to;
        // The alert stands where its least advanced recipient does.
        self.status = self
            .recipients
            .iter()
            .map(|r| r.status)
            .min()
            .unwrap_or(SafetyAlertStatus::Raised);
        self.updated_at = OffsetDateTime::now_utc();
        true
    }
}

/// Returns whether `alert` still stops a return to `destination`: it names that country and
/// no risk assessment of the case was recorded after it (`assessed_at`: the latest one).
pub fn blocks_return(
    alert: &SafetyAlertRecord,
    destination: NodeId,
    assessed_at: Option<OffsetDateTime>,
) -> bool {
    alert.terms.country == destination && assessed_at.is_none_or(|at| at <= alert.raised_at)
}

/// Refuses a return to `destination` while one of `alerts` blocks it, naming `safety_alert`.
pub fn check_alerts<'a>(
    alerts: impl IntoIterator<Item = &'a SafetyAlertRecord>,
    destination: NodeId,
    assessed_at: Option<OffsetDateTime>,
) -> Result<(), GuardError> {
    match alerts
        .into_iter()
        .find(|a| blocks_return(a, destination, assessed_at))
    {
        Some(a) => Err(GuardError::new(
            Guard::SafetyAlert,
            format!(
                "safety alert {} names {destination}: a return there needs a risk assessment recorded after it",
                a.alert_id
            ),
        )),
        None => Ok(()),
    }
}

impl SharedRecord for SafetyAlertRecord {
    type Id = AlertId;
    type Status = SafetyAlertStatus;
    type Event = SafetyAlertEvent;
    type Step = SafetyAlertStep;
    const KIND: RecordKind = RecordKind::SafetyAlert;

    crate::exchange::record_accessors!(alert_id: AlertId, SafetyAlertStatus);

    fn origin(&self) -> NodeId {
        self.origin
    }
    /// The holder: at the origin, the origin itself (its recipients are in `recipients`).
    fn destination(&self) -> NodeId {
        self.holder
    }
    fn case_ref(&self) -> &str {
        &self.case_ref
    }
    /// Who may act on an alert is the role's (a judicial authority or focal point).
    fn owner(&self) -> Option<&OrgId> {
        None
    }
    fn may_take(event: SafetyAlertEvent, side: Side) -> bool {
        match event {
            SafetyAlertEvent::Acknowledge => side == Side::Destination,
        }
    }
    fn event_to(status: SafetyAlertStatus, side: Side) -> Option<SafetyAlertEvent> {
        (status == SafetyAlertStatus::Acknowledged && side == Side::Destination)
            .then_some(SafetyAlertEvent::Acknowledge)
    }
    fn apply(&mut self, event: SafetyAlertEvent, _: &SafetyAlertStep) -> Result<(), GuardError> {
        match (self.status, event) {
            (SafetyAlertStatus::Delivered, SafetyAlertEvent::Acknowledge) => {
                self.status = SafetyAlertStatus::Acknowledged;
                self.updated_at = OffsetDateTime::now_utc();
                Ok(())
            }
            (s, e) => Err(GuardError::new(
                Guard::State,
                format!("safety alert is {}; {e:?} is not possible", s.as_str()),
            )),
        }
    }
    fn update_message(&self, _: &SafetyAlertStep) -> PeerMessage {
        PeerMessage::SafetyAlertUpdate {
            alert_id: self.alert_id,
            status: self.status,
        }
    }
    fn topic(&self) -> Topic {
        Topic::SafetyAlert(self.alert_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn alert(recipients: &[&str]) -> SafetyAlertRecord {
        let at: NodeId = "AT".parse().unwrap();
        let terms = AlertTerms {
            country: "RO".parse().unwrap(),
            kind: SafetyAlertKind::Release,
            effective_on: date!(2026 - 03 - 01),
        };
        let recipients = recipients
            .iter()
            .map(|n| AlertRecipient {
                node: n.parse().unwrap(),
                case_ref: format!("ref-{n}"),
                child: None,
                status: SafetyAlertStatus::Raised,
            })
            .collect();
        SafetyAlertRecord::raised(
            AlertId::new(),
            at,
            terms,
            (CaseId::new(), "sp1".parse().unwrap()),
            recipients,
            datetime!(2026-03-01 10:00 UTC),
        )
    }

    #[test]
    fn an_alert_blocks_returns_to_its_country_until_a_later_risk_assessment() {
        let a = alert(&[]);
        let (ro, ng): (NodeId, NodeId) = ("RO".parse().unwrap(), "NG".parse().unwrap());
        let before = Some(datetime!(2026-02-01 0:00 UTC));
        let after = Some(datetime!(2026-03-02 0:00 UTC));
        assert!(blocks_return(&a, ro, None));
        assert!(blocks_return(&a, ro, before));
        assert!(blocks_return(&a, ro, Some(a.raised_at)));
        assert!(!blocks_return(&a, ro, after));
        assert!(!blocks_return(&a, ng, None), "another country is not named");
        let refused = check_alerts([&a], ro, before).unwrap_err();
        assert_eq!(refused.guard, Guard::SafetyAlert);
        assert!(refused.to_string().starts_with("safety_alert: "));
        assert!(check_alerts([&a], ro, after).is_ok());
    }

    #[test]
    fn the_origin_s_alert_stands_where_its_least_advanced_recipient_does() {
        let mut a = alert(&["RO", "NG"]);
        let (ro, ng): (NodeId, NodeId) = ("RO".parse().unwrap(), "NG".parse().unwrap());
        assert!(a.recipient_reached(ro, SafetyAlertStatus::Delivered));
        assert_eq!(a.status, SafetyAlertStatus::Raised);
        assert!(a.recipient_reached(ng, SafetyAlertStatus::Acknowledged));
        assert_eq!(a.status, SafetyAlertStatus::Delivered);
        assert!(
            !a.recipient_reached(ng, SafetyAlertStatus::Delivered),
            "never back"
        );
        assert!(!a.recipient_reached("FR".parse().unwrap(), SafetyAlertStatus::Delivered));
        assert!(a.recipient_reached(ro, SafetyAlertStatus::Acknowledged));
        assert_eq!(a.status, SafetyAlertStatus::Acknowledged);
    }

    #[test]
    fn only_a_recipient_acknowledges_a_delivered_alert_once() {
        assert!(SafetyAlertRecord::may_take(
            SafetyAlertEvent::Acknowledge,
            Side::Destination
        ));
        assert!(!SafetyAlertRecord::may_take(
            SafetyAlertEvent::Acknowledge,
            Side::Origin
        ));
        let a = alert(&[]);
        let mut copy = SafetyAlertRecord::received(
            a.alert_id,
            (a.origin, "RO".parse().unwrap()),
            a.terms,
            "ref".into(),
            None,
            a.raised_at,
            a.raised_at,
        );
        copy.apply(SafetyAlertEvent::Acknowledge, &SafetyAlertStep)
            .unwrap();
        assert_eq!(copy.status, SafetyAlertStatus::Acknowledged);
        let again = copy.apply(SafetyAlertEvent::Acknowledge, &SafetyAlertStep);
        assert_eq!(again.unwrap_err().guard, Guard::State);
    }
}
