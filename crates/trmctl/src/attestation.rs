//! Victim-status attestations verified offline: a file `{ "attestation": base64,
//! "key_id": "...", "signature": base64 }` (as `RemediesService.GetVictimStatus` returns
//! them in `SignedAttestation`) and the issuer's published ed25519 public key (SPKI PEM, as
//! `openssl pkey -pubout` or `trmctl keys show --pem` print it). The signature is strict
//! ed25519 over `trm/attestation/v1`, one zero byte, then the attestation's bytes; the key
//! id is the first 16 hex characters of SHA-256 of the raw 32-byte public key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use prost::Message;
use serde::{Deserialize, Serialize};
use trm_core::remedies::ATTESTATION_TAG;
use trm_crypto::signing;
use trm_proto::v1 as w;

/// An attestation as a file: the signed bytes and the signature in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationFile {
    pub attestation: String,
    pub key_id: String,
    pub signature: String,
}

impl AttestationFile {
    /// Returns the file of a signed attestation as a node answered it.
    pub fn of(signed: &w::SignedAttestation) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            attestation: b64.encode(&signed.attestation),
            key_id: signed.key_id.clone(),
            signature: b64.encode(&signed.signature),
        }
    }
}

/// What a verified attestation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub case_ref: String,
    /// The proto enum name (`IDENTIFICATION_STAGE_CONCLUSIVE`).
    pub stage: String,
    pub decided_month: String,
    pub issuer: String,
    /// RFC 3339.
    pub issued_at: String,
}

/// Verifies `file` against the issuer's public key `public_pem` (SPKI PEM) and decodes it.
pub fn verify(file: &AttestationFile, public_pem: &str) -> Result<Verified> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64
        .decode(file.attestation.trim())
        .context("attestation is not base64")?;
    let signature = b64
        .decode(file.signature.trim())
        .context("signature is not base64")?;
    let public = signing::public_from_pem(public_pem)
        .context("the public key is not an ed25519 SubjectPublicKeyInfo PEM")?;
    let id = signing::key_id(&public);
    if id != file.key_id {
        bail!(
            "key_id {} is not the id of the given public key ({id}): pass the key that signed it",
            file.key_id
        );
    }
    signing::verify(&public, ATTESTATION_TAG, &bytes, &signature).context(
        "the signature does not verify: the attestation was altered or signed by another key",
    )?;
    let a = w::VictimStatusAttestation::decode(bytes.as_slice())
        .context("the signed bytes are not a VictimStatusAttestation")?;
    Ok(Verified {
        case_ref: a.case_ref,
        stage: w::IdentificationStage::try_from(a.stage)
            .unwrap_or_default()
            .as_str_name()
            .to_owned(),
        decided_month: a.decided_month,
        issuer: a.issuer,
        issued_at: crate::out::rfc3339(a.issued_at.as_ref()).unwrap_or_default(),
    })
}

/// Reads the attestation file at `file` and the PEM at `public_key`, then [`verify`]s.
pub fn verify_files(file: &Path, public_key: &Path) -> Result<Verified> {
    let text = trm_crypto::files::read_text(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: AttestationFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an attestation file {{\"attestation\", \"key_id\", \"signature\"}}",
            file.display()
        )
    })?;
    let pem = trm_crypto::files::read_text(public_key)
        .with_context(|| format!("cannot read {}", public_key.display()))?;
    verify(&parsed, &pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(identity: &signing::SigningIdentity) -> w::SignedAttestation {
        let attestation = w::VictimStatusAttestation {
            case_ref: "ref-1".into(),
            stage: w::IdentificationStage::Conclusive as i32,
            decided_month: "2026-03".into(),
            issuer: "AT".into(),
            issued_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
        }
        .encode_to_vec();
        w::SignedAttestation {
            signature: identity.sign(ATTESTATION_TAG, &attestation),
            key_id: identity.key_id().to_owned(),
            attestation,
        }
    }

    #[test]
    fn a_signed_attestation_verifies_and_an_altered_one_does_not() {
        let id = signing::SigningIdentity::generate();
        let pem = signing::public_to_pem(&id.public()).unwrap();
        let s = signed(&id);
        let v = verify(&AttestationFile::of(&s), &pem).unwrap();
        assert_eq!(
            (
                v.case_ref.as_str(),
                v.stage.as_str(),
                v.decided_month.as_str()
            ),
            ("ref-1", "IDENTIFICATION_STAGE_CONCLUSIVE", "2026-03")
        );
        let mut altered = s.clone();
        altered.attestation[3] ^= 1;
        assert!(verify(&AttestationFile::of(&altered), &pem).is_err());
        let other = signing::SigningIdentity::generate();
        let other_pem = signing::public_to_pem(&other.public()).unwrap();
        let err = verify(&AttestationFile::of(&s), &other_pem).unwrap_err();
        assert!(err.to_string().contains("key_id"), "{err}");
    }
}
