//! The console's case pages: a case created and updated, its consent recorded in the
//! language the victim was informed in, its identification and residence, and "what will
//! cross the border" before a referral is sent. Personal data travels only in POST bodies
//! and in pages (never in a URL); every form calls the same service as a gRPC client would,
//! with the browser's certificate, and carries its own `request_id` so a form sent twice
//! changes nothing twice.

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::Uri,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use maud::{html, Markup};
use trm_proto::v1::{self as w, referral_service_server::ReferralService};

use super::pages::{page, refusal, request, when, when_at, Browser, Certs, Labels, Params};
use crate::{ctx::Ctx, referral::Referrals};

/// The case pages' routes.
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/cases", get(cases).post(post_form))
        .route("/cases/new", get(new_case))
        .route("/cases/draft", post(post_form))
        .route("/cases/draft/discard", post(post_form))
        .route("/case", get(case))
        .route("/case/edit", get(edit_case))
        .route("/case/update", post(post_form))
        .route("/case/consent", post(post_form))
        .route("/case/consent/withdraw", post(post_form))
        .route("/case/identification", post(post_form))
        .route("/case/residence", post(post_form))
        .route("/referrals/new", get(new_referral))
        .route("/referrals/submit", post(post_form))
        .route("/returns/propose", post(post_form))
}

/// The case pages' labels in one language.
struct Words {
    new_case: &'static str,
    case: &'static str,
    edit: &'static str,
    save: &'static str,
    save_draft: &'static str,
    draft_saved: &'static str,
    drafts: &'static str,
    draft_of: &'static str,
    discard: &'static str,
    person: &'static str,
    given_name: &'static str,
    family_name: &'static str,
    date_of_birth: &'static str,
    age_band: &'static str,
    born: &'static str,
    identified: &'static str,
    gender: &'static str,
    citizenship: &'static str,
    languages: &'static str,
    codes: &'static str,
    document_number: &'static str,
    address: &'static str,
    phone: &'static str,
    needs: &'static str,
    urgency: &'static str,
    notes: &'static str,
    exploitation: &'static str,
    exploitation_countries: &'static str,
    child: &'static str,
    is_child: &'static str,
    guardian_assigned: &'static str,
    best_interests: &'static str,
    identified_on: &'static str,
    organisation: &'static str,
    consents: &'static str,
    record_consent: &'static str,
    purposes: &'static str,
    recipients: &'static str,
    expires_on: &'static str,
    informed: &'static str,
    information_language: &'static str,
    categories: &'static str,
    categories_hint: &'static str,
    withdraw: &'static str,
    withdrawn: &'static str,
    active: &'static str,
    identification: &'static str,
    stage: &'static str,
    decided_on: &'static str,
    reflection_ends: &'static str,
    residence: &'static str,
    valid_until: &'static str,
    none_yet: &'static str,
    refer: &'static str,
    destination: &'static str,
    preview: &'static str,
    will_cross: &'static str,
    will_cross_intro: &'static str,
    field: &'static str,
    value: &'static str,
    reference: &'static str,
    new_reference: &'static str,
    requested_services: &'static str,
    reason: &'static str,
    reason_hint: &'static str,
    send: &'static str,
    propose: &'static str,
    hearing_pending: &'static str,
    yes: &'static str,
    no: &'static str,
}

const EN: Words = Words {
    new_case: "New case",
    case: "Case",
    edit: "Update the case",
    save: "Save",
    save_draft: "Save as draft",
    draft_saved: "Draft saved (UTC):",
    drafts: "Drafts",
    draft_of: "Draft saved (UTC)",
    discard: "Discard",
    person: "Person",
    given_name: "Given name",
    family_name: "Family name",
    date_of_birth: "Date of birth (YYYY-MM-DD)",
    age_band: "Age band",
    born: "Date of birth",
    identified: "Identified on",
    gender: "Gender",
    citizenship: "Citizenship",
    languages: "Languages",
    codes: "codes separated by commas, e.g. RO, MD or ro, en",
    document_number: "Identity document number",
    address: "Address",
    phone: "Phone",
    needs: "Needs",
    urgency: "Urgency",
    notes: "Notes (stay on this node)",
    exploitation: "Forms of exploitation",
    exploitation_countries: "Countries of exploitation",
    child: "Child",
    is_child: "The person is a child",
    guardian_assigned: "A guardian is assigned",
    best_interests: "The best interests were determined",
    identified_on: "Identified on (YYYY-MM-DD, empty: today)",
    organisation: "Organisation",
    consents: "Consents",
    record_consent: "Record a consent",
    purposes: "Purposes",
    recipients: "Recipient countries",
    expires_on: "Valid until (YYYY-MM-DD, empty: no end)",
    informed: "The person was informed of what is shared, with whom and why",
    information_language: "Language the person was informed in",
    categories: "Data categories",
    categories_hint: "none ticked: everything the purpose allows except contact details",
    withdraw: "Withdraw",
    withdrawn: "withdrawn",
    active: "active",
    identification: "Identification",
    stage: "Stage",
    decided_on: "Decided on (YYYY-MM-DD)",
    reflection_ends: "Reflection period ends on",
    residence: "Residence",
    valid_until: "Valid until (YYYY-MM-DD, optional)",
    none_yet: "None recorded.",
    refer: "Refer to another country",
    destination: "Destination country (ISO code)",
    preview: "Show what will cross",
    will_cross: "What will cross the border",
    will_cross_intro: "Exactly these fields go to the destination if you send now; nothing \
                       else of the case leaves this node.",
    field: "Field",
    value: "Value",
    reference: "Reference of the case at the destination",
    new_reference: "a new reference, made when you send",
    requested_services: "Services requested",
    reason: "Reason (stays on this node)",
    reason_hint: "no names: the reason is kept here only",
    send: "Send the referral",
    propose: "Propose the return",
    hearing_pending: "A witness hearing is pending",
    yes: "yes",
    no: "no",
};

