//! Monitoring statistics for operators and regional bodies: a node's signed report of a
//! closed period ([`export`]), verified before it is shown; and reports of several nodes for
//! the same period added together ([`merge`]), each verified, with suppression applied again
//! to the sums so that a regional table exposes no one either.

use std::path::Path;

use anyhow::{bail, Context, Result};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use trm_core::stats::{publish, Published};
use trm_crypto::signing::{self, PublicKey, STATISTICS_TAG};
use trm_node::NodeConfig;
use trm_proto::{
    stats::cell_from_wire,
    v1::{self as w, admin_service_client::AdminServiceClient},
};

/// A node's report as signed, kept whole so anyone can verify it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// Hex of the serialized `StatisticsReport`.
    pub report_hex: String,
    pub key_id: String,
    pub signature_hex: String,
}

/// A report as a file: what it says, and the signed bytes it says it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFile {
    /// The nodes whose reports it is (one for an export; several for a merge).
    pub nodes: Vec<String>,
    pub period_start: String,
    pub period_end: String,
    pub min_cell_count: u64,
    pub cells: Vec<Published>,
    /// The node's signed report; for a merge, those of every node added.
    pub signed: Vec<Signed>,
}

/// The keys a report may be signed with that are on this host: the node's own (its signing
/// key, and its public key file beside it), plus any given. The peers' keys come from the
/// running node's directory (`trmctl::admin::directory_keys`), never from node.toml.
pub fn trusted_keys(
    config: &Path,
    extra: &[std::path::PathBuf],
) -> Result<Vec<(String, PublicKey)>> {
    let cfg = NodeConfig::load(config)?;
    let mut keys = Vec::new();
    if let Ok(own) = signing::SigningIdentity::load(&cfg.signing.key) {
        keys.push((cfg.node.id.to_string(), own.public()));
    }
    let mut files: Vec<(String, std::path::PathBuf)> = vec![(
        cfg.node.id.to_string(),
        cfg.signing.key.with_extension("pub.pem"),
    )];
    files.extend(extra.iter().map(|p| (String::new(), p.clone())));
    for (owner, path) in files {
        if let Ok(pem) = trm_crypto::files::read_text(&path) {
            let public = signing::public_from_pem(&pem)
                .with_context(|| format!("{} is not an ed25519 public key", path.display()))?;
            keys.push((owner, public));
        }
    }
    Ok(keys)
}

/// Verifies a signed report against `keys` and decodes it; the signing key must belong to
/// the node the report names (a key given with --key may sign for any node).
pub fn verify(signed: &Signed, keys: &[(String, PublicKey)]) -> Result<w::StatisticsReport> {
    let report = hex::decode(&signed.report_hex).context("report_hex is not hex")?;
    let signature = hex::decode(&signed.signature_hex).context("signature_hex is not hex")?;
    let decoded = w::StatisticsReport::decode(report.as_slice())
        .context("the signed bytes are not a StatisticsReport")?;
    let key = keys
        .iter()
        .filter(|(_, k)| signing::key_id(k) == signed.key_id)
        .find(|(owner, _)| owner.is_empty() || *owner == decoded.node_id)
        .with_context(|| {
            format!(
                "no trusted key of node {} has id {}: pass its public key with --key PEM",
                decoded.node_id, signed.key_id
            )
        })?;
    signing::verify(&key.1, STATISTICS_TAG, &report, &signature)
        .with_context(|| format!("the report of {} does not verify", decoded.node_id))?;
    Ok(decoded)
}

/// Asks the node for its report of `[from, to)`, verifies it and returns it as a file.
pub async fn export(
    admin: &mut AdminServiceClient<Channel>,
    keys: &[(String, PublicKey)],
    from: &str,
    to: &str,
) -> Result<ReportFile> {
    let r = admin
        .export_statistics(w::ExportStatisticsRequest {
            period_start: from.to_owned(),
            period_end: to.to_owned(),
        })
        .await?
        .into_inner();
    let signed = Signed {
        report_hex: hex::encode(&r.report),
        key_id: r.key_id,
        signature_hex: hex::encode(&r.signature),
    };
    let report = verify(&signed, keys)?;
    Ok(ReportFile {
        nodes: vec![report.node_id.clone()],
        period_start: report.period_start,
        period_end: report.period_end,
        min_cell_count: u64::from(report.min_cell_count),
        cells: report.cells.iter().map(cell_from_wire).collect(),
        signed: vec![signed],
    })
}

/// Adds reports of the same period together: every node's signature is verified again, and
/// suppression is applied to the sums at the highest threshold among them (and `min`): a
/// cell suppressed in any report stays suppressed.
pub fn merge(files: &[ReportFile], keys: &[(String, PublicKey)], min: u64) -> Result<ReportFile> {
    let Some(first) = files.first() else {
        bail!("no report to merge");
    };
    let mut nodes = Vec::new();
    let mut cells = Vec::new();
    let mut signed_all = Vec::new();
    let mut threshold = min;
    for f in files {
        for s in &f.signed {
            let r = verify(s, keys)?;
            if (r.period_start.as_str(), r.period_end.as_str())
                != (first.period_start.as_str(), first.period_end.as_str())
            {
                bail!(
                    "the report of {} covers {}..{}, not {}..{}",
                    r.node_id,
                    r.period_start,
                    r.period_end,
                    first.period_start,
                    first.period_end
                );
            }
            if nodes.contains(&r.node_id) {
                bail!("two reports of {} for the same period", r.node_id);
            }
            threshold = threshold.max(u64::from(r.min_cell_count));
            // The signed cells, not what the file says beside them.
            cells.extend(r.cells.iter().map(cell_from_wire));
            nodes.push(r.node_id);
            signed_all.push(s.clone());
        }
    }
    Ok(ReportFile {
        nodes,
        period_start: first.period_start.clone(),
        period_end: first.period_end.clone(),
        min_cell_count: threshold,
        cells: publish(cells, threshold),
        signed: signed_all,
    })
}

/// Writes a report as CSV: `table,labels,count,suppressed`, labels as `dimension=value;...`.
pub fn to_csv(f: &ReportFile, out: &mut dyn std::io::Write) -> Result<()> {
    writeln!(out, "table,labels,count,suppressed")?;
    for c in &f.cells {
        let labels: Vec<String> = c.labels.iter().map(|(d, v)| format!("{d}={v}")).collect();
        writeln!(
            out,
            "{},{},{},{}",
            c.table,
            labels.join(";"),
            c.count,
            c.suppressed
        )?;
    }
    Ok(())
}
