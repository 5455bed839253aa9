//! Publishing monitoring statistics so that nothing published can be subtracted (DESIGN
//! "Monitoring and evaluation statistics").
//!
//! Each closed month is published once, at the first export that covers it: its counters
//! are read, small cells and their complements suppressed, then more cells until every
//! suppressed cell's protection interval across the tables is at least `min_cell_count`
//! wide ([`trm_core::stats::protect`]); the report is signed and kept. Every later export
//! of the month answers those exact bytes. A period of several months is added up from
//! the kept monthly reports only, as `trmctl stats merge` adds nodes.

use prost::Message;
use time::OffsetDateTime;
use trm_core::stats::{merge_months, protect::protect, publish, Month, Period, Published};
use trm_proto::{convert::ts, stats, v1 as w};
use trm_store::{audit::AuditRecord, repo::stats::PublishedReport};

use crate::{
    ctx::Ctx,
    error::{ApiError, ApiResult},
};

/// How often a month's publication is computed again when its counters changed meanwhile.
const ATTEMPTS: usize = 8;

/// Returns the signed report of `period`: the month's kept report for one month, the sum
/// of the months' kept reports for several.
pub async fn export(
    ctx: &Ctx,
    period: Period,
    actor: &str,
) -> ApiResult<w::ExportStatisticsResponse> {
    let actor = actor.to_owned();
    let months: Vec<Month> = period.months().collect();
    let mut monthly = Vec::with_capacity(months.len());
    for month in &months {
        monthly.push(published(ctx, *month, &actor).await?);
    }
    let answer = match monthly.as_slice() {
        [one] => w::ExportStatisticsResponse {
            report: one.report.clone(),
            key_id: one.key_id.clone(),
            signature: one.signature.clone(),
        },
        _ => {
            let mut reports = Vec::with_capacity(monthly.len());
            let mut min = ctx.min_cell_count;
            for kept in &monthly {
                let r = w::StatisticsReport::decode(kept.report.as_slice()).map_err(|_| {
                    ApiError::Store("a kept statistics report does not decode".into())
                })?;
                min = min.max(u64::from(r.min_cell_count));
                reports.push(r.cells.iter().map(stats::cell_from_wire).collect());
            }
            let cells = merge_months(reports, min);
            signed(ctx, period, min, &cells)
        }
    };
    let detail = format!(
        "period={}..{} months={}",
        period.start,
        period.end,
        months.len()
    );
    let entry = AuditRecord::new(actor, "statistics.export", "statistics", "ok").detail(detail);
    crate::admin::audit_alone(ctx, entry).await?;
    Ok(answer)
}

/// Signs a report of `cells` over `period`.
fn signed(ctx: &Ctx, period: Period, min: u64, cells: &[Published]) -> w::ExportStatisticsResponse {
    let report = w::StatisticsReport {
        node_id: ctx.id.to_string(),
        period_start: period.start.to_string(),
        period_end: period.end.to_string(),
        min_cell_count: u32::try_from(min).unwrap_or(u32::MAX),
        policy_version: trm_core::policy::POLICY_VERSION.to_owned(),
        created_at: Some(ts(OffsetDateTime::now_utc())),
        cells: cells.iter().map(stats::cell_to_wire).collect(),
    }
    .encode_to_vec();
    let signer = ctx.identity.current();
    let signature = signer.sign(trm_crypto::signing::STATISTICS_TAG, &report);
    w::ExportStatisticsResponse {
        report,
        key_id: signer.key_id().to_owned(),
        signature,
    }
}

/// What a publication's transaction found.
enum Kept {
    /// The month's report, kept now or before.
    Report(PublishedReport),
    /// The month's counters changed since they were read: compute again.
    Changed,
}

/// Returns the kept report of `month`, publishing it first if it was not yet. The
/// protection is computed outside the writer (it may take a while); the transaction keeps
/// it only if the counters it was computed from are still those of the month.
async fn published(ctx: &Ctx, month: Month, actor: &str) -> ApiResult<PublishedReport> {
    let actor = actor.to_owned();
    if let Some(kept) = ctx.store.published_report(month)? {
        return Ok(kept);
    }
    let period = Period {
        start: first_day(month)?,
        end: month.next_first_day(),
    };
    for _ in 0..ATTEMPTS {
        let counts = ctx.store.stat_counts(period)?;
        let min = ctx.min_cell_count;
        let raw: Vec<Published> = counts
            .iter()
            .map(|(cell, n)| stats::published(cell, *n))
            .collect();
        let cells = tokio::task::spawn_blocking(move || protect(publish(raw, min), min))
            .await
            .map_err(|_| ApiError::Store("the statistics' protection failed".into()))?;
        let response = signed(ctx, period, min, &cells);
        let new = PublishedReport {
            report: response.report,
            key_id: response.key_id,
            signature: response.signature,
        };
        let suppressed = cells.iter().filter(|c| c.suppressed).count();
        let detail = format!(
            "month={} cells={} suppressed={suppressed} min_cell_count={min}",
            month.key(),
            cells.len()
        );
        let actor = actor.clone();
        let kept = ctx
            .commit(move |tx| {
                if let Some(before) = tx.published_report(month)? {
                    return Ok(Kept::Report(before));
                }
                if tx.month_counts(month)? != counts {
                    return Ok(Kept::Changed);
                }
                tx.put_published_report(month, &new)?;
                tx.audit(
                    AuditRecord::new(actor.clone(), "statistics.publish", "statistics", "ok")
                        .detail(detail.clone()),
                )?;
                Ok(Kept::Report(new.clone()))
            })
            .await?;
        if let Kept::Report(r) = kept {
            return Ok(r);
        }
    }
    Err(ApiError::Store(format!(
        "the counters of {} kept changing while it was published",
        month.key()
    )))
}

fn first_day(m: Month) -> ApiResult<time::Date> {
    time::Month::try_from(m.month)
        .ok()
        .and_then(|cm| time::Date::from_calendar_date(m.year, cm, 1).ok())
        .ok_or_else(|| ApiError::Store("a month out of range".into()))
}
