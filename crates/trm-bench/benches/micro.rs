//! Micro-benchmarks of the work every message pays: sealing and opening an envelope
//! (sign, verify), projecting a case through the disclosure policy, and sealing and opening
//! a record at rest. Run: `cargo bench -p trm-bench --bench micro`.

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

criterion_group!(micro, benches);
criterion_main!(micro);
