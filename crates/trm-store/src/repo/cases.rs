//! Cases and what hangs off them: consents (and what was disclosed under each), risk
//! assessments, return decisions, and the pairwise references a case is known by at each
//! peer. Cases, risk assessments and decisions are sealed under the case's key.

use trm_core::{
    consent::Consent,
    exchange::RecordKind,
    ids::{CaseId, ConsentId, NodeId, OrgId, Shared, WitnessRecord},
    model::CaseRecord,
    returns::{ReturnDecision, RiskAssessment},
};

use serde::de::DeserializeOwned;

use crate::{repo::layout, subject::Subject, Result, Store, Tx};

/// Returns a new pairwise case reference: 128 random bits, unlinkable across peers.
fn new_case_ref() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn target_bytes(t: WitnessRecord) -> Vec<u8> {
    match t {
        WitnessRecord::Case(c) => [&b"c"[..], c.as_bytes()].concat(),
        WitnessRecord::Referral(r) => [&b"r"[..], r.as_bytes()].concat(),
        WitnessRecord::Return(r) => [&b"t"[..], r.as_bytes()].concat(),
    }
}

fn target_from(b: &[u8]) -> Option<WitnessRecord> {
    let (tag, id) = b.split_first()?;
    let id: [u8; 16] = id.try_into().ok()?;
    match tag {
        b'c' => Some(WitnessRecord::Case(CaseId::from_bytes(id))),
        b'r' => Some(WitnessRecord::Referral(
            trm_core::ids::ReferralId::from_bytes(id),
        )),
        b't' => Some(WitnessRecord::Return(trm_core::ids::ReturnId::from_bytes(
            id,
        ))),
        _ => None,
    }
}

/// The tag under which where a person counts is kept (beside the shared records' kinds).
const PERSON: u8 = b'c';

