//! `SafetyService`: safety alerts across borders (paper §22). A judicial authority or focal
//! point raises an alert for a case this node holds: it goes, under purpose SAFETY, to every
//! node holding a copy of the case (named there by its own pairwise reference), where it opens
//! a task to acknowledge; and here, as there, a return of the case to the alert's country is
//! refused, and an open one halted, naming `safety_alert`, until a risk assessment of the case
//! is recorded after the alert ([`check_returns`]).

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::Action,
    exchange::{ErasableRecord, SharedRecord},
    ids::{AlertId, CaseId, NodeId},
    model::ChildInfo,
    safety::{
        check_alerts, AlertRecipient, SafetyAlertEvent, SafetyAlertRecord, SafetyAlertStatus,
    },
    tasks::TaskKind,
    GuardError,
};
use trm_federation::outbox;
use trm_proto::{
    command::RaiseSafetyAlert,
    convert,
    v1::{self as w, safety_service_server::SafetyService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor},
    ctx::{Ctx, TxResult},
    disclosure::{self, load_case},
    error::ApiResult,
    lifecycle, returns, rpc,
};

/// The safety-alert service of one node.
#[derive(Debug, Clone)]
pub struct Safety {
    ctx: Ctx,
}

impl Safety {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

crate::replay_record!(SafetyAlertRecord);

impl rpc::ToWire for SafetyAlertRecord {
    type Wire = w::SafetyAlert;
    fn to_wire(&self) -> Self::Wire {
        convert::alert_to_wire(self)
    }
    /// A judicial authority, who reads no victim record, does not see to which countries
    /// the case was sent (only how far the alert got).
    fn seen_by(&self, _: &Ctx, p: &trm_core::ids::Principal) -> ApiResult<Self::Wire> {
        let mut wire = convert::alert_to_wire(self);
        if !trm_core::access::sees_alert_recipients(p) {
            wire.recipients.clear();
        }
        Ok(wire)
    }
}

impl lifecycle::StepRules for SafetyAlertRecord {
    /// The acknowledgement answers the alert's task.
    fn after_step(&self, tx: &mut Tx<'_>, event: SafetyAlertEvent) -> TxResult<()> {
        match event {
            SafetyAlertEvent::Acknowledge => {
                tx.close_task(TaskKind::AcknowledgeSafetyAlert, self.alert_id.uuid())?;
            }
        }
        Ok(())
    }
}

crate::grpc_service!(Safety => SafetyService {
    raise_safety_alert(w::RaiseSafetyAlertRequest) -> w::SafetyAlert;
} steps of SafetyAlertRecord {
    acknowledge_safety_alert(w::AcknowledgeSafetyAlertRequest) -> w::SafetyAlert = AcknowledgeSafetyAlert;
} reads of SafetyAlertRecord {
    get get_safety_alert(w::GetSafetyAlertRequest) -> w::SafetyAlert;
    list list_safety_alerts(w::ListSafetyAlertsRequest) -> w::ListSafetyAlertsResponse { safety_alerts };
});

/// Returns the nodes that hold a copy of `case` sent by this node (a referral, return plan
/// or claim whose erasure was not asked for), each with the pairwise reference they know it by
/// and the child flags their copy holds.
fn holders_of(tx: &mut Tx<'_>, case: CaseId) -> TxResult<Vec<AlertRecipient>> {
    let mut by_node: BTreeMap<NodeId, AlertRecipient> = BTreeMap::new();
    for shared in disclosure::shared_of_case(tx, case)? {
        let held = trm_core::on_shared!(shared, R, id => tx
            .record::<R>(id)?
            .filter(|r| !r.erasure().requested())
            .map(|r| (r.destination(), r.disclosed().clone())));
        let Some((node, disclosed)) = held else {
            continue;
        };
        let entry = by_node.entry(node).or_insert_with(|| AlertRecipient {
            node,
            case_ref: disclosed.case_ref.clone(),
            child: None,
            status: SafetyAlertStatus::Raised,
        });
        entry.child = entry.child.or(disclosed.child);
    }
    Ok(by_node.into_values().collect())
}

/// Refuses a return of `case` (held here) to `destination` while an alert of the case
/// names that country and no risk assessment was recorded after it, naming `safety_alert`.
pub(crate) fn check_returns(
    tx: &mut Tx<'_>,
    me: NodeId,
    case: CaseId,
    destination: NodeId,
) -> TxResult<Result<(), GuardError>> {
    let alerts: Vec<_> = tx
        .alerts_of_case(case)?
        .into_iter()
        .filter(|a| a.origin == me)
        .collect();
    if alerts.is_empty() {
        return Ok(Ok(()));
    }
    let assessed_at = tx.risk_assessments(case)?.last().map(|r| r.recorded_at);
    Ok(check_alerts(&alerts, destination, assessed_at))
}

/// Refuses a step towards the return of a copy received from `origin` under `case_ref` to
/// this node while an alert from `origin` about that case names this country
/// (`assessed_at`: the origin's latest risk assessment, where it said).
pub(crate) fn check_copy(
    tx: &mut Tx<'_>,
    me: NodeId,
    (origin, case_ref): (NodeId, &str),
    assessed_at: Option<OffsetDateTime>,
) -> trm_store::Result<Result<(), GuardError>> {
    let alerts: Vec<_> = tx
        .alerts_of_copy(origin, case_ref)?
        .into_iter()
        .filter(|a| a.holder == me)
        .collect();
    Ok(check_alerts(&alerts, me, assessed_at))
}

impl Safety {
    #[instrument(skip_all)]
    async fn raise_safety_alert(
        &self,
        request: Request<w::RaiseSafetyAlertRequest>,
    ) -> ApiResult<w::SafetyAlert> {
        let (p, idem) = authz::caller(&request, Action::RaiseSafetyAlert)?;
        let RaiseSafetyAlert { case_id, terms } = request.get_ref().try_into()?;
        let alert_id = AlertId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let record: SafetyAlertRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                let recipients = holders_of(tx, case_id)?;
                let now = OffsetDateTime::now_utc();
                let record = SafetyAlertRecord::raised(
                    alert_id,
                    ctx.id,
                    terms,
                    (case_id, case.organisation.clone()),
                    recipients,
                    now,
                );
                tx.put_record(&record)?;
                // Halted first: a recipient hears of the halt before the alert itself.
                let why = GuardError::new(trm_core::Guard::SafetyAlert, "safety alert");
                let halted =
                    returns::halt_open_returns(&ctx, tx, &who, case_id, Some(terms.country), &why)?;
                for r in &record.recipients {
                    outbox::enqueue(
                        tx,
                        &ctx.identity.current(),
                        r.node,
                        record.topic(),
                        &r.case_ref,
                        trm_proto::peer::to_wire(&record.notice_to(r)),
                    )?;
                }
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "safety_alert.raise",
                        alert_id.to_string(),
                        "raised",
                    )
                    .detail(format!(
                        "case={case_id} country={} kind={} purpose=safety recipients={} returns_halted={halted}",
                        terms.country,
                        terms.kind.as_str(),
                        record.recipients.len()
                    )),
                )?;
                Ok(record)
            })
            .await?;
        info!(alert_id = %record.alert_id, recipients = record.recipients.len(), "safety alert raised");
        rpc::ToWire::seen_by(&record, &self.ctx, &p)
    }
}

/// Whether `child` says the person is a child (a child's alert is answered first).
pub(crate) fn is_child(child: Option<ChildInfo>) -> bool {
    child.is_some_and(|c| c.is_child)
}