const FR: Words = Words {
    new_case: "Nouveau dossier",
    case: "Dossier",
    edit: "Modifier le dossier",
    save: "Enregistrer",
    save_draft: "Enregistrer comme brouillon",
    draft_saved: "Brouillon enregistré (UTC) :",
    drafts: "Brouillons",
    draft_of: "Brouillon enregistré (UTC)",
    discard: "Supprimer",
    person: "Personne",
    given_name: "Prénom",
    family_name: "Nom de famille",
    date_of_birth: "Date de naissance (AAAA-MM-JJ)",
    age_band: "Tranche d'âge",
    born: "Date de naissance",
    identified: "Identifiée le",
    gender: "Genre",
    citizenship: "Nationalité",
    languages: "Langues",
    codes: "codes séparés par des virgules, p. ex. RO, MD ou ro, en",
    document_number: "Numéro du document d'identité",
    address: "Adresse",
    phone: "Téléphone",
    needs: "Besoins",
    urgency: "Urgence",
    notes: "Notes (restent sur ce nœud)",
    exploitation: "Formes d'exploitation",
    exploitation_countries: "Pays d'exploitation",
    child: "Enfant",
    is_child: "La personne est un enfant",
    guardian_assigned: "Un tuteur est désigné",
    best_interests: "L'intérêt supérieur a été déterminé",
    identified_on: "Identifiée le (AAAA-MM-JJ, vide : aujourd'hui)",
    organisation: "Organisation",
    consents: "Consentements",
    record_consent: "Enregistrer un consentement",
    purposes: "Finalités",
    recipients: "Pays destinataires",
    expires_on: "Valable jusqu'au (AAAA-MM-JJ, vide : sans fin)",
    informed: "La personne a été informée de ce qui est partagé, avec qui et pourquoi",
    information_language: "Langue dans laquelle la personne a été informée",
    categories: "Catégories de données",
    categories_hint: "aucune cochée : tout ce que la finalité permet sauf les coordonnées",
    withdraw: "Retirer",
    withdrawn: "retiré",
    active: "actif",
    identification: "Identification",
    stage: "Étape",
    decided_on: "Décidée le (AAAA-MM-JJ)",
    reflection_ends: "Fin du délai de réflexion",
    residence: "Séjour",
    valid_until: "Valable jusqu'au (AAAA-MM-JJ, facultatif)",
    none_yet: "Rien d'enregistré.",
    refer: "Orienter vers un autre pays",
    destination: "Pays de destination (code ISO)",
    preview: "Voir ce qui traversera",
    will_cross: "Ce qui traversera la frontière",
    will_cross_intro: "Exactement ces champs partent vers la destination si vous envoyez \
                       maintenant ; rien d'autre du dossier ne quitte ce nœud.",
    field: "Champ",
    value: "Valeur",
    reference: "Référence du dossier à destination",
    new_reference: "une nouvelle référence, créée à l'envoi",
    requested_services: "Services demandés",
    reason: "Motif (reste sur ce nœud)",
    reason_hint: "sans noms : le motif n'est gardé qu'ici",
    send: "Envoyer l'orientation",
    propose: "Proposer le retour",
    hearing_pending: "Une audition de témoin est en attente",
    yes: "oui",
    no: "non",
};

fn words(l: &Labels) -> &'static Words {
    if l.lang == "fr" {
        &FR
    } else {
        &EN
    }
}

/// The French name of an enum value (its proto name), where the console gives one.
fn french(name: &str) -> Option<&'static str> {
    Some(match name {
        "GENDER_FEMALE" => "féminin",
        "GENDER_MALE" => "masculin",
        "GENDER_OTHER" => "autre",
        "NEED_KIND_SHELTER" => "hébergement",
        "NEED_KIND_MEDICAL" => "soins médicaux",
        "NEED_KIND_PSYCHOLOGICAL" => "soutien psychologique",
        "NEED_KIND_LEGAL" => "aide juridique",
        "NEED_KIND_INTERPRETATION" => "interprétation",
        "NEED_KIND_FINANCIAL" => "aide financière",
        "NEED_KIND_EDUCATION" => "éducation",
        "NEED_KIND_EMPLOYMENT" => "emploi",
        "NEED_KIND_FAMILY_TRACING" => "recherche de la famille",
        "URGENCY_ROUTINE" => "ordinaire",
        "URGENCY_URGENT" => "urgente",
        "URGENCY_EMERGENCY" => "extrême urgence",
        "EXPLOITATION_TYPE_SEXUAL" => "sexuelle",
        "EXPLOITATION_TYPE_FORCED_LABOUR" => "travail forcé",
        "EXPLOITATION_TYPE_FORCED_CRIMINALITY" => "criminalité forcée",
        "EXPLOITATION_TYPE_DOMESTIC_SERVITUDE" => "servitude domestique",
        "EXPLOITATION_TYPE_FORCED_MARRIAGE" => "mariage forcé",
        "EXPLOITATION_TYPE_BEGGING" => "mendicité",
        "EXPLOITATION_TYPE_ORGAN_REMOVAL" => "prélèvement d'organes",
        "EXPLOITATION_TYPE_OTHER" => "autre",
        "PURPOSE_REFERRAL_ASSISTANCE" => "orientation et assistance",
        "PURPOSE_RETURN_PLANNING" => "préparation du retour",
        "PURPOSE_WITNESS_HEARING" => "audition de témoin",
        "PURPOSE_SAFETY" => "sécurité",
        "PURPOSE_LEGAL_REMEDIES" => "voies de recours",
        "DATA_CATEGORY_IDENTITY" => "identité",
        "DATA_CATEGORY_CONTACT" => "coordonnées",
        "DATA_CATEGORY_DEMOGRAPHICS" => "données démographiques",
        "DATA_CATEGORY_NEEDS" => "besoins",
        "DATA_CATEGORY_EXPLOITATION" => "exploitation",
        "DATA_CATEGORY_CHILD" => "enfant",
        "DATA_CATEGORY_PROCEEDINGS" => "procédures",
        "IDENTIFICATION_STAGE_PRESUMED" => "présumée",
        "IDENTIFICATION_STAGE_REASONABLE_GROUNDS" => "motifs raisonnables",
        "IDENTIFICATION_STAGE_CONCLUSIVE" => "définitive",
        "IDENTIFICATION_STAGE_NOT_IDENTIFIED" => "non identifiée",
        "RESIDENCE_STATUS_NONE" => "aucun",
        "RESIDENCE_STATUS_REFLECTION_PERIOD" => "délai de réflexion",
        "RESIDENCE_STATUS_TEMPORARY_PERMIT" => "titre temporaire",
        "RESIDENCE_STATUS_PERMANENT_PERMIT" => "titre permanent",
        "RESIDENCE_STATUS_ASYLUM_PENDING" => "asile en cours",
        "RESIDENCE_STATUS_REFUGEE" => "réfugié",
        "RESIDENCE_STATUS_SUBSIDIARY_PROTECTION" => "protection subsidiaire",
        _ => return None,
    })
}