impl Tx<'_> {
    /// Returns the case `id`.
    pub fn case(&mut self, id: CaseId) -> Result<Option<CaseRecord>> {
        self.get_sealed("case", &layout::case(id), &Subject::case(id))
    }

    /// Writes a case (new or changed).
    pub fn put_case(&mut self, case: &CaseRecord) -> Result<()> {
        // Whether it exists, and its data key (sealing reads both), in one round trip.
        let subject = Subject::case(case.case_id);
        self.prefetch(&[
            layout::case(case.case_id),
            layout::generation(&subject),
            layout::data_key(&subject, 0),
        ])?;
        if !self.exists(&layout::case(case.case_id))? {
            let cells = trm_core::stats::Profile::of_case(case).cells();
            let month =
                self.count_person(trm_core::stats::Month::of(case.identified_on), &cells)?;
            // Which month the person counts in (ids only), for a later change to move it.
            self.put_json(&layout::counted(PERSON, case.case_id.as_bytes()), &month)?;
        }
        self.put_sealed(
            &layout::case(case.case_id),
            &Subject::case(case.case_id),
            case,
        )?;
        self.put_raw(&layout::case_of_org(&case.organisation, case.case_id), b"")
    }

    /// Writes a case that changed (`before` is how it stood): the person's count in the
    /// statistics moves with the change while the month it counts in is not yet published;
    /// a published month never changes.
    pub fn update_case(&mut self, before: &CaseRecord, case: &CaseRecord) -> Result<()> {
        use trm_core::stats::Profile;
        let (old, new) = (
            Profile::of_case(before).cells(),
            Profile::of_case(case).cells(),
        );
        if old != new {
            if let Some(month) = self.open_person_month(before)? {
                for c in &old {
                    self.count(month, c, -1)?;
                }
                for c in &new {
                    self.count(month, c, 1)?;
                }
            }
        }
        // Who the person is for the index (names, date of birth), not an address or phone.
        if before.person.match_input() != case.person.match_input() {
            self.unindex_person(before)?;
            self.index_person(case)?;
        }
        self.put_case(case)
    }

    /// Keeps `case` in the blind index of persons (a keyed digest of its names and date
    /// of birth, never the values) and returns the other cases of this node of the same
    /// person, found without opening any case; each pair is kept as a possible duplicate
    /// for a focal point to confirm or dismiss.
    pub fn index_person(&mut self, case: &CaseRecord) -> Result<Vec<CaseId>> {
        let Some(digest) = self.person_digest(case) else {
            return Ok(Vec::new());
        };
        let prefix = layout::person_index_of(&digest);
        let mut others = Vec::new();
        for (k, _) in self.scan_raw(&prefix, None, usize::MAX)? {
            let Some(id) = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
            else {
                continue;
            };
            let other = CaseId::from_uuid(uuid::Uuid::from_bytes(id));
            if other != case.case_id {
                self.put_raw(&layout::possible_duplicate(case.case_id, other), b"")?;
                others.push(other);
            }
        }
        self.put_raw(&layout::person_index(&digest, case.case_id), b"")?;
        if !others.is_empty() {
            // A focal point confirms or dismisses the pair (the newer case's task).
            let now = time::OffsetDateTime::now_utc();
            let mut review = trm_core::tasks::Task::due_in(
                trm_core::tasks::TaskKind::PossibleDuplicate,
                case.case_id.uuid(),
                trm_core::tasks::due::REVIEW,
                now,
            );
            review.organisation = Some(case.organisation.clone());
            self.open_task(&review)?;
        }
        Ok(others)
    }

    /// Takes `case` (as it stood) out of the blind index of persons, with the possible
    /// duplicates that name it.
    pub fn unindex_person(&mut self, case: &CaseRecord) -> Result<()> {
        if let Some(digest) = self.person_digest(case) {
            self.delete(&layout::person_index(&digest, case.case_id))?;
        }
        self.forget_duplicates_of(case.case_id)
    }

    /// Forgets every possible duplicate pair naming case `case`; a review left with no pair
    /// closes its task.
    fn forget_duplicates_of(&mut self, case: CaseId) -> Result<()> {
        let prefix = layout::possible_duplicates();
        let mut newer = Vec::new();
        for (k, _) in self.scan_raw(&prefix, None, usize::MAX)? {
            let ids = k.get(prefix.len()..).unwrap_or_default();
            if ids.chunks(16).any(|id| id == case.as_bytes()) {
                self.delete(&k)?;
                newer.push(ids.get(..16).unwrap_or_default().to_vec());
            }
        }
        // A review left with no pair has nothing to settle: its task closes.
        for id in newer {
            let still = [prefix.clone(), id.clone()].concat();
            if self.scan_raw(&still, None, 1)?.is_empty() {
                if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                    let task = trm_core::tasks::TaskKind::PossibleDuplicate;
                    self.close_task(task, uuid::Uuid::from_bytes(id))?;
                }
            }
        }
        Ok(())
    }

    /// Returns the month the person of `case` counts in, while that month is unpublished
    /// (a change may still move its count); none once published, or when the person
    /// counts as another case's (a confirmed duplicate).
    fn open_person_month(&mut self, case: &CaseRecord) -> Result<Option<trm_core::stats::Month>> {
        use trm_core::stats::Month;
        let key = layout::counted(PERSON, case.case_id.as_bytes());
        // Kept at creation; a case older than that counts in the month it was identified.
        let month = self
            .get_json::<Option<Month>>("counted person", &key)?
            .unwrap_or_else(|| Some(Month::of(case.identified_on)));
        Ok(match month {
            Some(m) if self.published_report(m)?.is_none() => Some(m),
            _ => None,
        })
    }

    /// Settles the possible duplicates of `case` (the first of each pair): for the same
    /// person, it no longer counts in the statistics as a person of its own (taken out of
    /// its month while that month is unpublished); when its month is published, the other
    /// case of each pair is taken out instead where that one's month is open. Either way the
    /// pairs are gone. Returns how many pairs there were.
    pub fn resolve_duplicates(&mut self, case: &CaseRecord, same_person: bool) -> Result<u32> {
        let prefix = [
            layout::possible_duplicates(),
            case.case_id.as_bytes().to_vec(),
        ]
        .concat();
        let pairs = self.scan_raw(&prefix, None, usize::MAX)?;
        for (k, _) in &pairs {
            self.delete(k)?;
        }
        if same_person && !pairs.is_empty() && !self.uncount(case)? {
            // The named case counts in a published month, which never changes: the other
            // case of each pair is taken out instead, where its month is open.
            let mut moved = false;
            for (k, _) in &pairs {
                let other = k
                    .get(prefix.len()..)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(|b| CaseId::from_uuid(uuid::Uuid::from_bytes(b)));
                if let Some(other) = other.map(|id| self.case(id)).transpose()?.flatten() {
                    moved |= self.uncount(&other)?;
                }
            }
            if !moved {
                self.mark_counted_elsewhere(case.case_id)?;
            }
        }
        Ok(u32::try_from(pairs.len()).unwrap_or(u32::MAX))
    }

    /// Takes `case` out of the statistics as a person of its own while the month it counts
    /// in is unpublished (it counts as another case's person); returns whether it did.
    fn uncount(&mut self, case: &CaseRecord) -> Result<bool> {
        let Some(month) = self.open_person_month(case)? else {
            return Ok(false);
        };
        for c in trm_core::stats::Profile::of_case(case).cells() {
            self.count(month, &c, -1)?;
        }
        self.mark_counted_elsewhere(case.case_id)?;
        Ok(true)
    }

    /// Keeps that case `case` counts as another case's person (no month of its own).
    fn mark_counted_elsewhere(&mut self, case: CaseId) -> Result<()> {
        let key = layout::counted(PERSON, case.as_bytes());
        self.put_json(&key, &None::<trm_core::stats::Month>)
    }

    fn person_digest(&self, case: &CaseRecord) -> Option<[u8; 32]> {
        let input = case.person.match_input()?;
        Some(self.keys.blind_key().mac(input.as_bytes()))
    }

    /// Erases a case: its key is shredded (its record, risk assessments and decisions can
    /// never be opened again) and its records removed, with what is kept about it in
    /// clear: its consents (purposes, recipients, information language) and what was
    /// disclosed under each, its pairwise references and its indexes. (Call it after the
    /// erasure requests to its recipients are queued: they are built from those.)
    pub fn erase_case(&mut self, case: &CaseRecord) -> Result<()> {
        let id = case.case_id;
        self.shred(&Subject::case(id))?;
        self.delete(&layout::case_of_org(&case.organisation, id))?;
        self.unindex_person(case)?;
        self.erase_rows_of_case(id)
    }

    /// After a restore, erases again what the backup still held in clear of the cases
    /// `ids`, erased since (their keys were destroyed again first): the same rows as
    /// [`Tx::erase_case`], found by the cases' ids alone, since their records no longer open
    /// to say their organisation or the person the blind index names (one pass over each
    /// index for all of them). Their tasks close.
    pub(crate) fn erase_restored_cases(&mut self, ids: &[CaseId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let erased: std::collections::HashSet<&[u8]> =
            ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        for prefix in [b"co/".as_slice(), b"bi/".as_slice()] {
            for (k, _) in self.scan_raw(prefix, None, usize::MAX)? {
                let id = k.len().checked_sub(16).and_then(|at| k.get(at..));
                if id.is_some_and(|id| erased.contains(id)) {
                    self.delete(&k)?;
                }
            }
        }
        for id in ids {
            self.forget_duplicates_of(*id)?;
            self.erase_rows_of_case(*id)?;
            self.close_tasks_of(id.uuid())?;
        }
        Ok(())
    }

    /// Removes the record of case `id` and the rows kept about it by its id: risk
    /// assessments, decisions, where it is counted, its consents and what was disclosed
    /// under each, its pairwise references and its open referrals.
    fn erase_rows_of_case(&mut self, id: CaseId) -> Result<()> {
        self.delete(&layout::case(id))?;
        self.delete(&layout::risk(id))?;
        self.delete(&layout::decisions(id))?;
        self.delete(&layout::counted(PERSON, id.as_bytes()))?;
        for c in self.consents(id)? {
            let prefix = layout::disclosures(c.consent_id);
            for (k, _) in self.scan_raw(&prefix, None, usize::MAX)? {
                self.delete(&k)?;
            }
        }
        self.delete(&layout::consents(id))?;
        let refs = layout::refs_of(id);
        for (k, v) in self.scan_raw(&refs, None, usize::MAX)? {
            let peer = std::str::from_utf8(&k[refs.len()..])
                .ok()
                .and_then(|p| p.parse::<NodeId>().ok());
            let case_ref: Option<String> = crate::tx::decode("case reference", &v).ok();
            if let (Some(peer), Some(case_ref)) = (peer, case_ref) {
                self.delete(&layout::ref_given(peer, &case_ref))?;
            }
            self.delete(&k)?;
        }
        let open = layout::open_referrals_of(id);
        for (k, _) in self.scan_raw(&open, None, usize::MAX)? {
            self.delete(&k)?;
        }
        Ok(())
    }

    /// Returns the consents recorded for a case.
    pub fn consents(&mut self, case: CaseId) -> Result<Vec<Consent>> {
        Ok(self
            .get_json("consents", &layout::consents(case))?
            .unwrap_or_default())
    }

    /// Writes the consents of a case (ids, purposes, recipients; no personal data).
    pub fn put_consents(&mut self, case: CaseId, consents: &[Consent]) -> Result<()> {
        self.put_json(&layout::consents(case), &consents)
    }

    /// Records that `shared` was disclosed under `consent`: withdrawing it erases that copy.
    pub fn record_disclosure(&mut self, consent: ConsentId, shared: Shared) -> Result<()> {
        self.put_raw(&layout::disclosure(consent, shared), b"")
    }

    /// Returns the copies whose erasure a restore found asked for after its backup, for
    /// the node to ask again (see [`Tx::forget_pending_erasure`]).
    pub fn pending_erasures(&mut self) -> Result<Vec<Shared>> {
        let prefix = layout::PENDING_ERASURES;
        Ok(self
            .scan_raw(prefix, None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| layout::shared_from(&k[prefix.len()..]))
            .collect())
    }

    /// The erasure of `shared` was asked for again.
    pub fn forget_pending_erasure(&mut self, shared: Shared) -> Result<()> {
        self.delete(&layout::pending_erasure(shared))
    }

    /// Returns what was disclosed under `consent`.
    pub fn disclosures(&mut self, consent: ConsentId) -> Result<Vec<Shared>> {
        let prefix = layout::disclosures(consent);
        Ok(self
            .scan_raw(&prefix, None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| layout::shared_from(&k[prefix.len()..]))
            .collect())
    }

    /// Returns the risk assessments of a case, oldest first.
    pub fn risk_assessments(&mut self, case: CaseId) -> Result<Vec<RiskAssessment>> {
        self.case_list("risk assessments", &layout::risk(case), case)
    }

    /// Writes the risk assessments of a case.
    pub fn put_risk_assessments(&mut self, case: CaseId, all: &[RiskAssessment]) -> Result<()> {
        self.put_sealed(&layout::risk(case), &Subject::case(case), &all)
    }

    /// Returns the victim's return decisions on a case, oldest first.
    pub fn return_decisions(&mut self, case: CaseId) -> Result<Vec<ReturnDecision>> {
        self.case_list("return decisions", &layout::decisions(case), case)
    }

    /// Returns the list kept at `key`, sealed under case `case`'s key (empty when none).
    fn case_list<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
        case: CaseId,
    ) -> Result<Vec<T>> {
        Ok(self
            .get_sealed(what, key, &Subject::case(case))?
            .unwrap_or_default())
    }

    /// Writes the return decisions of a case.
    pub fn put_return_decisions(&mut self, case: CaseId, all: &[ReturnDecision]) -> Result<()> {
        self.put_sealed(&layout::decisions(case), &Subject::case(case), &all)
    }

    /// Returns the pairwise reference of `case` towards `peer`, if the case was exchanged
    /// with it.
    pub fn case_ref(&mut self, case: CaseId, peer: NodeId) -> Result<Option<String>> {
        self.get_json("case reference", &layout::ref_of(case, peer))
    }

    /// Reads in one round trip a case, its data key and its consents (what most steps on a
    /// case read first). On PostgreSQL each read is a statement; the transaction keeps what
    /// it read.
    pub fn prefetch_case(&mut self, case: CaseId) -> Result<()> {
        self.prefetch(&case_reads(case))
    }

    /// Reads in one round trip what a disclosure of `case` to `recipient` reads: the case
    /// and its data key, its consents, its pairwise reference towards the recipient and its
    /// open referral there. On PostgreSQL each read is a statement; the transaction keeps
    /// what it read, so the reads that follow cost nothing more.
    pub fn prefetch_disclosure(&mut self, case: CaseId, recipient: NodeId) -> Result<()> {
        let mut keys = case_reads(case).to_vec();
        keys.extend([
            layout::ref_of(case, recipient),
            layout::open_referral(case, recipient),
        ]);
        self.prefetch(&keys)
    }

    /// Returns the pairwise reference of `case` towards `peer`, creating it on first use.
    pub fn case_ref_or_new(&mut self, case: CaseId, peer: NodeId) -> Result<String> {
        if let Some(r) = self.case_ref(case, peer)? {
            return Ok(r);
        }
        let r = new_case_ref();
        self.put_json(&layout::ref_of(case, peer), &r)?;
        self.put_raw(
            &layout::ref_given(peer, &r),
            &target_bytes(WitnessRecord::Case(case)),
        )?;
        Ok(r)
    }

    /// Lets `peer`'s reference resolve to `record` (the first record received under it).
    /// The first record received under a reference counts its person (what `disclosed`
    /// tells of them) in the statistics of this month.
    pub fn remember_received_ref(
        &mut self,
        peer: NodeId,
        case_ref: &str,
        record: WitnessRecord,
        disclosed: &trm_core::model::DisclosedCase,
    ) -> Result<()> {
        let key = layout::ref_received(peer, case_ref);
        if !self.exists(&key)? {
            self.put_raw(&key, &target_bytes(record))?;
            let cells = trm_core::stats::Profile::of_disclosed(disclosed).cells();
            self.count_person(
                trm_core::stats::Month::at(time::OffsetDateTime::now_utc()),
                &cells,
            )?;
        }
        Ok(())
    }

    /// Returns the referral or return plan this node received from `peer` under `case_ref`.
    pub fn received_under(
        &mut self,
        peer: NodeId,
        case_ref: &str,
    ) -> Result<Option<WitnessRecord>> {
        Ok(self
            .get_raw(&layout::ref_received(peer, case_ref))?
            .and_then(|b| target_from(&b)))
    }

    /// Resolves a reference shared with `peer` (either way) to the local record it names:
    /// a case this node sent, or a referral or return plan it received.
    pub fn resolve_ref(&mut self, peer: NodeId, case_ref: &str) -> Result<Option<WitnessRecord>> {
        for key in [
            layout::ref_received(peer, case_ref),
            layout::ref_given(peer, case_ref),
        ] {
            if let Some(b) = self.get_raw(&key)? {
                return Ok(target_from(&b));
            }
        }
        Ok(None)
    }

    /// Returns whether any record of this node (a case, or a shared record of any
    /// registered kind, `RecordKind::ALL`) has the id `id`: one read for all of them.
    pub fn names_a_record(&mut self, id: uuid::Uuid) -> Result<bool> {
        self.any_exists(&record_keys(id))
    }

    /// [`Tx::names_a_record`] for the id of a record of `kind` arriving from `sender` about
    /// `case_ref`, reading in the same round trip what keeping it goes on to read: its data
    /// key, event state and count, and the pairwise reference it came under. On PostgreSQL
    /// each read is a statement; the transaction keeps what it read.
    pub fn names_a_record_arriving(
        &mut self,
        id: uuid::Uuid,
        (kind, sender, case_ref): (RecordKind, NodeId, &str),
    ) -> Result<bool> {
        let mut keys = record_keys(id);
        let named = keys.len();
        keys.extend(super::flows::keeping_reads(kind, id.as_bytes()));
        keys.push(layout::ref_received(sender, case_ref));
        let read = self.get_many(&keys)?;
        Ok(read.iter().take(named).any(Option::is_some))
    }
}

