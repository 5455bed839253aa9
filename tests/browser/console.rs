//! The console as its users meet it: a focal point answers an incoming referral in a real
//! browser, with the checks every page must pass along the way; a browser without a
//! certificate is told how to get one.

use anyhow::Result;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{captured_logs, referral_arrived, referral_with_status, TestFederation};

use crate::harness::{assert_headers, console_url, Browser, Home, OtherSite, Tools};

/// The victim of the walk: names that appear nowhere else, so that finding one in a URL or
/// a log line can only mean it leaked.
const GIVEN_NAME: &str = "Ilinca";
const FAMILY_NAME: &str = "Zamvirescova";

/// A referral that crossed the border, and its case at the origin.
struct Referred {
    case_id: String,
    referral_id: String,
}

/// The identity document number of the walk's victim: no consent lists identity, so it
/// must never show among what will cross.
const DOCUMENT: &str = "MD0042917";

/// What AT's service provider does in the console before the referral reaches RO: a new
/// case (saved as a draft on the way), the victim's consent (informed in French: the
/// victim's account then reads in French), what will cross the border, and the referral.
async fn origin_refers(fed: &TestFederation, at: &mut Browser) -> Result<Referred> {
    let at_sp = ("AT", Some(Role::ServiceProvider));
    visit(fed, at, at_sp, "/cases", None).await?;
    visit(fed, at, at_sp, "/cases/new", Some("new-case")).await?;
    for (field, value) in [
        ("#given_name", GIVEN_NAME),
        ("#family_name", FAMILY_NAME),
        ("#date_of_birth", "1999-04-02"),
        ("#citizenship", "MD"),
        ("#languages", "ro"),
        ("#document_number", DOCUMENT),
        ("#exploitation_countries", "AT"),
    ] {
        at.fill(field, value).await?;
    }
    at.choose("#gender", "GENDER_FEMALE").await?;
    at.choose("#urgency", "URGENCY_URGENT").await?;
    at.click("#needs-need_kind_shelter").await?;
    at.click("#needs-need_kind_medical").await?;
    at.click("#exploitation-exploitation_type_forced_labour")
        .await?;

    // Saved as a draft first: the form comes back filled in, under an address that names
    // the draft only.
    at.click("button[formaction='/cases/draft']").await?;
    at.wait_for_prefix("/cases/new?draft=").await?;
    at.check_page(None).await?;
    assert!(at.text().await?.contains("Draft saved"));
    at.click("form[action='/cases'] button:not([formaction])")
        .await?;
    let case_page = at.wait_for_prefix("/case?case_id=").await?;
    let case_id = case_page.trim_start_matches("/case?case_id=").to_owned();
    assert_headers(fed, "AT", at_sp.1, &case_page, 200).await?;
    at.check_page(None).await?;

    // The consent: referral assistance to RO, the victim informed in French.
    at.click("#purposes-purpose_referral_assistance").await?;
    at.fill("#recipients", "RO").await?;
    at.choose("#information_language", "fr").await?;
    at.click("#informed").await?;
    at.click("form[action='/case/consent'] button").await?;
    at.wait_for_path(&case_page).await?;
    at.check_page(Some("case")).await?;
    let account = at.first_text("p.consent-text").await?;
    assert!(account.starts_with("Vous avez accepté"), "{account}");

    // What will cross the border, before anything is sent: what the purpose and the
    // consent allow, never the name or the document.
    at.click(&format!("a[href='/referrals/new?case_id={case_id}']"))
        .await?;
    at.wait_for_path(&format!("/referrals/new?case_id={case_id}"))
        .await?;
    at.fill("#destination", "RO").await?;
    at.click("form[action='/referrals/new'] button").await?;
    let preview = format!("/referrals/new?case_id={case_id}&destination=RO");
    at.wait_for_path(&preview).await?;
    assert_headers(fed, "AT", at_sp.1, &preview, 200).await?;
    at.check_page(Some("what-will-cross")).await?;
    let crossing = at.first_text("#will-cross").await?;
    for shown in ["a new reference", "MD", "shelter", "forced labour"] {
        assert!(crossing.contains(shown), "{shown}: {crossing}");
    }
    for hidden in [GIVEN_NAME, FAMILY_NAME, DOCUMENT, "1999"] {
        assert!(
            !crossing.contains(hidden),
            "{hidden} would cross: {crossing}"
        );
    }
    at.click("form[action='/referrals/submit'] button").await?;
    at.wait_for_path("/referrals?direction=outgoing").await?;
    at.check_page(None).await?;
    let referral_id = at.first_text("table tbody tr td code").await?;

    // What crossed is what the page showed.
    let sent = fed
        .referrals("AT", Role::ServiceProvider)
        .await?
        .get_referral(w::GetReferralRequest {
            referral_id: referral_id.clone(),
        })
        .await?
        .into_inner();
    let disclosed = sent.disclosed.unwrap_or_default();
    assert!(disclosed.identity.is_none(), "{disclosed:?}");
    assert_eq!(disclosed.citizenship, ["MD"]);
    Ok(Referred {
        case_id,
        referral_id,
    })
}

