//! Monitoring statistics: a signed report of whole closed months whose small cells (and
//! their complements) are hidden, and regional sums that hide them again.

use prost::Message;
use time::{Date, Duration, OffsetDateTime};
use tonic::transport::Channel;
use tonic::Code;
use trm_core::ids::Role;
use trm_crypto::signing::{self, STATISTICS_TAG};
use trm_proto::v1::{self as w, referral_service_client::ReferralServiceClient};
use trm_tests::TestFederation;

/// The first day of the month before last: a closed month on every day of the year.
fn closed_month() -> (Date, Date) {
    let today = OffsetDateTime::now_utc().date();
    let this_month = today.replace_day(1).unwrap_or(today);
    let last = (this_month - Duration::days(1))
        .replace_day(1)
        .unwrap_or(today);
    let before = (last - Duration::days(1)).replace_day(1).unwrap_or(today);
    (before, last)
}

/// One kind of person, created `n` times at a node.
struct Kind {
    gender: w::Gender,
    /// Age in years on the day identified.
    age: i32,
    citizenship: &'static str,
    exploitation: w::ExploitationType,
    child: bool,
}

async fn create(
    sp: &mut ReferralServiceClient<Channel>,
    k: &Kind,
    n: usize,
    identified: Date,
) -> anyhow::Result<()> {
    let born = identified
        .replace_year(identified.year() - k.age)
        .unwrap_or(identified)
        - Duration::days(30);
    for i in 0..n {
        sp.create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: format!("Counted {i}"),
                family_name: "Person".into(),
                date_of_birth: trm_core::model::format_date(born),
                gender: k.gender as i32,
                citizenship: vec![k.citizenship.into()],
                ..Default::default()
            }),
            exploitation: Some(w::Exploitation {
                types: vec![k.exploitation as i32],
                countries: vec![],
            }),
            child: Some(w::ChildInfo {
                is_child: k.child,
                ..Default::default()
            }),
            identified_on: trm_core::model::format_date(identified),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

