//! The ABS feed's writes: the poll's mirror (a diff against the `abs` rows) and pushes.

use super::{MirrorReport, Service, ServiceError, unix_now};
use crate::control::proto::AbsItem;
use crate::control::proto::AddRequest;
use crate::model::Entry;
use crate::model::Identifier;
use crate::model::List;
use crate::model::Source;
pub use removals::{Removals, digest};

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
        if !self.board.switches().abs() {
            return Ok(MirrorReport {
                off: true,
                ..MirrorReport::default()
            });
        }
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
        let mut stale_keys = Vec::new();
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
                    None => {
                        stale.push(e.ident.clone());
                        stale_keys.push(k);
                    }
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
        let held = digest(&mut stale_keys);
        if removals.allow(stale.len(), current, held) {
            report.removed = self.remove_batch(List::Deny, &stale, Some(Source::Abs.as_str()))?;
        } else {
            report.held = stale.len();
            report.shrink_held = removals.whole;
            report.held_digest = removals.whole.then_some(held);
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
        if !self.board.switches().abs() {
            return Err(ServiceError::BadRequest(
                "ABS blocking is off (portcullis switch abs on)".into(),
            ));
        }
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
        report.removed = self.remove_batch(List::Deny, &idents, Some("abs"))?;
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
    /// current rows only when the poll before asked for exactly the same removals (a
    /// truncated or half-empty answer from a sick ABS must not lift most of the list at
    /// once, nor two different bad answers in a row).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Removals {
        /// Every item of the answer was read.
        pub whole: bool,
        /// The largest share of the current rows one poll may remove (1.0: any).
        pub max_shrink: f64,
        /// The digest of the removals the poll before held back ([`digest`]); the same
        /// removals now confirm them.
        pub confirms: Option<u64>,
    }

    /// A digest of a set of removals (their identity keys, in any order).
    pub fn digest(keys: &mut [(i64, i64)]) -> u64 {
        use std::hash::{Hash, Hasher};
        keys.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        keys.hash(&mut h);
        h.finish()
    }

    impl Removals {
        /// Whether `stale` of `current` rows, whose removals have digest `held`, may go.
        pub fn allow(&self, stale: usize, current: usize, held: u64) -> bool {
            if stale == 0 {
                return true;
            }
            if !self.whole {
                return false;
            }
            (stale as f64) <= self.max_shrink * current as f64 || self.confirms == Some(held)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Removals;

        #[test]
        fn unreadable_answers_remove_nothing_and_big_shrinks_wait_a_poll() {
            let r = |whole, confirms| Removals {
                whole,
                max_shrink: 0.5,
                confirms,
            };
            let held = super::digest(&mut [(1, 2), (3, 4)]);
            assert_eq!(held, super::digest(&mut [(3, 4), (1, 2)]), "any order");
            assert!(r(true, None).allow(5, 10, held));
            assert!(!r(true, None).allow(6, 10, held));
            assert!(r(true, Some(held)).allow(10, 10, held));
            // Another large shrink does not confirm the one held.
            assert!(!r(true, Some(held ^ 1)).allow(10, 10, held));
            assert!(!r(false, Some(held)).allow(1, 10, held));
            assert!(r(false, None).allow(0, 10, held));
        }
    }
}
