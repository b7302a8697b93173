//! The list writer's side of fleet sync: local changes queued for publishing (the outbox),
//! records from the fleet's log applied, and the snapshot swapped in (see [`crate::fleet`]).
//!
//! Rows that came from the fleet have source `fleet`. Local rows (any other source) are
//! this host's own and are what it publishes; while a fleet command, a prune or a safety
//! lift runs, the changes it makes are not queued (a host never republishes what it
//! received, and expiry is every host's own business). An operator's removal takes the
//! identity off the list whatever the source ("removed on one host, lifted on all"); a
//! feed or a detection letting go withdraws only the fleet's copies.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Change, Service, ServiceError, unix_now};
use crate::control::answer::FleetState;
use crate::fleet::record;
use crate::model::{Entry, Identifier, List, Source};
use crate::store::{IdentKey, Outgoing, ident_key};

/// One record read from the fleet, checked.
#[derive(Debug)]
pub struct Received {
    /// What it does.
    pub op: record::Op,
    /// The entry it names (source `fleet`).
    pub entry: Entry,
    /// This host published it: an add it still holds locally is not stored twice.
    pub own: bool,
}

/// A command from the fleet engine to the list writer.
#[derive(Debug)]
pub enum FleetCommand {
    /// Records read from the log, in log order, up to id `last` of `epoch`.
    Apply {
        /// The records.
        ops: Vec<Received>,
        /// The epoch they belong to.
        epoch: String,
        /// The id of the last record read.
        last: String,
        /// Its sequence number.
        seq: u64,
    },
    /// The snapshot at `last`: the `fleet` rows become exactly `entries`. With `rebuild`
    /// (a new epoch) every local row is queued again; without it, local rows the fleet
    /// no longer holds (removed elsewhere while this host was away) are removed.
    Swap {
        /// Every key the snapshot holds (readable or not, expired or not): what the fleet
        /// still lists.
        keys: Vec<Vec<u8>>,
        /// Keys an operator removed lately (tombstones): a local row of one was deleted
        /// elsewhere while this host was away.
        removed: Vec<Vec<u8>>,
        /// The snapshot's unexpired entries.
        entries: Vec<Received>,
        /// Its epoch.
        epoch: String,
        /// The log position it equals.
        last: String,
        /// The sequence number there.
        seq: u64,
        /// Whether the epoch is new to this host.
        rebuild: bool,
    },
    /// The oldest queued local changes.
    Pending {
        /// At most this many.
        limit: usize,
    },
    /// The queued changes up to this id are in Redis.
    Published {
        /// The last one published.
        upto: i64,
    },
    /// Where this host stands in the log.
    Position,
}

/// The list writer's answer to a [`FleetCommand`].
#[derive(Debug)]
pub enum FleetReply {
    /// Applied; this many records were refused by the safety rules.
    Applied {
        /// Refused records.
        refused: usize,
    },
    /// Queued changes.
    Pending(Vec<Outgoing>),
    /// Done.
    Done,
    /// The persisted position: `epoch` (none before the first sync), last id, and whether
    /// changes were lost to a full queue.
    Position {
        /// Epoch.
        epoch: Option<String>,
        /// Last id applied (`0-0` before any).
        last: String,
        /// The sequence number of the last record applied.
        seq: u64,
        /// The queue overflowed since the last rebuild.
        overflowed: bool,
    },
}

/// The outbox's settings and counters, kept by the service.
pub(super) struct Outbox {
    /// Fleet configured.
    on: bool,
    /// This host's name in records.
    origin: String,
    /// Most changes queued.
    limit: u64,
    /// Changes queued now.
    queued: Cell<u64>,
    /// The queue overflowed: changes are no longer queued until a rebuild republishes all.
    overflowed: Cell<bool>,
    /// Set while a fleet command, a prune or a safety lift runs: its changes are not
    /// published.
    muted: Arc<AtomicBool>,
    /// The engine's nudges and state.
    shared: Option<Arc<crate::fleet::Shared>>,
}

