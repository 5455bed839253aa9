//! Micro-benchmarks of the work every message pays: sealing and opening an envelope
//! (sign, verify), projecting a case through the disclosure policy, and sealing and opening
//! a record at rest; and what publishing statistics costs: a year of monthly reports
//! protected across their tables, and audited. Run: `cargo bench -p trm-bench --bench micro`.

use std::collections::BTreeSet;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use prost::Message;
use trm_core::{
    ids::CaseId,
    model::{CaseRecord, ChildInfo, DataCategory, Exploitation, Gender, Needs, Person, Purpose},
    policy,
};
use trm_crypto::{
    aead::SecretKey,
    signing::{self, SigningIdentity, ENVELOPE_TAG},
};
use trm_proto::v1::{self as w, envelope_body::Payload, SignedEnvelope};

fn case() -> CaseRecord {
    CaseRecord {
        case_id: CaseId::new(),
        person: Person {
            given_name: "Maria".into(),
            family_name: "Exemplu".into(),
            date_of_birth: Some(time::macros::date!(2001 - 04 - 02)),
            gender: Gender::Female,
            citizenship: vec!["RO".parse().unwrap_or_else(|_| unreachable!())],
            languages: vec!["ro".into(), "en".into()],
            document_number: "X-1".into(),
            address: "Strada 1".into(),
            phone: "+40 700".into(),
        },
        needs: Needs::default(),
        exploitation: Exploitation::default(),
        child: ChildInfo::default(),
        identified_on: time::macros::date!(2026 - 01 - 01),
        organisation: "sp1".parse().unwrap_or_else(|_| unreachable!()),
        created_at: time::OffsetDateTime::now_utc(),
        identifications: vec![],
        residence: None,
    }
}

fn benches(c: &mut Criterion) {
    let id = SigningIdentity::generate();
    let categories: BTreeSet<DataCategory> = [
        DataCategory::Demographics,
        DataCategory::Needs,
        DataCategory::Exploitation,
        DataCategory::Child,
    ]
    .into();
    let record = case();
    let today = time::OffsetDateTime::now_utc().date();
    c.bench_function("policy projection (referral)", |b| {
        b.iter(|| {
            policy::disclose(
                black_box(&record),
                Purpose::ReferralAssistance,
                &categories,
                "ref".into(),
                today,
            )
        })
    });
    let disclosed = policy::disclose(
        &record,
        Purpose::ReferralAssistance,
        &categories,
        "ref".into(),
        today,
    );
    let payload = Payload::ReferralOffer(w::ReferralOffer {
        referral_id: uuid::Uuid::now_v7().to_string(),
        disclosed: Some(trm_proto::convert::disclosed_to_wire(&disclosed)),
        requested_services: vec![w::NeedKind::Shelter as i32],
    });
    let (at, ro) = (
        "AT".parse().unwrap_or_else(|_| unreachable!()),
        "RO".parse().unwrap_or_else(|_| unreachable!()),
    );
    c.bench_function("envelope seal (encode and sign)", |b| {
        b.iter(|| trm_federation::envelope::seal(&id, at, ro, "ref", black_box(payload.clone())))
    });
    let env: SignedEnvelope = trm_federation::envelope::seal(&id, at, ro, "ref", payload);
    let public = id.public();
    c.bench_function("envelope open (verify and decode)", |b| {
        b.iter(|| {
            signing::verify(&public, ENVELOPE_TAG, &env.body, &env.signature)
                .map(|()| w::EnvelopeBody::decode(env.body.as_slice()))
        })
    });
    let key = SecretKey::generate();
    let plain = serde_json::to_vec(&record).unwrap_or_default();
    c.bench_function("vault seal (case record)", |b| {
        b.iter(|| key.seal(b"c/1", black_box(&plain)))
    });
    let sealed = key.seal(b"c/1", &plain).unwrap_or_default();
    c.bench_function("vault open (case record)", |b| {
        b.iter(|| key.open(b"c/1", black_box(&sealed)))
    });
}