/// An enum value's label: French where the page is and one is given, else its proto name
/// without `prefix`, in lower case.
fn term(lang: &str, name: &str, prefix: &str) -> String {
    match (lang, french(name)) {
        ("fr", Some(f)) => f.to_owned(),
        _ => super::pages::name_of(name, prefix),
    }
}

/// The proto names of an enum's values, `UNSPECIFIED` left out.
macro_rules! names {
    ($e:ty) => {
        (1..64)
            .map_while(|i| <$e>::try_from(i).ok().map(|e| e.as_str_name()))
            .collect::<Vec<&'static str>>()
    };
}

/// The label of the value `v` of the proto enum `e` (empty for a value it does not have).
macro_rules! term_of {
    ($lang:expr, $e:ty, $v:expr, $prefix:expr) => {
        term(
            $lang,
            <$e>::try_from($v).map_or("", |e| e.as_str_name()),
            $prefix,
        )
    };
}

/// The labels of the values `vs` of the proto enum `e`, separated by commas.
macro_rules! terms_of {
    ($lang:expr, $e:ty, $vs:expr, $prefix:expr) => {
        $vs.iter()
            .map(|v| term_of!($lang, $e, *v, $prefix))
            .collect::<Vec<String>>()
            .join(", ")
    };
}

/// A form's fields, in order, repeated names kept (checkboxes).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; empty when absent.
    fn one(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// Every value of `name` (ticked checkboxes).
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    /// Whether the checkbox `name` is ticked.
    fn ticked(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The codes of a field that lists them separated by commas or spaces.
    fn codes(&self, name: &str) -> Vec<String> {
        self.one(name)
            .split([',', ' '])
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The value of `name` as an enum number (`parse` gives a proto name's number; an
    /// unknown name is sent as 0, which the service refuses naming the field).
    fn choice(&self, name: &str, parse: impl Fn(&str) -> Option<i32>) -> i32 {
        parse(&self.one(name)).unwrap_or(0)
    }

    /// The ticked values of `name` as enum numbers (`parse` gives a proto name's number;
    /// an unknown name is sent as 0, which the service refuses naming the field).
    fn enums(&self, name: &str, parse: impl Fn(&str) -> Option<i32>) -> Vec<i32> {
        self.all(name)
            .iter()
            .map(|v| parse(v).unwrap_or(0))
            .collect()
    }
}

/// Writes, for each `name: Enum`, `fn name(v: &str) -> Option<i32>`: the number of the
/// proto enum's value named `v`, `None` for an unknown name.
macro_rules! enum_parsers {
    ($($name:ident: $e:ty),* $(,)?) => {
        $(fn $name(v: &str) -> Option<i32> {
            <$e>::from_str_name(v).map(|e| e as i32)
        })*
    };
}

enum_parsers!(
    need: w::NeedKind,
    purpose: w::Purpose,
    category: w::DataCategory,
    exploitation_type: w::ExploitationType,
    gender: w::Gender,
    urgency: w::Urgency,
    identification_stage: w::IdentificationStage,
    residence_status: w::ResidenceStatus,
);

/// The person, needs, exploitation and child groups of a case form.
fn case_groups(f: &Fields) -> (w::Person, w::Needs, w::Exploitation, w::ChildInfo) {
    let person = w::Person {
        given_name: f.one("given_name"),
        family_name: f.one("family_name"),
        date_of_birth: f.one("date_of_birth"),
        gender: f.choice("gender", gender),
        citizenship: f.codes("citizenship"),
        languages: f.codes("languages"),
        document_number: f.one("document_number"),
        address: f.one("address"),
        phone: f.one("phone"),
    };
    let needs = w::Needs {
        kinds: f.enums("needs", need),
        urgency: f.choice("urgency", urgency),
        notes: f.one("notes"),
    };
    let exploitation = w::Exploitation {
        types: f.enums("exploitation", exploitation_type),
        countries: f.codes("exploitation_countries"),
    };
    let child = w::ChildInfo {
        is_child: f.ticked("is_child"),
        guardian_assigned: f.ticked("guardian_assigned"),
        best_interests_determined: f.ticked("best_interests_determined"),
    };
    (person, needs, exploitation, child)
}

/// Where a case's page is.
fn case_page(case_id: &str) -> String {
    format!("/case?case_id={case_id}")
}

/// A text input with its label.
fn text(id: &str, label: &str, value: &str, hint: Option<&str>) -> Markup {
    html! {
        p {
            label for=(id) { (label) }
            @if let Some(h) = hint { " " span class="hint" { "(" (h) ")" } }
            br;
            input id=(id) name=(id) type="text" value=(value) autocomplete="off";
        }
    }
}

/// A group of checkboxes for the enum values `names`, those in `ticked` ticked.
fn checkboxes(
    lang: &str,
    name: &str,
    legend: &str,
    names: &[&str],
    prefix: &str,
    ticked: &[i32],
    number: impl Fn(&str) -> Option<i32>,
) -> Markup {
    html! {
        fieldset {
            legend { (legend) }
            @for v in names {
                @let id = format!("{name}-{}", v.to_ascii_lowercase());
                @let on = number(v).is_some_and(|n| ticked.contains(&n));
                span class="choice" {
                    input type="checkbox" id=(id) name=(name) value=(v) checked[on];
                    label for=(id) { (term(lang, v, prefix)) }
                }
                " "
            }
        }
    }
}

/// A select of the enum values `names` with an empty first choice.
fn select(
    lang: &str,
    name: &str,
    label: &str,
    names: &[&str],
    prefix: &str,
    chosen: &str,
) -> Markup {
    html! {
        p {
            label for=(name) { (label) }
            br;
            select id=(name) name=(name) {
                option value="" { "—" }
                @for v in names {
                    option value=(v) selected[*v == chosen] { (term(lang, v, prefix)) }
                }
            }
        }
    }
}

/// The hidden id that makes a form sent twice count once.
fn request_id() -> Markup {
    html! { input type="hidden" name="request_id" value=(uuid::Uuid::new_v4().to_string()); }
}

/// The form for a new case (`case` none) or an update of `case`.
/// What a case form is for.
#[derive(Clone, Copy)]
enum CaseForm {
    /// A new case, perhaps from a saved draft.
    New(Option<uuid::Uuid>),
    /// An update of the case shown.
    Update,
}

/// The form for a case: empty, filled in from a draft, or from the case to update.
fn case_form(l: &Labels, c: Option<&w::Case>, what: CaseForm) -> Markup {
    let t = words(l);
    let lang = l.lang;
    let person = c.and_then(|c| c.person.clone()).unwrap_or_default();
    let needs = c.and_then(|c| c.needs.clone()).unwrap_or_default();
    let exploitation = c.and_then(|c| c.exploitation.clone()).unwrap_or_default();
    let child = c.and_then(|c| c.child).unwrap_or_default();
    let gender = w::Gender::try_from(person.gender).map_or("", |g| g.as_str_name());
    let urgency = w::Urgency::try_from(needs.urgency).map_or("", |u| u.as_str_name());
    let (action, draft) = match what {
        CaseForm::Update => ("/case/update", None),
        CaseForm::New(draft) => ("/cases", draft),
    };
    let identified_on = c.map(|c| c.identified_on.as_str()).unwrap_or_default();
    html! {
        form method="post" action=(action) {
            (request_id())
            @if let (CaseForm::Update, Some(c)) = (what, c) {
                input type="hidden" name="case_id" value=(c.case_id);
            }
            @if let Some(d) = draft { input type="hidden" name="draft_id" value=(d.to_string()); }
            fieldset {
                legend { (t.person) }
                (text("given_name", t.given_name, &person.given_name, None))
                (text("family_name", t.family_name, &person.family_name, None))
                (text("date_of_birth", t.date_of_birth, &person.date_of_birth, None))
                (select(lang, "gender", t.gender, &names!(w::Gender), "GENDER_", gender))
                (text("citizenship", t.citizenship, &person.citizenship.join(", "), Some(t.codes)))
                (text("languages", t.languages, &person.languages.join(", "), Some(t.codes)))
                (text("document_number", t.document_number, &person.document_number, None))
                (text("address", t.address, &person.address, None))
                (text("phone", t.phone, &person.phone, None))
            }
            (checkboxes(lang, "needs", t.needs, &names!(w::NeedKind), "NEED_KIND_", &needs.kinds, need))
            (select(lang, "urgency", t.urgency, &names!(w::Urgency), "URGENCY_", urgency))
            (text("notes", t.notes, &needs.notes, None))
            (checkboxes(lang, "exploitation", t.exploitation, &names!(w::ExploitationType), "EXPLOITATION_TYPE_", &exploitation.types, exploitation_type))
            (text("exploitation_countries", t.exploitation_countries, &exploitation.countries.join(", "), Some(t.codes)))
            fieldset {
                legend { (t.child) }
                @for (name, label, on) in [
                    ("is_child", t.is_child, child.is_child),
                    ("guardian_assigned", t.guardian_assigned, child.guardian_assigned),
                    ("best_interests_determined", t.best_interests, child.best_interests_determined),
                ] {
                    span class="choice" {
                        input type="checkbox" id=(name) name=(name) value="1" checked[on];
                        label for=(name) { (label) }
                    }
                    " "
                }
            }
            @if let CaseForm::New(_) = what {
                (text("identified_on", t.identified_on, identified_on, None))
            }
            p {
                button type="submit" { (t.save) }
                @if let CaseForm::New(_) = what {
                    " "
                    button type="submit" formaction="/cases/draft" class="secondary" { (t.save_draft) }
                }
            }
        }
    }
}

/// `GET /cases`: the cases the caller looks after, newest last.
async fn cases(State(ctx): State<Ctx>, b: Browser) -> Response {
    let Browser { l, certs, who } = b;
    let t = words(l);
    let list = w::ListCasesRequest {
        page_size: 100,
        ..Default::default()
    };
    let found = match Referrals::new(ctx.clone())
        .list_cases(request(&certs, list))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return refusal(l, &s),
    };
    let drafts = match crate::drafts::list(&ctx, &who).map_err(tonic::Status::from) {
        Ok(d) => d,
        Err(s) => return refusal(l, &s),
    };
    let body = html! {
        p { a href="/cases/new" { (t.new_case) } }
        @if !drafts.is_empty() {
            h2 { (t.drafts) }
            ul {
                @for d in &drafts {
                    li {
                        a href={ "/cases/new?draft=" (d.draft_id) } { (t.draft_of) " " (when_at(d.saved_at)) }
                        form method="post" action="/cases/draft/discard" class="inline" {
                            input type="hidden" name="draft_id" value=(d.draft_id.to_string());
                            " "
                            button type="submit" class="secondary" { (t.discard) }
                        }
                    }
                }
            }
            h2 { (l.cases) }
        }
        @if found.cases.is_empty() {
            p { (t.none_yet) }
        } @else {
            table {
                thead { tr {
                    th scope="col" { (t.case) } th scope="col" { (t.family_name) }
                    th scope="col" { (t.given_name) } th scope="col" { (t.organisation) }
                } }
                tbody {
                    @for c in &found.cases {
                        @let person = c.person.clone().unwrap_or_default();
                        tr {
                            td { a href={ "/case?case_id=" (c.case_id) } { code { (c.case_id) } } }
                            td { (person.family_name) }
                            td { (person.given_name) }
                            td { (c.organisation) }
                        }
                    }
                }
            }
        }
    };
    page(l, l.cases, body).into_response()
}

/// `GET /cases/new?draft=`: the form for a new case, empty or filled in from a draft.
async fn new_case(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, who, .. } = b;
    let t = words(l);
    let Some(asked) = q.draft else {
        return page(l, t.new_case, case_form(l, None, CaseForm::New(None))).into_response();
    };
    let found = async {
        let id = uuid::Uuid::parse_str(&asked)
            .map_err(|_| tonic::Status::invalid_argument("draft: is not a draft id"))?;
        Ok::<_, tonic::Status>(crate::drafts::get(&ctx, &who, id).await?)
    };
    match found.await {
        Ok(d) => {
            let body = html! {
                p role="status" { (t.draft_saved) " " (when_at(d.saved_at)) }
                (case_form(l, Some(&draft_case(&d)), CaseForm::New(Some(d.draft_id))))
            };
            page(l, t.new_case, body).into_response()
        }
        Err(s) => refusal(l, &s),
    }
}

/// A draft as a case to fill a form with.
fn draft_case(d: &trm_store::repo::drafts::Draft) -> w::Case {
    let f = Fields(d.fields.clone());
    let (person, needs, exploitation, child) = case_groups(&f);
    w::Case {
        person: Some(person),
        needs: Some(needs),
        exploitation: Some(exploitation),
        child: Some(child),
        identified_on: f.one("identified_on"),
        ..Default::default()
    }
}

/// Reads a case through the service, as the caller may see it.
async fn read_case(
    ctx: &Ctx,
    certs: &Certs,
    case_id: Option<String>,
) -> Result<w::Case, tonic::Status> {
    let get = w::GetCaseRequest {
        case_id: case_id.unwrap_or_default(),
    };
    Ok(Referrals::new(ctx.clone())
        .get_case(request(certs, get))
        .await?
        .into_inner())
}

/// `GET /case/edit?case_id=`: the case's form, filled in.
async fn edit_case(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, certs, .. } = b;
    match read_case(&ctx, &certs, q.case_id).await {
        Ok(c) => page(l, words(l).edit, case_form(l, Some(&c), CaseForm::Update)).into_response(),
        Err(s) => refusal(l, &s),
    }
}

