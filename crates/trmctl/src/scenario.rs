//! The sandbox story, played through the public gRPC API with the sandbox's client
//! certificates: a service provider in the first country records a victim, her consent and a
//! referral to the second country; that country's focal point accepts and assigns the case.
//! It prints what each node holds and what crossed the border.

use std::{io::Write, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use tonic::{transport::Channel, Code};
use trm_core::ids::{NodeId, Role};
use trm_node::NodeConfig;
use trm_proto::v1::{
    self as w, admin_service_client::AdminServiceClient,
    referral_service_client::ReferralServiceClient, remedies_service_client::RemediesServiceClient,
    return_planning_service_client::ReturnPlanningServiceClient,
    safety_service_client::SafetyServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient,
};

use crate::{connect, sandbox, table};

/// What the story ended with, for callers that check it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The referral as the origin holds it at the end.
    pub at_origin: w::Referral,
    /// The referral as the destination holds it at the end.
    pub at_destination: w::Referral,
    /// The code a referral without consent was refused with.
    pub without_consent: Code,
    /// The return plan as the requesting node holds it at the end.
    pub return_at_origin: w::ReturnPlan,
    /// The return plan as the country of return holds it at the end.
    pub return_at_destination: w::ReturnPlan,
    /// The hearing as the witness's country holds it at the end.
    pub hearing_at_witness: w::Hearing,
    /// The safety alert as the country that raised it holds it at the end.
    pub alert_at_origin: w::SafetyAlert,
    /// The safety alert as the country it names holds it at the end.
    pub alert_at_destination: w::SafetyAlert,
    /// The compensation claim as the forum holds it at the end.
    pub claim_at_forum: w::Claim,
}

/// Opens a channel to a sandbox node's services (or admin) port as `role`.
pub async fn client(dir: &Path, node: NodeId, role: Role, admin: bool) -> Result<Channel> {
    let cfg = NodeConfig::load(&sandbox::config_path(dir, node))?;
    let nd = sandbox::node_dir(dir, node);
    let addr = if admin {
        cfg.listen.admin
    } else {
        cfg.listen.services
    };
    connect::channel(
        &addr.to_string(),
        &nd.join("services-ca.pem"),
        &nd.join(format!("clients/{role}.pem")),
        &nd.join(format!("clients/{role}.key")),
    )
    .await
}

