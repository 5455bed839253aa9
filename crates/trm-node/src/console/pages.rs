//! The console's pages. Each one calls a service in process with the browser's certificate
//! and renders what it answers (maud escapes every value). Labels in English and French,
//! by the browser's `Accept-Language`.

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Query, State},
    http::{header, request::Parts, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Router,
};
use maud::{html, Markup, DOCTYPE};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use trm_proto::v1::{
    self as w, referral_service_server::ReferralService, work_service_server::WorkService,
};

use super::Peer;
use crate::{authz::ClientCertificates, ctx::Ctx, referral::Referrals, work::Work};
use trm_core::{exchange::RecordKind, ids::Principal};

/// The console's routes.
pub fn routes(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(tasks))
        .route("/referrals", get(referrals))
        .route("/referrals/answer", post(answer_referral))
        .route("/returns/checklist", get(return_checklist))
        .route("/records", get(records))
        .route("/record", get(record))
        .route("/style.css", get(style))
        .merge(super::cases::routes())
        .with_state(ctx)
}

/// What a page's address may ask (ids and country codes only, never personal data); each
/// page reads what it needs.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Params {
    pub(super) case_id: Option<String>,
    pub(super) destination: Option<String>,
    pub(super) direction: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) id: Option<String>,
    pub(super) draft: Option<String>,
}

/// The labels of one language.
pub(super) struct Labels {
    pub(super) lang: &'static str,
    title: &'static str,
    tasks: &'static str,
    pub(super) cases: &'static str,
    incoming: &'static str,
    outgoing: &'static str,
    kind: &'static str,
    record: &'static str,
    due: &'static str,
    overdue: &'static str,
    nothing: &'static str,
    status: &'static str,
    from_to: &'static str,
    updated: &'static str,
    answer: &'static str,
    accept: &'static str,
    decline: &'static str,
    pub(super) refused: &'static str,
    pub(super) cross_site: &'static str,
    pub(super) too_many: &'static str,
    no_certificate: &'static str,
    how_to_get_one: &'static str,
    pub(super) guards: &'static str,
    case: &'static str,
    country: &'static str,
    check: &'static str,
    guard: &'static str,
    asks: &'static str,
    met: &'static str,
    missing: &'static str,
    returns: &'static str,
    referrals: &'static str,
    timeline: &'static str,
    when: &'static str,
    hearings: &'static str,
    alerts: &'static str,
    claims: &'static str,
    incoming_dir: &'static str,
    outgoing_dir: &'static str,
}

const EN: Labels = Labels {
    lang: "en",
    title: "TRM node console",
    tasks: "Work queue",
    cases: "Cases",
    incoming: "Incoming referrals",
    outgoing: "Outgoing referrals",
    kind: "Task",
    record: "Record",
    due: "Due (UTC)",
    overdue: "overdue",
    nothing: "Nothing waits.",
    status: "Status",
    from_to: "From, to",
    updated: "Changed (UTC)",
    answer: "Answer",
    accept: "Accept",
    decline: "Decline",
    refused: "Refused",
    cross_site: "Refused: a change must be made from this console's own pages, and a page \
                 opened from its own address or links.",
    too_many: "Too many requests from your certificate: wait a moment, then open the page again.",
    guards: "Return guards",
    case: "Case id",
    country: "Country of return (ISO code)",
    check: "Check",
    guard: "Guard",
    asks: "Asks for",
    met: "met",
    missing: "missing",
    returns: "Return plans",
    referrals: "Referrals",
    timeline: "Timeline on this node",
    when: "When (UTC)",
    hearings: "Hearings",
    alerts: "Safety alerts",
    claims: "Claims",
    incoming_dir: "received",
    outgoing_dir: "sent",
    no_certificate: "This console needs your client certificate",
    how_to_get_one: "Ask your node's operator for a client certificate of your role and \
                     organisation for a browser (trmctl client issue --p12: a .p12 file and \
                     its passphrase), import it into your browser, and open this page again. \
                     Without it nothing of the node is shown.",
};

