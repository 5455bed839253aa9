//! Size limits of the public contract (DESIGN.md, "Limits").

/// Names and short strings.
pub const MAX_SHORT: usize = 200;
/// Free text.
pub const MAX_TEXT: usize = 4000;
/// Items in a list.
pub const MAX_ITEMS: usize = 64;
/// A local request, in bytes.
pub const MAX_LOCAL_REQUEST: usize = 1 << 20;
/// One envelope, in bytes.
pub const MAX_ENVELOPE: usize = 4 << 20;
/// One batch of envelopes, in bytes.
pub const MAX_BATCH: usize = 16 << 20;