impl Outbox {
    /// The outbox for `config`, with what `store` holds queued.
    pub(super) fn new(config: &crate::fleet::FleetConfig, store: &crate::store::Store) -> Self {
        let on = config.enabled();
        Self {
            on,
            origin: config.origin(),
            limit: config.queue_limit,
            queued: Cell::new(if on {
                store.fleet_queued().unwrap_or(0)
            } else {
                0
            }),
            overflowed: Cell::new(on && store.fleet_get("overflowed").ok().flatten().is_some()),
            muted: Arc::default(),
            shared: None,
        }
    }

    /// Whether changes are queued now.
    pub(super) fn wants(&self) -> bool {
        self.on && !self.muted.load(Ordering::Relaxed) && !self.overflowed.get()
    }

    /// Keeps the changes made until the guard drops out of the fleet.
    pub(super) fn quiet(&self) -> Quiet {
        let before = self.muted.swap(true, Ordering::Relaxed);
        Quiet(self.muted.clone(), before)
    }
}

/// See [`Outbox::quiet`].
pub(super) struct Quiet(Arc<AtomicBool>, bool);

impl Drop for Quiet {
    fn drop(&mut self) {
        self.0.store(self.1, Ordering::Relaxed);
    }
}

/// The outbox's code of an operation.
fn op_code(op: record::Op) -> u8 {
    match op {
        record::Op::Add => 0,
        record::Op::Remove => 1,
        record::Op::Withdraw => 2,
    }
}

fn fleet_key(k: IdentKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&k.0.to_le_bytes());
    v.extend_from_slice(&k.1.to_le_bytes());
    v
}

impl Service {
    /// Connects the fleet engine (status, nudges).
    pub fn set_fleet(&mut self, shared: Arc<crate::fleet::Shared>) {
        shared.update(|s| s.queued = self.outbox.queued.get());
        self.board.set_fleet(shared.clone());
        self.outbox.shared = Some(shared);
    }

    /// Follows a reload's `[fleet]`: the outbox takes the new settings (what the store
    /// queued stays queued, for the new fleet, or for later when the fleet is off) and
    /// reports to the new engine, or to none.
    pub fn switch_fleet(
        &mut self,
        config: &crate::fleet::FleetConfig,
        shared: Option<Arc<crate::fleet::Shared>>,
    ) {
        self.outbox = Outbox::new(config, &self.store);
        self.config.fleet = config.clone();
        match shared {
            Some(s) => self.set_fleet(s),
            None => self.board.clear_fleet(),
        }
    }

    /// Queues a local change for the fleet (called with every applied change).
    pub(super) fn fleet_note(&self, change: &Change) {
        let mut items = Vec::new();
        match change {
            Change::Added(rows) => {
                for e in rows.iter().filter(|e| e.source != Source::Fleet) {
                    items.push((
                        op_code(record::Op::Add),
                        fleet_key(ident_key(e.list, &e.ident)),
                        record::encode(e, &self.outbox.origin),
                    ));
                }
            }
            Change::Removed(rows) => {
                // An identity only feeds and detections let go of is withdrawn (the fleet's
                // copies go, other hosts' own rows stay); anything else an operator removed
                // is removed on every host.
                let operator: HashSet<IdentKey> = rows
                    .iter()
                    .filter(|e| !matches!(e.source, Source::Abs | Source::Checker))
                    .map(|e| ident_key(e.list, &e.ident))
                    .collect();
                let mut seen = HashSet::new();
                for e in rows.iter() {
                    let k = ident_key(e.list, &e.ident);
                    if !seen.insert(k) {
                        continue;
                    }
                    // Another local source still lists it: the fleet keeps it.
                    let kept = self
                        .store
                        .rows_of(e.list, &e.ident)
                        .map(|rows| rows.iter().any(|r| r.source != Source::Fleet))
                        .unwrap_or(false);
                    if !kept {
                        let op = if operator.contains(&k) {
                            record::Op::Remove
                        } else {
                            record::Op::Withdraw
                        };
                        items.push((
                            op_code(op),
                            fleet_key(k),
                            record::encode(e, &self.outbox.origin),
                        ));
                    }
                }
            }
        }
        self.queue(&items, false);
    }

