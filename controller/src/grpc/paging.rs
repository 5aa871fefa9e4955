//! Pages of list RPCs. Lists the server holds in memory (hosts, findings of
//! the published view) page by offset; lists from the store (plans, audit)
//! page in SQL by id (keyset: the token is the last id of the page before),
//! so a call never loads more than one page. Either token is digits this
//! server issued: a forged one is INVALID_ARGUMENT, never a panic or a wrap.

use tonic::Status;

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// The page size asked for: 0 is the default, anything above the cap is the cap.
pub fn page_size(size: u32) -> usize {
    match usize::try_from(size).unwrap_or(MAX_PAGE) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// The position a page token names; `None` for the first page.
fn token(token: &str) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    Some(token)
        .filter(|t| t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is not one this server issued: pass the previous page's next_page_token, or none to start",
            )
        })
}

/// One page of `items`, by offset. An offset past the end (the list shrank
/// between pages) is an empty last page.
pub fn page<T: Clone>(items: &[T], size: u32, page_token: &str) -> Result<(Vec<T>, String), Status> {
    let start = token(page_token)?.map_or(0, |t| usize::try_from(t).unwrap_or(usize::MAX));
    let size = page_size(size);
    let start = start.min(items.len());
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items[start..end].to_vec(), next))
}

/// A keyset page request: the id to list below (`None`: from the newest) and how many rows
/// to fetch (one more than the page, to tell whether another page follows).
pub fn keyset(size: u32, page_token: &str) -> Result<(Option<i64>, usize, i64), Status> {
    let before = token(page_token)?.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let size = page_size(size);
    Ok((before, size, size as i64 + 1))
}

/// Cuts `rows` (fetched with one extra) to `size`; the next token: the last id kept, or empty.
pub fn keyset_next<T>(rows: &mut Vec<T>, size: usize, id: impl Fn(&T) -> i64) -> String {
    if rows.len() <= size {
        return String::new();
    }
    rows.truncate(size);
    rows.last().map(|r| id(r).to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_tokens_this_server_issues() {
        let items: Vec<u32> = (0..250).collect();
        let (first, next) = page(&items, 0, "").unwrap();
        assert_eq!((first.len(), next.as_str()), (DEFAULT_PAGE, "100"));
        let (last, next) = page(&items, 200, &next).unwrap();
        assert_eq!((last.len(), last[0], next.as_str()), (150, 100, ""));
        let (most, _) = page(&items, u32::MAX, "").unwrap();
        assert_eq!(most.len(), 250, "page_size is capped, never overflowed");
    }

    #[test]
    fn huge_or_forged_page_tokens_are_refused_or_end_the_list() {
        let items: Vec<u32> = (0..10).collect();
        // The largest offset a usize holds: past the end, so an empty last page (no overflow).
        let (none, next) = page(&items, u32::MAX, &usize::MAX.to_string()).unwrap();
        assert!(none.is_empty() && next.is_empty());
        for forged in [
            "-1",
            "+5",
            "1e3",
            " 5",
            "99999999999999999999999",
            "18446744073709551616",
            "abc",
        ] {
            for e in [page(&items, 10, forged).unwrap_err(), keyset(10, forged).unwrap_err()] {
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{forged}");
                assert!(
                    e.message().starts_with("page_token is not one this server issued"),
                    "{forged}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn keyset_pages_fetch_one_more_and_name_the_last_id() {
        assert_eq!(keyset(0, "").unwrap(), (None, DEFAULT_PAGE, DEFAULT_PAGE as i64 + 1));
        assert_eq!(keyset(5, "42").unwrap(), (Some(42), 5, 6));
        // A token beyond any id lists from the newest, never wraps negative.
        assert_eq!(keyset(5, &u64::MAX.to_string()).unwrap().0, Some(i64::MAX));
        let mut rows: Vec<i64> = vec![9, 8, 7];
        assert_eq!(keyset_next(&mut rows, 2, |r| *r), "8");
        assert_eq!(rows, vec![9, 8]);
        let mut last: Vec<i64> = vec![2, 1];
        assert_eq!(keyset_next(&mut last, 2, |r| *r), "", "no extra row: the last page");
    }
}
