//! The browser console over real HTTPS, as a browser would use it (HTTP/1.1 over TLS with
//! the client certificate of a role, or none): the page for a browser without a
//! certificate, the work queue, an incoming referral answered through a form, a cross-site
//! form refused, and the headers every page carries. The same in a real browser, with
//! axe-core, is its own suite: tests/browser.

use anyhow::Context;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{
    console_send as send, refer, referral_arrived, referral_with_status, ConsoleAnswer as Answer,
    TestFederation,
};

pub(crate) fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nAccept-Language: en\r\nConnection: close\r\n\r\n")
}

fn post(path: &str, form: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{form}",
        form.len()
    )
}

/// The value of the hidden input `name` in the first form of `body`.
fn hidden(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &body[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[tokio::test]
async fn the_console_shows_the_queue_and_answers_a_referral_from_its_own_pages_only(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;

    // No certificate: a page that says how to get one, and nothing of the node.
    let bare = send(&fed, "RO", None, &get("/")).await?;
    assert_eq!(bare.status, 401, "{}", bare.head);
    assert!(bare.body.contains("client certificate"), "{}", bare.body);
    for (name, value) in [
        ("content-security-policy", "default-src 'none'"),
        ("content-security-policy", "frame-ancestors 'none'"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ] {
        let got = bare.header(name).unwrap_or_default();
        assert!(got.contains(value), "{name}: {got}");
    }

    // A referral arrives at RO: its focal point sees the task, then the referral.
    let id = refer(&fed, "AT", "RO").await?;
    referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &id).await?;
    let queue = send(&fed, "RO", Some(Role::FocalPoint), &get("/")).await?;
    assert_eq!(queue.status, 200, "{}", queue.body);
    assert!(queue.body.contains("answer referral") && queue.body.contains(&id));
    let list = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get("/referrals?direction=incoming"),
    )
    .await?;
    assert!(list.body.contains(&id), "{}", list.body);
    for page in [&bare.body, &queue.body, &list.body] {
        assert!(
            !page.contains("<script") && !page.contains("style="),
            "{page}"
        );
    }
    let request_id = hidden(&list.body, "request_id").context("no answer form")?;
    let form = format!("referral_id={id}&request_id={request_id}&decision=accept");

    // Another site's form is refused and changes nothing; a form of the console's own
    // pages is taken.
    let cross = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &post("/referrals/answer", &form, "Sec-Fetch-Site: cross-site\r\n"),
    )
    .await?;
    assert_eq!(cross.status, 403, "{}", cross.body);
    let no_origin = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &post("/referrals/answer", &form, ""),
    )
    .await?;
    assert_eq!(no_origin.status, 403, "neither Fetch metadata nor Origin");
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    let still = referral_arrived(&ro, &id).await?;
    assert_eq!(still.status, w::ReferralStatus::Delivered as i32);

    // A service provider may not answer: the service's own refusal, shown as a page.
    let own_page = post(
        "/referrals/answer",
        &form,
        "Sec-Fetch-Site: same-origin\r\n",
    );
    let answer = |role| send(&fed, "RO", Some(role), &own_page);
    let sp = answer(Role::ServiceProvider).await?;
    assert_eq!(sp.status, 403, "{}", sp.body);

    let ok = answer(Role::FocalPoint).await?;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let at = fed.referrals("AT", Role::ServiceProvider).await?;
    referral_with_status(&at, &id, w::ReferralStatus::Accepted).await?;
    // The same form sent again (a double click) changes nothing twice.
    let again = answer(Role::FocalPoint).await?;
    assert_eq!(again.status, 303, "{}", again.body);
    let queue = send(&fed, "RO", Some(Role::FocalPoint), &get("/")).await?;
    assert!(!queue.body.contains(&id), "answered: no longer waits");

    // The referral's page shows its timeline on this node: arrived, then accepted (once,
    // though the form came twice).
    let page = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get(&format!("/record?kind=referrals&id={id}")),
    )
    .await?;
    assert_eq!(page.status, 200, "{}", page.body);
    let timeline = page
        .body
        .split("id=\"timeline\"")
        .nth(1)
        .context("no timeline")?;
    let steps: Vec<&str> = timeline
        .split("<tr><td>")
        .skip(1)
        .filter_map(|row| row.split("</td>").next())
        .collect();
    assert_eq!(steps, ["delivered", "accepted"], "{timeline}");
    let unknown = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get(&format!(
            "/record?kind=referrals&id={}",
            uuid::Uuid::new_v4()
        )),
    )
    .await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // French labels where the browser asks for them.
    let fr = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get("/").replace("Accept-Language: en", "Accept-Language: fr-FR,fr;q=0.9"),
    )
    .await?;
    assert!(fr.body.contains("lang=\"fr\"") && fr.body.contains("File de travail"));
    fed.stop().await?;
    Ok(())
}