async fn referrals(dir: &Path, node: NodeId, role: Role) -> Result<ReferralServiceClient<Channel>> {
    Ok(ReferralServiceClient::new(
        client(dir, node, role, false).await?,
    ))
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `deadline`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_name(v: i32) -> String {
    table::name(
        v,
        |s: w::ReferralStatus| s.as_str_name(),
        "REFERRAL_STATUS_",
    )
}

async fn referral_status(c: &mut ReferralServiceClient<Channel>, id: &str) -> Result<w::Referral> {
    Ok(c.get_referral(w::GetReferralRequest {
        referral_id: id.to_owned(),
    })
    .await?
    .into_inner())
}

/// Plays the story from `origin` to `destination` (nodes already running), writing what
/// happens to `out`.
pub async fn run(
    dir: &Path,
    origin: NodeId,
    destination: NodeId,
    out: &mut impl Write,
) -> Result<Outcome> {
    let deadline = Duration::from_secs(60);
    let mut sp = referrals(dir, origin, Role::ServiceProvider).await?;
    let mut dest_fp = referrals(dir, destination, Role::FocalPoint).await?;

    let case = record_case(&mut sp, origin, destination, out).await?;

    let without_consent = refused_without_consent(&mut sp, origin, destination, &case, out).await?;

    writeln!(
        out,
        "== {origin}: the victim gives informed consent to a referral to {destination}"
    )?;
    let consent = sp
        .record_consent(w::RecordConsentRequest {
            case_id: case.case_id.clone(),
            purposes: vec![w::Purpose::ReferralAssistance as i32],
            recipients: vec![destination.to_string()],
            expires_on: String::new(),
            informed: true,
            information_language: "ro".into(),
            categories: vec![],
            ..Default::default()
        })
        .await
        .context("RecordConsent")?
        .into_inner();
    writeln!(out, "   consent {} recorded", consent.consent_id)?;

    writeln!(out, "== {origin}: referral submitted to {destination}")?;
    let referral = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: destination.to_string(),
            requested_services: vec![
                w::NeedKind::Shelter as i32,
                w::NeedKind::Psychological as i32,
            ],
            reason: "safe accommodation near family".into(),
            ..Default::default()
        })
        .await
        .context("SubmitReferral")?
        .into_inner();
    let id = referral.referral_id.clone();
    writeln!(out, "   referral {id}: {}", status_name(referral.status))?;

    // The referral id is the same on both nodes: the destination's focal point reads it
    // directly (NOT_FOUND until it arrives), however many referrals it already holds.
    let arrived = wait_for("the referral to arrive", deadline, || {
        let mut c = dest_fp.clone();
        let id = id.clone();
        async move {
            match c
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await
            {
                Ok(r) => Ok(Some(r.into_inner())),
                Err(s) if s.code() == Code::NotFound => Ok(None),
                Err(s) => Err(s.into()),
            }
        }
    })
    .await?;
    writeln!(
        out,
        "== what crossed the border ({origin} -> {destination}) for the referral:"
    )?;
    table::side_by_side(
        out,
        &format!("{origin} holds"),
        &table::case_rows(&case),
        &format!("{destination} received"),
        &table::disclosed_rows(&arrived.disclosed.clone().unwrap_or_default()),
    )?;

    writeln!(
        out,
        "== {destination}: the focal point accepts and assigns the case to a service provider"
    )?;
    dest_fp
        .respond_to_referral(w::RespondToReferralRequest {
            referral_id: id.clone(),
            decision: w::ReferralDecision::Accept as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .context("RespondToReferral")?;
    dest_fp
        .assign_case(w::AssignCaseRequest {
            referral_id: id.clone(),
            organisation: "sp1".into(),
            ..Default::default()
        })
        .await
        .context("AssignCase")?;

    let at_origin = wait_for("the answer to reach the origin", deadline, || {
        let mut c = sp.clone();
        let id = id.clone();
        async move {
            let r = referral_status(&mut c, &id).await?;
            Ok((r.status == w::ReferralStatus::InAssistance as i32).then_some(r))
        }
    })
    .await?;
    let at_destination = referral_status(&mut dest_fp, &id).await?;
    writeln!(
        out,
        "   {origin} sees referral {id}: {}",
        status_name(at_origin.status)
    )?;
    writeln!(
        out,
        "   {destination} sees referral {id}: {}",
        status_name(at_destination.status)
    )?;

    let (return_at_origin, return_at_destination) =
        return_story(dir, origin, destination, &case.case_id, out).await?;
    let hearing_at_witness = hearing_story(dir, origin, destination, &case.case_id, out).await?;
    let (alert_at_origin, alert_at_destination) =
        safety_story(dir, origin, destination, &case.case_id, out).await?;
    let claim_at_forum = claim_story(dir, origin, destination, &case.case_id, out).await?;

    for node in [origin, destination] {
        audit_summary(dir, node, out).await?;
    }
    Ok(Outcome {
        at_origin,
        at_destination,
        without_consent,
        return_at_origin,
        return_at_destination,
        hearing_at_witness,
        alert_at_origin,
        alert_at_destination,
        claim_at_forum,
    })
}

/// A service provider at `origin` records an identified victim (fictional data).
async fn record_case(
    sp: &mut ReferralServiceClient<Channel>,
    origin: NodeId,
    destination: NodeId,
    out: &mut impl Write,
) -> Result<w::Case> {
    writeln!(
        out,
        "== {origin}: a service provider records an identified victim (fictional data)"
    )?;
    let case = sp
        .create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: "Maria".into(),
                family_name: "Exemplu".into(),
                date_of_birth: "2001-04-02".into(),
                gender: w::Gender::Female as i32,
                citizenship: vec![destination.to_string()],
                languages: vec!["ro".into(), "en".into()],
                document_number: "SANDBOX-0001".into(),
                address: "Shelter 1, Sandbox Street".into(),
                phone: "+00 000 0000".into(),
            }),
            needs: Some(w::Needs {
                kinds: vec![
                    w::NeedKind::Shelter as i32,
                    w::NeedKind::Psychological as i32,
                ],
                urgency: w::Urgency::Urgent as i32,
                notes: "case worker's private notes".into(),
            }),
            exploitation: Some(w::Exploitation {
                types: vec![w::ExploitationType::ForcedLabour as i32],
                countries: vec![origin.to_string()],
            }),
            child: Some(w::ChildInfo::default()),
            identified_on: String::new(),
            ..Default::default()
        })
        .await
        .context("CreateCase")?
        .into_inner();
    writeln!(
        out,
        "   {origin} holds case {} (the full record, sealed at rest)",
        case.case_id
    )?;

    Ok(case)
}

