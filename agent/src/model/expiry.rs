//! Expiry: when an entry stops counting, and how the rows of one identifier combine into
//! what the kernel enforces. The one place this rule lives.

use super::Entry;

/// Whether an entry expiring at `expires` (unix seconds; `None`: never) still counts at `now`.
pub fn live(expires: Option<i64>, now: i64) -> bool {
    expires.is_none_or(|x| x > now)
}

/// The later of two expiries; never (`None`) wins.
pub fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    }
}

/// What the kernel should enforce for an IP identifier, given its rows on one list: the
/// latest expiry of the live rows that apply everywhere (API-scoped rows are the checker's
/// business); `None` if no row applies, `Some(None)` for "forever".
pub fn kernel_expiry<'a>(
    rows: impl IntoIterator<Item = &'a Entry>,
    now: i64,
) -> Option<Option<i64>> {
    rows.into_iter()
        .filter(|e| e.api.is_empty() && live(e.expires, now))
        .map(|e| e.expires)
        .reduce(later)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, List};

    fn row(api: &str, expires: Option<i64>) -> Entry {
        Entry {
            api: api.into(),
            expires,
            ..Entry::sample(List::Deny, Kind::Ip, None, "198.18.0.1")
        }
    }

    #[test]
    fn rows_merge_to_the_latest_live_global_expiry() {
        let now = 100;
        assert_eq!(kernel_expiry(&[], now), None);
        assert_eq!(kernel_expiry(&[row("", Some(50))], now), None, "expired");
        assert_eq!(kernel_expiry(&[row("shop", None)], now), None, "API-scoped");
        assert_eq!(
            kernel_expiry(&[row("", Some(150)), row("", Some(120))], now),
            Some(Some(150))
        );
        assert_eq!(
            kernel_expiry(&[row("", Some(150)), row("", None)], now),
            Some(None),
            "never wins"
        );
        assert!(
            !live(Some(100), 100),
            "an entry is gone at its expiry second"
        );
    }
}