    /// Adds `items` to the outbox (`force`: past its limit, for a rebuild).
    fn queue(&self, items: &[(u8, Vec<u8>, String)], force: bool) {
        if items.is_empty() {
            return;
        }
        let o = &self.outbox;
        let n = items.len() as u64;
        let result = if !force && o.queued.get() + n > o.limit {
            Err(format!("the queue holds its limit of {} changes", o.limit))
        } else {
            self.store.fleet_queue(items).map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => o.queued.set(o.queued.get() + n),
            Err(why) => self.fleet_rebuild_needed(&why),
        }
        if let Some(s) = &o.shared {
            let q = o.queued.get();
            s.update(|st| st.queued = q);
            s.queued.notify_one();
        }
    }

    /// Changes the fleet will not hear of one by one (a full queue, a restored backup): the
    /// engine starts a new epoch now and every host republishes its own rows.
    pub(super) fn fleet_rebuild_needed(&self, why: &str) {
        let o = &self.outbox;
        if !o.on {
            return;
        }
        tracing::warn!("fleet: {why}; the fleet will rebuild from every host's entries");
        o.overflowed.set(true);
        o.queued.set(0);
        let _ = self.store.fleet_clear_queue();
        let _ = self.store.fleet_set(&[("overflowed", Some("1"))]);
        if let Some(s) = &o.shared {
            s.update(|st| {
                st.overflowed = true;
                st.queued = 0;
            });
            s.resync.notify_one();
        }
    }

    /// Runs a fleet command.
    pub fn fleet(&mut self, cmd: FleetCommand) -> Result<FleetReply, ServiceError> {
        match cmd {
            FleetCommand::Pending { limit } => {
                Ok(FleetReply::Pending(self.store.fleet_pending(limit)?))
            }
            FleetCommand::Published { upto } => {
                // Counted down, not recounted: COUNT(*) walks the whole queue, and a
                // million-row queue is published a thousand at a time.
                let done = self.store.fleet_published(upto)?;
                let left = self.outbox.queued.get().saturating_sub(done);
                self.outbox.queued.set(left);
                if let Some(s) = &self.outbox.shared {
                    s.update(|st| st.queued = left);
                }
                Ok(FleetReply::Done)
            }
            FleetCommand::Position => Ok(FleetReply::Position {
                epoch: self.store.fleet_get("epoch")?,
                last: self
                    .store
                    .fleet_get("last_id")?
                    .unwrap_or_else(|| "0-0".into()),
                seq: self
                    .store
                    .fleet_get("seq")?
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                overflowed: self.outbox.overflowed.get(),
            }),
            FleetCommand::Apply {
                ops,
                epoch,
                last,
                seq,
            } => {
                let refused = {
                    let _quiet = self.outbox.quiet();
                    self.fleet_apply(ops)?
                };
                let seq = seq.to_string();
                self.store.fleet_set(&[
                    ("epoch", Some(&epoch)),
                    ("last_id", Some(&last)),
                    ("seq", Some(&seq)),
                ])?;
                Ok(FleetReply::Applied { refused })
            }
            FleetCommand::Swap {
                keys,
                removed,
                entries,
                epoch,
                last,
                seq,
                rebuild,
            } => {
                let refused = {
                    let _quiet = self.outbox.quiet();
                    self.fleet_swap(keys, removed, entries, rebuild)?
                };
                let seq = seq.to_string();
                self.store.fleet_set(&[
                    ("epoch", Some(&epoch)),
                    ("last_id", Some(&last)),
                    ("seq", Some(&seq)),
                ])?;
                if rebuild {
                    // Every local row was queued again: nothing the overflow lost is missing.
                    self.store.fleet_set(&[("overflowed", None)])?;
                    self.outbox.overflowed.set(false);
                    if let Some(s) = &self.outbox.shared {
                        s.update(|st| st.overflowed = false);
                    }
                }
                Ok(FleetReply::Applied { refused })
            }
        }
    }