/// A referral before any consent: refused; returns the code.
async fn refused_without_consent(
    sp: &mut ReferralServiceClient<Channel>,
    origin: NodeId,
    destination: NodeId,
    case: &w::Case,
    out: &mut impl Write,
) -> Result<tonic::Code> {
    writeln!(
        out,
        "== {origin}: a referral to {destination} without consent is refused"
    )?;
    let refused = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: destination.to_string(),
            requested_services: vec![w::NeedKind::Shelter as i32],
            reason: String::new(),
            ..Default::default()
        })
        .await;
    let without_consent = match refused {
        Ok(_) => bail!("a referral without consent was accepted"),
        Err(status) => {
            writeln!(out, "   {:?}: {}", status.code(), status.message())?;
            status.code()
        }
    };

    Ok(without_consent)
}

/// Verifies `node`'s audit chain and prints it with the outbox depth.
async fn audit_summary(dir: &Path, node: NodeId, out: &mut impl Write) -> Result<()> {
    let mut admin = AdminServiceClient::new(client(dir, node, Role::Operator, true).await?);
    let audit = admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner();
    let status = admin.status(w::StatusRequest {}).await?.into_inner();
    writeln!(
        out,
        "== {node}: audit chain ok={} ({} entries); outbox depth {}",
        audit.ok, audit.entries_checked, status.outbox_depth
    )?;
    Ok(())
}

async fn wait_hearing(
    c: &WitnessHearingServiceClient<Channel>,
    id: &str,
    status: w::HearingStatus,
) -> Result<w::Hearing> {
    wait_for("the hearing to move on", Duration::from_secs(60), || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let h = c.get_hearing(w::GetHearingRequest { hearing_id: id }).await;
            Ok(h.ok()
                .map(|h| h.into_inner())
                .filter(|h| h.status == status as i32))
        }
    })
    .await
}

/// The prosecution in `origin` asks to hear the victim, now in `destination`, as a witness
/// by video-conference.
async fn hearing_story(
    dir: &Path,
    origin: NodeId,
    destination: NodeId,
    case_id: &str,
    out: &mut impl Write,
) -> Result<w::Hearing> {
    let mut ja = WitnessHearingServiceClient::new(
        client(dir, origin, Role::JudicialAuthority, false).await?,
    );
    let mut fp =
        WitnessHearingServiceClient::new(client(dir, destination, Role::FocalPoint, false).await?);
    writeln!(out, "== {origin}: a prosecutor requests a video-conference hearing of the witness in {destination}")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let proposed = prost_types::Timestamp {
        seconds: now + 21 * 86_400,
        nanos: 0,
    };
    let hearing = ja
        .request_hearing(w::RequestHearingRequest {
            case_id: case_id.to_owned(),
            witness_country: destination.to_string(),
            proceeding_reference: "SANDBOX-PROC-1".into(),
            measures: vec![
                w::ProtectiveMeasure::VoiceDistortion as i32,
                w::ProtectiveMeasure::PsychologistPresent as i32,
                w::ProtectiveMeasure::Interpreter as i32,
            ],
            language: "ro".into(),
            legal_basis: "MLA request under UNTOC art. 18 para. 18".into(),
            proposed_times: vec![proposed],
            ..Default::default()
        })
        .await
        .context("RequestHearing")?
        .into_inner();
    let id = hearing.hearing_id.clone();
    let arrived = wait_hearing(&fp, &id, w::HearingStatus::Requested).await?;
    writeln!(out, "== what crossed the border for the hearing ({origin} -> {destination}): the witness only by reference")?;
    let measures: Vec<String> = arrived
        .measures
        .iter()
        .map(|m| {
            table::name(
                *m,
                |m: w::ProtectiveMeasure| m.as_str_name(),
                "PROTECTIVE_MEASURE_",
            )
        })
        .collect();
    for (field, value) in [
        ("pairwise reference", arrived.case_ref.clone()),
        ("proceeding", arrived.proceeding_reference.clone()),
        ("legal basis", arrived.legal_basis.clone()),
        ("language", arrived.language.clone()),
        ("protective measures", measures.join(", ")),
    ] {
        writeln!(out, "   {field:<20} {value}")?;
    }
    fp.respond_to_hearing(w::RespondToHearingRequest {
        hearing_id: id.clone(),
        decision: w::HearingDecision::Schedule as i32,
        reason: "the witness agreed; support person present".into(),
        scheduled_at: Some(proposed),
        ..Default::default()
    })
    .await
    .context("RespondToHearing")?;
    wait_hearing(&ja, &id, w::HearingStatus::Scheduled).await?;
    ja.record_hearing_outcome(w::RecordHearingOutcomeRequest {
        hearing_id: id.clone(),
        minutes_reference: "SANDBOX-MIN-1".into(),
        ..Default::default()
    })
    .await
    .context("RecordHearingOutcome")?;
    let held = wait_hearing(&fp, &id, w::HearingStatus::Held).await?;
    writeln!(
        out,
        "   hearing {id}: {} (minutes {})",
        table::name(
            held.status,
            |s: w::HearingStatus| s.as_str_name(),
            "HEARING_STATUS_"
        ),
        held.minutes_reference
    )?;
    Ok(held)
}

