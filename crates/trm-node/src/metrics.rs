//! The `metrics` port: plain HTTP `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//! Only counts, never personal data or ids.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use trm_store::TreeName;

use crate::ctx::Ctx;

/// Returns the router of the metrics port.
pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(ctx)
}

async fn ready(State(ctx): State<Ctx>) -> (StatusCode, &'static str) {
    match ctx.store.verify_audit() {
        Ok(r) if r.ok => (StatusCode::OK, "ready\n"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "audit chain or storage unhealthy\n",
        ),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> String {
    let s = &ctx.store;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: usize| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge(
        "trm_outbox_depth",
        "Envelopes waiting for delivery.",
        s.count(TreeName::Outbox, b""),
    );
    gauge(
        "trm_dead_letters",
        "Envelopes refused for good by a peer.",
        s.count(TreeName::DeadLetters, b""),
    );
    gauge(
        "trm_inbox_messages",
        "Inbound message ids remembered.",
        s.count(TreeName::Inbox, b""),
    );
    gauge(
        "trm_receipts_held",
        "Signed receipts kept as proof of delivery.",
        s.count(TreeName::Receipts, b""),
    );
    gauge(
        "trm_audit_entries",
        "Entries in the audit chain.",
        s.count(TreeName::Audit, b""),
    );
    gauge(
        "trm_peers",
        "Peers in the directory.",
        ctx.directory.ids().len(),
    );
    out
}