/// The victim-facing account of one consent, in the language the victim was informed in
/// (English or French; another language is named and the account given in the page's).
fn consent_text(page_lang: &str, c: &w::Consent) -> Markup {
    let lang = match c.information_language.as_str() {
        "fr" => "fr",
        "en" => "en",
        _ => page_lang,
    };
    let purposes = terms_of!(lang, w::Purpose, c.purposes, "PURPOSE_");
    let categories = terms_of!(lang, w::DataCategory, c.categories, "DATA_CATEGORY_");
    let to = c.recipients.join(", ");
    let text = match lang {
        "fr" => format!(
            "Vous avez accepté que {} soient transmises à : {to}, pour : {purposes}{}. Vous \
             pouvez retirer ce consentement à tout moment ; les pays destinataires effacent \
             alors ce qu'ils ont reçu.",
            if categories.is_empty() {
                "les informations nécessaires (sans vos coordonnées)".to_owned()
            } else {
                format!("ces informations ({categories})")
            },
            if c.expires_on.is_empty() {
                String::new()
            } else {
                format!(", jusqu'au {}", c.expires_on)
            }
        ),
        _ => format!(
            "You agreed that {} may be sent to: {to}, for: {purposes}{}. You may withdraw this \
             consent at any time; the receiving countries then erase what they received.",
            if categories.is_empty() {
                "the information needed (not your contact details)".to_owned()
            } else {
                format!("this information ({categories})")
            },
            if c.expires_on.is_empty() {
                String::new()
            } else {
                format!(", until {}", c.expires_on)
            }
        ),
    };
    html! { p lang=(lang) class="consent-text" { (text) } }
}

