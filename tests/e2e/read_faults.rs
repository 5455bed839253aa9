//! A store read that fails is an error wherever it happens, never a default: the metrics
//! page fails (HTTP 500, a log line naming the read) rather than show zero, and a signing
//! key rotation interrupted by a crash is not dropped because this node's key list could
//! not be read.

use trm_crypto::signing::SigningIdentity;
use trm_tests::{captured_logs, http_get, open_store, RawDb, TestFederation};

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

#[tokio::test]
async fn an_unreadable_key_list_keeps_the_staged_key_of_an_interrupted_rotation(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    fed.stop_node("AT").await?;
    // A rotation staged its new key (and may have told the peers) when the node died; then
    // the row that says whether it committed cannot be read.
    let key_path = fed.node_dir("AT").join("keys/signing.pem");
    let staged = trm_federation::keys::staged_path(&key_path);
    SigningIdentity::generate().save(&staged)?;
    let db = RawDb::open(&fed.node_dir("AT").join("data"))?;
    db.put_raw(b"m/own_keys", b"\0not a key list")?;
    db.close()?;

    let store = open_store(&fed, "AT")?;
    let outcome = trm_federation::keys::recover_rotation(&store, &key_path);
    store.close()?;
    let err = outcome.expect_err("a rotation whose outcome cannot be read is not finished");
    assert!(
        err.to_string().contains("reading this node's signing keys"),
        "{err}"
    );
    assert!(
        staged.is_file(),
        "the staged key is kept for the next start"
    );
    Ok(())
}
