//! Drafts of a case form that a person saved before the case exists (the console's "save
//! draft"): the form's fields, sealed under the draft's own data key like every record
//! holding personal data, keyed by the role and organisation that saved it. Discarding a
//! draft deletes it and shreds its key, so no copy of the store (a backup included) can
//! open it again. Drafts are kept [`DRAFT_DAYS`] days.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::Principal;

use crate::{repo::layout, store::Store, subject::Subject, tx::Tx, Result};

/// How long a draft is kept after it was last saved.
pub const DRAFT_DAYS: i64 = 30;

/// A saved form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub draft_id: uuid::Uuid,
    /// The form's fields in order (repeated names for ticked boxes).
    pub fields: Vec<(String, String)>,
    pub saved_at: OffsetDateTime,
}

impl Draft {
    /// Whether the draft is past keeping at `now`.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        now - self.saved_at > time::Duration::days(DRAFT_DAYS)
    }
}

fn subject(id: uuid::Uuid) -> Subject {
    Subject::named("draft", id.as_bytes())
}

impl Tx<'_> {
    /// Saves `draft` for `owner` (a draft saved again replaces the earlier one).
    pub fn put_draft(&mut self, owner: &Principal, draft: &Draft) -> Result<()> {
        self.put_sealed(
            &layout::draft(owner, draft.draft_id.as_bytes()),
            &subject(draft.draft_id),
            draft,
        )
    }

    /// Deletes `owner`'s draft `id` and shreds its key; returns whether there was one.
    pub fn discard_draft(&mut self, owner: &Principal, id: uuid::Uuid) -> Result<bool> {
        let k = layout::draft(owner, id.as_bytes());
        if self.get_raw(&k)?.is_none() {
            return Ok(false);
        }
        self.delete(&k)?;
        self.shred(&subject(id))?;
        Ok(true)
    }
}

impl Store {
    /// `owner`'s draft `id`, unless it is past keeping.
    pub fn draft(&self, owner: &Principal, id: uuid::Uuid) -> Result<Option<Draft>> {
        let found: Option<Draft> =
            self.get_sealed("draft", &layout::draft(owner, id.as_bytes()), &subject(id))?;
        Ok(found.filter(|d| !d.expired(OffsetDateTime::now_utc())))
    }

    /// `owner`'s drafts (at most 100), oldest first, with those past keeping apart: the
    /// caller discards them.
    pub fn drafts(&self, owner: &Principal) -> Result<(Vec<Draft>, Vec<uuid::Uuid>)> {
        let now = OffsetDateTime::now_utc();
        let (mut kept, mut expired) = (Vec::new(), Vec::new());
        for (k, _) in self.scan_raw(&layout::drafts(owner), None, 100)? {
            let Some(id) = k
                .get(k.len().saturating_sub(16)..)
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
            else {
                continue;
            };
            match self.get_sealed::<Draft>("draft", &k, &subject(id))? {
                Some(d) if d.expired(now) => expired.push(id),
                Some(d) => kept.push(d),
                // Its key shredded: nothing to show.
                None => {}
            }
        }
        kept.sort_by_key(|d| d.saved_at);
        Ok((kept, expired))
    }
}