/// Age bands, commonest first.
const BANDS: [trm_core::model::AgeBand; 9] = {
    use trm_core::model::AgeBand as A;
    [
        A::B21To23,
        A::B24To26,
        A::B18To20,
        A::B27To29,
        A::B30To38,
        A::B9To17,
        A::B39To47,
        A::B0To8,
        A::B48Plus,
    ]
};

/// Forms of exploitation, commonest first.
const KINDS: [trm_core::model::ExploitationType; 8] = {
    use trm_core::model::ExploitationType as E;
    [
        E::Sexual,
        E::ForcedLabour,
        E::DomesticServitude,
        E::ForcedCriminality,
        E::Begging,
        E::ForcedMarriage,
        E::Other,
        E::OrganRemoval,
    ]
};

/// A node's year: twelve months of `persons` each, drawn (deterministically) from a mix of
/// common and rare profiles, with referrals by state; the raw cells of each month.
fn a_year_of_months(persons: usize) -> Vec<Vec<trm_core::stats::Published>> {
    use trm_core::{
        model::AgeBand,
        referral::{Direction, ReferralStatus},
        stats::{Cell, Profile},
    };
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Squared: small values are common, large ones rare.
        let u = ((seed >> 33) as f64) / ((1u64 << 31) as f64);
        ((u * u) * n as f64) as usize % n
    };
    let countries: Vec<trm_core::ids::NodeId> = ["RO", "NG", "BG", "UA", "VN", "AL", "MD", "CN"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let genders = [Gender::Female, Gender::Male, Gender::Other];
    (0..12)
        .map(|_| {
            let mut counts: std::collections::BTreeMap<Cell, u64> = Default::default();
            for _ in 0..persons {
                let band = BANDS[next(BANDS.len())];
                let mut exploitation = vec![KINDS[next(KINDS.len())]];
                if next(4) == 3 {
                    exploitation.push(KINDS[next(KINDS.len())]);
                }
                let p = Profile {
                    gender: Some(genders[next(genders.len())]),
                    age_band: Some(band),
                    citizenship: vec![countries[next(countries.len())]],
                    exploitation,
                    is_child: Some(matches!(band, AgeBand::B0To8 | AgeBand::B9To17)),
                };
                for c in p.cells() {
                    *counts.entry(c).or_default() += 1;
                }
            }
            for status in [
                ReferralStatus::Accepted,
                ReferralStatus::Declined,
                ReferralStatus::Closed,
                ReferralStatus::Withdrawn,
            ] {
                let n = next(persons / 2) as u64;
                for direction in [Direction::Incoming, Direction::Outgoing] {
                    *counts
                        .entry(Cell::Referral { direction, status })
                        .or_default() += n;
                }
            }
            counts
                .iter()
                .map(|(c, n)| trm_proto::stats::published(c, *n))
                .collect()
        })
        .collect()
}

fn statistics(c: &mut Criterion) {
    use trm_core::stats::{protect, publish};
    let min = trm_core::stats::DEFAULT_MIN_CELL_COUNT;
    let year = a_year_of_months(150);
    c.bench_function(
        "statistics: publish and protect a year of monthly reports",
        |b| {
            b.iter(|| {
                for month in black_box(&year) {
                    black_box(protect::protect(publish(month.clone(), min), min));
                }
            })
        },
    );
    let published: Vec<_> = year
        .iter()
        .map(|m| protect::protect(publish(m.clone(), min), min))
        .collect();
    let hidden: usize = published
        .iter()
        .map(|m| m.iter().filter(|c| c.suppressed).count())
        .sum();
    let cells: usize = published.iter().map(Vec::len).sum();
    let by_table_only: usize = year
        .iter()
        .map(|m| {
            publish(m.clone(), min)
                .iter()
                .filter(|c| c.suppressed)
                .count()
        })
        .sum();
    eprintln!(
        "a year of reports: {cells} cells, {hidden} suppressed ({by_table_only} by the rules \
         of one table)"
    );
    c.bench_function("statistics: audit a year of monthly reports", |b| {
        b.iter(|| {
            for month in black_box(&published) {
                black_box(protect::intervals(month));
            }
        })
    });
}

criterion_group!(micro, benches, statistics);
criterion_main!(micro);