/// `GET /case?case_id=`: the case, its consents, identification and residence, with the
/// forms that record them and the way to a referral or a return's checklist.
async fn case(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, certs, .. } = b;
    match read_case(&ctx, &certs, q.case_id).await {
        Ok(c) => page(l, words(l).case, case_body(l, &c)).into_response(),
        Err(s) => refusal(l, &s),
    }
}

fn case_body(l: &Labels, c: &w::Case) -> Markup {
    let t = words(l);
    let id = &c.case_id;
    html! {
        p { code { (id) } " · " (t.organisation) ": " (c.organisation) }
        p {
            a href={ "/case/edit?case_id=" (id) } { (t.edit) }
            " · "
            a href={ "/referrals/new?case_id=" (id) } { (t.refer) }
            " · "
            a href={ "/returns/checklist?case_id=" (id) } { (l.guards) }
        }
        (person_section(l, c))
        (consents_section(l, c))
        (decisions_section(l, c))
    }
}

/// The case's person, needs and dates.
fn person_section(l: &Labels, c: &w::Case) -> Markup {
    let (t, lang) = (words(l), l.lang);
    let person = c.person.clone().unwrap_or_default();
    let needs = c.needs.clone().unwrap_or_default();
    let exploitation = c.exploitation.clone().unwrap_or_default();
    let child = c.child.unwrap_or_default();
    html! {
        h2 { (t.person) }
        dl {
            dt { (t.family_name) } dd { (person.family_name) }
            dt { (t.given_name) } dd { (person.given_name) }
            dt { (t.born) } dd { (person.date_of_birth) }
            dt { (t.gender) } dd { (term_of!(lang, w::Gender, person.gender, "GENDER_")) }
            dt { (t.citizenship) } dd { (person.citizenship.join(", ")) }
            dt { (t.languages) } dd { (person.languages.join(", ")) }
            dt { (t.needs) } dd { (terms_of!(lang, w::NeedKind, needs.kinds, "NEED_KIND_")) }
            dt { (t.urgency) } dd { (term_of!(lang, w::Urgency, needs.urgency, "URGENCY_")) }
            dt { (t.exploitation) } dd { (terms_of!(lang, w::ExploitationType, exploitation.types, "EXPLOITATION_TYPE_")) }
            dt { (t.is_child) } dd { (if child.is_child { t.yes } else { t.no }) }
            dt { (t.identified) } dd { (c.identified_on) }
            dt { (t.reflection_ends) } dd { (c.reflection_period_ends_on) }
        }
    }
}

