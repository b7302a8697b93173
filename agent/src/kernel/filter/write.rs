//! Writing the allow and deny slots: the twin plans each change, this writes exactly what
//! changed in an order that never opens a gap, undoes a half-done write, and reconciles the
//! maps with the store at start-up.

use super::*;

/// Planning work per step of [`Filter::apply_many`], in [`planning_weight`] units: the twin's
/// write lock, which the checker's requests wait for, is held for one step's planning only
/// (planning took ~0.4 s per million host entries under perf here, so ~3 ms per step).
const CHUNK_WEIGHT: usize = 8_192;

/// Roughly what planning `cidr` costs the twin: the slots it expands into, for a /16 or wider
/// the 256 guard refreshes each of its wide slots brings, and for an IPv6 prefix a trie slot
/// computed from every prefix covering it (a short one also recomputes the longer ones stored
/// inside it, which this cannot see).
fn planning_weight(cidr: &Cidr) -> usize {
    match *cidr {
        Cidr::V4 { len, .. } if len >= 25 => 1 << (32 - len),
        Cidr::V4 { len, .. } if len >= 17 => 1 << (24 - len),
        Cidr::V4 { len, .. } => 256 << (16 - len.min(16)),
        Cidr::V6 { len: 128, .. } => 1,
        Cidr::V6 { .. } => 64,
    }
}

impl Filter {
    /// Puts `cidr` on `list` until `until` (`CLOCK_BOOTTIME` ns; `common::NEVER` for no
    /// expiry). Enforced when this returns. On error nothing changed.
    pub fn insert(&mut self, list: List, cidr: Cidr, until: u64) -> Result<(), KernelError> {
        self.apply_many([(list, cidr, Some(until))])
    }

    /// Takes `cidr` off `list`.
    pub fn remove(&mut self, list: List, cidr: Cidr) -> Result<(), KernelError> {
        self.apply_many([(list, cidr, None)])
    }

    /// Applies many insertions (`Some(deadline)`) and removals (`None`), in batched writes of
    /// about [`CHUNK_WEIGHT`] planning work each, so the checker, which reads the twin, never
    /// waits long for it. All or nothing: if the maps would overflow (checked per chunk, so a large batch
    /// that only fits once its later removals are done is refused) or a write fails, the
    /// chunks already written are undone and the kernel and the twin are left as they were.
    pub fn apply_many(
        &mut self,
        items: impl IntoIterator<Item = (List, Cidr, Option<u64>)>,
    ) -> Result<(), KernelError> {
        let items: Vec<_> = items.into_iter().collect();
        let mut done: Vec<Plan> = Vec::new();
        let (mut start, mut weight) = (0, 0);
        for (i, (_, cidr, _)) in items.iter().enumerate() {
            weight += planning_weight(cidr);
            if weight < CHUNK_WEIGHT && i + 1 < items.len() {
                continue;
            }
            match self.apply_chunk(&items[start..=i]) {
                Ok(plan) => done.push(plan),
                Err(e) => {
                    for plan in done.iter().rev() {
                        self.revert(plan);
                    }
                    return Err(e);
                }
            }
            (start, weight) = (i + 1, 0);
        }
        Ok(())
    }

    /// Plans one chunk on the twin (under its lock) and writes it (without the lock).
    fn apply_chunk(&mut self, chunk: &[(List, Cidr, Option<u64>)]) -> Result<Plan, KernelError> {
        let plan = self.twin_mut().set_many(chunk.iter().copied())?;
        if let Err(e) = self.write(&plan) {
            self.revert(&plan);
            return Err(e);
        }
        Ok(plan)
    }

    /// Takes a plan back: off the twin, and out of the kernel as far as it was written.
    fn revert(&self, plan: &Plan) {
        let mut table = self.twin_mut();
        table.undo(plan);
        let restore = Plan {
            from_empty: false,
            entries: Vec::new(),
            slots: plan
                .slots
                .iter()
                .map(|c| crate::kernel::table::SlotChange {
                    slot: c.slot,
                    old: c.new,
                    new: c.old,
                })
                .collect(),
            v4_guard: plan
                .v4_guard
                .iter()
                .map(|(w, _)| (*w, table.v4_guard_word(*w)))
                .collect(),
            v6_guard: plan
                .v6_guard
                .iter()
                .map(|(w, _)| (*w, table.v6_guard_word(*w)))
                .collect(),
            v6_unguarded: plan.v6_unguarded.map(|_| table.v6_unguarded()),
        };
        drop(table);
        if let Err(e) = self.write(&restore) {
            tracing::error!(
                "a kernel write failed and could not be fully undone: {e}; the next reconcile repairs the maps"
            );
        }
    }

