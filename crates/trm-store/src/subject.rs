//! Whose data key seals something. Subjects are namespaced per kind of record, so that an
//! id chosen by a peer for one kind of record can never name the key of a record of
//! another kind.

use trm_core::ids::CaseId;

/// A data-key subject: a kind of record and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(Vec<u8>);

impl Subject {
    /// Returns the subject `id` of kind `kind`.
    pub fn named(kind: &str, id: &[u8]) -> Self {
        let mut bytes = kind.as_bytes().to_vec();
        bytes.push(b'/');
        bytes.extend_from_slice(id);
        Self(bytes)
    }

    /// A case: its record, consents' details, risk assessments and return decisions.
    pub fn case(id: CaseId) -> Self {
        Self::named("case", id.as_bytes())
    }

    /// The subject of a shared record of `kind` (`hearing/<id>`, by the kind's
    /// [`code`](trm_core::exchange::RecordKind::code)).
    pub fn of_record(kind: trm_core::exchange::RecordKind, id: &[u8; 16]) -> Self {
        Self::named(kind.code(), id)
    }

    /// Returns the case this subject is the key of, if it is a case's.
    pub fn case_id(&self) -> Option<CaseId> {
        let id: [u8; 16] = self.0.strip_prefix(b"case/")?.try_into().ok()?;
        Some(CaseId::from_uuid(uuid::Uuid::from_bytes(id)))
    }

    /// Returns the shared record whose copy this subject is the key of, if it is one.
    pub fn shared(&self) -> Option<trm_core::ids::Shared> {
        let at = self.0.iter().position(|b| *b == b'/')?;
        let (code, id) = (self.0.get(..at)?, self.0.get(at + 1..)?);
        let id: [u8; 16] = id.try_into().ok()?;
        let kind = trm_core::exchange::RecordKind::ALL
            .into_iter()
            .find(|k| k.code().as_bytes() == code)?;
        trm_core::ids::Shared::of(kind, uuid::Uuid::from_bytes(id))
    }

    /// Returns the subject's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the subject of bytes written by [`Subject::as_bytes`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use trm_core::{
        exchange::RecordKind,
        ids::{ClaimId, HearingId},
        messages::Topic,
    };

    use super::Subject;
    use crate::repo::outbox::subject_of;

    /// Data keys already stored were sealed under these names: a record whose subject
    /// changed name could no longer be opened.
    #[test]
    fn shared_records_keep_the_subject_names_their_keys_were_stored_under() {
        let id = [7u8; 16];
        for (kind, name) in [
            (RecordKind::Referral, "referral"),
            (RecordKind::Return, "return"),
            (RecordKind::Hearing, "hearing"),
            (RecordKind::SafetyAlert, "safety_alert"),
            (RecordKind::Claim, "claim"),
            (RecordKind::VictimStatus, "victim_status"),
        ] {
            let expected = [name.as_bytes(), b"/", &id].concat();
            assert_eq!(
                Subject::of_record(kind, &id).as_bytes(),
                expected,
                "{kind:?}"
            );
        }
    }

    /// An envelope about a record is sealed under that record's key, so that erasing the
    /// record destroys the queued copy too.
    #[test]
    fn an_envelope_is_sealed_under_the_key_of_the_record_it_is_about() {
        let u = uuid::Uuid::from_bytes([9; 16]);
        assert_eq!(
            subject_of(&Topic::Hearing(HearingId::from_uuid(u))),
            Subject::of_record(RecordKind::Hearing, u.as_bytes())
        );
        assert_eq!(
            subject_of(&Topic::Claim(ClaimId::from_uuid(u))),
            Subject::of_record(RecordKind::Claim, u.as_bytes())
        );
        assert_eq!(
            subject_of(&Topic::Erasure(u)).as_bytes(),
            [b"erasure/".as_slice(), u.as_bytes()].concat()
        );
        assert_eq!(subject_of(&Topic::NodeKeys).as_bytes(), b"node/keys");
    }
}