/// The case's consents, each with the victim's account and a way to withdraw it, and the
/// form that records another.
fn consents_section(l: &Labels, c: &w::Case) -> Markup {
    let (t, lang, id) = (words(l), l.lang, &c.case_id);
    html! {
        h2 { (t.consents) }
        @if c.consents.is_empty() {
            p { (t.none_yet) }
        }
        @for consent in &c.consents {
            section class="consent" aria-label=(consent.consent_id) {
                p {
                    code { (consent.consent_id) } " · "
                    @if consent.withdrawn_at.is_some() { (t.withdrawn) " " (when(consent.withdrawn_at.as_ref())) }
                    @else { (t.active) }
                    " · " (t.information_language) ": " (consent.information_language)
                }
                (consent_text(lang, consent))
                @if consent.withdrawn_at.is_none() {
                    form method="post" action="/case/consent/withdraw" {
                        (request_id())
                        input type="hidden" name="case_id" value=(id);
                        input type="hidden" name="consent_id" value=(consent.consent_id);
                        button type="submit" { (t.withdraw) }
                    }
                }
            }
        }
        h3 { (t.record_consent) }
        form method="post" action="/case/consent" {
            (request_id())
            input type="hidden" name="case_id" value=(id);
            (checkboxes(lang, "purposes", t.purposes, &names!(w::Purpose), "PURPOSE_", &[], purpose))
            (text("recipients", t.recipients, "", Some(t.codes)))
            (checkboxes(lang, "categories", t.categories, &names!(w::DataCategory), "DATA_CATEGORY_", &[], category))
            p class="hint" { (t.categories_hint) }
            (text("expires_on", t.expires_on, "", None))
            p {
                label for="information_language" { (t.information_language) }
                br;
                select id="information_language" name="information_language" {
                    option value="en" selected[lang == "en"] { "English (en)" }
                    option value="fr" selected[lang == "fr"] { "Français (fr)" }
                    option value="ro" { "Română (ro)" }
                    option value="es" { "Español (es)" }
                    option value="ar" { "العربية (ar)" }
                    option value="ru" { "Русский (ru)" }
                }
            }
            p class="choice" {
                input type="checkbox" id="informed" name="informed" value="1";
                label for="informed" { (t.informed) }
            }
            p { button type="submit" { (t.record_consent) } }
        }
    }
}

/// The case's identification and residence, each with the form that records the next.
fn decisions_section(l: &Labels, c: &w::Case) -> Markup {
    let (t, lang, id) = (words(l), l.lang, &c.case_id);
    html! {
        h2 { (t.identification) }
        @match &c.identification {
            Some(i) => p {
                (term_of!(lang, w::IdentificationStage, i.stage, "IDENTIFICATION_STAGE_"))
                " · " (i.decided_on) " · " (i.organisation)
            },
            None => p { (t.none_yet) },
        }
        form method="post" action="/case/identification" {
            (request_id())
            input type="hidden" name="case_id" value=(id);
            (select(lang, "stage", t.stage, &names!(w::IdentificationStage), "IDENTIFICATION_STAGE_", ""))
            (text("decided_on", t.decided_on, "", None))
            p { button type="submit" { (t.save) } }
        }
        h2 { (t.residence) }
        @match &c.residence {
            Some(r) => p {
                (term_of!(lang, w::ResidenceStatus, r.status, "RESIDENCE_STATUS_"))
                @if !r.valid_until.is_empty() { " · " (t.valid_until) ": " (r.valid_until) }
            },
            None => p { (t.none_yet) },
        }
        form method="post" action="/case/residence" {
            (request_id())
            input type="hidden" name="case_id" value=(id);
            (select(lang, "status", t.residence, &names!(w::ResidenceStatus), "RESIDENCE_STATUS_", ""))
            (text("valid_until", t.valid_until, "", None))
            p { button type="submit" { (t.save) } }
        }
    }
}