/// The return guards as a checklist, before anyone proposes a return: each one met or
/// missing with its reason, for who may read the case only.
#[tokio::test]
async fn the_return_guards_show_as_a_checklist_of_what_is_missing() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .create_case(trm_tests::requests::case("Checked", 45))
        .await?
        .into_inner()
        .case_id;
    let path = format!("/returns/checklist?case_id={case_id}&destination=RO");
    let rows = |body: &str| -> Vec<(String, bool)> {
        body.split("<tr")
            .filter_map(|row| {
                let guard = row.split("<code>").nth(1)?.split("</code>").next()?;
                Some((guard.to_owned(), row.contains(">missing<")))
            })
            .collect()
    };
    let before = send(&fed, "AT", Some(Role::ServiceProvider), &get(&path)).await?;
    assert_eq!(before.status, 200, "{}", before.body);
    let missing: Vec<String> = rows(&before.body)
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(g, _)| g)
        .collect();
    assert_eq!(missing, ["risk", "decision", "consent"], "{}", before.body);

    let mut rp = fed.returns("AT", Role::ServiceProvider).await?;
    crate::returns::make_ready(&mut sp, &mut rp, &case_id, &[]).await?;
    let after = send(&fed, "AT", Some(Role::ServiceProvider), &get(&path)).await?;
    let all = rows(&after.body);
    assert_eq!(all.len(), 9, "every guard: {}", after.body);
    assert!(all.iter().all(|(_, m)| !m), "{}", after.body);

    // Every guard met: the page shows what the plan will carry (the case's identity: the
    // return consent lists no category) and proposes it from its own form.
    let crossing = after
        .body
        .split("id=\"will-cross\"")
        .nth(1)
        .context("what will cross, once every guard is met")?;
    assert!(crossing.contains("a new reference"), "{crossing}");
    let form = format!(
        "case_id={case_id}&destination=RO&request_id={}",
        hidden(&after.body, "request_id").context("no propose form")?
    );
    let proposed = send(
        &fed,
        "AT",
        Some(Role::ServiceProvider),
        &post("/returns/propose", &form, "Sec-Fetch-Site: same-origin\r\n"),
    )
    .await?;
    assert_eq!(proposed.status, 303, "{}", proposed.body);
    let plans = rp
        .list_return_plans(w::ListReturnPlansRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .return_plans;
    assert_eq!(plans.len(), 1);
    let plan = plans[0].clone();
    assert_eq!(plan.case_id, case_id);
    crate::returns::wait_status(
        &fed.returns("RO", Role::FocalPoint).await?,
        &plan.return_id,
        w::ReturnStatus::Requested,
    )
    .await?;
    let sent = send(
        &fed,
        "AT",
        Some(Role::ServiceProvider),
        &get("/records?kind=returns&direction=outgoing"),
    )
    .await?;
    assert!(sent.body.contains(&plan.return_id), "{}", sent.body);
    let arrived = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get("/records?kind=returns"),
    )
    .await?;
    assert!(
        arrived.body.contains(&plan.return_id) && arrived.body.contains("requested"),
        "{}",
        arrived.body
    );
    let alerts = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get("/records?kind=alerts"),
    )
    .await?;
    assert_eq!(alerts.status, 200);
    assert!(alerts.body.contains("Nothing waits."), "{}", alerts.body);
    let bogus = send(
        &fed,
        "RO",
        Some(Role::FocalPoint),
        &get("/records?kind=cases"),
    )
    .await?;
    assert_eq!(bogus.status, 400);
    assert!(bogus.body.contains("kind"), "{}", bogus.body);

    // Nobody else's case: a judicial authority reads no case at all.
    let ja = send(&fed, "AT", Some(Role::JudicialAuthority), &get(&path)).await?;
    assert_eq!(ja.status, 403, "{}", ja.body);
    let bad = send(
        &fed,
        "AT",
        Some(Role::ServiceProvider),
        &get("/returns/checklist?case_id=nope&destination=RO"),
    )
    .await?;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("case_id"), "{}", bad.body);
    fed.stop().await?;
    Ok(())
}

