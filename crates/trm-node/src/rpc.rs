//! The shape every local RPC shares, written once: handlers return the service's own result
//! ([`ApiResult`]) and [`grpc_service!`](crate::grpc_service) turns it into a `Status` in one place; a mutating
//! request is committed once whatever a client retries ([`Ctx::once`], with its result read
//! back through [`Replay`]); a list is cut into pages in one place ([`cut`]).

use tonic::Request;
use trm_core::{
    consent::Consent,
    ids::{CaseId, ConsentId, Principal, RecordId},
    limits::Page,
    model::CaseRecord,
    FieldError,
};
use trm_proto::command::Get;
use trm_store::{repo::flows::StoredRecord, Tx};

use crate::{
    authz,
    ctx::{Ctx, Done, Idempotent, TxResult},
    error::{ApiError, ApiResult},
};

/// Implements a tonic service trait over inherent handlers of the same names that return
/// [`ApiResult`]: the one adapter from a service's result to a gRPC `Status`. The optional
/// `steps` table lists the RPCs that are a step of one shared record, each with the action
/// of the role table it needs: they run [`crate::lifecycle::take`] and answer the record
/// as it now stands ([`ToWire`]). Each optional `reads of` table names the `Get*` and
/// `List*` RPCs of one shared record (with the field of the list response that holds the
/// records): they run [`get`] and [`crate::lifecycle::list`]. The optional `streams` table
/// lists server-streaming RPCs with the stream type their handler returns.
#[macro_export]
macro_rules! grpc_service {
    ($service:ty => $trait:path {
        $($rpc:ident($req:ty) -> $resp:ty;)*
    } $(steps of $record:ty {
        $($step:ident($sreq:ty) -> $sresp:ty = $action:ident;)*
    })? $(reads of $rrecord:ty {
        get $get:ident($greq:ty) -> $gresp:ty;
        list $list:ident($lreq:ty) -> $lresp:ty { $field:ident };
    })* $(streams {
        $($srpc:ident($streq:ty) -> $assoc:ident = $stream:ty;)*
    })?) => {
        #[tonic::async_trait]
        impl $trait for $service {
            $($(
                type $assoc = $stream;
                async fn $srpc(
                    &self,
                    request: tonic::Request<$streq>,
                ) -> Result<tonic::Response<$stream>, tonic::Status> {
                    <$service>::$srpc(self, request)
                        .await
                        .map(tonic::Response::new)
                        .map_err(tonic::Status::from)
                }
            )*)?
            $(
                async fn $rpc(
                    &self,
                    request: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    <$service>::$rpc(self, request)
                        .await
                        .map(tonic::Response::new)
                        .map_err(tonic::Status::from)
                }
            )*
            $($(
                #[tracing::instrument(skip_all)]
                async fn $step(
                    &self,
                    request: tonic::Request<$sreq>,
                ) -> Result<tonic::Response<$sresp>, tonic::Status> {
                    let action = trm_core::access::Action::$action;
                    $crate::lifecycle::take::<$record, _>(&self.ctx, request, action)
                        .await
                        .map(|r| tonic::Response::new($crate::rpc::ToWire::to_wire(&r)))
                        .map_err(tonic::Status::from)
                }
            )*)?
            $(
                #[tracing::instrument(skip_all)]
                async fn $get(
                    &self,
                    request: tonic::Request<$greq>,
                ) -> Result<tonic::Response<$gresp>, tonic::Status> {
                    $crate::rpc::get::<$rrecord, _>(&self.ctx, &request)
                        .await
                        .map(tonic::Response::new)
                        .map_err(tonic::Status::from)
                }

                #[tracing::instrument(skip_all)]
                async fn $list(
                    &self,
                    request: tonic::Request<$lreq>,
                ) -> Result<tonic::Response<$lresp>, tonic::Status> {
                    let (found, next_page_token) =
                        $crate::lifecycle::list::<$rrecord, _>(&self.ctx, &request)
                            .await
                            .map_err(tonic::Status::from)?;
                    let mut answer = <$lresp>::default();
                    answer.$field = found;
                    answer.next_page_token = next_page_token;
                    Ok(tonic::Response::new(answer))
                }
            )*
        }
    };
}

/// A record's answer to a local client, as it now stands.
pub trait ToWire {
    /// The wire message.
    type Wire;
    /// Returns the record as the contract writes it.
    fn to_wire(&self) -> Self::Wire;

    /// Returns what `p`, who may read records of the kind and organisation
    /// ([`trm_core::access::readable`]), sees of this one: all of it, unless the record has
    /// rules of its own (a hearing's witness, what an immigration authority sees of a
    /// return plan), which may refuse it.
    fn seen_by(&self, _ctx: &Ctx, _p: &Principal) -> ApiResult<Self::Wire> {
        Ok(self.to_wire())
    }

    /// Returns whether a list shows the record to `p`: every record `seen_by` would not
    /// refuse (a storage fault is an error).
    fn listed(&self, _ctx: &Ctx, _p: &Principal) -> trm_store::Result<bool> {
        Ok(true)
    }
}

