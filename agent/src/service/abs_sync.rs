//! The ABS feed's writes: the poll's mirror (a diff against the `abs` rows) and pushes.

use super::{MirrorReport, Service, ServiceError, unix_now};
use crate::control::proto::AbsItem;
use crate::control::proto::AddRequest;
use crate::model::Entry;
use crate::model::Identifier;
use crate::model::List;
use crate::model::Source;
pub use removals::Removals;

impl Service {
    /// Makes the `abs` rows of the deny list `items` (see [`crate::abs`]), as a diff: adds
    /// what is new, and removes what `items` no longer holds as far as `removals` allows.
    /// Memory stays proportional to the list's keys, not its entries: items are validated
    /// once to find their identity, and only the ones to add are turned into entries, in
    /// chunks.
    pub fn abs_mirror(
        &mut self,
        items: Vec<AbsItem>,
        removals: Removals,
    ) -> Result<MirrorReport, ServiceError> {
        const CHUNK: usize = 50_000;
        let now = unix_now();
        let mut report = MirrorReport::default();
        // Identity → (item index, expiry) of every valid item.
        let mut desired: std::collections::HashMap<(i64, i64), (usize, Option<i64>)> =
            std::collections::HashMap::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            match self.abs_entry(it, now) {
                Ok(e) => {
                    desired.insert(
                        crate::store::ident_key(List::Deny, &e.ident),
                        (i, e.expires),
                    );
                }
                Err(e) => {
                    report.skipped += 1;
                    tracing::debug!("ABS item skipped: {e}");
                }
            }
        }
        // What the store already holds from ABS: unchanged rows drop out of `desired`,
        // rows ABS no longer lists become removals.
        let mut stale = Vec::new();
        let mut current = 0usize;
        self.store.for_each(|e| {
            if e.list == List::Deny && e.source == Source::Abs {
                current += 1;
                let k = crate::store::ident_key(List::Deny, &e.ident);
                match desired.get(&k) {
                    Some((_, exp)) if *exp == e.expires => {
                        desired.remove(&k);
                    }
                    Some(_) => {}
                    None => stale.push(e.ident.clone()),
                }
            }
        })?;
        let mut adds: Vec<usize> = desired.into_values().map(|(i, _)| i).collect();
        adds.sort_unstable();
        report.added = adds.len();
        for chunk in adds.chunks(CHUNK) {
            let entries: Vec<Entry> = chunk
                .iter()
                .filter_map(|i| self.abs_entry(&items[*i], now).ok())
                .collect();
            self.add_batch(List::Deny, &entries, None)?;
        }
        drop(items);
        if removals.allow(stale.len(), current) {
            report.removed = self.remove_batch(List::Deny, &stale, Source::Abs.as_str())?;
        } else {
            report.held = stale.len();
            report.shrink_held = removals.whole;
        }
        Ok(report)
    }

    pub(super) fn abs_entry(&self, it: &AbsItem, now: i64) -> Result<Entry, ServiceError> {
        self.entry_from(
            &AddRequest {
                list: Some(List::Deny),
                kind: Some(it.kind),
                name: it.name.clone(),
                value: it.value.clone(),
                ttl_secs: it.ttl,
                reason: Some("abs attack list".into()),
                api: None,
                source: Some("abs".into()),
                force: false,
            },
            now,
        )
    }

    /// An ABS-side push: additions and removals applied at once, with mirror semantics.
    pub(super) fn abs_push(
        &mut self,
        add: Vec<AbsItem>,
        remove: Vec<AbsItem>,
    ) -> Result<MirrorReport, ServiceError> {
        let now = unix_now();
        let mut report = MirrorReport::default();
        let mut good = Vec::new();
        for it in &add {
            match self.abs_entry(it, now) {
                Ok(e) => good.push(e),
                Err(_) => report.skipped += 1,
            }
        }
        report.added = good.len();
        self.add_batch(List::Deny, &good, None)?;
        let mut idents = Vec::new();
        for it in &remove {
            match Identifier::parse(it.kind, it.name.as_deref(), &it.value) {
                Ok(i) => idents.push(i),
                Err(_) => report.skipped += 1,
            }
        }
        report.removed = self.remove_batch(List::Deny, &idents, "abs")?;
        tracing::info!(
            added = report.added,
            removed = report.removed,
            skipped = report.skipped,
            "ABS push applied"
        );
        Ok(report)
    }
}

mod removals {
    /// What an ABS poll's mirror may remove: nothing when the answer held items that could
    /// not be read (the list is then not the whole truth, and removing what it seems to
    /// lack could lift active attackers); and a shrink by more than `max_shrink` of the
    /// current rows only when the poll before asked for one too (a truncated or half-empty
    /// answer from a sick ABS must not lift most of the list at once).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Removals {
        /// Every item of the answer was read.
        pub whole: bool,
        /// The largest share of the current rows one poll may remove (1.0: any).
        pub max_shrink: f64,
        /// The poll before held a shrink back: this one confirms it.
        pub confirmed: bool,
    }

    impl Removals {
        /// Any removal (pushes, and tests).
        pub const ALL: Self = Self {
            whole: true,
            max_shrink: 1.0,
            confirmed: true,
        };

        /// Whether `stale` of `current` rows may go.
        pub fn allow(&self, stale: usize, current: usize) -> bool {
            if stale == 0 {
                return true;
            }
            if !self.whole {
                return false;
            }
            self.confirmed || (stale as f64) <= self.max_shrink * current as f64
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Removals;

        #[test]
        fn unreadable_answers_remove_nothing_and_big_shrinks_wait_a_poll() {
            let r = |whole, confirmed| Removals {
                whole,
                max_shrink: 0.5,
                confirmed,
            };
            assert!(r(true, false).allow(5, 10));
            assert!(!r(true, false).allow(6, 10));
            assert!(r(true, true).allow(10, 10));
            assert!(!r(false, true).allow(1, 10));
            assert!(r(false, false).allow(0, 10));
            assert!(Removals::ALL.allow(10, 10));
        }
    }
}
