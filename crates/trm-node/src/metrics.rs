//! The `metrics` port: plain HTTP `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//! Only counts, never personal data or ids.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use trm_federation::Counters;

use crate::{ctx::Ctx, gate::GateCounters};

/// Returns the router of the metrics port.
pub fn router(ctx: Ctx, gates: GateCounters) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state((ctx, gates))
}

/// Alive unless the store stopped taking writes after a failed durable point (only a
/// restart, after the disk is looked at, brings it back).
async fn live(State((ctx, _)): State<(Ctx, GateCounters)>) -> (StatusCode, String) {
    match ctx.store.failure() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {why}\n"),
        ),
    }
}

/// Ready when the database answers and takes writes. Verifying the audit chain is
/// `VerifyAudit`'s job: it reads every entry, too much for a probe that runs every few
/// seconds.
async fn ready(State((ctx, _)): State<(Ctx, GateCounters)>) -> (StatusCode, String) {
    if let Some(why) = ctx.store.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {why}\n"),
        );
    }
    if ctx.store.is_readable() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable\n".into(),
        )
    }
}

async fn metrics(State((ctx, gates)): State<(Ctx, GateCounters)>) -> String {
    let s = &ctx.store;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: usize| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    let peers = ctx.directory.ids();
    gauge(
        "trm_outbox_depth",
        "Envelopes waiting for delivery.",
        peers
            .iter()
            .map(|p| s.outbox_depth(*p).unwrap_or_default())
            .sum::<u64>() as usize,
    );
    gauge(
        "trm_dead_letters",
        "Envelopes refused for good by a peer.",
        s.dead_letter_count().unwrap_or_default() as usize,
    );
    gauge(
        "trm_audit_entries",
        "Entries in the audit chain.",
        s.audit_len().unwrap_or_default() as usize,
    );
    gauge(
        "trm_peers",
        "Peers in the directory.",
        ctx.directory.ids().len(),
    );
    let c = &ctx.counters;
    let mut counter = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    };
    counter(
        "trm_envelopes_accepted_total",
        "Inbound envelopes accepted.",
        Counters::get(&c.accepted),
    );
    counter(
        "trm_envelopes_rejected_total",
        "Inbound envelopes answered REJECTED.",
        Counters::get(&c.rejected),
    );
    counter(
        "trm_envelopes_duplicate_total",
        "Inbound duplicates answered with the original receipt.",
        Counters::get(&c.duplicates),
    );
    counter(
        "trm_batches_received_total",
        "Inbound DeliverBatch calls answered.",
        Counters::get(&c.batches),
    );
    counter(
        "trm_deliveries_total",
        "Outbound envelopes with a verified receipt.",
        Counters::get(&c.delivered),
    );
    counter(
        "trm_delivery_failures_total",
        "Failed outbound attempts (retried).",
        Counters::get(&c.attempts_failed),
    );
    counter(
        "trm_dead_lettered_total",
        "Outbound envelopes moved to the dead letters.",
        Counters::get(&c.dead_lettered),
    );
    counter(
        "trm_requests_rate_limited_total",
        "Requests refused for going over their caller's rate (RESOURCE_EXHAUSTED).",
        gates
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        "trm_requests_revoked_total",
        "Requests refused because their client certificate is revoked.",
        gates.revoked.load(std::sync::atomic::Ordering::Relaxed),
    );
    out.push_str("# HELP trm_envelopes_refused_total Inbound envelopes refused before any effect, by reason.\n# TYPE trm_envelopes_refused_total counter\n");
    for (reason, n) in c.refusals() {
        out.push_str(&format!(
            "trm_envelopes_refused_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    out
}