/// Opens `path` at `node`'s console in `browser` (as `role`), then checks the page: its
/// headers (over a separate HTTPS client: WebDriver cannot read them), and in the browser
/// what [`Browser::check_page`] checks.
async fn visit(
    fed: &TestFederation,
    browser: &mut Browser,
    (node, role): (&str, Option<Role>),
    path: &str,
    shot: Option<&str>,
) -> Result<String> {
    browser.open(&console_url(fed, node, path)?).await?;
    let status = if role.is_some() { 200 } else { 401 };
    assert_eq!(browser.status().await?, u64::from(status), "{path}");
    assert_headers(fed, node, role, path, status).await?;
    browser.check_page(shot).await?;
    browser.text().await
}

#[tokio::test]
async fn a_focal_point_accepts_an_incoming_referral_in_a_real_browser() -> Result<()> {
    let tools = Tools::find()?;
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let ro_fp = ("RO", Some(Role::FocalPoint));
    let at_sp = ("AT", Some(Role::ServiceProvider));
    let mut ro = Browser::start(&tools, Home::new(&fed, "RO", ro_fp.1)?).await?;
    let mut at = Browser::start(&tools, Home::new(&fed, "AT", at_sp.1)?).await?;

    // At the origin: the case, the consent, the referral.
    let Referred {
        case_id,
        referral_id: id,
    } = origin_refers(&fed, &mut at).await?;
    let mut ro_client = fed.referrals("RO", Role::FocalPoint).await?;
    referral_arrived(&ro_client, &id).await?;

    // At the destination, RO's focal point: the task in the work queue, then the referral.
    let queue = visit(&fed, &mut ro, ro_fp, "/", Some("work-queue")).await?;
    assert!(
        queue.contains("Work queue") && ro.row(&id).await?.contains("answer referral"),
        "{queue}"
    );
    let incoming = visit(
        &fed,
        &mut ro,
        ro_fp,
        "/referrals?direction=incoming",
        Some("incoming-referrals"),
    )
    .await?;
    let row = ro.row(&id).await?;
    assert!(
        row.contains("AT → RO") && row.contains("delivered"),
        "{incoming}"
    );

    // Another site's page posts the same answer: the browser is refused, nothing changes.
    let action = console_url(&fed, "RO", "/referrals/answer")?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let other = OtherSite::serve(
        &action,
        &[
            ("referral_id", &id),
            ("request_id", &request_id),
            ("decision", "accept"),
        ],
    )
    .await?;
    ro.open(&other.url).await?;
    ro.click("#go").await?;
    ro.wait_for_path("/referrals/answer").await?;
    trm_tests::eventually("the browser to show the refusal", || async {
        let text = ro.text().await?;
        Ok(text
            .contains("a change must be made from this console's own pages")
            .then_some(()))
    })
    .await?;
    assert_eq!(ro.status().await?, 403);
    ro.check_page(None).await?;
    let still = referral_arrived(&ro_client, &id).await?;
    assert_eq!(
        still.status,
        w::ReferralStatus::Delivered as i32,
        "a cross-site form changed the referral"
    );

    // The focal point's own click on Accept.
    visit(&fed, &mut ro, ro_fp, "/referrals?direction=incoming", None).await?;
    ro.click(&format!(
        "form:has(input[name='referral_id'][value='{id}']) button[value='accept']"
    ))
    .await?;
    let row = ro.wait_for_row(&id, "accepted").await?;
    assert!(!row.contains("Accept"), "no answer to give twice: {row}");
    ro.wait_for_path("/referrals?direction=incoming").await?;
    ro.check_page(None).await?;
    let accepted = ro_client
        .get_referral(w::GetReferralRequest {
            referral_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(accepted.status, w::ReferralStatus::Accepted as i32);
    let queue = visit(&fed, &mut ro, ro_fp, "/", None).await?;
    assert!(!queue.contains(&id), "answered, no longer waits: {queue}");
    // The referral's own page: its timeline on this node.
    let record = visit(
        &fed,
        &mut ro,
        ro_fp,
        &format!("/record?kind=referrals&id={id}"),
        Some("timeline"),
    )
    .await?;
    let timeline = ro.first_text("#timeline tbody").await?;
    assert!(
        timeline.find("delivered") < timeline.find("accepted") && timeline.contains("delivered"),
        "{record}"
    );

    // The other pages of the destination's console.
    for (kind, shot) in [
        ("returns", Some("records")),
        ("hearings", None),
        ("alerts", None),
        ("claims", None),
    ] {
        let page = visit(&fed, &mut ro, ro_fp, &format!("/records?kind={kind}"), shot).await?;
        assert!(page.contains("Nothing waits."), "{kind}: {page}");
    }
    visit(&fed, &mut ro, ro_fp, "/referrals?direction=outgoing", None).await?;
    visit(&fed, &mut ro, ro_fp, "/returns/checklist", None).await?;

    // At the origin, AT's service provider sees the answer, and what a return would lack.
    referral_with_status(
        &fed.referrals("AT", Role::ServiceProvider).await?,
        &id,
        w::ReferralStatus::Accepted,
    )
    .await?;
    visit(&fed, &mut at, at_sp, "/referrals?direction=outgoing", None).await?;
    let row = at.row(&id).await?;
    assert!(row.contains("accepted"), "{row}");
    let checklist = visit(
        &fed,
        &mut at,
        at_sp,
        &format!("/returns/checklist?case_id={case_id}&destination=RO"),
        Some("return-checklist"),
    )
    .await?;
    for guard in ["risk", "decision", "consent"] {
        assert!(
            at.row(guard).await?.contains("missing"),
            "{guard}: {checklist}"
        );
    }

    // No personal data in any address the browsers were at, nor in the nodes' logs.
    let mut visited = ro.close().await?;
    visited.extend(at.close().await?);
    assert!(visited.len() >= 15, "{visited:?}");
    for name in [GIVEN_NAME, FAMILY_NAME] {
        let needle = name.to_lowercase();
        for url in &visited {
            assert!(!url.to_lowercase().contains(&needle), "{name} in {url}");
        }
        assert!(
            !captured_logs().to_lowercase().contains(&needle),
            "{name} in the nodes' logs"
        );
    }
    drop(other);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_browser_without_a_certificate_is_told_how_to_get_one() -> Result<()> {
    let tools = Tools::find()?;
    let fed = TestFederation::start(&["RO"]).await?;
    let mut bare = Browser::start(&tools, Home::new(&fed, "RO", None)?).await?;
    let page = visit(&fed, &mut bare, ("RO", None), "/", Some("no-certificate")).await?;
    assert!(
        page.contains("This console needs your client certificate")
            && page.contains("trmctl client issue --p12"),
        "{page}"
    );
    let page = visit(
        &fed,
        &mut bare,
        ("RO", None),
        "/referrals?direction=incoming",
        None,
    )
    .await?;
    assert!(
        page.contains("This console needs your client certificate")
            && bare.count("table").await? == 0,
        "nothing of the node: {page}"
    );
    bare.close().await?;
    fed.stop().await?;
    Ok(())
}

/// A French-speaking focal point and case worker get the console in French, and its pages
/// pass the same checks (axe-core included, on pages whose language is French).
#[tokio::test]
async fn the_console_speaks_french_to_a_browser_that_asks_for_it() -> Result<()> {
    let tools = Tools::find()?;
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let id = trm_tests::refer(&fed, "AT", "RO").await?;
    referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &id).await?;
    let ro_fp = ("RO", Some(Role::FocalPoint));
    let mut ro = Browser::start_in(&tools, Home::new(&fed, "RO", ro_fp.1)?, "fr-FR").await?;
    let queue = visit(&fed, &mut ro, ro_fp, "/", None).await?;
    assert!(queue.contains("File de travail"), "{queue}");
    let incoming = visit(&fed, &mut ro, ro_fp, "/referrals?direction=incoming", None).await?;
    assert!(
        incoming.contains("Orientations reçues") && ro.row(&id).await?.contains("Accepter"),
        "{incoming}"
    );
    ro.close().await?;
    let at_sp = ("AT", Some(Role::ServiceProvider));
    let mut at = Browser::start_in(&tools, Home::new(&fed, "AT", at_sp.1)?, "fr-FR").await?;
    let form = visit(&fed, &mut at, at_sp, "/cases/new", None).await?;
    assert!(
        form.contains("Nouveau dossier") && form.contains("Nom de famille"),
        "{form}"
    );
    at.close().await?;
    fed.stop().await?;
    Ok(())
}
