//! Taking entries off: one identifier, a whole list or kind or source, and expired entries;
//! and rebuilding the kernel maps from the store. Each brings the kernel and the checker's
//! lists in line with the rows the store still holds (another source may keep an entry).
//! The store goes first; when the kernel then refuses its part, the rows are put back, so
//! both sides stay as they were (the kernel writes undo themselves: `Filter::apply_many`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Change, EntryView, Service, ServiceError, kernel_deadline, unix_now};
use crate::model::{Cidr, Entry, Identifier, Kind, List, expiry};
use crate::store;

impl Service {
    pub(super) fn remove(
        &mut self,
        list: List,
        kind: Kind,
        name: Option<&str>,
        value: &str,
        source: Option<&str>,
    ) -> Result<Vec<EntryView>, ServiceError> {
        let ident = Identifier::parse(kind, name, value)?;
        let removed = self.store.remove(list, &ident, source)?;
        self.count_removed(&removed);
        if removed.is_empty() {
            return Err(ServiceError::NotFound(ident.to_string(), list));
        }
        if let Err(e) = self.sync_ip(list, &ident, unix_now()) {
            return Err(self.put_back(&removed, e));
        }
        self.l7_reset(list, &ident)?;
        self.publish(|| Change::Removed(Arc::from(removed.as_slice())));
        tracing::info!(%list, %ident, rows = removed.len(), "entry removed");
        Ok(removed.iter().map(EntryView::from).collect())
    }

    pub(super) fn clear(
        &mut self,
        list: List,
        kind: Option<Kind>,
        source: Option<String>,
    ) -> Result<usize, ServiceError> {
        let removed = self.store.clear(&store::Filter {
            list: Some(list),
            kind,
            source,
        })?;
        self.count_removed(&removed);
        let now = unix_now();
        let mut seen = std::collections::HashSet::new();
        let mut items = Vec::new();
        for e in &removed {
            if let Some(cidr) = e.ident.cidr()
                && seen.insert(cidr)
            {
                items.push((list, cidr, self.ip_deadline(list, &e.ident, &[], now)?));
            }
        }
        if let Some(f) = self.filter.as_mut()
            && let Err(e) = f.apply_many(items)
        {
            return Err(self.put_back(&removed, e.into()));
        }
        let mut done = std::collections::HashSet::new();
        for e in &removed {
            if done.insert(crate::store::ident_key(e.list, &e.ident)) {
                self.l7_reset(e.list, &e.ident)?;
            }
        }
        self.publish(|| Change::Removed(Arc::from(removed.as_slice())));
        tracing::info!(%list, ?kind, rows = removed.len(), "list cleared");
        Ok(removed.len())
    }

    /// Puts `rows` back in the store after the kernel refused what their removal asked of
    /// it (a map write failed, and undid itself), so that the store and the kernel still
    /// agree; returns `err`, the kernel's refusal.
    fn put_back(&mut self, rows: &[Entry], err: ServiceError) -> ServiceError {
        match self.store.upsert(rows) {
            Ok(_) => {
                self.board
                    .counts_mut(|c| rows.iter().for_each(|e| c.add(e)));
                tracing::warn!(
                    rows = rows.len(),
                    "the kernel refused a removal ({err}); the entries stay"
                );
            }
            Err(e) => tracing::error!(
                rows = rows.len(),
                "the kernel refused a removal ({err}) and the store could not take the rows back ({e}): the kernel enforces entries the store no longer lists until the agent restarts"
            ),
        }
        err
    }

    /// Rebuilds the kernel maps from the store (at start-up, after reusing pinned maps).
    pub fn reconcile(&mut self) -> Result<(usize, usize), ServiceError> {
        let now = unix_now();
        let all = self.store.list(&store::Filter {
            kind: Some(Kind::Ip),
            ..store::Filter::default()
        })?;
        let mut rows: BTreeMap<(List, Cidr), Vec<&Entry>> = BTreeMap::new();
        for e in &all {
            if let Some(c) = e.ident.cidr() {
                rows.entry((e.list, c)).or_default().push(e);
            }
        }
        let best = rows
            .into_iter()
            .filter_map(|(key, rows)| expiry::kernel_expiry(rows, now).map(|exp| (key, exp)));
        let Some(f) = self.filter.as_mut() else {
            return Ok((0, 0));
        };
        let report = f.reconcile(best.map(|((l, c), exp)| (l, c, kernel_deadline(exp, now))))?;
        self.board.set_kernel_ip_entries(f.table().len());
        Ok((report.written, report.removed))
    }

    /// Removes expired entries from the store and the kernel; returns them.
    pub fn prune(&mut self) -> Result<Vec<Entry>, ServiceError> {
        // Expiry is data: every host expires entries itself, so nothing goes to the fleet.
        let _quiet = self.outbox.quiet();
        let now = unix_now();
        let mut gone = self.store.prune_expired(now)?;
        self.count_removed(&gone);
        let mut failed = None;
        for (i, e) in gone.iter().enumerate() {
            if let Err(err) = self.sync_ip(e.list, &e.ident, now) {
                failed = Some((i, err));
                break;
            }
            self.l7_reset(e.list, &e.ident)?;
            tracing::info!(list = %e.list, ident = %e.ident, source = %e.source, "entry expired");
        }
        // What the kernel refused stays in the store: the next prune tries it again.
        let refused = failed.map(|(i, err)| (gone.split_off(i), err));
        if !gone.is_empty() {
            self.publish(|| Change::Removed(Arc::from(gone.as_slice())));
        }
        match refused {
            Some((rest, err)) => Err(self.put_back(&rest, err)),
            None => Ok(gone),
        }
    }
}