    /// The user-space twin (for tests and status).
    pub fn table(&self) -> RwLockReadGuard<'_, IpTable> {
        self.twin()
    }

    /// Writes a plan: upserts first, then guard words and config, then deletions, so that at
    /// no point does a guard bit hide a slot that still matches, and no entry that stays on a
    /// list stops matching.
    pub(super) fn write(&self, plan: &Plan) -> Result<(), KernelError> {
        let MapBatches {
            v4h,
            v4n,
            v4w,
            v6h,
            v6p,
        } = MapBatches::of(plan);
        let upd = |name: &'static str| {
            move |source| KernelError::Map {
                op: "updating",
                map: name,
                source,
            }
        };
        let del = |name: &'static str| {
            move |source| KernelError::Map {
                op: "deleting from",
                map: name,
                source,
            }
        };
        sys::update_batch_parallel(self.fd(map_name::V4_HOSTS), &v4h.keys, &v4h.values)
            .map_err(upd(map_name::V4_HOSTS))?;
        sys::update_batch_parallel(self.fd(map_name::V4_NETS), &v4n.keys, &v4n.values)
            .map_err(upd(map_name::V4_NETS))?;
        sys::update_batch(self.fd(map_name::V4_WIDE), &v4w.keys, &v4w.values)
            .map_err(upd(map_name::V4_WIDE))?;
        sys::update_batch_parallel(self.fd(map_name::V6_HOSTS), &v6h.keys, &v6h.values)
            .map_err(upd(map_name::V6_HOSTS))?;
        let trie = self.fd(map_name::V6_PREFIXES);
        for (key, value) in v6p.iter().filter(|(_, v)| !v.is_empty()) {
            sys::update_elem(trie, key, value).map_err(upd(map_name::V6_PREFIXES))?;
        }
        let (w4, v4): (Vec<u32>, Vec<u64>) = plan.v4_guard.iter().copied().unzip();
        sys::update_batch(self.fd(map_name::V4_GUARD), &w4, &v4)
            .map_err(upd(map_name::V4_GUARD))?;
        let (w6, v6): (Vec<u32>, Vec<u64>) = plan.v6_guard.iter().copied().unzip();
        sys::update_batch(self.fd(map_name::V6_GUARD), &w6, &v6)
            .map_err(upd(map_name::V6_GUARD))?;
        if let Some(unguarded) = plan.v6_unguarded {
            let cfg = Config {
                v6_unguarded: u32::from(unguarded),
                ..self.config()?
            };
            self.set_config(cfg)?;
        }
        for (key, _) in v6p.iter().filter(|(_, v)| v.is_empty()) {
            sys::delete_elem(trie, key).map_err(del(map_name::V6_PREFIXES))?;
        }
        sys::delete_batch(self.fd(map_name::V6_HOSTS), &v6h.deletes)
            .map_err(del(map_name::V6_HOSTS))?;
        sys::delete_batch(self.fd(map_name::V4_NETS), &v4n.deletes)
            .map_err(del(map_name::V4_NETS))?;
        sys::delete_batch(self.fd(map_name::V4_HOSTS), &v4h.deletes)
            .map_err(del(map_name::V4_HOSTS))?;
        Ok(())
    }

    /// Makes the kernel maps hold exactly `entries` (after a restart reused pinned maps):
    /// writes what is missing or different first, then removes slots no entry needs, so an
    /// entry that stays never stops matching.
    pub fn reconcile(
        &mut self,
        entries: impl IntoIterator<Item = (List, Cidr, u64)>,
    ) -> Result<ReconcileReport, KernelError> {
        let mut fresh = IpTable::new(self.table_capacity());
        let plan = fresh.set_many(entries.into_iter().map(|(l, c, u)| (l, c, Some(u))))?;
        drop(plan);
        let mut changes = Vec::new();
        let mut report = ReconcileReport::default();
        // Desired slots: written unconditionally (cheap, batched, and idempotent).
        for (slot, value) in fresh.slots() {
            changes.push(crate::kernel::table::SlotChange {
                slot,
                old: Deadlines::EMPTY,
                new: value,
            });
        }
        report.written = changes.len();
        // Every slot the kernel holds; those no entry needs are removed. Wide slots are an
        // array: all of them are "held".
        let mut held: Vec<Slot> = (0..common::V4_WIDE_SLOTS).map(Slot::V4Wide).collect();
        held.extend(self.held_slots()?.into_keys());
        for slot in held {
            if fresh.slot(slot).is_empty() {
                changes.push(crate::kernel::table::SlotChange {
                    slot,
                    old: Deadlines::EMPTY,
                    new: Deadlines::EMPTY,
                });
            }
        }
        report.removed = changes.len() - report.written;
        // Wide slots are an array: "removing" one writes EMPTY, which is not a real removal.
        report.removed -= changes
            .iter()
            .filter(|c| matches!(c.slot, Slot::V4Wide(_)) && c.new.is_empty())
            .count();
        let plan = Plan {
            from_empty: false,
            entries: Vec::new(),
            slots: changes,
            v4_guard: (0..common::V4_GUARD_WORDS)
                .map(|w| (w, fresh.v4_guard_word(w)))
                .collect(),
            v6_guard: (0..common::V6_GUARD_WORDS)
                .map(|w| (w, fresh.v6_guard_word(w)))
                .collect(),
            v6_unguarded: Some(fresh.v6_unguarded()),
        };
        self.write(&plan)?;
        // The old table is dropped after the lock is released.
        let old = std::mem::replace(&mut *self.twin_mut(), fresh);
        drop(old);
        Ok(report)
    }
}