/// A case made in the console from its first form to a referral: created (a bad date
/// refused by name, nothing made), its consent recorded with the language the victim was
/// informed in (the victim-facing account in that language), identification and residence
/// recorded, updated, and "what will cross the border" shown before sending exactly as the
/// referral then carries it. No name reaches a URL.
#[tokio::test]
async fn a_case_is_made_consented_and_referred_from_the_console_showing_what_will_cross(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let same = "Sec-Fetch-Site: same-origin\r\n";
    let sp = Some(Role::ServiceProvider);
    let form = "given_name=Ilinca&family_name=Varzarescu&date_of_birth=1999-04-02&\
                gender=GENDER_FEMALE&citizenship=MD&languages=ro%2C+ru&\
                document_number=MD0042&phone=%2B37300000&needs=NEED_KIND_SHELTER&\
                needs=NEED_KIND_MEDICAL&urgency=URGENCY_URGENT&\
                exploitation=EXPLOITATION_TYPE_FORCED_LABOUR&exploitation_countries=AT";
    let mut urls = Vec::new();

    let empty = send(&fed, "AT", sp, &get("/cases")).await?;
    assert!(empty.body.contains("None recorded."), "{}", empty.body);
    let bad = form.replace("1999-04-02", "02.04.1999");
    let refused = send(&fed, "AT", sp, &post("/cases", &bad, same)).await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("date_of_birth"), "{}", refused.body);
    let mut grpc = fed.referrals("AT", Role::ServiceProvider).await?;
    let none = grpc.list_cases(w::ListCasesRequest::default()).await?;
    assert!(
        none.into_inner().cases.is_empty(),
        "a refused form makes nothing"
    );

    // Saved as a draft first: the address names the draft only, the form comes back
    // filled in, for the role and organisation that saved it only.
    let new = send(&fed, "AT", sp, &get("/cases/new")).await?;
    let request_id = hidden(&new.body, "request_id").context("no request id")?;
    let saved = send(&fed, "AT", sp, &post("/cases/draft", form, same)).await?;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let draft_url = saved.header("location").context("no location")?.to_owned();
    urls.push(draft_url.clone());
    let draft_id = draft_url
        .strip_prefix("/cases/new?draft=")
        .context("the draft's form")?
        .to_owned();
    let listed = send(&fed, "AT", sp, &get("/cases")).await?;
    assert!(listed.body.contains(&draft_id), "{}", listed.body);
    let resumed = send(&fed, "AT", sp, &get(&draft_url)).await?;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(
        resumed.body.contains("value=\"Varzarescu\""),
        "{}",
        resumed.body
    );
    let other = send(&fed, "AT", Some(Role::FocalPoint), &get(&draft_url)).await?;
    assert_eq!(other.status, 404, "another role's draft: {}", other.body);
    let made = send(
        &fed,
        "AT",
        sp,
        &post(
            "/cases",
            &format!("{form}&request_id={request_id}&draft_id={draft_id}"),
            same,
        ),
    )
    .await?;
    assert_eq!(made.status, 303, "{}", made.body);
    let at_case = made.header("location").context("no location")?.to_owned();
    urls.push(at_case.clone());
    let case_id = at_case
        .strip_prefix("/case?case_id=")
        .context("a case page")?
        .to_owned();
    // The same form sent twice makes one case.
    let twice = send(
        &fed,
        "AT",
        sp,
        &post("/cases", &format!("{form}&request_id={request_id}"), same),
    )
    .await?;
    assert_eq!(twice.header("location"), Some(at_case.as_str()));
    let shown = send(&fed, "AT", sp, &get(&at_case)).await?;
    assert!(shown.body.contains("Varzarescu") && shown.body.contains("shelter"));
    // The draft served: gone, its key shredded.
    let gone = send(&fed, "AT", sp, &get(&draft_url)).await?;
    assert_eq!(gone.status, 404, "{}", gone.body);

    // Consent, informed in French: the account the victim was given reads in French.
    let consent = format!(
        "case_id={case_id}&purposes=PURPOSE_REFERRAL_ASSISTANCE&recipients=RO&informed=1&\
         information_language=fr&request_id={}",
        uuid::Uuid::new_v4()
    );
    let ok = send(&fed, "AT", sp, &post("/case/consent", &consent, same)).await?;
    assert_eq!(ok.status, 303, "{}", ok.body);
    // Identification by the case's organisation; residence by the focal point (the
    // authorities' decision), each as the service allows.
    for (path, who, form) in [
        (
            "/case/identification",
            sp,
            format!(
                "case_id={case_id}&stage=IDENTIFICATION_STAGE_REASONABLE_GROUNDS&decided_on={}&\
                 request_id={}",
                trm_core::model::format_date(time::OffsetDateTime::now_utc().date()),
                uuid::Uuid::new_v4()
            ),
        ),
        (
            "/case/residence",
            Some(Role::FocalPoint),
            format!(
                "case_id={case_id}&status=RESIDENCE_STATUS_REFLECTION_PERIOD&request_id={}",
                uuid::Uuid::new_v4()
            ),
        ),
    ] {
        let ok = send(&fed, "AT", who, &post(path, &form, same)).await?;
        assert_eq!(ok.status, 303, "{path}: {}", ok.body);
    }
    let shown = send(&fed, "AT", sp, &get(&at_case)).await?;
    assert!(
        shown.body.contains("lang=\"fr\"") && shown.body.contains("Vous avez accepté"),
        "{}",
        shown.body
    );
    assert!(shown.body.contains("reasonable grounds") && shown.body.contains("reflection period"));

    // Updated: the needs change, the rest stays.
    let update = format!(
        "case_id={case_id}&{}&request_id={}",
        form.replace("needs=NEED_KIND_MEDICAL&", "needs=NEED_KIND_LEGAL&"),
        uuid::Uuid::new_v4()
    );
    let ok = send(&fed, "AT", sp, &post("/case/update", &update, same)).await?;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let case = grpc
        .get_case(w::GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await?
        .into_inner();
    let needs = case.needs.context("needs")?.kinds;
    assert_eq!(
        needs,
        [w::NeedKind::Shelter as i32, w::NeedKind::Legal as i32]
    );
    assert_eq!(case.person.context("person")?.family_name, "Varzarescu");

    // Only who may send the referral may see what it would carry: not the immigration
    // authority, nor a judicial authority (each sees the service's refusal).
    for role in [Role::ImmigrationAuthority, Role::JudicialAuthority] {
        let path = format!("/referrals/new?case_id={case_id}&destination=RO");
        let refused = send(&fed, "AT", Some(role), &get(&path)).await?;
        assert_eq!(refused.status, 403, "{role}: {}", refused.body);
        assert!(!refused.body.contains("MD"), "{role}: {}", refused.body);
    }
    // Another site may not make the browser read the case (and audit it in the person's
    // name): only a link to the front page passes; the person's own navigation does.
    for (headers, path, status) in [
        (
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n",
            at_case.as_str(),
            403,
        ),
        (
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n",
            at_case.as_str(),
            403,
        ),
        (
            "Sec-Fetch-Site: same-site\r\nSec-Fetch-Mode: navigate\r\n",
            at_case.as_str(),
            403,
        ),
        (
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n",
            "/",
            200,
        ),
        (
            "Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n",
            at_case.as_str(),
            200,
        ),
        (
            "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\n",
            at_case.as_str(),
            200,
        ),
    ] {
        let request =
            get(path).replace("Connection: close", &format!("{headers}Connection: close"));
        let answer = send(&fed, "AT", sp, &request).await?;
        assert_eq!(answer.status, status, "{headers} {path}: {}", answer.body);
    }

    // What will cross: the referral's fields, no name, no document, no phone.
    let preview_url = format!("/referrals/new?case_id={case_id}&destination=RO");
    urls.push(preview_url.clone());
    let preview = send(&fed, "AT", sp, &get(&preview_url)).await?;
    assert_eq!(preview.status, 200, "{}", preview.body);
    let crossing = preview
        .body
        .split("id=\"will-cross\"")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .context("no table of what crosses")?
        .to_owned();
    for shown in [
        "a new reference",
        "MD",
        "ro, ru",
        "shelter",
        "legal",
        "forced labour",
    ] {
        assert!(crossing.contains(shown), "{shown}: {crossing}");
    }
    for hidden in ["Varzarescu", "Ilinca", "MD0042", "37300000", "1999"] {
        assert!(!crossing.contains(hidden), "{hidden}: {crossing}");
    }
    // Without consent to that country, nothing to preview: the `consent` guard by name.
    let elsewhere = send(
        &fed,
        "AT",
        sp,
        &get(&format!("/referrals/new?case_id={case_id}&destination=NG")),
    )
    .await?;
    assert_eq!(elsewhere.status, 400, "NG is no peer: {}", elsewhere.body);

    let submit = format!(
        "case_id={case_id}&destination=RO&requested_services=NEED_KIND_SHELTER&reason=bed&\
         request_id={}",
        hidden(&preview.body, "request_id").context("no request id")?
    );
    let sent = send(&fed, "AT", sp, &post("/referrals/submit", &submit, same)).await?;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let out = grpc
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    assert_eq!(out.len(), 1);
    let disclosed = out[0].disclosed.clone().context("disclosed")?;
    assert!(disclosed.identity.is_none());
    assert_eq!(disclosed.citizenship, ["MD"]);
    assert_eq!(disclosed.languages, ["ro", "ru"]);
    referral_arrived(
        &fed.referrals("RO", Role::FocalPoint).await?,
        &out[0].referral_id,
    )
    .await?;
    // Once sent, the pair's reference is the one the referral carries.
    let again = send(&fed, "AT", sp, &get(&preview_url)).await?;
    assert!(again.body.contains(&disclosed.case_ref), "{}", again.body);

    for url in &urls {
        for name in ["Varzarescu", "Ilinca", "MD0042"] {
            assert!(!url.contains(name), "{url}");
        }
    }
    fed.stop().await?;
    Ok(())
}

