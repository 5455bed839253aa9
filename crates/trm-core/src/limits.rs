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
        let read = items
            .into_iter()
            .filter(|item| self.after.as_ref().is_none_or(|a| key(item) > *a))
            .take(self.size + 1)
            .collect();
        self.cut(read, key)
    }

    /// Returns the page out of `read`: what a store read after the token, in key order, up
    /// to `size + 1` items (the item past the page only tells that another page exists), and
    /// the token of the next page (empty on the last page). A page is full or it is the
    /// last: a reader that passes over records it cannot show must read on until it has
    /// `size + 1` items or none are left.
    pub fn cut<T>(&self, mut read: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if read.len() > self.size {
            read.truncate(self.size);
            let next = read.last().map(&key).unwrap_or_default();
            (read, next)
        } else {
            (read, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md, "Limits" and "Pagination".
    #[test]
    fn limits_have_their_documented_values() {
        const MIB: usize = 1024 * 1024;
        assert_eq!((MAX_SHORT, MAX_TEXT, MAX_ITEMS), (200, 4000, 64));
        assert_eq!(
            (MAX_LOCAL_REQUEST, MAX_ENVELOPE, MAX_BATCH),
            (MIB, 4 * MIB, 16 * MIB)
        );
        assert_eq!((DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), (50, 100));
        assert_eq!(Page::first().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::first().after, None);
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let mut page = Page {
            size: 3,
            after: None,
        };
        let mut seen = Vec::new();
        let mut tokens = Vec::new();
        // Three pages of 3, 3 and 1; a fourth round would be a page too many.
        for _ in 0..4 {
            let (got, next) = page.take(items.clone(), |s| s.clone());
            assert!(got.len() <= 3);
            seen.extend(got);
            if next.is_empty() {
                break;
            }
            tokens.push(next.clone());
            page.after = Some(next);
        }
        assert_eq!(seen, items);
        assert_eq!(tokens, ["k2", "k5"], "a token is the last key of its page");
    }

    #[test]
    fn a_list_that_fills_its_page_exactly_has_no_next_page() {
        let page = Page {
            size: 2,
            after: None,
        };
        assert_eq!(
            page.take(["a", "b"], |s| s.to_string()),
            (vec!["a", "b"], String::new())
        );
    }
}
