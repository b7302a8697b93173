//! The ABS feed's writes: the poll's mirror (a diff against the `abs` rows) and pushes.

use super::{MirrorReport, Service, ServiceError, unix_now};
use crate::control::proto::AbsItem;
use crate::control::proto::AddRequest;
use crate::model::Entry;
use crate::model::Identifier;
use crate::model::List;
use crate::model::Source;

impl Service {
    /// Makes the `abs` rows of the deny list exactly `items` (see [`crate::abs`]), as a diff.
    /// Memory stays proportional to the list's keys, not its entries: items are validated
    /// once to find their identity, and only the ones to add are turned into entries, in
    /// chunks.
    pub fn abs_mirror(&mut self, items: Vec<AbsItem>) -> Result<MirrorReport, ServiceError> {
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
        self.store.for_each(|e| {
            if e.list == List::Deny && e.source == Source::Abs {
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
        report.removed = self.remove_batch(List::Deny, &stale, Source::Abs.as_str())?;
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