/// A browser over its certificate's request rate is told to wait (429 with Retry-After,
/// a page); another certificate is served meanwhile; a connection that sends its headers
/// too slowly is closed.
#[tokio::test]
async fn a_browser_over_its_rate_is_told_to_wait_and_a_dawdling_one_is_closed() -> anyhow::Result<()>
{
    let fed = TestFederation::builder()
        .nodes(&["AT"])
        .config(|_, cfg| {
            cfg.limits.client_requests_per_second = 2;
            cfg.limits.client_burst = 2;
            cfg.limits.handshake_timeout_secs = 1;
        })
        .start()
        .await?;
    // Headers begun and never finished: the console closes the connection once the
    // deadline passes (a test deadline far beyond it guards against waiting forever).
    let dawdle = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        send(
            &fed,
            "AT",
            Some(Role::FocalPoint),
            "GET / HTTP/1.1\r\nHost: HOST\r\nAccept-Lang",
        ),
    )
    .await
    .context("the console kept a connection whose headers never ended")?;
    assert!(
        dawdle.as_ref().map_or(true, |a| a.status == 408),
        "closed without serving: {:?}",
        dawdle.map(|a| a.status)
    );
    // Nothing at all after the handshake (nor an HTTP/2 preface): closed the same way.
    for silence in ["", "PRI * HTTP/2.0\r\n"] {
        let quiet = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            send(&fed, "AT", Some(Role::FocalPoint), silence),
        )
        .await
        .context("the console kept a silent connection")?;
        assert!(
            quiet.as_ref().map_or(true, |a| a.status >= 400),
            "closed without serving: {:?}",
            quiet.map(|a| a.status)
        );
    }
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(send(&fed, "AT", Some(Role::ServiceProvider), &get("/")).await?);
    }
    let waited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(!waited.is_empty(), "20 requests in a row exceed 2 a second");
    assert!(answers.iter().any(|a| a.status == 200), "within the rate");
    let wait = waited[0];
    assert_eq!(wait.header("retry-after"), Some("1"));
    assert!(wait.body.contains("Too many requests") && wait.body.contains("<title>"));
    let other = send(&fed, "AT", Some(Role::FocalPoint), &get("/")).await?;
    assert_eq!(other.status, 200, "{}", other.body);
    fed.stop().await?;
    Ok(())
}

/// What another site makes a person's browser ask for is refused before it is counted:
/// a page elsewhere loading the console's pages by the dozen does not use up the rate the
/// person needs for their own work.
#[tokio::test]
async fn requests_another_site_starts_do_not_use_up_a_persons_rate() -> anyhow::Result<()> {
    let fed = TestFederation::builder()
        .nodes(&["AT"])
        .config(|_, cfg| {
            cfg.limits.client_requests_per_second = 2;
            cfg.limits.client_burst = 2;
        })
        .start()
        .await?;
    let cross_site = "GET /case?case_id=0 HTTP/1.1\r\nHost: HOST\r\nSec-Fetch-Site: cross-site\r\n\
                      Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\nConnection: close\r\n\r\n";
    for _ in 0..20 {
        let refused = send(&fed, "AT", Some(Role::FocalPoint), cross_site).await?;
        assert_eq!(refused.status, 403, "{}", refused.body);
    }
    let own = send(&fed, "AT", Some(Role::FocalPoint), &get("/")).await?;
    assert_eq!(own.status, 200, "{}", own.body);
    fed.stop().await?;
    Ok(())
}