fn return_status_name(v: i32) -> String {
    table::name(v, |s: w::ReturnStatus| s.as_str_name(), "RETURN_STATUS_")
}

async fn wait_return(
    c: &ReturnPlanningServiceClient<Channel>,
    id: &str,
    status: w::ReturnStatus,
) -> Result<w::ReturnPlan> {
    wait_for(
        "the return plan to move on",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let id = id.to_owned();
            async move {
                let r = c
                    .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                    .await;
                Ok(r.ok()
                    .map(|r| r.into_inner())
                    .filter(|r| r.status == status as i32))
            }
        },
    )
    .await
}

/// The victim decides to go home: a safe, voluntary return from `origin` to `destination`.
async fn return_story(
    dir: &Path,
    origin: NodeId,
    destination: NodeId,
    case_id: &str,
    out: &mut impl Write,
) -> Result<(w::ReturnPlan, w::ReturnPlan)> {
    let mut sp = referrals(dir, origin, Role::ServiceProvider).await?;
    let mut at =
        ReturnPlanningServiceClient::new(client(dir, origin, Role::ServiceProvider, false).await?);
    let mut ro =
        ReturnPlanningServiceClient::new(client(dir, destination, Role::FocalPoint, false).await?);
    writeln!(
        out,
        "== {origin}: the victim decides to return to {destination}"
    )?;
    at.record_risk_assessment(w::RecordRiskAssessmentRequest {
        case_id: case_id.to_owned(),
        level: w::RiskLevel::Low as i32,
        non_refoulement_concern: false,
        retrafficking_risk: false,
        family_at_risk: false,
        factors: vec!["recruiter convicted".into(), "family supportive".into()],
        ..Default::default()
    })
    .await
    .context("RecordRiskAssessment")?;
    let early = at
        .propose_return(w::ProposeReturnRequest {
            case_id: case_id.to_owned(),
            destination: destination.to_string(),
            ..Default::default()
        })
        .await;
    if let Err(status) = &early {
        writeln!(
            out,
            "   before her decision is recorded, refused ({:?}): {}",
            status.code(),
            status.message()
        )?;
    }
    at.record_return_decision(w::RecordReturnDecisionRequest {
        case_id: case_id.to_owned(),
        voluntary: true,
        informed: true,
        reflection_period_waived: true,
        ..Default::default()
    })
    .await
    .context("RecordReturnDecision")?;
    sp.record_consent(w::RecordConsentRequest {
        case_id: case_id.to_owned(),
        purposes: vec![w::Purpose::ReturnPlanning as i32],
        recipients: vec![destination.to_string()],
        informed: true,
        information_language: "ro".into(),
        ..Default::default()
    })
    .await
    .context("RecordConsent (return planning)")?;
    let plan = at
        .propose_return(w::ProposeReturnRequest {
            case_id: case_id.to_owned(),
            destination: destination.to_string(),
            hearing_pending: false,
            compensation_pending: true,
            ..Default::default()
        })
        .await
        .context("ProposeReturn")?
        .into_inner();
    let id = plan.return_id.clone();
    let arrived = wait_return(&ro, &id, w::ReturnStatus::Requested).await?;
    writeln!(
        out,
        "== what crossed the border ({origin} -> {destination}) for the return:"
    )?;
    let held = sp
        .get_case(w::GetCaseRequest {
            case_id: case_id.to_owned(),
        })
        .await
        .context("GetCase")?
        .into_inner();
    table::side_by_side(
        out,
        &format!("{origin} holds"),
        &table::case_rows(&held),
        &format!("{destination} received"),
        &table::disclosed_rows(&arrived.disclosed.clone().unwrap_or_default()),
    )?;
    ro.respond_to_return(w::RespondToReturnRequest {
        return_id: id.clone(),
        response: w::ReturnResponse::ConfirmReception as i32,
        details: "a case worker of a partner NGO meets her at arrivals".into(),
        ..Default::default()
    })
    .await
    .context("RespondToReturn")?;
    wait_return(&at, &id, w::ReturnStatus::ReceptionConfirmed).await?;
    let travel_at = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 7 * 86_400,
        nanos: 0,
    };
    at.schedule_return(w::ScheduleReturnRequest {
        return_id: id.clone(),
        travel_at: Some(travel_at),
        details: "accompanied flight".into(),
        ..Default::default()
    })
    .await
    .context("ScheduleReturn")?;
    wait_return(&ro, &id, w::ReturnStatus::Scheduled).await?;
    at.record_travel(w::RecordTravelRequest {
        return_id: id.clone(),
        ..Default::default()
    })
    .await
    .context("RecordTravel")?;
    wait_return(&ro, &id, w::ReturnStatus::Travelled).await?;
    ro.confirm_arrival(w::ConfirmArrivalRequest {
        return_id: id.clone(),
        details: "met at arrivals".into(),
        ..Default::default()
    })
    .await
    .context("ConfirmArrival")?;
    wait_return(&at, &id, w::ReturnStatus::Arrived).await?;
    ro.record_follow_up(w::RecordFollowUpRequest {
        return_id: id.clone(),
        notes: "first month: housing and training".into(),
        ..Default::default()
    })
    .await
    .context("RecordFollowUp")?;
    let at_view = wait_return(&at, &id, w::ReturnStatus::FollowUp).await?;
    let ro_view = ro
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: id.clone(),
        })
        .await?
        .into_inner();
    writeln!(
        out,
        "   {origin} sees return {id}: {} (compensation pending: {})",
        return_status_name(at_view.status),
        at_view.compensation_pending
    )?;
    writeln!(
        out,
        "   {destination} sees return {id}: {}",
        return_status_name(ro_view.status)
    )?;
    Ok((at_view, ro_view))
}