/// The rows of "what will cross the border": every field `disclosed` holds, by name.
fn crossing_rows(
    lang: &str,
    t: &Words,
    d: &trm_core::model::DisclosedCase,
) -> Vec<(String, String)> {
    let w = trm_proto::convert::disclosed_to_wire(d);
    let mut rows = vec![(
        t.reference.to_owned(),
        if w.case_ref.is_empty() {
            t.new_reference.to_owned()
        } else {
            w.case_ref.clone()
        },
    )];
    if w.age_band != 0 {
        let band = w::AgeBand::try_from(w.age_band).map_or("", |b| b.as_str_name());
        rows.push((
            t.age_band.into(),
            band.trim_start_matches("AGE_BAND_").replace('_', "–"),
        ));
    }
    if w.gender != 0 {
        rows.push((
            t.gender.into(),
            term_of!(lang, w::Gender, w.gender, "GENDER_"),
        ));
    }
    if !w.citizenship.is_empty() {
        rows.push((t.citizenship.into(), w.citizenship.join(", ")));
    }
    if !w.languages.is_empty() {
        rows.push((t.languages.into(), w.languages.join(", ")));
    }
    if let Some(n) = &w.needs {
        let kinds = terms_of!(lang, w::NeedKind, n.kinds, "NEED_KIND_");
        rows.push((t.needs.into(), kinds));
        if n.urgency != 0 {
            let u = term_of!(lang, w::Urgency, n.urgency, "URGENCY_");
            rows.push((t.urgency.into(), u));
        }
    }
    if let Some(e) = &w.exploitation {
        let types = terms_of!(lang, w::ExploitationType, e.types, "EXPLOITATION_TYPE_");
        rows.push((t.exploitation.into(), types));
        if !e.countries.is_empty() {
            rows.push((t.exploitation_countries.into(), e.countries.join(", ")));
        }
    }
    if let Some(c) = &w.child {
        let yes_no = |b: bool| if b { t.yes } else { t.no };
        rows.push((t.is_child.into(), yes_no(c.is_child).into()));
        rows.push((
            t.guardian_assigned.into(),
            yes_no(c.guardian_assigned).into(),
        ));
        rows.push((
            t.best_interests.into(),
            yes_no(c.best_interests_determined).into(),
        ));
    }
    if let Some(p) = &w.identity {
        for (label, value) in [
            (t.given_name, &p.given_name),
            (t.family_name, &p.family_name),
            (t.date_of_birth, &p.date_of_birth),
            (t.document_number, &p.document_number),
            (t.address, &p.address),
            (t.phone, &p.phone),
        ] {
            if !value.is_empty() {
                rows.push((label.into(), value.clone()));
            }
        }
    }
    rows
}

/// "What will cross the border": every field `disclosed` holds, as a table.
pub(super) fn will_cross(l: &Labels, disclosed: &trm_core::model::DisclosedCase) -> Markup {
    let t = words(l);
    html! {
        h2 { (t.will_cross) }
        p { (t.will_cross_intro) }
        table id="will-cross" {
            thead { tr { th scope="col" { (t.field) } th scope="col" { (t.value) } } }
            tbody {
                @for (field, value) in crossing_rows(l.lang, t, disclosed) {
                    tr { th scope="row" { (field) } td { (value) } }
                }
            }
        }
    }
}

/// The form that proposes a return of `case_id` to `destination`, once every guard is met.
pub(super) fn propose_form(l: &Labels, case_id: &str, destination: &str) -> Markup {
    let t = words(l);
    html! {
        form method="post" action="/returns/propose" {
            (request_id())
            input type="hidden" name="case_id" value=(case_id);
            input type="hidden" name="destination" value=(destination);
            p class="choice" {
                input type="checkbox" id="hearing_pending" name="hearing_pending" value="1";
                label for="hearing_pending" { (t.hearing_pending) }
            }
            p { button type="submit" { (t.propose) } }
        }
    }
}

/// `GET /referrals/new?case_id=&destination=`: choose the destination, then see exactly
/// what will cross the border and send it.
async fn new_referral(State(ctx): State<Ctx>, b: Browser, Query(q): Query<Params>) -> Response {
    let Browser { l, who, .. } = b;
    let t = words(l);
    let case_id = q.case_id.clone().unwrap_or_default();
    let destination = q.destination.clone().unwrap_or_default();
    let choose = html! {
        form method="get" action="/referrals/new" {
            input type="hidden" name="case_id" value=(case_id);
            p {
                label for="destination" { (t.destination) }
                br;
                input id="destination" name="destination" type="text" size="2" required pattern="[A-Za-z]{2}" autocomplete="off" value=(destination);
                " "
                button type="submit" { (t.preview) }
            }
        }
    };
    if destination.is_empty() {
        return page(l, t.refer, choose).into_response();
    }
    let (id, to) = match super::pages::asked(&case_id, &destination) {
        Ok(asked) => asked,
        Err(s) => return refusal(l, &s),
    };
    let purpose = trm_core::model::Purpose::ReferralAssistance;
    let disclosed = match crate::disclosure::preview(&ctx, &who, id, purpose, to).await {
        Ok(d) => d,
        Err(e) => return refusal(l, &tonic::Status::from(e)),
    };
    // The services asked for start as the needs that will cross.
    let needs = trm_proto::convert::disclosed_to_wire(&disclosed)
        .needs
        .map(|n| n.kinds)
        .unwrap_or_default();
    let body = html! {
        (choose)
        (will_cross(l, &disclosed))
        form method="post" action="/referrals/submit" {
            (request_id())
            input type="hidden" name="case_id" value=(case_id);
            input type="hidden" name="destination" value=(destination);
            (checkboxes(l.lang, "requested_services", t.requested_services, &names!(w::NeedKind), "NEED_KIND_", &needs, need))
            (text("reason", t.reason, "", Some(t.reason_hint)))
            p { button type="submit" { (t.send) } }
        }
    };
    page(l, t.refer, body).into_response()
}

/// Every form of the case pages, posted: the service request made from the form with the
/// browser's certificate, then the page the browser goes to next; a refusal is shown as a
/// page that names the field or guard.
async fn post_form(State(ctx): State<Ctx>, b: Browser, uri: Uri, body: Bytes) -> Response {
    let Browser { l, certs, who } = b;
    let b = Browser { l, certs, who };
    match apply(&ctx, &b, uri.path(), &Fields::parse(&body)).await {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(s) => refusal(l, &s),
    }
}

