//! Idempotent requests (AIP-155): what a client's request with a `request_id` produced, so
//! that a retry returns the original result and changes nothing. The record holds a digest
//! of the request and the ids of its result, never personal data.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    repo::{layout, outbox::hex_bytes},
    Result, Tx,
};

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// SHA-256 of the request as it was made (without its request id).
    #[serde(with = "hex_bytes")]
    pub digest: Vec<u8>,
    /// The caller's encoding of the result (ids only).
    pub result: String,
    pub at: OffsetDateTime,
}

impl Tx<'_> {
    /// Returns what `client`'s request `request_id` produced.
    pub fn request(
        &mut self,
        client: &str,
        request_id: uuid::Uuid,
    ) -> Result<Option<RequestRecord>> {
        self.get_json("request", &layout::request(client, &request_id))
    }

    /// Keeps what `client`'s request `request_id` produced.
    pub fn put_request(
        &mut self,
        client: &str,
        request_id: uuid::Uuid,
        record: &RequestRecord,
    ) -> Result<()> {
        self.put_json(&layout::request(client, &request_id), record)
    }

    /// Forgets up to `limit` requests made before `before`; returns how many.
    pub fn forget_requests_before(
        &mut self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<usize> {
        let mut n = 0;
        for (k, v) in self.scan_raw(layout::REQUESTS, None, limit)? {
            let r: RequestRecord = crate::tx::decode("request", &v)?;
            if r.at < before {
                self.delete(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
