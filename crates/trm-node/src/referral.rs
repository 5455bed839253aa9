//! `ReferralService`: victim records, consent and referrals, for service providers and focal
//! points. Every read of a victim record is audited; every change commits together with its
//! audit entry and, when something crosses a border, its outbound envelope.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};
use trm_core::{
    consent::Consent,
    ids::{OrgId, Principal, Role},
    model::{CaseRecord, Purpose},
    referral::{next, Direction, ReferralEvent, ReferralRecord, ReferralStatus},
    FieldError, Guard, GuardError,
};
use trm_federation::outbox;
use trm_proto::{
    convert,
    v1::{self as w, envelope_body::Payload, referral_service_server::ReferralService},
};
use trm_store::{audit::AuditRecord, Subject, TreeName, Tx, TxFail};
use uuid::Uuid;

use crate::{
    authz::{self, actor, require, require_org, CASE_ROLES},
    ctx::{consents_of, load_case, today, Ctx, TxResult},
    disclosure,
    error::ApiError,
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

fn load_referral(tx: &Tx<'_>, id: &Uuid) -> TxResult<ReferralRecord> {
    tx.get_sealed::<ReferralRecord>(TreeName::Referrals, id.as_bytes())?
        .ok_or(TxFail::Abort(ApiError::NotFound("referral")))
}

impl Referrals {
    /// Sends a referral status change to the other node, with the audit entry, atomically.
    fn update_referral(
        &self,
        tx: &Tx<'_>,
        p: &Principal,
        id: &Uuid,
        event: ReferralEvent,
        reason: &str,
        assign: Option<&OrgId>,
    ) -> TxResult<ReferralRecord> {
        let mut r = load_referral(tx, id)?;
        let me = self.ctx.id;
        let at_destination = r.direction(me) == Direction::Incoming;
        if !event.allowed_for(at_destination) {
            return Err(ApiError::Denied(
                "only the destination answers or assigns a referral".into(),
            )
            .into());
        }
        if p.role != Role::FocalPoint {
            require_org(p, r.organisation.as_ref())?;
        }
        r.status = next(r.status, event).map_err(ApiError::from)?;
        r.status_reason = reason.to_owned();
        r.updated_at = OffsetDateTime::now_utc();
        if let Some(org) = assign {
            r.organisation = Some(org.clone());
        }
        tx.put_sealed(TreeName::Referrals, id.as_bytes(), &r)?;
        let peer = r.peer(me);
        let update = w::ReferralUpdate {
            referral_id: id.to_string(),
            status: convert::referral_status_to_wire(r.status) as i32,
            reason: reason.to_owned(),
        };
        outbox::enqueue(
            tx,
            &self.ctx.identity.current(),
            me,
            peer,
            outbox::About {
                id: &id.to_string(),
                sealed_under: &Subject::of(TreeName::Referrals, id.as_bytes()),
            },
            &r.disclosed.case_ref,
            Payload::ReferralUpdate(update),
        )?;
        tx.audit(AuditRecord::new(
            actor(p),
            "referral.update",
            id.to_string(),
            r.status.as_str(),
        ))?;
        Ok(r)
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
        let new = convert::new_case(request.get_ref(), today()).map_err(ApiError::from)?;
        let case = CaseRecord {
            case_id: Uuid::now_v7(),
            person: new.person,
            needs: new.needs,
            exploitation: new.exploitation,
            child: new.child,
            identified_on: new.identified_on.unwrap_or_else(today),
            organisation: p.org.clone(),
            created_at: OffsetDateTime::now_utc(),
        };
        self.ctx
            .commit(|tx| {
                tx.put_sealed(TreeName::Cases, case.case_id.as_bytes(), &case)?;
                tx.audit(AuditRecord::new(
                    actor(&p),
                    "case.create",
                    case.case_id.to_string(),
                    "ok",
                ))?;
                Ok(())
            })
            .await?;
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
        let id = convert::id("case_id", &request.get_ref().case_id).map_err(ApiError::from)?;
        let case = self
            .ctx
            .store
            .get_sealed::<CaseRecord>(TreeName::Cases, id.as_bytes())
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
        let all = self
            .ctx
            .store
            .scan_sealed::<CaseRecord>(TreeName::Cases, b"")
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|c| p.role == Role::FocalPoint || c.organisation == p.org);
        let (cases, next_page_token) = page.take(all, |c| c.case_id.to_string());
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
        let input = convert::consent_input(request.get_ref(), today()).map_err(ApiError::from)?;
        let consent = Consent {
            consent_id: Uuid::now_v7(),
            case_id: input.case_id,
            purposes: input.purposes,
            recipients: input.recipients,
            expires_on: input.expires_on,
            informed: true,
            information_language: input.information_language,
            categories: input.categories,
            recorded_at: OffsetDateTime::now_utc(),
            withdrawn_at: None,
            disclosures: vec![],
        };
        self.ctx
            .commit(|tx| {
                let case = load_case(tx, &consent.case_id)?;
                require_org(&p, Some(&case.organisation))?;
                let mut consents = consents_of(tx, &consent.case_id)?;
                if consents.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "too many consents recorded for this case",
                    ))
                    .into());
                }
                consents.push(consent.clone());
                tx.put_json(TreeName::Consents, consent.case_id.as_bytes(), &consents)?;
                let purposes: Vec<&str> = consent.purposes.iter().map(|p| p.as_str()).collect();
                tx.audit(
                    AuditRecord::new(
                        actor(&p),
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
                Ok(())
            })
            .await?;
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
        let case_id = convert::id("case_id", &req.case_id).map_err(ApiError::from)?;
        let consent_id = convert::id("consent_id", &req.consent_id).map_err(ApiError::from)?;
        let me = self.ctx.id;
        let (consent, requested) = self
            .ctx
            .commit(|tx| {
                let case = load_case(tx, &case_id)?;
                require_org(&p, Some(&case.organisation))?;
                let mut consents = consents_of(tx, &case_id)?;
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
                tx.put_json(TreeName::Consents, case_id.as_bytes(), &consents)?;
                let mut requested = 0;
                for rid in &withdrawn.disclosures {
                    requested += usize::from(crate::erasure::request(&self.ctx, tx, rid, false)?);
                }
                tx.audit(
                    AuditRecord::new(actor(&p), "consent.withdraw", consent_id.to_string(), "ok")
                        .detail(format!("case={case_id} erasure_requests={requested}")),
                )?;
                Ok((withdrawn, requested))
            })
            .await?;
        info!(consent_id = %consent_id, node = %me, erasure_requests = requested, "consent withdrawn");
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
        let case_id = convert::id("case_id", &req.case_id).map_err(ApiError::from)?;
        let destination = disclosure::peer_destination(&self.ctx, "destination", &req.destination)?;
        let requested_services = convert::enums("requested_services", &req.requested_services)
            .map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        let referral_id = Uuid::now_v7();
        let me = self.ctx.id;
        let record = self
            .ctx
            .commit(|tx| {
                let d = disclosure::prepare(
                    tx,
                    &p,
                    &case_id,
                    Purpose::ReferralAssistance,
                    destination,
                    |_, _| Ok(()),
                )?;
                let now = OffsetDateTime::now_utc();
                let record = ReferralRecord {
                    referral_id,
                    origin: me,
                    destination,
                    status: next(ReferralStatus::Draft, ReferralEvent::Send)
                        .map_err(ApiError::from)?,
                    disclosed: d.disclosed.clone(),
                    requested_services: requested_services.clone(),
                    case_id: Some(case_id),
                    organisation: Some(d.case.organisation.clone()),
                    status_reason: String::new(),
                    consent_ids: d.consent_ids.clone(),
                    erasure_requested: false,
                    erasure_confirmed: false,
                    created_at: now,
                    updated_at: now,
                };
                tx.put_sealed(TreeName::Referrals, referral_id.as_bytes(), &record)?;
                let offer = w::ReferralOffer {
                    referral_id: referral_id.to_string(),
                    disclosed: Some(convert::disclosed_to_wire(&record.disclosed)),
                    requested_services: convert::enums_to_wire(&requested_services),
                };
                d.send(
                    tx,
                    &self.ctx,
                    &p,
                    referral_id,
                    TreeName::Referrals,
                    Payload::ReferralOffer(offer),
                    "referral.submit",
                    "sent",
                    &format!("reason_len={}", reason.len()),
                )?;
                Ok(record)
            })
            .await?;
        info!(referral_id = %referral_id, to = %destination, "referral submitted");
        Ok(Response::new(convert::referral_to_wire(&record)))
    }

    #[instrument(skip_all)]
    async fn get_referral(
        &self,
        request: Request<w::GetReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read referrals")?;
        let id =
            convert::id("referral_id", &request.get_ref().referral_id).map_err(ApiError::from)?;
        let r = self
            .ctx
            .store
            .get_sealed::<ReferralRecord>(TreeName::Referrals, id.as_bytes())
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
        let me = self.ctx.id;
        let all = self
            .ctx
            .store
            .scan_sealed::<ReferralRecord>(TreeName::Referrals, b"")
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|r| r.direction(me) == direction)
            .filter(|r| require_org(&p, r.organisation.as_ref()).is_ok());
        let (referrals, next_page_token) = page.take(all, |r| r.referral_id.to_string());
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
        let id = convert::id("referral_id", &req.referral_id).map_err(ApiError::from)?;
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
        let r = self
            .ctx
            .commit(|tx| self.update_referral(tx, &p, &id, event, &reason, None))
            .await?;
        Ok(Response::new(convert::referral_to_wire(&r)))
    }

    #[instrument(skip_all)]
    async fn assign_case(
        &self,
        request: Request<w::AssignCaseRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "assign cases")?;
        let req = request.get_ref();
        let id = convert::id("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let org = OrgId::parse("organisation", &req.organisation).map_err(ApiError::from)?;
        let r = self
            .ctx
            .commit(|tx| self.update_referral(tx, &p, &id, ReferralEvent::Assign, "", Some(&org)))
            .await?;
        Ok(Response::new(convert::referral_to_wire(&r)))
    }

    #[instrument(skip_all)]
    async fn close_referral(
        &self,
        request: Request<w::CloseReferralRequest>,
    ) -> Result<Response<w::Referral>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "close referrals")?;
        let req = request.get_ref();
        let id = convert::id("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        let r = self
            .ctx
            .commit(|tx| self.update_referral(tx, &p, &id, ReferralEvent::Close, &reason, None))
            .await?;
        Ok(Response::new(convert::referral_to_wire(&r)))
    }

    #[instrument(skip_all)]
    async fn erase_case(
        &self,
        request: Request<w::EraseCaseRequest>,
    ) -> Result<Response<w::EraseCaseResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "erase victim records")?;
        let req = request.get_ref();
        let case_id = convert::id("case_id", &req.case_id).map_err(ApiError::from)?;
        let reason = convert::short("reason", &req.reason, false).map_err(ApiError::from)?;
        let requested = self
            .ctx
            .commit(|tx| {
                let case = load_case(tx, &case_id)?;
                require_org(&p, Some(&case.organisation))?;
                let mut consents = consents_of(tx, &case_id)?;
                let now = OffsetDateTime::now_utc();
                let mut disclosures = Vec::new();
                for c in consents.iter_mut() {
                    c.withdrawn_at.get_or_insert(now);
                    disclosures.extend(c.disclosures.iter().copied());
                }
                disclosures.sort();
                disclosures.dedup();
                tx.put_json(TreeName::Consents, case_id.as_bytes(), &consents)?;
                let mut requested: u32 = 0;
                for rid in &disclosures {
                    requested += u32::from(crate::erasure::request(&self.ctx, tx, rid, true)?);
                }
                // Crypto-shredding: without its data key the sealed record is gone for good.
                tx.shred(&Subject::of(TreeName::Cases, case_id.as_bytes()))?;
                tx.remove(TreeName::Cases, case_id.as_bytes())?;
                tx.audit(
                    AuditRecord::new(actor(&p), "case.erase", case_id.to_string(), "ok").detail(
                        format!("erasure_requests={requested} reason_len={}", reason.len()),
                    ),
                )?;
                Ok(requested)
            })
            .await?;
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
        let id = convert::id("referral_id", &req.referral_id).map_err(ApiError::from)?;
        let reason = convert::text("reason", &req.reason).map_err(ApiError::from)?;
        let r = self
            .ctx
            .commit(|tx| self.update_referral(tx, &p, &id, ReferralEvent::Withdraw, &reason, None))
            .await?;
        Ok(Response::new(convert::referral_to_wire(&r)))
    }
}