const FR: Labels = Labels {
    lang: "fr",
    title: "Console du nœud TRM",
    tasks: "File de travail",
    cases: "Dossiers",
    incoming: "Orientations reçues",
    outgoing: "Orientations envoyées",
    kind: "Tâche",
    record: "Dossier",
    due: "Échéance (UTC)",
    overdue: "en retard",
    nothing: "Rien n'attend.",
    status: "Statut",
    from_to: "De, vers",
    updated: "Modifié (UTC)",
    answer: "Réponse",
    accept: "Accepter",
    decline: "Refuser",
    refused: "Refusé",
    cross_site: "Refusé : une modification doit être faite depuis les pages de cette \
                 console, et une page ouverte depuis son adresse ou ses liens.",
    too_many: "Trop de demandes de votre certificat : attendez un instant, puis rouvrez la page.",
    guards: "Garanties du retour",
    case: "Identifiant du dossier",
    country: "Pays de retour (code ISO)",
    check: "Vérifier",
    guard: "Garantie",
    asks: "Demande",
    met: "remplie",
    missing: "manquante",
    returns: "Plans de retour",
    referrals: "Orientations",
    timeline: "Chronologie sur ce nœud",
    when: "Quand (UTC)",
    hearings: "Auditions",
    alerts: "Alertes de sécurité",
    claims: "Demandes d'indemnisation",
    incoming_dir: "reçus",
    outgoing_dir: "envoyés",
    no_certificate: "Cette console demande votre certificat client",
    how_to_get_one: "Demandez à l'opérateur de votre nœud un certificat client de votre rôle \
                     et de votre organisation pour un navigateur (trmctl client issue --p12 : \
                     un fichier .p12 et sa phrase secrète), importez-le dans votre navigateur \
                     et rouvrez cette page. Sans lui, rien du nœud n'est montré.",
};

/// Returns the labels of the browser's language (French where it asks for it first).
pub(super) fn labels(headers: &HeaderMap) -> &'static Labels {
    let first = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start();
    if first.starts_with("fr") {
        &FR
    } else {
        &EN
    }
}

/// Wraps a page's body, with the console's navigation.
pub(super) fn page(l: &Labels, heading: &str, body: Markup) -> Html<String> {
    layout(l, heading, body, true)
}

/// Wraps a page's body, with the navigation or (for a browser that may see nothing)
/// without it.
fn layout(l: &Labels, heading: &str, body: Markup, nav: bool) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang=(l.lang) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (heading) " · " (l.title) }
                link rel="stylesheet" href="/style.css";
            }
            body {
                @if nav { header {
                    nav aria-label=(l.title) {
                        @for (href, label) in [
                            ("/", l.tasks),
                            ("/cases", l.cases),
                            ("/referrals?direction=incoming", l.incoming),
                            ("/referrals?direction=outgoing", l.outgoing),
                            ("/records?kind=returns", l.returns),
                            ("/records?kind=hearings", l.hearings),
                            ("/records?kind=alerts", l.alerts),
                            ("/records?kind=claims", l.claims),
                            ("/returns/checklist", l.guards),
                        ] {
                            a href=(href) { (label) }
                            " "
                        }
                    }
                } }
                main {
                    h1 { (heading) }
                    (body)
                }
            }
        }
    };
    Html(page.into_string())
}

/// The browser's certificate chain.
pub(super) type Certs = Arc<Vec<CertificateDer<'static>>>;

/// A browser [`super::admit`] let in, as the handlers take it: the labels of its language,
/// its certificate chain (passed on to the services) and who that certificate names.
pub(super) struct Browser {
    pub(super) l: &'static Labels,
    pub(super) certs: Certs,
    pub(super) who: Principal,
}

/// What [`super::admit`] found of a browser, left on the request for its handler.
#[derive(Clone)]
pub(super) struct Admitted {
    certs: Certs,
    who: Principal,
}

impl Admitted {
    /// The browser's own certificate (the chain's first, which `admitted` found).
    pub(super) fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certs.first()
    }
}

