//! Drafts of a new case, for the console's "save draft": a person saves what they have
//! typed so far and comes back to it. A draft is sealed in the store like a case (its own
//! data key, shredded when it is discarded or used), seen only by the role and organisation
//! that saved it, kept [`DRAFT_DAYS`](trm_store::repo::drafts::DRAFT_DAYS) days, and
//! audited by id.

use time::OffsetDateTime;
use trm_core::{
    access::{self, Action},
    ids::Principal,
};
use trm_store::{
    audit::AuditRecord,
    repo::drafts::{Draft, Saved},
};

use crate::{
    authz::actor,
    ctx::Ctx,
    error::{ApiError, ApiResult},
};

/// The draft a new case is made from, on a `CreateCase` request the console makes: the
/// case is created and the draft discarded in one transaction, so the victim's data never
/// outlives the case in a draft. A request extension, which no remote client can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedDraft(pub uuid::Uuid);

/// At most this many fields in a draft, each at most this long (a form, not a store).
const MAX_FIELDS: usize = 64;
const MAX_FIELD_LEN: usize = 512;

/// Saves `fields` as `p`'s draft `id` (a new draft when `id` is none); returns its id.
pub async fn save(
    ctx: &Ctx,
    p: &Principal,
    id: Option<uuid::Uuid>,
    fields: Vec<(String, String)>,
) -> ApiResult<uuid::Uuid> {
    access::require(p, Action::CreateCase)?;
    if fields.len() > MAX_FIELDS || fields.iter().any(|(_, v)| v.len() > MAX_FIELD_LEN) {
        return Err(ApiError::from(trm_core::FieldError::new(
            "draft",
            "is too long for a form",
        )));
    }
    let draft = Draft {
        draft_id: id.unwrap_or_else(uuid::Uuid::new_v4),
        fields,
        saved_at: OffsetDateTime::now_utc(),
    };
    let (owner, saved, new) = (p.clone(), draft.clone(), id.is_none());
    let audit = AuditRecord::new(actor(p), "draft.save", draft.draft_id.to_string(), "ok");
    let outcome = ctx
        .commit(move |tx| {
            let outcome = tx.put_draft(&owner, &saved, new)?;
            if outcome == Saved::Saved {
                tx.audit(audit.clone())?;
            }
            Ok(outcome)
        })
        .await?;
    match outcome {
        Saved::Saved => Ok(draft.draft_id),
        Saved::NotFound => Err(ApiError::NotFound("draft")),
        Saved::Full => Err(ApiError::Exhausted(
            "drafts: at most 20 are kept; finish or discard one first",
        )),
    }
}

/// `p`'s drafts not past keeping, oldest first (housekeeping destroys the others).
pub fn list(ctx: &Ctx, p: &Principal) -> ApiResult<Vec<Draft>> {
    access::require(p, Action::CreateCase)?;
    Ok(ctx.store.drafts(p)?)
}

/// `p`'s draft `id`; NOT_FOUND when there is none (or it is past keeping).
pub async fn get(ctx: &Ctx, p: &Principal, id: uuid::Uuid) -> ApiResult<Draft> {
    access::require(p, Action::CreateCase)?;
    let draft = ctx.store.draft(p, id)?.ok_or(ApiError::NotFound("draft"))?;
    ctx.audit_read(p, "draft.read", id.to_string(), String::new())
        .await?;
    Ok(draft)
}

/// Deletes `p`'s draft `id` and shreds its key (a draft used for a case goes with the
/// case's creation: [`UsedDraft`]).
pub async fn discard(ctx: &Ctx, p: &Principal, id: uuid::Uuid) -> ApiResult<()> {
    access::require(p, Action::CreateCase)?;
    let owner = p.clone();
    let audit = AuditRecord::new(actor(p), "draft.discard", id.to_string(), "discarded");
    ctx.commit(move |tx| {
        if tx.discard_draft(&owner, id)? {
            tx.audit(audit.clone())?;
        }
        Ok(())
    })
    .await
}