/// What most steps on a case read first: the case, its data key and its consents.
fn case_reads(case: CaseId) -> [Vec<u8>; 3] {
    [
        layout::case(case),
        layout::data_key(&Subject::case(case), 0),
        layout::consents(case),
    ]
}

/// The keys a record with the id `id` would be under: a case, or a shared record of any
/// registered kind.
fn record_keys(id: uuid::Uuid) -> Vec<Vec<u8>> {
    let mut keys = vec![layout::case(CaseId::from_uuid(id))];
    keys.extend(RecordKind::ALL.map(|kind| layout::record(kind, id.as_bytes())));
    keys
}

impl Store {
    /// Returns the case `id`.
    pub fn case(&self, id: CaseId) -> Result<Option<CaseRecord>> {
        self.get_sealed("case", &layout::case(id), &Subject::case(id))
    }

    /// Returns up to `limit` cases after `after` (in id order: creation order), of one
    /// organisation or of the whole node. A case whose record cannot be opened (its data key
    /// destroyed: erased after the backup it was restored from) is passed over, and the scan
    /// goes on until `limit` cases are found or none is left: fewer than `limit` means there
    /// are no more.
    pub fn cases(
        &self,
        org: Option<&OrgId>,
        after: Option<CaseId>,
        limit: usize,
    ) -> Result<Vec<CaseRecord>> {
        let prefix = match org {
            Some(org) => layout::cases_of_org(org),
            None => layout::CASES.to_vec(),
        };
        let mut from = after.map(|a| match org {
            Some(org) => layout::case_of_org(org, a),
            None => layout::case(a),
        });
        let mut out = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).clamp(1, 256);
            let page = self.scan_raw(&prefix, from.as_deref(), want)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            let full = page.len() == want;
            for (k, v) in page {
                let Ok(id) = <[u8; 16]>::try_from(&k[prefix.len()..]) else {
                    continue;
                };
                let id = CaseId::from_bytes(id);
                let case = match org {
                    // The index holds no record: read it.
                    Some(_) => self.case(id)?,
                    None => match self.open_sealed(&Subject::case(id), &k, &v)? {
                        Some(plain) => Some(crate::tx::decode("case", &plain)?),
                        // Sealed again under a new key since the scan read it, or gone: the
                        // single read tells which.
                        None => self.case(id)?,
                    },
                };
                out.extend(case);
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Returns the possible second cases of one person: (newer, older) pairs.
    pub fn possible_duplicates(&self) -> Result<Vec<(CaseId, CaseId)>> {
        let prefix = layout::possible_duplicates();
        let mut out = Vec::new();
        for (k, _) in self.scan_raw(&prefix, None, usize::MAX)? {
            let ids = k.get(prefix.len()..).unwrap_or_default();
            if let (Some(a), Some(b)) = (ids.get(..16), ids.get(16..32)) {
                let id = |b: &[u8]| {
                    <[u8; 16]>::try_from(b)
                        .ok()
                        .map(|b| CaseId::from_uuid(uuid::Uuid::from_bytes(b)))
                };
                if let (Some(a), Some(b)) = (id(a), id(b)) {
                    out.push((a, b));
                }
            }
        }
        Ok(out)
    }

    /// Returns the consents recorded for a case.
    pub fn consents(&self, case: CaseId) -> Result<Vec<Consent>> {
        Ok(self
            .get_json("consents", &layout::consents(case))?
            .unwrap_or_default())
    }

    /// Returns the risk assessments of a case, oldest first.
    pub fn risk_assessments(&self, case: CaseId) -> Result<Vec<RiskAssessment>> {
        Ok(self
            .get_sealed(
                "risk assessments",
                &layout::risk(case),
                &Subject::case(case),
            )?
            .unwrap_or_default())
    }

    /// Returns the pairwise reference of `case` towards `peer`.
    pub fn case_ref(&self, case: CaseId, peer: NodeId) -> Result<Option<String>> {
        self.get_json("case reference", &layout::ref_of(case, peer))
    }
}