/// The certificate chain of the browser on the other end of `peer`, and who it names,
/// when it may use the console: a certificate of the node's client CA that names a role,
/// not revoked.
pub(super) fn admitted(ctx: &Ctx, peer: &Peer) -> Option<Admitted> {
    let certs = peer.certs.as_ref()?;
    let leaf = certs.first()?;
    let who = crate::authz::leaf(leaf.as_ref())?.principal()?;
    (!ctx.revocations.revokes(leaf.as_ref())).then(|| Admitted {
        certs: certs.clone(),
        who,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Browser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let l = labels(&parts.headers);
        match parts.extensions.get::<Admitted>() {
            Some(a) => Ok(Browser {
                l,
                certs: a.certs.clone(),
                who: a.who.clone(),
            }),
            None => Err(no_certificate(l)),
        }
    }
}

/// The page for a browser without a usable certificate: how to get one.
pub(super) fn no_certificate(l: &Labels) -> Response {
    let body = html! { p { (l.how_to_get_one) } };
    let page = layout(l, l.no_certificate, body, false);
    (StatusCode::UNAUTHORIZED, page).into_response()
}

/// The case and destination country a page asks about (`case_id`, `destination`, as its
/// query names them).
pub(super) fn asked(
    case_id: &str,
    destination: &str,
) -> Result<(trm_core::ids::CaseId, trm_core::ids::NodeId), tonic::Status> {
    let invalid = |e: trm_core::FieldError| tonic::Status::invalid_argument(e.to_string());
    let case_id = trm_core::ids::CaseId::parse("case_id", case_id).map_err(invalid)?;
    let destination = trm_proto::convert::country("destination", destination).map_err(invalid)?;
    Ok((case_id, destination))
}

/// A request to a service, made with the browser's certificate.
pub(super) fn request<T>(certs: &Certs, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.extensions_mut().insert(ClientCertificates(certs.clone()));
    r
}

/// The page of a service's refusal: its code and its message (which names fields and
/// guards, never personal data).
pub(super) fn refusal(l: &Labels, status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = html! { p role="alert" { (status.message()) } };
    (code, page(l, l.refused, body)).into_response()
}

/// Returns whether a list's `direction` parameter asks for what arrived (anything but
/// `outgoing`), and the direction to ask the service for.
fn direction_of(asked: Option<&str>) -> (bool, w::Direction) {
    match asked != Some("outgoing") {
        true => (true, w::Direction::Incoming),
        false => (false, w::Direction::Outgoing),
    }
}

/// Writes an instant as `YYYY-MM-DD HH:MM`.
pub(super) fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map(when_at)
        .unwrap_or_default()
}

/// Writes an instant as `YYYY-MM-DD HH:MM` (UTC).
pub(super) fn when_at(t: time::OffsetDateTime) -> String {
    format!(
        "{} {:02}:{:02}",
        trm_core::model::format_date(t.date()),
        t.hour(),
        t.minute()
    )
}