/// What a retried request gets back: the result's key (ids only, never personal data) is
/// remembered with the request, and the result read again from it.
pub trait Replay: Sized + Send + 'static {
    /// The audit action of reading the result back, when it holds a victim's data.
    const READ: Option<&'static str> = None;
    /// Returns the key of the result.
    fn key(&self) -> String;
    /// Reads the result of `key` again, as it stands now.
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self>;
}

/// Reads back the shared record a replayed step answered with.
pub fn record_of<R: StoredRecord>(ctx: &Ctx, key: &str) -> ApiResult<R> {
    let id = R::Id::parse_field("request_id", key)?;
    ctx.store
        .record::<R>(id)?
        .ok_or(ApiError::NotFound(R::KIND.name()))
}

/// Writes [`Replay`] for a shared record: its id is the key, and the record is read back
/// from it ([`record_of`]); `read` names the audit action of reading it back, for a
/// record that holds a victim's data.
#[macro_export]
macro_rules! replay_record {
    ($record:ty $(, read $read:literal)?) => {
        impl $crate::rpc::Replay for $record {
            $(const READ: Option<&'static str> = Some($read);)?
            fn key(&self) -> String {
                trm_core::exchange::SharedRecord::id(self).to_string()
            }
            fn replay(ctx: &$crate::ctx::Ctx, key: &str) -> $crate::error::ApiResult<Self> {
                $crate::rpc::record_of(ctx, key)
            }
        }
    };
}

/// Reads one shared record for a local client (what every `Get*` RPC of a shared record
/// runs): the caller allowed to read its kind and the request parsed ([`authz::reader`]),
/// the record read (NOT_FOUND naming its kind) and readable by the caller
/// ([`trm_core::access::readable`]), the answer what the caller sees of it
/// ([`ToWire::seen_by`]), and the read audited as `<kind>.read` before it goes out.
pub async fn get<R, M>(ctx: &Ctx, request: &Request<M>) -> ApiResult<R::Wire>
where
    R: StoredRecord + ToWire,
    for<'a> Get<R::Id>: TryFrom<&'a M, Error = FieldError>,
{
    let (p, Get(id)) = authz::reader::<M, Get<R::Id>>(request, R::KIND.info().read)?;
    let r = ctx
        .store
        .record::<R>(id)?
        .ok_or(ApiError::NotFound(R::KIND.name()))?;
    trm_core::access::readable(&p, R::KIND, r.owner())?;
    let answer = r.seen_by(ctx, &p)?;
    let audit = format!("{}.read", R::KIND.code());
    ctx.audit_read(&p, &audit, id.to_string(), String::new())
        .await?;
    Ok(answer)
}

/// Splits the key of a result kept under its case (`<case>/<id>`), naming `what` when the
/// key names none.
pub fn case_key<I: RecordId>(key: &str, what: &str) -> ApiResult<(CaseId, I)> {
    let (case, id) = key
        .split_once('/')
        .ok_or_else(|| FieldError::new("request_id", format!("names no {what}")))?;
    Ok((
        CaseId::parse("request_id", case)?,
        I::parse_field("request_id", id)?,
    ))
}

impl Replay for CaseRecord {
    const READ: Option<&'static str> = Some("case.read");
    fn key(&self) -> String {
        self.case_id.to_string()
    }
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self> {
        let id = CaseId::parse("request_id", key)?;
        ctx.store.case(id)?.ok_or(ApiError::NotFound("case"))
    }
}

impl Replay for Consent {
    fn key(&self) -> String {
        format!("{}/{}", self.case_id, self.consent_id)
    }
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self> {
        let (case, consent): (_, ConsentId) = case_key(key, "consent")?;
        ctx.store
            .consents(case)?
            .into_iter()
            .find(|c| c.consent_id == consent)
            .ok_or(ApiError::NotFound("consent"))
    }
}

/// A result that is its own key (a count, an id): replayed as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered(pub String);

impl Replay for Remembered {
    fn key(&self) -> String {
        self.0.clone()
    }
    fn replay(_: &Ctx, key: &str) -> ApiResult<Self> {
        Ok(Self(key.to_owned()))
    }
}

impl Ctx {
    /// Commits a mutating request once: when `idem` names a request already done, nothing
    /// changes and its result is read back (and, for a victim's data, the read audited);
    /// otherwise `f` runs and its result's key is remembered in the same transaction.
    pub async fn once<R, F>(&self, idem: Option<Idempotent>, p: &Principal, f: F) -> ApiResult<R>
    where
        R: Replay,
        F: Fn(&mut Tx<'_>) -> TxResult<R> + Send + 'static,
    {
        match self.commit_once(idem, R::key, f).await? {
            Done::Now(r) => Ok(r),
            Done::Before(key) => {
                let r = R::replay(self, &key)?;
                if let Some(action) = R::READ {
                    self.audit_read(p, action, key, "replay".into()).await?;
                }
                Ok(r)
            }
        }
    }
}

/// Cuts what a store read (up to one more than a page) into the page and the next token.
pub fn cut<T, I: RecordId>(page: &Page, read: Vec<T>, id: impl Fn(&T) -> I) -> (Vec<T>, String) {
    page.cut(read, |t| id(t).to_string())
}
