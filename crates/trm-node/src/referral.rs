//! `ReferralService`: victim records, consent and referrals, for service providers and focal
//! points. Every read of a victim record is audited; every change commits together with its
//! audit entry and, when something crosses a border, its outbound envelope. Each handler
//! reads as parse -> authorize -> act; a referral's steps go through the one lifecycle
//! pipeline ([`crate::lifecycle::step`]).

use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::{self, Action},
    consent::Consent,
    exchange::Erasure,
    ids::{CaseId, ConsentId, Principal, ReferralId, Shared},
    messages::PeerMessage,
    model::{CaseRecord, Identification, Purpose, Residence},
    referral::{next, ReferralEvent, ReferralRecord, ReferralStatus},
    returns::check_residence,
    tasks::{Task, TaskKind},
    FieldError, Guard, GuardError,
};
use trm_proto::{
    command::{
        EraseCase, Get, ListConsents, Paged, RecordIdentification, RecordResidenceStatus,
        ResolveDuplicate, SubmitReferral, UpdateCase, WithdrawConsent,
    },
    convert,
    v1::{self as w, referral_service_server::ReferralService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor},
    ctx::{today, Ctx, TxResult},
    disclosure::{self, load_case},
    drafts::UsedDraft,
    error::{ApiError, ApiResult},
    lifecycle,
    rpc::{self, Remembered},
};

/// The referral service of one node.
#[derive(Debug, Clone)]
pub struct Referrals {
    ctx: Ctx,
}

impl Referrals {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

impl rpc::Replay for ReferralRecord {
    const READ: Option<&'static str> = Some("referral.read");
    fn key(&self) -> String {
        self.referral_id.to_string()
    }
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self> {
        rpc::record_of(ctx, key)
    }
}

impl rpc::ToWire for ReferralRecord {
    type Wire = trm_proto::v1::Referral;
    fn to_wire(&self) -> Self::Wire {
        trm_proto::convert::referral_to_wire(self)
    }
}

impl lifecycle::StepRules for ReferralRecord {
    /// Accepting or declining answers the incoming referral's task.
    fn after_step(&self, tx: &mut Tx<'_>, event: ReferralEvent) -> TxResult<()> {
        if matches!(event, ReferralEvent::Accept | ReferralEvent::Decline) {
            tx.close_task(TaskKind::AnswerReferral, self.referral_id.uuid())?;
        }
        Ok(())
    }
}

/// Keeps the task of a case's expiring permit: due on its last day, in the queue from
/// `notice_days` before; none without a `valid_until`.
fn residence_task(tx: &mut Tx<'_>, case: &CaseRecord, notice_days: u32) -> TxResult<()> {
    tx.close_task(TaskKind::ResidenceExpiring, case.case_id.uuid())?;
    let Some(until) = case.residence.as_ref().and_then(|r| r.valid_until) else {
        return Ok(());
    };
    let due_at = until.midnight().assume_utc();
    let now = OffsetDateTime::now_utc();
    let mut task = Task::due_in(
        TaskKind::ResidenceExpiring,
        case.case_id.uuid(),
        due_at - now,
        now,
    );
    task.due_at = due_at;
    task.shows_from = due_at - time::Duration::days(i64::from(notice_days));
    task.organisation = Some(case.organisation.clone());
    tx.open_task(&task)?;
    Ok(())
}

crate::grpc_service!(Referrals => ReferralService {
    create_case(w::CreateCaseRequest) -> w::Case;
    update_case(w::UpdateCaseRequest) -> w::Case;
    resolve_possible_duplicate(w::ResolvePossibleDuplicateRequest) -> w::ResolvePossibleDuplicateResponse;
    get_case(w::GetCaseRequest) -> w::Case;
    list_cases(w::ListCasesRequest) -> w::ListCasesResponse;
    record_consent(w::RecordConsentRequest) -> w::Consent;
    withdraw_consent(w::WithdrawConsentRequest) -> w::Consent;
    submit_referral(w::SubmitReferralRequest) -> w::Referral;
    erase_case(w::EraseCaseRequest) -> w::EraseCaseResponse;
    list_consents(w::ListConsentsRequest) -> w::ListConsentsResponse;
    record_identification(w::RecordIdentificationRequest) -> w::Case;
    record_residence_status(w::RecordResidenceStatusRequest) -> w::Case;
} steps of ReferralRecord {
    respond_to_referral(w::RespondToReferralRequest) -> w::Referral = AnswerReferral;
    assign_case(w::AssignCaseRequest) -> w::Referral = AssignCase;
    close_referral(w::CloseReferralRequest) -> w::Referral = CloseReferral;
    withdraw_referral(w::WithdrawReferralRequest) -> w::Referral = WithdrawReferral;
} reads of ReferralRecord {
    get get_referral(w::GetReferralRequest) -> w::Referral;
    list list_referrals(w::ListReferralsRequest) -> w::ListReferralsResponse { referrals };
});

/// Refuses `p` a case of another organisation.
fn owns(p: &Principal, case: &CaseRecord) -> ApiResult<()> {
    Ok(access::require_owner(p, Some(&case.organisation))?)
}

impl Referrals {
    /// Returns the case as `p` sees it: with its consents for a role that reads victim
    /// records; for any other (an immigration authority recording residence status) its
    /// status only: id, organisation, dates, identification and residence, never the
    /// victim's person, needs, exploitation, child data or consents.
    fn case_out(&self, p: &Principal, case: &CaseRecord) -> ApiResult<w::Case> {
        let days = self.ctx.reflection_period_days;
        if access::require(p, Action::ReadCase).is_ok() {
            let consents = self.ctx.store.consents(case.case_id)?;
            Ok(convert::case_to_wire(case, &consents, days))
        } else {
            Ok(w::Case {
                person: None,
                needs: None,
                exploitation: None,
                child: None,
                ..convert::case_to_wire(case, &[], days)
            })
        }
    }

