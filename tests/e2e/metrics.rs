//! The metrics page under a storage fault: a store read that fails makes `/metrics` fail
//! (HTTP 500, a log line naming the read), never a figure that reads as zero.

use trm_tests::{captured_logs, http_get, RawDb, TestFederation};

#[tokio::test]
async fn a_store_read_that_fails_fails_the_metrics_page_rather_than_reading_as_zero(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let metrics = fed.node("AT")?.addrs.metrics;
    let page = http_get(metrics, "/metrics").await?;
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");

    // The head of AT's queue for RO (sequence 0 sorts first) is not an outbox item: reading
    // it fails, as a damaged disk or database would make it.
    fed.stop_node("AT").await?;
    let db = RawDb::open(&fed.node_dir("AT").join("data"))?;
    let key = [&b"o/RO"[..], &0u64.to_be_bytes()].concat();
    db.put_raw(&key, b"\0not an outbox item")?;
    db.close()?;
    fed.start_node("AT").await?;

    let page = http_get(metrics, "/metrics").await?;
    assert!(page.starts_with("HTTP/1.0 500"), "{page}");
    assert!(!page.contains("trm_outbox_oldest_age_seconds"), "{page}");
    assert!(
        captured_logs().contains("cannot read the store for the metrics page"),
        "the failing read is logged"
    );
    Ok(())
}