/// Makes the request the form at `path` stands for; returns where the browser goes next.
async fn apply(ctx: &Ctx, b: &Browser, path: &str, f: &Fields) -> Result<String, tonic::Status> {
    match path {
        "/cases" | "/cases/draft" | "/cases/draft/discard" => new_case_form(ctx, b, path, f).await,
        "/referrals/submit" | "/returns/propose" => sending_form(ctx, b, path, f).await,
        _ => {
            case_form_posted(ctx, b, path, f).await?;
            Ok(case_page(&f.one("case_id")))
        }
    }
}

/// The forms of a new case: saved as a draft, the draft discarded, the case created.
async fn new_case_form(
    ctx: &Ctx,
    b: &Browser,
    path: &str,
    f: &Fields,
) -> Result<String, tonic::Status> {
    let service = Referrals::new(ctx.clone());
    let request_id = f.one("request_id");
    let groups = || case_groups(f);
    match path {
        "/cases/draft" => {
            let keep = |(n, _): &(String, String)| n != "request_id" && n != "draft_id";
            let fields = f.0.iter().filter(|x| keep(x)).cloned().collect();
            let id = crate::drafts::save(ctx, &b.who, draft_id(f)?, fields).await?;
            Ok(format!("/cases/new?draft={id}"))
        }
        "/cases/draft/discard" => {
            if let Some(id) = draft_id(f)? {
                crate::drafts::discard(ctx, &b.who, id).await?;
            }
            Ok("/cases".to_owned())
        }
        "/cases" => {
            let (person, needs, exploitation, child) = groups();
            let message = w::CreateCaseRequest {
                person: Some(person),
                needs: Some(needs),
                exploitation: Some(exploitation),
                child: Some(child),
                identified_on: f.one("identified_on"),
                request_id,
            };
            // The draft it came from, if any, is discarded with the case's creation.
            let mut create = request(&b.certs, message);
            if let Some(id) = draft_id(f)? {
                create.extensions_mut().insert(crate::drafts::UsedDraft(id));
            }
            let made = service.create_case(create).await?;
            Ok(case_page(&made.into_inner().case_id))
        }
        _ => Err(tonic::Status::not_found("no such form")),
    }
}

/// The forms of a case's page: an update, a consent recorded or withdrawn, an
/// identification decision, a residence status.
async fn case_form_posted(
    ctx: &Ctx,
    b: &Browser,
    path: &str,
    f: &Fields,
) -> Result<(), tonic::Status> {
    let service = Referrals::new(ctx.clone());
    let (case_id, request_id) = (f.one("case_id"), f.one("request_id"));
    let groups = || case_groups(f);
    match path {
        "/case/update" => {
            let (person, needs, exploitation, child) = groups();
            let paths = ["person", "needs", "exploitation", "child"].map(String::from);
            let message = w::UpdateCaseRequest {
                case_id: case_id.clone(),
                person: Some(person),
                needs: Some(needs),
                exploitation: Some(exploitation),
                child: Some(child),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.to_vec(),
                }),
                request_id,
            };
            service.update_case(request(&b.certs, message)).await?;
        }
        "/case/consent" => {
            let message = w::RecordConsentRequest {
                case_id: case_id.clone(),
                purposes: f.enums("purposes", purpose),
                recipients: f.codes("recipients"),
                expires_on: f.one("expires_on"),
                informed: f.ticked("informed"),
                information_language: f.one("information_language"),
                categories: f.enums("categories", category),
                request_id,
            };
            service.record_consent(request(&b.certs, message)).await?;
        }
        "/case/consent/withdraw" => {
            let message = w::WithdrawConsentRequest {
                case_id: case_id.clone(),
                consent_id: f.one("consent_id"),
                request_id,
            };
            service.withdraw_consent(request(&b.certs, message)).await?;
        }
        "/case/identification" => {
            let message = w::RecordIdentificationRequest {
                case_id: case_id.clone(),
                stage: f.choice("stage", identification_stage),
                decided_on: f.one("decided_on"),
                request_id,
            };
            service
                .record_identification(request(&b.certs, message))
                .await?;
        }
        "/case/residence" => {
            let message = w::RecordResidenceStatusRequest {
                case_id: case_id.clone(),
                status: f.choice("status", residence_status),
                valid_until: f.one("valid_until"),
                request_id,
            };
            service
                .record_residence_status(request(&b.certs, message))
                .await?;
        }
        _ => return Err(tonic::Status::not_found("no such form")),
    }
    Ok(())
}

/// The forms that send a case's data across the border: a referral, a return proposed.
async fn sending_form(
    ctx: &Ctx,
    b: &Browser,
    path: &str,
    f: &Fields,
) -> Result<String, tonic::Status> {
    let service = Referrals::new(ctx.clone());
    let (case_id, request_id) = (f.one("case_id"), f.one("request_id"));
    match path {
        "/referrals/submit" => {
            let message = w::SubmitReferralRequest {
                case_id,
                destination: f.one("destination"),
                requested_services: f.enums("requested_services", need),
                reason: f.one("reason"),
                request_id,
            };
            service.submit_referral(request(&b.certs, message)).await?;
            Ok("/referrals?direction=outgoing".to_owned())
        }
        "/returns/propose" => {
            use trm_proto::v1::return_planning_service_server::ReturnPlanningService;
            let message = w::ProposeReturnRequest {
                case_id,
                destination: f.one("destination"),
                hearing_pending: f.ticked("hearing_pending"),
                compensation_pending: false,
                request_id,
            };
            crate::returns::Returns::new(ctx.clone())
                .propose_return(request(&b.certs, message))
                .await?;
            Ok("/records?kind=returns&direction=outgoing".to_owned())
        }
        _ => Err(tonic::Status::not_found("no such form")),
    }
}

/// The form's `draft_id`, when it has one.
fn draft_id(f: &Fields) -> Result<Option<uuid::Uuid>, tonic::Status> {
    match f.one("draft_id") {
        id if id.is_empty() => Ok(None),
        id => uuid::Uuid::parse_str(&id)
            .map(Some)
            .map_err(|_| tonic::Status::invalid_argument("draft_id: is not a draft id")),
    }
}