    #[instrument(skip_all)]
    async fn create_case(&self, request: Request<w::CreateCaseRequest>) -> ApiResult<w::Case> {
        let (p, idem) = authz::caller(&request, Action::CreateCase)?;
        let new = convert::new_case(request.get_ref(), today())?;
        let case = CaseRecord {
            case_id: CaseId::new(),
            person: new.person,
            needs: new.needs,
            exploitation: new.exploitation,
            child: new.child,
            identified_on: new.identified_on.unwrap_or_else(today),
            organisation: p.org.clone(),
            created_at: OffsetDateTime::now_utc(),
            identifications: vec![],
            residence: None,
        };
        let who = actor(&p);
        let (owner, used) = (p.clone(), request.extensions().get::<UsedDraft>().copied());
        let case: CaseRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                tx.put_case(&case)?;
                if let Some(UsedDraft(id)) = used {
                    if tx.discard_draft(&owner, id)? {
                        tx.audit(AuditRecord::new(
                            who.clone(),
                            "draft.discard",
                            id.to_string(),
                            "used",
                        ))?;
                    }
                }
                tx.audit(AuditRecord::new(
                    who.clone(),
                    "case.create",
                    case.case_id.to_string(),
                    "ok",
                ))?;
                // One person, one case: a second case of the same person on this node is
                // still created, and its creator learns nothing of the other; the pair
                // waits for a focal point to confirm or dismiss it.
                for other in tx.index_person(&case)? {
                    tx.audit(
                        AuditRecord::new(
                            who.clone(),
                            "case.possible_duplicate",
                            case.case_id.to_string(),
                            "recorded",
                        )
                        .detail(format!("other={other}")),
                    )?;
                }
                Ok(case.clone())
            })
            .await?;
        info!(case_id = %case.case_id, org = %p.org, "case created");
        self.case_out(&p, &case)
    }

    #[instrument(skip_all)]
    async fn update_case(&self, request: Request<w::UpdateCaseRequest>) -> ApiResult<w::Case> {
        let (p, idem) = authz::caller(&request, Action::UpdateCase)?;
        let update = UpdateCase::try_from(request.get_ref())?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let case: CaseRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                let before = load_case(tx, update.case_id)?;
                owns(&who, &before)?;
                let mut case = before.clone();
                update.apply(&mut case);
                tx.update_case(&before, &case)?;
                // What changed reaches every copy its purpose and consent allow.
                let copies = disclosure::refresh_copies(&ctx, tx, &who, &case)?;
                tx.audit(
                    AuditRecord::new(actor(&who), "case.update", case.case_id.to_string(), "ok")
                        .detail(format!(
                            "fields={} copies_updated={copies}",
                            update.fields().join(",")
                        )),
                )?;
                Ok(case)
            })
            .await?;
        info!(case_id = %case.case_id, "case updated");
        self.case_out(&p, &case)
    }

    #[instrument(skip_all)]
    async fn resolve_possible_duplicate(
        &self,
        request: Request<w::ResolvePossibleDuplicateRequest>,
    ) -> ApiResult<w::ResolvePossibleDuplicateResponse> {
        let (p, idem) = authz::caller(&request, Action::ResolveDuplicate)?;
        let ResolveDuplicate {
            case_id,
            same_person,
        } = request.get_ref().try_into()?;
        let who = p.clone();
        let pairs: Remembered = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                owns(&who, &case)?;
                let pairs = tx.resolve_duplicates(&case, same_person)?;
                if pairs == 0 {
                    return Err(ApiError::NotFound("possible duplicate").into());
                }
                tx.close_task(TaskKind::PossibleDuplicate, case_id.uuid())?;
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "case.duplicate_resolved",
                        case_id.to_string(),
                        "ok",
                    )
                    .detail(format!("same_person={same_person} pairs={pairs}")),
                )?;
                Ok(Remembered(pairs.to_string()))
            })
            .await?;
        let pairs = pairs.0.parse().map_err(|_| {
            ApiError::Store("the remembered result of a resolution is not a count".into())
        })?;
        Ok(w::ResolvePossibleDuplicateResponse {
            case_id: case_id.to_string(),
            pairs,
        })
    }

    #[instrument(skip_all)]
    async fn get_case(&self, request: Request<w::GetCaseRequest>) -> ApiResult<w::Case> {
        let (p, Get(id)) = authz::reader(&request, Action::ReadCase)?;
        let case = self.ctx.store.case(id)?.ok_or(ApiError::NotFound("case"))?;
        owns(&p, &case)?;
        self.ctx
            .audit_read(&p, "case.read", id.to_string(), String::new())
            .await?;
        self.case_out(&p, &case)
    }

    #[instrument(skip_all)]
    async fn list_cases(
        &self,
        request: Request<w::ListCasesRequest>,
    ) -> ApiResult<w::ListCasesResponse> {
        let (p, Paged { page, after }) = authz::reader(&request, Action::ReadCase)?;
        let org = access::scope(&p);
        let read = self.ctx.store.cases(org, after, page.size + 1)?;
        let (cases, next_page_token) = rpc::cut(&page, read, |c| c.case_id);
        let ids: Vec<String> = cases.iter().map(|c| c.case_id.to_string()).collect();
        self.ctx
            .audit_read(&p, "case.list", "-".into(), ids.join(","))
            .await?;
        Ok(w::ListCasesResponse {
            cases: cases
                .iter()
                .map(|c| self.case_out(&p, c))
                .collect::<ApiResult<_>>()?,
            next_page_token,
        })
    }

    #[instrument(skip_all)]
    async fn record_consent(
        &self,
        request: Request<w::RecordConsentRequest>,
    ) -> ApiResult<w::Consent> {
        let (p, idem) = authz::caller(&request, Action::RecordConsent)?;
        let input = convert::consent_input(request.get_ref(), today())?;
        let consent = Consent {
            consent_id: ConsentId::new(),
            case_id: input.case_id,
            purposes: input.purposes,
            recipients: input.recipients,
            expires_on: input.expires_on,
            informed: true,
            information_language: input.information_language,
            categories: input.categories,
            recorded_at: OffsetDateTime::now_utc(),
            withdrawn_at: None,
        };
        let who = p.clone();
        let consent: Consent = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, consent.case_id)?;
                owns(&who, &case)?;
                let mut consents = tx.consents(consent.case_id)?;
                if consents.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "too many consents recorded for this case",
                    ))
                    .into());
                }
                consents.push(consent.clone());
                tx.put_consents(consent.case_id, &consents)?;
                let purposes: Vec<&str> = consent.purposes.iter().map(|p| p.as_str()).collect();
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "consent.record",
                        consent.consent_id.to_string(),
                        "ok",
                    )
                    .detail(format!(
                        "case={} purposes={}",
                        consent.case_id,
                        purposes.join(",")
                    )),
                )?;
                Ok(consent.clone())
            })
            .await?;
        Ok(convert::consent_to_wire(&consent))
    }

    #[instrument(skip_all)]
    async fn list_consents(
        &self,
        request: Request<w::ListConsentsRequest>,
    ) -> ApiResult<w::ListConsentsResponse> {
        let (
            p,
            ListConsents {
                case_id,
                paged: Paged { page, after },
            },
        ) = authz::reader(&request, Action::ReadCase)?;
        let case = self
            .ctx
            .store
            .case(case_id)?
            .ok_or(ApiError::NotFound("case"))?;
        owns(&p, &case)?;
        let all = self.ctx.store.consents(case_id)?;
        let start = match after {
            None => 0,
            Some(a) => all
                .iter()
                .position(|c| c.consent_id == a)
                .map(|i| i + 1)
                .ok_or_else(|| FieldError::new("page_token", "names no consent of this case"))?,
        };
        let read: Vec<Consent> = all.into_iter().skip(start).take(page.size + 1).collect();
        let (consents, next_page_token) = rpc::cut(&page, read, |c| c.consent_id);
        let ids: Vec<String> = consents.iter().map(|c| c.consent_id.to_string()).collect();
        self.ctx
            .audit_read(&p, "consent.list", case_id.to_string(), ids.join(","))
            .await?;
        Ok(w::ListConsentsResponse {
            consents: consents.iter().map(convert::consent_to_wire).collect(),
            next_page_token,
        })
    }

    #[instrument(skip_all)]
    async fn record_identification(
        &self,
        request: Request<w::RecordIdentificationRequest>,
    ) -> ApiResult<w::Case> {
        let (p, idem) = authz::caller(&request, Action::RecordIdentification)?;
        let RecordIdentification {
            case_id,
            stage,
            decided_on,
        } = request.get_ref().try_into()?;
        let who = p.clone();
        let case: CaseRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                let mut case = load_case(tx, case_id)?;
                owns(&who, &case)?;
                if case.identifications.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "too many identification decisions recorded for this case",
                    ))
                    .into());
                }
                case.identifications.push(Identification {
                    stage,
                    decided_on,
                    organisation: who.org.clone(),
                    recorded_at: OffsetDateTime::now_utc(),
                });
                tx.put_case(&case)?;
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "case.identification",
                        case_id.to_string(),
                        "ok",
                    )
                    .detail("fields=stage,decided_on"),
                )?;
                Ok(case)
            })
            .await?;
        info!(case_id = %case_id, "identification recorded");
        self.case_out(&p, &case)
    }

    #[instrument(skip_all)]
    async fn record_residence_status(
        &self,
        request: Request<w::RecordResidenceStatusRequest>,
    ) -> ApiResult<w::Case> {
        let (p, idem) = authz::caller(&request, Action::RecordResidenceStatus)?;
        let RecordResidenceStatus {
            case_id,
            status,
            valid_until,
        } = request.get_ref().try_into()?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let case: CaseRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                let mut case = load_case(tx, case_id)?;
                owns(&who, &case)?;
                case.residence = Some(Residence {
                    status,
                    valid_until,
                    recorded_at: OffsetDateTime::now_utc(),
                });
                tx.put_case(&case)?;
                residence_task(tx, &case, ctx.residence_notice_days)?;
                // A protection status stops every return of the case not yet under way.
                let halted = match check_residence(&case) {
                    Ok(()) => 0,
                    Err(why) => {
                        crate::returns::halt_open_returns(&ctx, tx, &who, case_id, None, &why)?
                    }
                };
                let fields = match valid_until {
                    Some(_) => "status,valid_until",
                    None => "status",
                };
                tx.audit(
                    AuditRecord::new(actor(&who), "case.residence", case_id.to_string(), "ok")
                        .detail(format!("fields={fields} returns_halted={halted}")),
                )?;
                Ok(case)
            })
            .await?;
        info!(case_id = %case_id, "residence status recorded");
        self.case_out(&p, &case)
    }

    #[instrument(skip_all)]
    async fn withdraw_consent(
        &self,
        request: Request<w::WithdrawConsentRequest>,
    ) -> ApiResult<w::Consent> {
        let (p, idem) = authz::caller(&request, Action::WithdrawConsent)?;
        let WithdrawConsent {
            case_id,
            consent_id,
        } = request.get_ref().try_into()?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let consent: Consent = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                owns(&who, &case)?;
                let mut consents = tx.consents(case_id)?;
                let consent = consents
                    .iter_mut()
                    .find(|c| c.consent_id == consent_id)
                    .ok_or(ApiError::NotFound("consent"))?;
                if consent.withdrawn_at.is_some() {
                    return Err(ApiError::from(GuardError::new(
                        Guard::Consent,
                        "consent is already withdrawn",
                    ))
                    .into());
                }
                consent.withdrawn_at = Some(OffsetDateTime::now_utc());
                let withdrawn = consent.clone();
                tx.put_consents(case_id, &consents)?;
                let mut requested = 0;
                for shared in tx.disclosures(consent_id)? {
                    requested += usize::from(crate::erasure::request(&ctx, tx, shared, false)?);
                }
                requested +=
                    crate::remedies::erase_attestations(&ctx, tx, case_id, Some(consent_id))?;
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "consent.withdraw",
                        consent_id.to_string(),
                        "ok",
                    )
                    .detail(format!("case={case_id} erasure_requests={requested}")),
                )?;
                Ok(withdrawn)
            })
            .await?;
        info!(consent_id = %consent_id, node = %self.ctx.id, "consent withdrawn");
        Ok(convert::consent_to_wire(&consent))
    }

    #[instrument(skip_all)]
    async fn submit_referral(
        &self,
        request: Request<w::SubmitReferralRequest>,
    ) -> ApiResult<w::Referral> {
        let (p, idem) = authz::caller(&request, Action::SubmitReferral)?;
        let SubmitReferral {
            case_id,
            destination,
            requested_services,
            reason,
        } = request.get_ref().try_into()?;
        disclosure::peer_destination(&self.ctx, "destination", destination)?;
        let referral_id = ReferralId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r: ReferralRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                // Whether a referral is open is said only to who may refer the case.
                let d = disclosure::prepare(
                    tx,
                    &who,
                    case_id,
                    Purpose::ReferralAssistance,
                    destination,
                    |tx, _| match tx.open_referral(case_id, destination)? {
                        Some(open) => Err(ApiError::Exists(format!(
                            "referral {open} of this case to {destination} is still open"
                        ))
                        .into()),
                        None => Ok(()),
                    },
                )?;
                let now = OffsetDateTime::now_utc();
                let record = ReferralRecord {
                    referral_id,
                    origin: ctx.id,
                    destination,
                    status: next(ReferralStatus::Draft, ReferralEvent::Send)
                        .map_err(ApiError::from)?,
                    disclosed: d.disclosed.clone(),
                    requested_services: requested_services.clone(),
                    case_id: Some(case_id),
                    organisation: Some(d.case.organisation.clone()),
                    status_reason: String::new(),
                    consent_ids: d.consent_ids.clone(),
                    erasure: Erasure::NotRequested,
                    created_at: now,
                    updated_at: now,
                };
                tx.put_referral(&record)?;
                let offer = PeerMessage::ReferralOffer {
                    referral_id,
                    disclosed: record.disclosed.clone(),
                    requested_services: requested_services.clone(),
                };
                d.send(
                    tx,
                    &ctx,
                    &who,
                    Shared::Referral(referral_id),
                    &offer,
                    "referral.submit",
                    "sent",
                    &format!("reason_len={}", reason.len()),
                )?;
                Ok(record)
            })
            .await?;
        info!(referral_id = %r.referral_id, to = %destination, "referral submitted");
        Ok(convert::referral_to_wire(&r))
    }

    #[instrument(skip_all)]
    async fn erase_case(
        &self,
        request: Request<w::EraseCaseRequest>,
    ) -> ApiResult<w::EraseCaseResponse> {
        let (p, idem) = authz::caller(&request, Action::EraseCase)?;
        let EraseCase { case_id, reason } = request.get_ref().try_into()?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let requested: Remembered = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                owns(&who, &case)?;
                let disclosures = disclosure::shared_of_case(tx, case_id)?;
                let mut consents = tx.consents(case_id)?;
                let now = OffsetDateTime::now_utc();
                for c in consents.iter_mut() {
                    c.withdrawn_at.get_or_insert(now);
                }
                tx.put_consents(case_id, &consents)?;
                let mut requested: u32 = 0;
                for shared in &disclosures {
                    requested += u32::from(crate::erasure::request(&ctx, tx, *shared, true)?);
                }
                let attested = crate::remedies::erase_attestations(&ctx, tx, case_id, None)?;
                requested += u32::try_from(attested).unwrap_or(u32::MAX);
                // Crypto-shredding: without its data key the sealed record is gone for good.
                tx.erase_case(&case)?;
                tx.close_tasks_of(case_id.uuid())?;
                tx.audit(
                    AuditRecord::new(actor(&who), "case.erase", case_id.to_string(), "ok").detail(
                        format!("erasure_requests={requested} reason_len={}", reason.len()),
                    ),
                )?;
                Ok(Remembered(requested.to_string()))
            })
            .await?;
        let erasure_requests = requested.0.parse().map_err(|_| {
            ApiError::Store("the remembered result of an erasure is not a count".into())
        })?;
        info!(case_id = %case_id, "case erased");
        Ok(w::EraseCaseResponse {
            case_id: case_id.to_string(),
            erasure_requests,
        })
    }
}