/// What [`Filter::reconcile`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Slots written (every slot the entries need).
    pub written: usize,
    /// Stale slots removed.
    pub removed: usize,
}

/// One hash or array map's share of a plan: the keys to write with their values, and the
/// keys to delete.
struct MapBatch<K> {
    keys: Vec<K>,
    values: Vec<Deadlines>,
    deletes: Vec<K>,
}

impl<K> Default for MapBatch<K> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K> MapBatch<K> {
    /// `key` gets `value`, or is deleted when `value` is empty (`deletable` maps only).
    fn put(&mut self, key: K, value: Deadlines, deletable: bool) {
        if deletable && value.is_empty() {
            self.deletes.push(key);
        } else {
            self.keys.push(key);
            self.values.push(value);
        }
    }
}

/// A plan's slot changes grouped per kernel map, so each map is written in one batched call.
struct MapBatches {
    v4h: MapBatch<u32>,
    v4n: MapBatch<u32>,
    /// An array: an empty value is written, never deleted.
    v4w: MapBatch<u32>,
    v6h: MapBatch<V6Addr>,
    /// Trie keys with their values; an empty value means delete.
    v6p: Vec<(Key<[u8; 16]>, Deadlines)>,
}

impl MapBatches {
    fn of(plan: &Plan) -> Self {
        let mut b = Self {
            v4h: MapBatch::default(),
            v4n: MapBatch::default(),
            v4w: MapBatch::default(),
            v6h: MapBatch::default(),
            v6p: Vec::new(),
        };
        for c in &plan.slots {
            match c.slot {
                Slot::V4Host(a) => b.v4h.put(a, c.new, true),
                Slot::V4Net(n) => b.v4n.put(n, c.new, true),
                Slot::V4Wide(i) => b.v4w.put(i, c.new, false),
                Slot::V6Host(a) => b.v6h.put(
                    V6Addr {
                        bytes: a.to_be_bytes(),
                    },
                    c.new,
                    true,
                ),
                Slot::V6Prefix(a, l) => {
                    b.v6p.push((Key::new(u32::from(l), a.to_be_bytes()), c.new))
                }
            }
        }
        b
    }
}
