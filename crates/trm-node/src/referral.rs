//! `ReferralService`: victim records, consent and referrals, for service providers and focal
//! points. Every read of a victim record is audited; every change commits together with its
//! audit entry and, when something crosses a border, its outbound envelope.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};
use trm_core::{
    consent::Consent,
    exchange::Erasure,
    ids::{CaseId, ConsentId, OrgId, Principal, ReferralId, Role, Shared},
    messages::Topic,
    model::{CaseRecord, Purpose},
    referral::{next, ReferralEvent, ReferralRecord, ReferralStatus},
    FieldError, Guard, GuardError,
};
use trm_proto::{
    convert,
    v1::{self as w, envelope_body::Payload, referral_service_server::ReferralService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor, require, require_org, CASE_ROLES},
    ctx::{today, Ctx, Done, Idempotent, TxResult},
    disclosure::{self, load_case},
    error::{ApiError, ApiResult},
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

fn load_referral(tx: &mut Tx<'_>, id: ReferralId) -> TxResult<ReferralRecord> {
    tx.referral(id)?
        .ok_or_else(|| ApiError::NotFound("referral").into())
}

/// Sends a referral status change to the other node, with the audit entry, atomically.
fn update_referral(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    id: ReferralId,
    event: ReferralEvent,
    reason: &str,
    assign: Option<&OrgId>,
) -> TxResult<ReferralRecord> {
    let mut r = load_referral(tx, id)?;
    let me = ctx.id;
    if !event.allowed_for(r.side(me)) {
        return Err(
            ApiError::Denied("only the destination answers or assigns a referral".into()).into(),
        );
    }
    if p.role != Role::FocalPoint {
        require_org(p, r.organisation.as_ref())?;
    }
    r.apply(event, reason, OffsetDateTime::now_utc())
        .map_err(ApiError::from)?;
    if let Some(org) = assign {
        r.organisation = Some(org.clone());
    }
    tx.put_referral(&r)?;
    let update = w::ReferralUpdate {
        referral_id: id.to_string(),
        status: convert::referral_status_to_wire(r.status) as i32,
        reason: reason.to_owned(),
    };
    ctx.announce(
        tx,
        p,
        r.peer(me),
        Topic::Referral(id),
        &r.disclosed.case_ref,
        Payload::ReferralUpdate(update),
        "referral.update",
        r.status.as_str(),
    )?;
    Ok(r)
}

impl Referrals {
    /// Returns the referral a retried request produced, as it stands now.
    async fn replayed_referral(&self, p: &Principal, key: &str) -> ApiResult<w::Referral> {
        let id = ReferralId::parse("request_id", key)?;
        let r = self
            .ctx
            .store
            .referral(id)?
            .ok_or(ApiError::NotFound("referral"))?;
        self.ctx
            .audit_read(p, "referral.read", id.to_string(), "replay".into())
            .await?;
        Ok(convert::referral_to_wire(&r))
    }

    /// Answers a retryable referral step.
    async fn step(
        &self,
        p: Principal,
        idem: Option<Idempotent>,
        id: ReferralId,
        event: ReferralEvent,
        reason: String,
        assign: Option<OrgId>,
    ) -> Result<Response<w::Referral>, Status> {
        let ctx = self.ctx.clone();
        let who = p.clone();
        let done = self
            .ctx
            .commit_once(
                idem,
                |r: &ReferralRecord| r.referral_id.to_string(),
                move |tx| update_referral(&ctx, tx, &who, id, event, &reason, assign.as_ref()),
            )
            .await?;
        Ok(Response::new(match done {
            Done::Now(r) => convert::referral_to_wire(&r),
            Done::Before(key) => self.replayed_referral(&p, &key).await?,
        }))
    }
}

#[tonic::async_trait]
impl ReferralService for Referrals {
    #[instrument(skip_all)]
    async fn create_case(
        &self,
        request: Request<w::CreateCaseRequest>,
    ) -> Result<Response<w::Case>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "create cases")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let new = convert::new_case(req, today()).map_err(ApiError::from)?;
        let case = CaseRecord {
            case_id: CaseId::new(),
            person: new.person,
            needs: new.needs,
            exploitation: new.exploitation,
            child: new.child,
            identified_on: new.identified_on.unwrap_or_else(today),
            organisation: p.org.clone(),
            created_at: OffsetDateTime::now_utc(),
        };
        let (record, who) = (case.clone(), actor(&p));
        let done = self
            .ctx
            .commit_once(
                idem,
                |id: &CaseId| id.to_string(),
                move |tx| {
                    tx.put_case(&record)?;
                    tx.audit(AuditRecord::new(
                        who.clone(),
                        "case.create",
                        record.case_id.to_string(),
                        "ok",
                    ))?;
                    Ok(record.case_id)
                },
            )
            .await?;
        let case = match done {
            Done::Now(_) => case,
            Done::Before(key) => {
                let id = CaseId::parse("request_id", &key).map_err(ApiError::from)?;
                self.ctx
                    .store
                    .case(id)
                    .map_err(ApiError::from)?
                    .ok_or(ApiError::NotFound("case"))?
            }
        };
        info!(case_id = %case.case_id, org = %p.org, "case created");
        Ok(Response::new(convert::case_to_wire(&case)))
    }

    #[instrument(skip_all)]
    async fn get_case(
        &self,
        request: Request<w::GetCaseRequest>,
    ) -> Result<Response<w::Case>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read victim records")?;
        let id = CaseId::parse("case_id", &request.get_ref().case_id).map_err(ApiError::from)?;
        let case = self
            .ctx
            .store
            .case(id)
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("case"))?;
        require_org(&p, Some(&case.organisation))?;
        self.ctx
            .audit_read(&p, "case.read", id.to_string(), String::new())
            .await?;
        Ok(Response::new(convert::case_to_wire(&case)))
    }

    #[instrument(skip_all)]
    async fn list_cases(
        &self,
        request: Request<w::ListCasesRequest>,
    ) -> Result<Response<w::ListCasesResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read victim records")?;
        let req = request.get_ref();
        let page = convert::page(req.page_size, &req.page_token).map_err(ApiError::from)?;
        let after = page
            .after
            .as_deref()
            .map(|t| CaseId::parse("page_token", t))
            .transpose()
            .map_err(ApiError::from)?;
        let org = (p.role != Role::FocalPoint).then_some(&p.org);
        let read = self
            .ctx
            .store
            .cases(org, after, page.size + 1)
            .map_err(ApiError::from)?;
        let (cases, next_page_token) = page.cut(read, |c| c.case_id.to_string());
        let ids: Vec<String> = cases.iter().map(|c| c.case_id.to_string()).collect();
        self.ctx
            .audit_read(&p, "case.list", "-".into(), ids.join(","))
            .await?;
        Ok(Response::new(w::ListCasesResponse {
            cases: cases.iter().map(convert::case_to_wire).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn record_consent(
        &self,
        request: Request<w::RecordConsentRequest>,
    ) -> Result<Response<w::Consent>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "record consent")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let input = convert::consent_input(req, today()).map_err(ApiError::from)?;
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
        let (record, who) = (consent.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |c: &Consent| format!("{}/{}", c.case_id, c.consent_id),
                move |tx| {
                    let case = load_case(tx, record.case_id)?;
                    require_org(&who, Some(&case.organisation))?;
                    let mut consents = tx.consents(record.case_id)?;
                    if consents.len() >= trm_core::limits::MAX_ITEMS {
                        return Err(ApiError::from(FieldError::new(
                            "case_id",
                            "too many consents recorded for this case",
                        ))
                        .into());
                    }
                    consents.push(record.clone());
                    tx.put_consents(record.case_id, &consents)?;
                    let purposes: Vec<&str> = record.purposes.iter().map(|p| p.as_str()).collect();
                    tx.audit(
                        AuditRecord::new(
                            actor(&who),
                            "consent.record",
                            record.consent_id.to_string(),
                            "ok",
                        )
                        .detail(format!(
                            "case={} purposes={}",
                            record.case_id,
                            purposes.join(",")
                        )),
                    )?;
                    Ok(record.clone())
                },
            )
            .await?;
        let consent = match done {
            Done::Now(c) => c,
            Done::Before(key) => consent_of(&self.ctx, &key)?,
        };
        Ok(Response::new(convert::consent_to_wire(&consent)))
    }

    #[instrument(skip_all)]
    async fn withdraw_consent(
        &self,
        request: Request<w::WithdrawConsentRequest>,
    ) -> Result<Response<w::Consent>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "withdraw consent")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let case_id = CaseId::parse("case_id", &req.case_id).map_err(ApiError::from)?;
        let consent_id = ConsentId::parse("consent_id", &req.consent_id).map_err(ApiError::from)?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |(c, _): &(Consent, usize)| format!("{}/{}", c.case_id, c.consent_id),
                move |tx| {
                    let case = load_case(tx, case_id)?;
                    require_org(&who, Some(&case.organisation))?;
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
                    tx.audit(
                        AuditRecord::new(
                            actor(&who),
                            "consent.withdraw",
                            consent_id.to_string(),
                            "ok",
                        )
                        .detail(format!("case={case_id} erasure_requests={requested}")),
                    )?;
                    Ok((withdrawn, requested))
                },
            )
            .await?;
        let consent = match done {
            Done::Now((c, requested)) => {
                info!(consent_id = %consent_id, node = %self.ctx.id, erasure_requests = requested, "consent withdrawn");
                c
            }
            Done::Before(key) => consent_of(&self.ctx, &key)?,
        };
        Ok(Response::new(convert::consent_to_wire(&consent)))
    }

    #[instrument(skip_all)]
    async fn submit_referral(
        &self,
        request: Request<w::SubmitReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "submit referrals")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let case_id = CaseId::parse("case_id", &req.case_id).map_err(ApiError::from)?;
        let destination = disclosure::peer_destination(&self.ctx, "destination", &req.destination)?;
        let requested_services = convert::enums("requested_services", &req.requested_services)
            .map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        let referral_id = ReferralId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |r: &ReferralRecord| r.referral_id.to_string(),
                move |tx| {
                    if let Some(open) = tx.open_referral(case_id, destination)? {
                        return Err(ApiError::Exists(format!(
                            "referral {open} of this case to {destination} is still open"
                        ))
                        .into());
                    }
                    let d = disclosure::prepare(
                        tx,
                        &who,
                        case_id,
                        Purpose::ReferralAssistance,
                        destination,
                        |_, _| Ok(()),
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
                    let offer = w::ReferralOffer {
                        referral_id: referral_id.to_string(),
                        disclosed: Some(convert::disclosed_to_wire(&record.disclosed)),
                        requested_services: convert::enums_to_wire(&requested_services),
                    };
                    d.send(
                        tx,
                        &ctx,
                        &who,
                        Shared::Referral(referral_id),
                        Payload::ReferralOffer(offer),
                        "referral.submit",
                        "sent",
                        &format!("reason_len={}", reason.len()),
                    )?;
                    Ok(record)
                },
            )
            .await?;
        let referral = match done {
            Done::Now(r) => {
                info!(referral_id = %r.referral_id, to = %destination, "referral submitted");
                convert::referral_to_wire(&r)
            }
            Done::Before(key) => self.replayed_referral(&p, &key).await?,
        };
        Ok(Response::new(referral))
    }

    #[instrument(skip_all)]
    async fn get_referral(
        &self,
        request: Request<w::GetReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read referrals")?;
        let id = ReferralId::parse("referral_id", &request.get_ref().referral_id)
            .map_err(ApiError::from)?;
        let r = self
            .ctx
            .store
            .referral(id)
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("referral"))?;
        require_org(&p, r.organisation.as_ref())?;
        self.ctx
            .audit_read(&p, "referral.read", id.to_string(), String::new())
            .await?;
        Ok(Response::new(convert::referral_to_wire(&r)))
    }

    #[instrument(skip_all)]
    async fn list_referrals(
        &self,
        request: Request<w::ListReferralsRequest>,
    ) -> Result<Response<w::ListReferralsResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read referrals")?;
        let req = request.get_ref();
        let direction = convert::direction("direction", req.direction).map_err(ApiError::from)?;
        let page = convert::page(req.page_size, &req.page_token).map_err(ApiError::from)?;
        let after = page
            .after
            .as_deref()
            .map(|t| ReferralId::parse("page_token", t))
            .transpose()
            .map_err(ApiError::from)?;
        let read = self
            .ctx
            .store
            .referrals(direction, after, page.size + 1, |org| {
                require_org(&p, org).is_ok()
            })
            .map_err(ApiError::from)?;
        let (referrals, next_page_token) = page.cut(read, |r| r.referral_id.to_string());
        let ids: Vec<String> = referrals
            .iter()
            .map(|r| r.referral_id.to_string())
            .collect();
        self.ctx
            .audit_read(&p, "referral.list", "-".into(), ids.join(","))
            .await?;
        Ok(Response::new(w::ListReferralsResponse {
            referrals: referrals.iter().map(convert::referral_to_wire).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn respond_to_referral(
        &self,
        request: Request<w::RespondToReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "answer incoming referrals")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = ReferralId::parse("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let event = match w::ReferralDecision::try_from(req.decision) {
            Ok(w::ReferralDecision::Accept) => ReferralEvent::Accept,
            Ok(w::ReferralDecision::Decline) => ReferralEvent::Decline,
            _ => {
                return Err(ApiError::from(FieldError::new(
                    "decision",
                    "must be REFERRAL_DECISION_ACCEPT or REFERRAL_DECISION_DECLINE",
                ))
                .into())
            }
        };
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        self.step(p, idem, id, event, reason, None).await
    }

    #[instrument(skip_all)]
    async fn assign_case(
        &self,
        request: Request<w::AssignCaseRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "assign cases")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = ReferralId::parse("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let org = OrgId::parse("organisation", &req.organisation).map_err(ApiError::from)?;
        self.step(p, idem, id, ReferralEvent::Assign, String::new(), Some(org))
            .await
    }

    #[instrument(skip_all)]
    async fn close_referral(
        &self,
        request: Request<w::CloseReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "close referrals")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = ReferralId::parse("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        self.step(p, idem, id, ReferralEvent::Close, reason, None)
            .await
    }

    #[instrument(skip_all)]
    async fn erase_case(
        &self,
        request: Request<w::EraseCaseRequest>,
    ) -> Result<Response<w::EraseCaseResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "erase victim records")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let case_id = CaseId::parse("case_id", &req.case_id).map_err(ApiError::from)?;
        let reason = convert::short("reason", &req.reason, false).map_err(ApiError::from)?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |n: &u32| n.to_string(),
                move |tx| {
                    let case = load_case(tx, case_id)?;
                    require_org(&who, Some(&case.organisation))?;
                    let mut consents = tx.consents(case_id)?;
                    let now = OffsetDateTime::now_utc();
                    let mut disclosures = Vec::new();
                    for c in consents.iter_mut() {
                        c.withdrawn_at.get_or_insert(now);
                        disclosures.extend(tx.disclosures(c.consent_id)?);
                    }
                    disclosures.sort();
                    disclosures.dedup();
                    tx.put_consents(case_id, &consents)?;
                    let mut requested: u32 = 0;
                    for shared in &disclosures {
                        requested += u32::from(crate::erasure::request(&ctx, tx, *shared, true)?);
                    }
                    // Crypto-shredding: without its data key the sealed record is gone for good.
                    tx.erase_case(&case)?;
                    tx.audit(
                        AuditRecord::new(actor(&who), "case.erase", case_id.to_string(), "ok")
                            .detail(format!(
                                "erasure_requests={requested} reason_len={}",
                                reason.len()
                            )),
                    )?;
                    Ok(requested)
                },
            )
            .await?;
        let requested = match done {
            Done::Now(n) => n,
            Done::Before(key) => key.parse().unwrap_or_default(),
        };
        info!(case_id = %case_id, "case erased");
        Ok(Response::new(w::EraseCaseResponse {
            case_id: case_id.to_string(),
            erasure_requests: requested,
        }))
    }

    #[instrument(skip_all)]
    async fn withdraw_referral(
        &self,
        request: Request<w::WithdrawReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "withdraw referrals")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = ReferralId::parse("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        self.step(p, idem, id, ReferralEvent::Withdraw, reason, None)
            .await
    }
}

/// Returns the consent a retried request produced (`case/consent`), as it stands now.
fn consent_of(ctx: &Ctx, key: &str) -> ApiResult<Consent> {
    let (case, consent) = key
        .split_once('/')
        .ok_or_else(|| ApiError::Store("request record corrupt".into()))?;
    let case = CaseId::parse("request_id", case)?;
    let consent = ConsentId::parse("request_id", consent)?;
    ctx.store
        .consents(case)?
        .into_iter()
        .find(|c| c.consent_id == consent)
        .ok_or(ApiError::NotFound("consent"))
}