async fn export(
    fed: &TestFederation,
    node: &str,
    (start, end): (Date, Date),
) -> Result<w::ExportStatisticsResponse, tonic::Status> {
    let mut admin = fed
        .admin(node, Role::Operator)
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    admin
        .export_statistics(w::ExportStatisticsRequest {
            period_start: start.to_string(),
            period_end: end.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn cell<'a>(
    report: &'a w::StatisticsReport,
    table: &str,
    labels: &[(&str, &str)],
) -> Option<&'a w::StatisticCell> {
    report.cells.iter().find(|c| {
        c.table == table
            && c.labels.len() == labels.len()
            && c.labels
                .iter()
                .zip(labels)
                .all(|(l, (d, v))| l.dimension == *d && l.value == *v)
    })
}

#[tokio::test]
async fn a_rare_person_is_hidden_in_every_table_and_the_report_is_signed() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let month = closed_month();
    let identified = month.0 + Duration::days(9);
    let common = [
        (w::Gender::Female, 22, "RO", w::ExploitationType::Sexual, 12),
        (
            w::Gender::Female,
            25,
            "AT",
            w::ExploitationType::ForcedLabour,
            12,
        ),
        (w::Gender::Male, 33, "BG", w::ExploitationType::Begging, 13),
    ];
    for (gender, age, citizenship, exploitation, n) in common {
        let kind = Kind {
            gender,
            age,
            citizenship,
            exploitation,
            child: false,
        };
        create(&mut sp, &kind, n, identified).await?;
    }
    let rare = Kind {
        gender: w::Gender::Male,
        age: 12,
        citizenship: "NG",
        exploitation: w::ExploitationType::OrganRemoval,
        child: true,
    };
    create(&mut sp, &rare, 1, identified).await?;

    let r = export(&fed, "AT", month).await?;
    // The signature verifies with the key AT publishes to its peers.
    let published = crate::transport::as_ro(&fed)
        .await?
        .get_node_info(w::GetNodeInfoRequest::default())
        .await?
        .into_inner()
        .keys;
    let key = published
        .iter()
        .find(|k| k.key_id == r.key_id)
        .ok_or_else(|| anyhow::anyhow!("the report's key is not one AT publishes"))?;
    let public = signing::public_from_bytes(&key.public_key)?;
    signing::verify(&public, STATISTICS_TAG, &r.report, &r.signature)?;
    let mut tampered = r.report.clone();
    let end = tampered.len() - 1;
    tampered[end] ^= 1;
    assert!(signing::verify(&public, STATISTICS_TAG, &tampered, &r.signature).is_err());

    let report = w::StatisticsReport::decode(r.report.as_slice())?;
    assert_eq!(report.node_id, "AT");
    assert_eq!(
        (report.period_start.as_str(), report.period_end.as_str()),
        (month.0.to_string().as_str(), month.1.to_string().as_str())
    );
    assert_eq!(report.min_cell_count, 11);
    // Every cell that counts the rare person is hidden.
    let rare_cells = [
        (
            "victims_by_gender_age",
            vec![("gender", "GENDER_MALE"), ("age_band", "AGE_BAND_9_17")],
        ),
        (
            "victims_by_exploitation",
            vec![("exploitation_type", "EXPLOITATION_TYPE_ORGAN_REMOVAL")],
        ),
        ("victims_by_citizenship", vec![("citizenship", "OTHER")]),
        ("children", vec![("is_child", "true")]),
    ];
    for (table, labels) in &rare_cells {
        let c = cell(&report, table, labels)
            .ok_or_else(|| anyhow::anyhow!("no cell {table} {labels:?}"))?;
        assert!(c.suppressed && c.count == 0, "{table} {labels:?}: {c:?}");
    }
    assert!(
        cell(&report, "victims_by_citizenship", &[("citizenship", "NG")]).is_none(),
        "a citizenship of one person is folded into OTHER"
    );
    // The common cells that are not needed to hide the rare one are published as they are.
    for (table, labels, count) in [
        (
            "victims_by_gender_age",
            vec![("gender", "GENDER_MALE"), ("age_band", "AGE_BAND_30_38")],
            13,
        ),
        (
            "victims_by_gender_age",
            vec![("gender", "GENDER_FEMALE"), ("age_band", "AGE_BAND_24_26")],
            12,
        ),
        (
            "victims_by_exploitation",
            vec![("exploitation_type", "EXPLOITATION_TYPE_BEGGING")],
            13,
        ),
        ("victims_by_citizenship", vec![("citizenship", "BG")], 13),
        ("victims_by_citizenship", vec![("citizenship", "RO")], 12),
    ] {
        let c = cell(&report, table, &labels)
            .ok_or_else(|| anyhow::anyhow!("no cell {table} {labels:?}"))?;
        assert_eq!(
            (c.count, c.suppressed),
            (count, false),
            "{table} {labels:?}"
        );
    }
    // No table holds exactly one suppressed cell (it could be recovered by subtraction).
    let mut tables: Vec<&str> = report.cells.iter().map(|c| c.table.as_str()).collect();
    tables.dedup();
    for t in tables {
        let hidden = report
            .cells
            .iter()
            .filter(|c| c.table == t && c.suppressed)
            .count();
        assert_ne!(hidden, 1, "{t}");
    }
    // Nothing finer than the period, no id, no reference.
    let text = format!("{report:?}");
    assert!(!text.contains(&identified.to_string()));
    assert!(!text.contains("Counted"));

    // The export is audited.
    let audit = fed
        .admin("AT", Role::Operator)
        .await?
        .export_audit(w::ExportAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(audit
        .entries
        .iter()
        .any(|e| e.action == "statistics.export"));
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn open_partial_and_future_periods_are_refused_naming_the_field() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let today = OffsetDateTime::now_utc().date();
    let this_month = today.replace_day(1).unwrap_or(today);
    let (closed, last) = closed_month();
    let next_month = (this_month + Duration::days(32))
        .replace_day(1)
        .unwrap_or(today);
    for (period, field) in [
        ((last, next_month), "period_end"), // open: the current month
        ((closed + Duration::days(3), last), "period_start"), // not a whole month
        ((closed, last - Duration::days(1)), "period_end"),
        ((this_month, next_month), "period_end"), // in the future
        ((last, closed), "period_end"),           // backwards
    ] {
        let err = export(&fed, "AT", period).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{period:?}");
        assert!(
            err.message().starts_with(field),
            "{period:?}: {}",
            err.message()
        );
    }
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let err = admin
        .export_statistics(w::ExportStatisticsRequest {
            period_start: "2026-13-01".into(),
            period_end: last.to_string(),
        })
        .await
        .expect_err("not a date");
    assert!(
        err.message().starts_with("period_start"),
        "{}",
        err.message()
    );
    // A service provider may not export.
    let sp = fed.channel("AT", Role::ServiceProvider, true).await?;
    let err = trm_proto::v1::admin_service_client::AdminServiceClient::new(sp)
        .export_statistics(w::ExportStatisticsRequest {
            period_start: closed.to_string(),
            period_end: last.to_string(),
        })
        .await
        .expect_err("not an operator");
    assert_ne!(err.code(), Code::Ok);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn merged_reports_keep_every_suppressed_cell_hidden() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let month = closed_month();
    let identified = month.0 + Duration::days(3);
    let woman = |age| Kind {
        gender: w::Gender::Female,
        age,
        citizenship: "RO",
        exploitation: w::ExploitationType::Sexual,
        child: false,
    };
    let man = Kind {
        gender: w::Gender::Male,
        age: 33,
        citizenship: "RO",
        exploitation: w::ExploitationType::Sexual,
        child: false,
    };
    let mut at = fed.referrals("AT", Role::ServiceProvider).await?;
    create(&mut at, &woman(22), 12, identified).await?;
    create(&mut at, &woman(25), 15, identified).await?;
    create(&mut at, &man, 12, identified).await?;
    let mut ro = fed.referrals("RO", Role::ServiceProvider).await?;
    create(&mut ro, &woman(22), 6, identified).await?;
    create(&mut ro, &man, 12, identified).await?;

    // AT's own keys, and its peers' as its directory holds them.
    let mut keys = trmctl::stats::trusted_keys(&fed.dir().join("AT/node.toml"), &[])?;
    keys.extend(trmctl::admin::directory_keys(&mut fed.admin("AT", Role::Operator).await?).await?);
    let mut files = Vec::new();
    for node in ["AT", "RO"] {
        let mut admin = fed.admin(node, Role::Operator).await?;
        let (start, end) = (month.0.to_string(), month.1.to_string());
        files.push(trmctl::stats::export(&mut admin, &keys, &start, &end).await?);
    }
    let merged = trmctl::stats::merge(&files, &keys, 11)?;
    assert_eq!(merged.nodes, vec!["AT", "RO"]);
    let get = |age_band: &str, gender: &str| {
        merged
            .cells
            .iter()
            .find(|c| {
                c.table == "victims_by_gender_age"
                    && c.labels
                        == vec![
                            ("gender".to_owned(), gender.to_owned()),
                            ("age_band".to_owned(), age_band.to_owned()),
                        ]
            })
            .map(|c| (c.count, c.suppressed))
    };
    // RO hid its 6 women of 21-23 and, as their complement, its 12 men: the sums (18 and
    // 24) stay hidden although both are above the threshold.
    assert_eq!(get("AGE_BAND_21_23", "GENDER_FEMALE"), Some((0, true)));
    assert_eq!(get("AGE_BAND_30_38", "GENDER_MALE"), Some((0, true)));
    assert_eq!(get("AGE_BAND_24_26", "GENDER_FEMALE"), Some((15, false)));
    let mut csv = Vec::new();
    trmctl::stats::to_csv(&merged, &mut csv)?;
    let csv = String::from_utf8(csv)?;
    assert!(
        csv.contains("victims_by_gender_age,gender=GENDER_FEMALE;age_band=AGE_BAND_24_26,15,false"),
        "{csv}"
    );

    // A report whose signed bytes were changed is refused.
    let mut forged = files[1].clone();
    let mut bytes = hex::decode(&forged.signed[0].report_hex)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    forged.signed[0].report_hex = hex::encode(bytes);
    assert!(trmctl::stats::merge(&[files[0].clone(), forged], &keys, 11).is_err());
    // So is the same node twice.
    assert!(trmctl::stats::merge(&[files[0].clone(), files[0].clone()], &keys, 11).is_err());
    fed.stop().await?;
    Ok(())
}

/// The first day of the month `back` months before this one.
fn months_ago(back: i32) -> Date {
    let today = OffsetDateTime::now_utc().date();
    let mut d = today.replace_day(1).unwrap_or(today);
    for _ in 0..back {
        d = (d - Duration::days(1)).replace_day(1).unwrap_or(d);
    }
    d
}

fn shown(report: &w::StatisticsReport, table: &str, labels: &[(&str, &str)]) -> Option<u64> {
    cell(report, table, labels).and_then(|c| (!c.suppressed).then_some(c.count))
}

fn decode(r: &w::ExportStatisticsResponse) -> anyhow::Result<w::StatisticsReport> {
    Ok(w::StatisticsReport::decode(r.report.as_slice())?)
}

/// Forty women in each month, so that every table has cells to show.
async fn background(sp: &mut ReferralServiceClient<Channel>, month: Date) -> anyhow::Result<()> {
    for (age, citizenship, n) in [(22, "RO", 20), (25, "BG", 15)] {
        let kind = Kind {
            gender: w::Gender::Female,
            age,
            citizenship,
            exploitation: w::ExploitationType::Sexual,
            child: false,
        };
        create(sp, &kind, n, month + Duration::days(4)).await?;
    }
    Ok(())
}

const MEN_30_38: [(&str, &str); 2] = [("gender", "GENDER_MALE"), ("age_band", "AGE_BAND_30_38")];

#[tokio::test]
async fn no_month_hidden_cell_comes_back_as_the_difference_of_two_periods() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let (m1, m2, m3, end) = (months_ago(3), months_ago(2), months_ago(1), months_ago(0));
    let man = Kind {
        gender: w::Gender::Male,
        age: 33,
        citizenship: "RO",
        exploitation: w::ExploitationType::ForcedLabour,
        child: false,
    };
    for m in [m1, m2, m3] {
        background(&mut sp, m).await?;
    }
    create(&mut sp, &man, 12, m1 + Duration::days(9)).await?;
    create(&mut sp, &man, 3, m3 + Duration::days(9)).await?;

    let last = decode(&export(&fed, "AT", (m3, end)).await?)?;
    let hidden = cell(&last, "victims_by_gender_age", &MEN_30_38)
        .ok_or_else(|| anyhow::anyhow!("no cell of the three men"))?;
    assert!(hidden.suppressed, "three men are hidden in their month");
    let all = decode(&export(&fed, "AT", (m1, end)).await?)?;
    let before = decode(&export(&fed, "AT", (m1, m3)).await?)?;
    // Every cell the last month hides is hidden in any period that adds it.
    for c in last.cells.iter().filter(|c| c.suppressed) {
        let labels: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|l| (l.dimension.as_str(), l.value.as_str()))
            .collect();
        let (with, without) = (
            shown(&all, &c.table, &labels),
            shown(&before, &c.table, &labels),
        );
        if let (Some(with), Some(without)) = (with, without) {
            panic!(
                "{} {labels:?} recovered by subtraction: {with} - {without} = {}",
                c.table,
                with - without
            );
        }
    }
    assert_eq!(
        shown(&before, "victims_by_gender_age", &MEN_30_38),
        Some(12)
    );
    assert_eq!(shown(&all, "victims_by_gender_age", &MEN_30_38), None);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_published_month_answers_the_same_bytes_after_a_late_case() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let month = (months_ago(2), months_ago(1));
    background(&mut sp, month.0).await?;
    let first = export(&fed, "AT", month).await?;
    // A case identified in that month, entered after it was published.
    let late = Kind {
        gender: w::Gender::Male,
        age: 40,
        citizenship: "NG",
        exploitation: w::ExploitationType::Begging,
        child: false,
    };
    create(&mut sp, &late, 1, month.0 + Duration::days(12)).await?;
    let again = export(&fed, "AT", month).await?;
    let (a, b) = (decode(&first)?, decode(&again)?);
    for c in &b.cells {
        let labels: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|l| (l.dimension.as_str(), l.value.as_str()))
            .collect();
        let earlier = cell(&a, &c.table, &labels).map(|e| (e.count, e.suppressed));
        assert_eq!(
            earlier,
            Some((c.count, c.suppressed)),
            "{} {labels:?} changed between two exports of a closed month",
            c.table
        );
    }
    assert_eq!(a.cells.len(), b.cells.len(), "a cell appeared");
    assert_eq!(
        (&again.report, &again.key_id, &again.signature),
        (&first.report, &first.key_id, &first.signature),
        "a closed month is answered byte for byte as first published"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_hidden_child_cell_cannot_be_recovered_from_the_children_table() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let month = (months_ago(2), months_ago(1));
    let day = month.0 + Duration::days(6);
    let person = |gender, age, child| Kind {
        gender,
        age,
        citizenship: "RO",
        exploitation: w::ExploitationType::Sexual,
        child,
    };
    create(&mut sp, &person(w::Gender::Female, 12, true), 13, day).await?;
    create(&mut sp, &person(w::Gender::Male, 12, true), 3, day).await?;
    create(&mut sp, &person(w::Gender::Female, 33, false), 40, day).await?;
    create(&mut sp, &person(w::Gender::Male, 33, false), 12, day).await?;
    let r = decode(&export(&fed, "AT", month).await?)?;
    let boys = cell(
        &r,
        "victims_by_gender_age",
        &[("gender", "GENDER_MALE"), ("age_band", "AGE_BAND_9_17")],
    )
    .ok_or_else(|| anyhow::anyhow!("no cell of the boys"))?;
    assert!(boys.suppressed);
    // Children by the childhood table, minus the children of every child age band shown.
    if let Some(children) = shown(&r, "children", &[("is_child", "true")]) {
        let mut unknown = 0;
        let mut shown_children = 0;
        for c in r
            .cells
            .iter()
            .filter(|c| c.table == "victims_by_gender_age")
        {
            let child_band = c
                .labels
                .iter()
                .any(|l| l.value == "AGE_BAND_0_8" || l.value == "AGE_BAND_9_17");
            if child_band {
                if c.suppressed {
                    unknown += 1;
                } else {
                    shown_children += c.count;
                }
            }
        }
        assert!(
            unknown > 1,
            "the boys recovered by subtraction: {children} - {shown_children} = {}",
            children - shown_children
        );
    }
    // The node's own audit of the report agrees: no hidden cell narrower than 11.
    let cells: Vec<_> = r
        .cells
        .iter()
        .map(trm_proto::stats::cell_from_wire)
        .collect();
    assert_eq!(
        trm_core::stats::protect::exposed(&cells, 11),
        Vec::<usize>::new()
    );
    fed.stop().await?;
    Ok(())
}