    /// Whether this host takes a fleet entry: the safety rules of an automatic source (no
    /// deny of the world, of this host or of what it depends on).
    fn fleet_admits(&self, e: &Entry) -> bool {
        let ok = self.check_safety(e.list, &e.ident, false).is_ok()
            && (e.list == List::Allow || self.check_automatic(&e.ident).is_ok());
        if !ok {
            tracing::warn!(list = %e.list, ident = %e.ident, reason = %e.reason, "fleet entry refused by this host's safety rules");
        }
        ok
    }

    /// Whether this host lists `e` itself, with the same scope and expiry (its own record
    /// then needs no `fleet` row).
    fn holds_locally(&self, e: &Entry) -> bool {
        self.store.rows_of(e.list, &e.ident).is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.source != Source::Fleet && r.api == e.api && r.expires == e.expires)
        })
    }

    /// Applies log records in order, consecutive records of one kind and list at once.
    fn fleet_apply(&mut self, ops: Vec<Received>) -> Result<usize, ServiceError> {
        let now = unix_now();
        let mut refused = 0;
        for run in ops.chunk_by(|a, b| a.op == b.op && a.entry.list == b.entry.list) {
            let list = run[0].entry.list;
            match run[0].op {
                record::Op::Add => {
                    let good: Vec<Entry> = run
                        .iter()
                        .filter(|r| !(r.own && self.holds_locally(&r.entry)))
                        .map(|r| &r.entry)
                        .filter(|e| e.expires.is_none_or(|x| x > now))
                        .filter(|e| {
                            let ok = self.fleet_admits(e);
                            refused += usize::from(!ok);
                            ok
                        })
                        .cloned()
                        .collect();
                    if let Err(e) = self.add_batch(list, &good, None) {
                        // One entry the kernel or the store refuses must not jam the link:
                        // one at a time, and what fails is counted and left out.
                        tracing::warn!("fleet: a batch failed ({e}); applying one by one");
                        for entry in good {
                            match self.add_batch(list, std::slice::from_ref(&entry), None) {
                                Ok(_) => {}
                                // The store failing (disk full) is not this entry's fault:
                                // the engine reads the batch again later.
                                Err(e @ ServiceError::Store(_)) => return Err(e),
                                Err(e) => {
                                    refused += 1;
                                    tracing::warn!(ident = %entry.ident, "fleet entry not applied: {e}");
                                }
                            }
                        }
                    }
                }
                op => {
                    // An operator's removal takes every row; a withdrawal the fleet's copy.
                    let source = (op == record::Op::Withdraw).then_some(Source::Fleet.as_str());
                    let mut still_mine = Vec::new();
                    for r in run {
                        match self.remove_batch(list, std::slice::from_ref(&r.entry.ident), source)
                        {
                            Ok(_) => {}
                            Err(e @ ServiceError::Store(_)) => return Err(e),
                            Err(e) => {
                                refused += 1;
                                tracing::warn!(ident = %r.entry.ident, "fleet removal not applied: {e}");
                            }
                        }
                        // Another origin's withdrawal took the fleet's record of something
                        // this host lists itself: it publishes its own again.
                        if source.is_some() {
                            let mine = self.store.rows_of(list, &r.entry.ident)?;
                            still_mine
                                .extend(mine.into_iter().filter(|e| e.source != Source::Fleet));
                        }
                    }
                    let items: Vec<_> = still_mine
                        .iter()
                        .map(|e| {
                            (
                                op_code(record::Op::Add),
                                fleet_key(ident_key(e.list, &e.ident)),
                                record::encode(e, &self.outbox.origin),
                            )
                        })
                        .collect();
                    self.queue(&items, false);
                }
            }
        }
        Ok(refused)
    }

    /// Makes the `fleet` rows the snapshot's entries (see [`FleetCommand::Swap`]).
    fn fleet_swap(
        &mut self,
        keys: Vec<Vec<u8>>,
        removed: Vec<Vec<u8>>,
        received: Vec<Received>,
        rebuild: bool,
    ) -> Result<usize, ServiceError> {
        const CHUNK: usize = 50_000;
        let own: Vec<bool> = received.iter().map(|r| r.own).collect();
        let entries: Vec<Entry> = received.into_iter().map(|r| r.entry).collect();
        let mut refused = 0;
        let mut desired: HashMap<IdentKey, usize> = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if self.fleet_admits(e) {
                desired.insert(ident_key(e.list, &e.ident), i);
            } else {
                refused += 1;
            }
        }
        // What the fleet still lists, whether this host takes it or not: a local row of
        // it stays.
        let wanted: HashSet<Vec<u8>> = keys.into_iter().collect();
        let queued: HashSet<Vec<u8>> = self.store.fleet_queued_keys()?.into_iter().collect();
        let removed: HashSet<Vec<u8>> = removed.into_iter().collect();
        // Local rows the snapshot lacks without an operator's removal on record (a feed
        // withdrew, or a record with a TTL replaced this host's and expired): published again.
        let mut lapsed: Vec<(u8, Vec<u8>, String)> = Vec::new();
        let mut stale: Vec<(List, Identifier)> = Vec::new();
        let mut gone: Vec<(List, Identifier)> = Vec::new();
        let mut mine: Vec<(u8, Vec<u8>, String)> = Vec::new();
        let origin = self.outbox.origin.clone();
        self.store.for_each(|e| {
            let k = ident_key(e.list, &e.ident);
            if e.source == Source::Fleet {
                match desired.get(&k) {
                    Some(&i) if entries[i].expires == e.expires && entries[i].api == e.api => {
                        desired.remove(&k);
                    }
                    _ => stale.push((e.list, e.ident.clone())),
                }
            } else {
                // This host's own record of a row it holds: no `fleet` row for it.
                if let Some(&i) = desired.get(&k)
                    && own[i]
                    && entries[i].api == e.api
                    && entries[i].expires == e.expires
                {
                    desired.remove(&k);
                }
                if rebuild {
                    mine.push((
                        op_code(record::Op::Add),
                        fleet_key(k),
                        record::encode(e, &origin),
                    ));
                } else if !wanted.contains(&fleet_key(k)) && !queued.contains(&fleet_key(k)) {
                    if removed.contains(&fleet_key(k)) {
                        gone.push((e.list, e.ident.clone()));
                    } else {
                        lapsed.push((
                            op_code(record::Op::Add),
                            fleet_key(k),
                            record::encode(e, &origin),
                        ));
                    }
                }
            }
        })?;
        for (rows, source) in [(stale, Some(Source::Fleet.as_str())), (gone, None)] {
            for list in [List::Allow, List::Deny] {
                let idents: Vec<Identifier> = rows
                    .iter()
                    .filter(|(l, _)| *l == list)
                    .map(|(_, i)| i.clone())
                    .collect();
                if !idents.is_empty() {
                    self.remove_batch(list, &idents, source)?;
                }
            }
        }
        let mut adds: Vec<usize> = desired.into_values().collect();
        adds.sort_unstable();
        for list in [List::Allow, List::Deny] {
            let of_list: Vec<usize> = adds
                .iter()
                .copied()
                .filter(|i| entries[*i].list == list)
                .collect();
            for chunk in of_list.chunks(CHUNK) {
                let rows: Vec<Entry> = chunk.iter().map(|i| entries[*i].clone()).collect();
                self.add_batch(list, &rows, None)?;
            }
        }
        if rebuild {
            self.queue(&mine, true);
        }
        self.queue(&lapsed, false);
        Ok(refused)
    }

    /// `portcullis fleet status` (and `resync`, which first asks the engine for one): the
    /// engine's state with this host's list digest.
    pub(super) fn fleet_state(&self, resync: bool) -> Result<FleetState, ServiceError> {
        let Some(shared) = &self.outbox.shared else {
            return Err(ServiceError::BadRequest(
                "no fleet is configured ([fleet] redis in the config file)".into(),
            ));
        };
        if resync {
            shared.resync.notify_one();
        }
        let mut state = shared.state();
        let (digest, entries) = self.list_digest()?;
        state.digest = digest;
        state.entries = entries;
        Ok(state)
    }
}