/// Waits until `c`'s view of alert `id` stands at `status`.
async fn wait_alert(
    c: &SafetyServiceClient<Channel>,
    id: &str,
    status: w::SafetyAlertStatus,
) -> Result<w::SafetyAlert> {
    wait_for(
        "the safety alert to move on",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let id = id.to_owned();
            async move {
                let a = c
                    .get_safety_alert(w::GetSafetyAlertRequest { alert_id: id })
                    .await;
                Ok(a.ok()
                    .map(|a| a.into_inner())
                    .filter(|a| a.status == status as i32))
            }
        },
    )
    .await
}

/// The offender is released in `destination`, where the victim now lives: the prosecution
/// in `origin` raises a safety alert; `destination`, which holds copies of the case, gets it
/// under its own reference with a task, and acknowledges it.
async fn safety_story(
    dir: &Path,
    origin: NodeId,
    destination: NodeId,
    case_id: &str,
    out: &mut impl Write,
) -> Result<(w::SafetyAlert, w::SafetyAlert)> {
    let mut ja =
        SafetyServiceClient::new(client(dir, origin, Role::JudicialAuthority, false).await?);
    let mut fp = SafetyServiceClient::new(client(dir, destination, Role::FocalPoint, false).await?);
    writeln!(
        out,
        "== {origin}: the trafficker is released in {destination}; the prosecutor raises a safety alert"
    )?;
    let effective = time::OffsetDateTime::now_utc().date();
    let raised = ja
        .raise_safety_alert(w::RaiseSafetyAlertRequest {
            case_id: case_id.to_owned(),
            country: destination.to_string(),
            kind: w::SafetyAlertKind::Release as i32,
            effective_on: trm_core::model::format_date(effective),
            ..Default::default()
        })
        .await
        .context("RaiseSafetyAlert")?
        .into_inner();
    let id = raised.alert_id.clone();
    // The prosecutor does not see where the case was sent; the focal point does.
    let seen = SafetyServiceClient::new(client(dir, origin, Role::FocalPoint, false).await?)
        .get_safety_alert(w::GetSafetyAlertRequest {
            alert_id: id.clone(),
        })
        .await
        .context("GetSafetyAlert")?
        .into_inner();
    let recipients: Vec<&str> = seen.recipients.iter().map(|r| r.node_id.as_str()).collect();
    writeln!(
        out,
        "   alert {id} sent to every node holding a copy: {}",
        recipients.join(", ")
    )?;
    let arrived = wait_alert(&fp, &id, w::SafetyAlertStatus::Delivered).await?;
    writeln!(
        out,
        "== what crossed the border ({origin} -> {destination}) for the alert: the case only by reference {}",
        arrived.case_ref
    )?;
    writeln!(
        out,
        "== {destination}: the focal point acknowledges the alert and plans protection"
    )?;
    let at_destination = fp
        .acknowledge_safety_alert(w::AcknowledgeSafetyAlertRequest {
            alert_id: id.clone(),
            ..Default::default()
        })
        .await
        .context("AcknowledgeSafetyAlert")?
        .into_inner();
    let at_origin = wait_alert(&ja, &id, w::SafetyAlertStatus::Acknowledged).await?;
    writeln!(
        out,
        "   {origin} sees alert {id}: acknowledged; a return of the case to {destination} now waits for a new risk assessment"
    )?;
    Ok((at_origin, at_destination))
}