/// The enum's proto name without its prefix, in lower case with spaces.
pub(super) fn name_of(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// `GET /`: the work queue, due first, overdue marked.
async fn tasks(State(ctx): State<Ctx>, b: Browser) -> Response {
    let Browser { l, certs, .. } = b;
    let work = Work::new(ctx.clone());
    let list = match work
        .list_tasks(request(&certs, w::ListTasksRequest::default()))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return refusal(l, &s),
    };
    let body = html! {
        @if list.tasks.is_empty() {
            p { (l.nothing) }
        } @else {
            table {
                thead { tr { th scope="col" { (l.kind) } th scope="col" { (l.record) } th scope="col" { (l.due) } } }
                tbody {
                    @for t in &list.tasks {
                        tr class=[t.overdue.then_some("overdue")] {
                            td { (name_of(w::TaskKind::try_from(t.kind).unwrap_or_default().as_str_name(), "TASK_KIND_")) }
                            td { code { (t.record_id) } }
                            td {
                                (when(t.due_at.as_ref()))
                                @if t.overdue { " " strong { "(" (l.overdue) ")" } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(l, l.tasks, body).into_response()
}

/// `GET /referrals?direction=incoming|outgoing`: the referrals, with the answer to give to
/// an incoming one that waits.
async fn referrals(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, certs, .. } = b;
    let (incoming, direction) = direction_of(q.direction.as_deref());
    let service = Referrals::new(ctx.clone());
    let list = w::ListReferralsRequest {
        direction: direction as i32,
        page_size: 100,
        ..Default::default()
    };
    let found = match service.list_referrals(request(&certs, list)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refusal(l, &s),
    };
    let heading = if incoming { l.incoming } else { l.outgoing };
    let body = html! {
        @if found.referrals.is_empty() {
            p { (l.nothing) }
        } @else {
            table {
                thead { tr {
                    th scope="col" { (l.record) } th scope="col" { (l.from_to) }
                    th scope="col" { (l.status) } th scope="col" { (l.updated) }
                    @if incoming { th scope="col" { (l.answer) } }
                } }
                tbody {
                    @for r in &found.referrals {
                        tr {
                            td { a href={ "/record?kind=referrals&id=" (r.referral_id) } { code { (r.referral_id) } } }
                            td { (r.origin) " → " (r.destination) }
                            td { (name_of(w::ReferralStatus::try_from(r.status).unwrap_or_default().as_str_name(), "REFERRAL_STATUS_")) }
                            td { (when(r.updated_at.as_ref())) }
                            @if incoming {
                                td {
                                    @if r.status == w::ReferralStatus::Delivered as i32 {
                                        form method="post" action="/referrals/answer" {
                                            input type="hidden" name="referral_id" value=(r.referral_id);
                                            input type="hidden" name="request_id" value=(uuid::Uuid::new_v4().to_string());
                                            button type="submit" name="decision" value="accept" { (l.accept) }
                                            " "
                                            button type="submit" name="decision" value="decline" { (l.decline) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(l, heading, body).into_response()
}

#[derive(Debug, Deserialize)]
struct Answer {
    referral_id: String,
    decision: String,
    #[serde(default)]
    request_id: String,
}

/// `POST /referrals/answer`: accepts or declines an incoming referral (the service checks
/// who may, and a form sent twice changes nothing twice: its `request_id`).
async fn answer_referral(State(ctx): State<Ctx>, b: Browser, Form(a): Form<Answer>) -> Response {
    let Browser { l, certs, .. } = b;
    let decision = match a.decision.as_str() {
        "accept" => w::ReferralDecision::Accept,
        "decline" => w::ReferralDecision::Decline,
        _ => w::ReferralDecision::Unspecified,
    };
    let answer = w::RespondToReferralRequest {
        referral_id: a.referral_id,
        decision: decision as i32,
        reason: String::new(),
        request_id: a.request_id,
    };
    match Referrals::new(ctx)
        .respond_to_referral(request(&certs, answer))
        .await
    {
        Ok(_) => Redirect::to("/referrals?direction=incoming").into_response(),
        Err(s) => refusal(l, &s),
    }
}

/// `GET /returns/checklist?case_id=..&destination=..`: every guard of a return of the case
/// to that country, met or missing and why, before anyone proposes it.
async fn return_checklist(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, who, .. } = b;
    let form = html! {
        form method="get" action="/returns/checklist" {
            label for="case_id" { (l.case) } " "
            input id="case_id" name="case_id" required pattern="[0-9a-fA-F-]{36}" autocomplete="off" value=(q.case_id.clone().unwrap_or_default());
            " "
            label for="destination" { (l.country) } " "
            input id="destination" name="destination" required size="2" pattern="[A-Za-z]{2}" autocomplete="off" value=(q.destination.clone().unwrap_or_default());
            " "
            button type="submit" { (l.check) }
        }
    };
    let (Some(case_id), Some(destination)) = (q.case_id.as_deref(), q.destination.as_deref())
    else {
        return page(l, l.guards, form).into_response();
    };
    let (case_id, destination) = match asked(case_id, destination) {
        Ok(asked) => asked,
        Err(s) => return refusal(l, &s),
    };
    let list = match crate::returns::guard_checklist(&ctx, &who, case_id, destination).await {
        Ok(list) => list,
        Err(e) => return refusal(l, &tonic::Status::from(e)),
    };
    // Every guard met: what the plan will carry, and the way to propose it.
    let proposal = match list.iter().all(|g| g.refusal.is_none()) {
        false => None,
        true => {
            let purpose = trm_core::model::Purpose::ReturnPlanning;
            match crate::disclosure::preview(&ctx, &who, case_id, purpose, destination).await {
                Ok(d) => Some(d),
                Err(e) => return refusal(l, &tonic::Status::from(e)),
            }
        }
    };
    let body = html! {
        (form)
        table {
            thead { tr { th scope="col" { (l.guard) } th scope="col" { (l.asks) } th scope="col" { (l.status) } } }
            tbody {
                @for g in &list {
                    tr class=[g.refusal.is_some().then_some("overdue")] {
                        td { code { (g.guard.as_str()) } }
                        td { (g.asks) }
                        td {
                            @match &g.refusal {
                                None => { (l.met) }
                                Some(why) => { strong { (l.missing) } ": " (why.reason) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(d) = &proposal {
            (super::cases::will_cross(l, d))
            (super::cases::propose_form(l, &case_id.to_string(), destination.as_str()))
        }
    };
    page(l, l.guards, body).into_response()
}

/// One row of a list of shared records: its id, its two countries, its status, when it
/// last changed.
struct RecordRow {
    id: String,
    from: String,
    to: String,
    status: String,
    updated: String,
    /// The answer withholds the record's details from the caller (a hearing as the
    /// witness's provider sees it): no timeline either.
    withheld: bool,
}

/// A shared record as the services answer it, shown as a row.
trait AsRow {
    fn row(&self) -> RecordRow;
}

/// Implements [`AsRow`] for a wire record: its id field, its two countries' fields, its
/// status enum and that enum's prefix, and whether the answer withholds its details.
macro_rules! as_row {
    ($t:ty, $id:ident, $from:ident, $to:ident, $status:ty, $prefix:literal $(, withheld: $withheld:ident)?) => {
        impl AsRow for $t {
            fn row(&self) -> RecordRow {
                let status = <$status>::try_from(self.status).unwrap_or_default();
                RecordRow {
                    id: self.$id.clone(),
                    from: self.$from.clone(),
                    to: self.$to.clone(),
                    status: name_of(status.as_str_name(), $prefix),
                    updated: when(self.updated_at.as_ref()),
                    withheld: false $(|| self.$withheld)?,
                }
            }
        }
    };
}

as_row!(
    w::Referral,
    referral_id,
    origin,
    destination,
    w::ReferralStatus,
    "REFERRAL_STATUS_"
);
as_row!(
    w::ReturnPlan,
    return_id,
    origin,
    destination,
    w::ReturnStatus,
    "RETURN_STATUS_"
);
as_row!(
    w::Hearing,
    hearing_id,
    requesting_country,
    witness_country,
    w::HearingStatus,
    "HEARING_STATUS_",
    withheld: details_withheld
);
as_row!(
    w::SafetyAlert,
    alert_id,
    origin,
    country,
    w::SafetyAlertStatus,
    "SAFETY_ALERT_STATUS_"
);
as_row!(
    w::Claim,
    claim_id,
    origin,
    forum_country,
    w::ClaimStatus,
    "CLAIM_STATUS_"
);

/// What a page asks of the shared records of one kind.
enum Ask<'a> {
    /// A page of them in one direction.
    List(w::Direction),
    /// One of them, by id.
    Get(&'a str),
}

fn rows<T: AsRow>(records: &[T]) -> Vec<RecordRow> {
    records.iter().map(AsRow::row).collect()
}

/// Reads shared records of `kind` through its service, as the browser's certificate may
/// see them: a page in one direction, or one record (with the kind the store knows it by).
async fn record_rows(
    ctx: &Ctx,
    certs: &Certs,
    kind: &str,
    ask: Ask<'_>,
) -> Result<(Vec<RecordRow>, RecordKind), tonic::Status> {
    use trm_proto::v1::{
        remedies_service_server::RemediesService,
        return_planning_service_server::ReturnPlanningService,
        safety_service_server::SafetyService,
        witness_hearing_service_server::WitnessHearingService,
    };
    /// A page of the records through the service's `List*`, or one through its `Get*`.
    macro_rules! read {
        ($service:expr, $list:ident($list_req:ident).$field:ident, $get:ident($get_req:ident.$id:ident), $kind:expr) => {{
            let service = $service;
            let found = match &ask {
                Ask::List(d) => {
                    let m = w::$list_req {
                        direction: *d as i32,
                        page_size: 100,
                        ..Default::default()
                    };
                    rows(&service.$list(request(certs, m)).await?.into_inner().$field)
                }
                Ask::Get(id) => {
                    let m = w::$get_req {
                        $id: id.to_string(),
                    };
                    vec![service.$get(request(certs, m)).await?.into_inner().row()]
                }
            };
            (found, $kind)
        }};
    }
    Ok(match kind {
        "referrals" => read!(
            Referrals::new(ctx.clone()),
            list_referrals(ListReferralsRequest).referrals,
            get_referral(GetReferralRequest.referral_id),
            RecordKind::Referral
        ),
        "returns" => read!(
            crate::returns::Returns::new(ctx.clone()),
            list_return_plans(ListReturnPlansRequest).return_plans,
            get_return_plan(GetReturnPlanRequest.return_id),
            RecordKind::Return
        ),
        "hearings" => read!(
            crate::hearing::Hearings::new(ctx.clone()),
            list_hearings(ListHearingsRequest).hearings,
            get_hearing(GetHearingRequest.hearing_id),
            RecordKind::Hearing
        ),
        "alerts" => read!(
            crate::safety::Safety::new(ctx.clone()),
            list_safety_alerts(ListSafetyAlertsRequest).safety_alerts,
            get_safety_alert(GetSafetyAlertRequest.alert_id),
            RecordKind::SafetyAlert
        ),
        "claims" => read!(
            crate::remedies::Remedies::new(ctx.clone()),
            list_claims(ListClaimsRequest).claims,
            get_claim(GetClaimRequest.claim_id),
            RecordKind::Claim
        ),
        _ => {
            return Err(tonic::Status::invalid_argument(
                "kind: must be referrals, returns, hearings, alerts or claims",
            ))
        }
    })
}

/// `GET /record?kind=..&id=..`: one shared record, as the caller may see it, with its
/// timeline (every status it reached on this node, and when).
async fn record(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, certs, .. } = b;
    let (kind, id) = (q.kind.unwrap_or_default(), q.id.unwrap_or_default());
    let (row, stored) = match record_rows(&ctx, &certs, &kind, Ask::Get(&id)).await {
        Ok((mut rows, stored)) => match rows.pop() {
            Some(row) => (row, stored),
            None => return refusal(l, &tonic::Status::not_found("record")),
        },
        Err(s) => return refusal(l, &s),
    };
    let steps = match uuid::Uuid::parse_str(&row.id)
        .map_err(|_| crate::error::ApiError::NotFound("record"))
        .and_then(|u| Ok(ctx.store.timeline(stored, u)?))
    {
        // When each step happened is a detail too.
        Ok(_) if row.withheld => Vec::new(),
        Ok(steps) => steps,
        Err(e) => return refusal(l, &tonic::Status::from(e)),
    };
    let body = html! {
        dl {
            dt { (l.record) } dd { code { (row.id) } }
            dt { (l.from_to) } dd { (row.from) " → " (row.to) }
            dt { (l.status) } dd { (row.status) }
            dt { (l.updated) } dd { (row.updated) }
        }
        h2 { (l.timeline) }
        table id="timeline" {
            thead { tr { th scope="col" { (l.status) } th scope="col" { (l.when) } } }
            tbody {
                @for step in &steps {
                    tr {
                        td { (name_of(&step.status, "")) }
                        td { (when_at(step.at)) }
                    }
                }
            }
        }
    };
    page(l, heading_of(l, &kind), body).into_response()
}

/// The heading of the records of `kind`.
fn heading_of(l: &Labels, kind: &str) -> &'static str {
    match kind {
        "referrals" => l.referrals,
        "hearings" => l.hearings,
        "alerts" => l.alerts,
        "claims" => l.claims,
        _ => l.returns,
    }
}

/// `GET /records?kind=returns|hearings|alerts|claims&direction=incoming|outgoing`: the
/// shared records of one kind, as the caller may see them.
async fn records(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, certs, .. } = b;
    let kind = q.kind.as_deref().unwrap_or("returns");
    let (incoming, direction) = direction_of(q.direction.as_deref());
    let rows = match record_rows(&ctx, &certs, kind, Ask::List(direction)).await {
        Ok((rows, _)) => rows,
        Err(s) => return refusal(l, &s),
    };
    let heading = heading_of(l, kind);
    let (here, there) = match incoming {
        true => ("incoming", "outgoing"),
        false => ("outgoing", "incoming"),
    };
    let body = html! {
        p {
            strong { (if incoming { l.incoming_dir } else { l.outgoing_dir }) }
            " · "
            a href={ "/records?kind=" (kind) "&direction=" (there) } {
                (if incoming { l.outgoing_dir } else { l.incoming_dir })
            }
        }
        @if rows.is_empty() {
            p { (l.nothing) }
        } @else {
            table data-direction=(here) {
                thead { tr {
                    th scope="col" { (l.record) } th scope="col" { (l.from_to) }
                    th scope="col" { (l.status) } th scope="col" { (l.updated) }
                } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { a href={ "/record?kind=" (kind) "&id=" (r.id) } { code { (r.id) } } }
                            td { (r.from) " → " (r.to) }
                            td { (r.status) }
                            td { (r.updated) }
                        }
                    }
                }
            }
        }
    };
    page(l, heading, body).into_response()
}

/// `GET /style.css`: the one stylesheet (no inline style anywhere).
async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}
