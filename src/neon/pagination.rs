//! When to ask Neon for another page.
//!
//! Neon does not document the end of paging (neon-api.md §2.1): neonctl stops on a short page,
//! `@neon/sdk` on a missing cursor or an empty page. We stop on any of the three, and also on a
//! cursor that repeats, so a misbehaving server cannot make a listing loop forever.
//!
//! **Invariant:** pure; the same rule serves both pager shapes (`pagination.cursor` for projects
//! and operations, `pagination.next` for branches), the caller extracts the cursor.

/// The next step of a paged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageStep {
    Stop,
    /// Ask again with this cursor.
    Continue(String),
}

/// Decide after one page of `items_on_page` items, requested with `limit`, that carried
/// `cursor` and was itself fetched with `previous_cursor`.
pub(crate) fn next_page(
    items_on_page: usize,
    limit: u32,
    cursor: Option<&str>,
    previous_cursor: Option<&str>,
) -> PageStep {
    let short_page = items_on_page < limit as usize;
    match cursor {
        _ if items_on_page == 0 || short_page => PageStep::Stop,
        None => PageStep::Stop,
        Some(cursor) if cursor.is_empty() || Some(cursor) == previous_cursor => PageStep::Stop,
        Some(cursor) => PageStep::Continue(cursor.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_page_with_a_new_cursor_continues() {
        assert_eq!(
            next_page(400, 400, Some("c2"), Some("c1")),
            PageStep::Continue("c2".into())
        );
        assert_eq!(
            next_page(3, 3, Some("c1"), None),
            PageStep::Continue("c1".into())
        );
    }

    #[test]
    fn empty_page_stops_even_with_a_cursor() {
        assert_eq!(next_page(0, 400, Some("c2"), Some("c1")), PageStep::Stop);
    }

    #[test]
    fn short_page_stops_even_with_a_cursor() {
        assert_eq!(next_page(399, 400, Some("c2"), Some("c1")), PageStep::Stop);
    }

    #[test]
    fn missing_or_empty_cursor_stops_a_full_page() {
        assert_eq!(next_page(400, 400, None, Some("c1")), PageStep::Stop);
        assert_eq!(next_page(400, 400, Some(""), None), PageStep::Stop);
    }

    #[test]
    fn repeated_cursor_stops() {
        assert_eq!(next_page(400, 400, Some("c1"), Some("c1")), PageStep::Stop);
    }
}
