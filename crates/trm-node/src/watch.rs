//! The watchers of `WorkService.WatchEvents`: each open stream is a task that sends its
//! caller the events it may see, first those kept after where it resumes, then each new one
//! once durable. A caller (one client certificate) holds at most [`PER_CALLER`] streams; a
//! stream ends when the client goes away, when its certificate is revoked or expires, and
//! when the node stops.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use time::OffsetDateTime;
use tonic::Request;
use trm_core::{
    error::{Guard, GuardError},
    events::{Event, EventKind, EventRecord},
    ids::Principal,
};
use trm_proto::{command::task_kind_to_wire, convert, v1 as w};
use trm_store::Store;

use crate::{
    authz,
    ctx::Ctx,
    error::{ApiError, ApiResult},
};

/// The stream of events one watcher receives.
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<w::Event, tonic::Status>> + Send>>;

/// How many streams one client certificate may hold open at once.
pub const PER_CALLER: usize = 4;

/// How many events a watcher reads at a time.
const EVENT_PAGE: usize = 100;

/// How long a watcher waits for a change before it looks again (another replica's events,
/// a revocation of its certificate).
const EVENT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Who watches: the principal and the certificate it presented.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Principal,
    /// The certificate's issuer and serial (checked against revocations before each send).
    revocable: Option<(String, String)>,
    /// When the certificate ends.
    not_after: Option<OffsetDateTime>,
    /// One key per certificate (the issuer and serial).
    key: String,
}

impl Caller {
    /// Returns the caller of `request`, `principal` by its certificate.
    pub fn of<T>(request: &Request<T>, principal: Principal) -> Self {
        let leaf =
            authz::peer_certs(request).and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let leaf = leaf.as_deref();
        Caller {
            principal,
            revocable: leaf
                .and_then(authz::leaf)
                .map(|l| (l.issuer.clone(), l.serial.clone())),
            not_after: leaf.and_then(trm_crypto::pki::not_after),
            key: authz::client_key(request),
        }
    }

    /// Returns why the caller may no longer receive anything, if so.
    fn refused(&self, ctx: &Ctx) -> Option<&'static str> {
        if let Some((issuer, serial)) = &self.revocable {
            if ctx.revocations.is_revoked(issuer, serial) {
                return Some("client certificate revoked by the node's operator");
            }
        }
        if self
            .not_after
            .is_some_and(|end| end < OffsetDateTime::now_utc())
        {
            return Some("client certificate expired");
        }
        None
    }
}

/// The open streams of each caller.
#[derive(Debug, Default)]
pub struct Watchers {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One admitted stream; dropping it frees the caller's place.
#[derive(Debug)]
pub struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Watchers {
    /// Admits one more stream of `caller`, or refuses it over [`PER_CALLER`].
    pub fn admit(&self, caller: &Caller) -> ApiResult<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(caller.key.clone()).or_default();
        if *n >= PER_CALLER {
            return Err(ApiError::Exhausted(
                "this certificate already holds 4 event streams: close one first",
            ));
        }
        *n += 1;
        Ok(Slot {
            open: self.open.clone(),
            key: caller.key.clone(),
        })
    }
}

/// Refuses a resume point this node cannot serve without a gap: an event it never gave
/// (a node restored from a backup numbers its events again) or one older than it keeps.
pub fn check_after(store: &Store, after: u64) -> ApiResult<()> {
    if after == 0 {
        return Ok(());
    }
    let (oldest, head) = store.event_bounds()?;
    let restored = store
        .event_gaps()?
        .iter()
        .any(|(from, to)| after > *from && after <= *to);
    let why = if restored {
        "after: names an event from before this node was restored from a backup: read the lists again, then watch from an empty after"
    } else if after > head {
        "after: names an event this node has not given (restored from a backup?): read the lists again, then watch from an empty after"
    } else if oldest.is_some_and(|o| after + 1 < o) {
        "after: the events since are no longer kept (7 days): read the lists again, then watch from an empty after"
    } else {
        return Ok(());
    };
    Err(ApiError::from(GuardError::new(Guard::State, why)))
}

/// Starts the stream of `caller` after event `after`.
pub fn start(ctx: Ctx, caller: Caller, slot: Slot, after: u64) -> EventStream {
    let (tx, rx) = tokio::sync::mpsc::channel(EVENT_PAGE);
    tokio::spawn(async move {
        let _slot = slot;
        run(ctx, caller, after, tx).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

type Sender = tokio::sync::mpsc::Sender<Result<w::Event, tonic::Status>>;

/// Sends `caller` the events after `after` it may see, then each new one once durable.
async fn run(ctx: Ctx, caller: Caller, mut after: u64, out: Sender) {
    let mut changes = ctx.store.event_changes();
    let mut stopped = ctx.stopped.clone();
    loop {
        let page = match ctx.store.events_after(after, EVENT_PAGE) {
            Ok(page) => page,
            Err(e) => {
                let _ = out.send(Err(ApiError::from(e).into())).await;
                return;
            }
        };
        let full = page.len() == EVENT_PAGE;
        for e in page {
            after = e.seq;
            if !e.seen_by(&caller.principal) {
                continue;
            }
            if let Some(why) = caller.refused(&ctx) {
                let _ = out.send(Err(tonic::Status::unauthenticated(why))).await;
                return;
            }
            if out.send(Ok(event_to_wire(&e))).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = out.closed() => return,
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(EVENT_POLL) => {}
        }
        if let Some(why) = caller.refused(&ctx) {
            let _ = out.send(Err(tonic::Status::unauthenticated(why))).await;
            return;
        }
    }
    // The node is stopping: the client reconnects to it, or another replica, and resumes.
    let _ = out
        .send(Err(tonic::Status::unavailable("the node is stopping")))
        .await;
}

/// Returns the wire form of an event.
fn event_to_wire(e: &Event) -> w::Event {
    let kind = match e.kind {
        EventKind::Arrived => w::EventKind::Arrived,
        EventKind::StatusChanged => w::EventKind::StatusChanged,
        EventKind::Erased => w::EventKind::Erased,
        EventKind::TaskOpened => w::EventKind::TaskOpened,
        EventKind::TaskClosed => w::EventKind::TaskClosed,
    };
    w::Event {
        event_id: e.seq.to_string(),
        kind: kind as i32,
        record_type: e.record.type_name().to_owned(),
        record_id: e.record_id.to_string(),
        status: e.status.clone(),
        occurred_at: Some(convert::ts(e.occurred_at)),
        task_kind: match e.record {
            EventRecord::Task(k) => task_kind_to_wire(k) as i32,
            EventRecord::Shared(_) => 0,
        },
    }
}