/// Waits until `c`'s view of claim `id` stands at `status`.
async fn wait_claim(
    c: &RemediesServiceClient<Channel>,
    id: &str,
    status: w::ClaimStatus,
) -> Result<w::Claim> {
    wait_for("the claim to move on", Duration::from_secs(60), || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let got = c.get_claim(w::GetClaimRequest { claim_id: id }).await;
            Ok(got
                .ok()
                .map(|c| c.into_inner())
                .filter(|c| c.status == status as i32))
        }
    })
    .await
}

/// The victim claims compensation before the court in `destination` that tries the
/// trafficker: with her consent for legal remedies (her name listed: a payment needs it),
/// the claim travels there; the forum takes it under review, and a return home or the
/// referral's end never closes it.
async fn claim_story(
    dir: &Path,
    origin: NodeId,
    destination: NodeId,
    case_id: &str,
    out: &mut impl Write,
) -> Result<w::Claim> {
    let mut sp = referrals(dir, origin, Role::ServiceProvider).await?;
    let mut filer =
        RemediesServiceClient::new(client(dir, origin, Role::ServiceProvider, false).await?);
    let mut forum =
        RemediesServiceClient::new(client(dir, destination, Role::FocalPoint, false).await?);
    writeln!(
        out,
        "== {origin}: the victim claims compensation before the court in {destination}"
    )?;
    sp.record_consent(w::RecordConsentRequest {
        case_id: case_id.to_owned(),
        purposes: vec![w::Purpose::LegalRemedies as i32],
        recipients: vec![destination.to_string()],
        informed: true,
        information_language: "ro".into(),
        categories: vec![
            w::DataCategory::Identity as i32,
            w::DataCategory::Demographics as i32,
            w::DataCategory::Proceedings as i32,
        ],
        ..Default::default()
    })
    .await
    .context("RecordConsent (legal remedies)")?;
    let claim = filer
        .file_claim(w::FileClaimRequest {
            case_id: case_id.to_owned(),
            kind: w::ClaimKind::CriminalCompensation as i32,
            forum_country: destination.to_string(),
            ..Default::default()
        })
        .await
        .context("FileClaim")?
        .into_inner();
    let id = claim.claim_id.clone();
    let arrived = wait_claim(&forum, &id, w::ClaimStatus::Filed).await?;
    writeln!(
        out,
        "== what crossed the border ({origin} -> {destination}) for the claim: her name for the payment, nothing of her needs or exploitation"
    )?;
    table::side_by_side(
        out,
        &format!("{origin} holds"),
        &table::case_rows(
            &sp.get_case(w::GetCaseRequest {
                case_id: case_id.to_owned(),
            })
            .await
            .context("GetCase")?
            .into_inner(),
        ),
        &format!("{destination} received"),
        &table::disclosed_rows(&arrived.disclosed.clone().unwrap_or_default()),
    )?;
    forum
        .update_claim(w::UpdateClaimRequest {
            claim_id: id.clone(),
            status: w::ClaimStatus::UnderReview as i32,
            reason: "listed for the sentencing hearing".into(),
            ..Default::default()
        })
        .await
        .context("UpdateClaim")?;
    wait_claim(&filer, &id, w::ClaimStatus::UnderReview).await?;
    writeln!(
        out,
        "   {origin} sees claim {id}: under review in {destination} (a return or the referral's end never closes it)"
    )?;
    let at_forum = forum
        .get_claim(w::GetClaimRequest { claim_id: id })
        .await
        .context("GetClaim")?
        .into_inner();
    Ok(at_forum)
}
