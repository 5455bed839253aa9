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

/// Items on one page of a `List*` answer when the request names no `page_size`.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The most items one page may carry (larger requests are served this many).
pub const MAX_PAGE_SIZE: usize = 100;

/// Which page of a list a request asks for (AIP-158): at most `size` items whose key sorts
/// after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    /// The key of the last item of the previous page; `None` for the first page.
    pub after: Option<String>,
}

impl Page {
    /// Returns the first page of the default size.
    pub fn first() -> Self {
        Self {
            size: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }

    /// Returns this page of `items` (already in key order) and the token of the next page
    /// (empty on the last page).
    pub fn take<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, String) {
        let mut out: Vec<T> = items
            .into_iter()
            .filter(|item| self.after.as_ref().is_none_or(|a| key(item) > *a))
            .take(self.size + 1)
            .collect();
        if out.len() > self.size {
            out.truncate(self.size);
            let next = out.last().map(&key).unwrap_or_default();
            (out, next)
        } else {
            (out, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let mut page = Page {
            size: 3,
            after: None,
        };
        let mut seen = Vec::new();
        loop {
            let (got, next) = page.take(items.clone(), |s| s.clone());
            assert!(got.len() <= 3);
            seen.extend(got);
            if next.is_empty() {
                break;
            }
            page.after = Some(next);
        }
        assert_eq!(seen, items);
    }
}
