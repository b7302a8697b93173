//! What the agent does for each control request, synchronously: validate, apply the safety
//! rules, write the kernel maps and the store, and answer. The control server and the
//! daemon's timers call into this; it knows nothing of sockets.
//!
//! Order of writes: the kernel first, then the store. An IP deny is enforced before the CLI
//! hears "added"; if the store write then fails, the kernel entry is taken back, and if the
//! agent dies in between, the start-up reconcile removes it (the store is the list of record).

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::{Arc, RwLock};

use crate::checker::lists::L7Lists;
use crate::checker::{ApiRegistry, L7Stats};
use crate::config::{Config, Mode};
use crate::control::answer::{self, Attachment};
use crate::control::proto::{AddRequest, Request, Response};
use crate::infrastructure::{self, Protected, Reading};
use crate::kernel::{Filter, KernelError, sys};
use crate::model::Cidr;
use crate::model::{Entry, List, Source, expiry};
use crate::model::{IdentError, Identifier, Kind};
use crate::store::{self, Store, StoreError};

mod abs_sync;
pub use abs_sync::Removals;
mod batch;
mod board;
mod credentials;
mod fleet;
mod hits;
pub use hits::covering;
mod links;
mod reconfigure;
mod removal;
mod restore;
mod safety;
mod switches;
mod views;

pub use crate::control::answer::{AbsState, Added, EntryView, Imported, MirrorReport};
pub use batch::{PreparedImport, parse_import_line};
pub use board::{Board, Counts};
pub use credentials::{CredentialError, Credentials, SecretCheck, TokenRecord};
pub use fleet::{FleetCommand, FleetReply, Received};
pub use links::undo_fresh;
pub use reconfigure::LIVE_KEYS;
pub use switches::{Switch, Switches};

/// What the checker found: the culprit to deny-list (source `checker`).
#[derive(Clone, Debug)]
pub struct Detection {
    /// Identifier kind.
    pub kind: Kind,
    /// Cookie or API-key name.
    pub name: Option<String>,
    /// The value (an address, or a secret digested by the store).
    pub value: String,
    /// What was detected, and on which API.
    pub reason: String,
    /// Seconds the deny lasts; `None`: until removed.
    pub ttl_secs: Option<u64>,
    /// The entry's API scope: `None` global (in the kernel for an address), or
    /// `checker::lists::ALL_APIS` (every API, at L7 only).
    pub scope: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The identifier is malformed.
    #[error(transparent)]
    Invalid(#[from] IdentError),
    /// The request lacks something.
    #[error("{0}")]
    BadRequest(String),
    /// A deny that would cut off everyone or this host.
    #[error("refusing to {list} {cidr}: it covers {what}; add --force if you really mean it")]
    WorldBlocking {
        /// Which list.
        list: List,
        /// The CIDR.
        cidr: Cidr,
        /// What it covers.
        what: String,
    },
    /// Nothing matched.
    #[error("{0} is not on the {1} list")]
    NotFound(String, List),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The kernel maps refused (full, or a syscall failed); nothing was changed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The switches file could not be read or written.
    #[error("switches: {0}")]
    Switches(String),
    /// The command failed inside the agent (a bug); the list writer recovered and goes on.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One applied change to the lists, as the writer's subscribers see it (see
/// the list writer's `subscribe`).
#[derive(Clone, Debug)]
pub enum Change {
    /// Rows added or refreshed.
    Added(Arc<[Entry]>),
    /// Rows taken off (by an operator, a feed, or on expiry).
    Removed(Arc<[Entry]>),
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The kernel deadline (`CLOCK_BOOTTIME` ns) of an entry expiring at unix time `expires`.
pub fn kernel_deadline(expires: Option<i64>, now_unix: i64) -> u64 {
    match expires {
        None => portcullis_common::NEVER,
        Some(e) => {
            let left = u64::try_from(e - now_unix).unwrap_or(0);
            sys::boottime_ns().saturating_add(left.saturating_mul(1_000_000_000))
        }
    }
}

/// Refuses a free-text field (reason, source, API) no entry may carry.
fn check_text(v: Option<&str>, what: &str) -> Result<(), ServiceError> {
    match v {
        Some(v) if v.len() > 1024 || v.chars().any(char::is_control) => Err(
            ServiceError::BadRequest(format!("{what} must be at most 1024 printable characters")),
        ),
        _ => Ok(()),
    }
}

/// The identifier a request names (parsed, secrets digested): needs no list state.
fn identifier_of(r: &AddRequest) -> Result<Identifier, ServiceError> {
    let kind = r
        .kind
        .ok_or_else(|| ServiceError::BadRequest("missing kind".into()))?;
    Ok(Identifier::parse(kind, r.name.as_deref(), &r.value)?)
}

/// The checker's lists and the board's counts, from one pass over the store.
fn load_views(store: &Store, filter: Option<&Filter>) -> Result<(L7Lists, Counts), ServiceError> {
    let mut lists = L7Lists::new(filter.map(Filter::shared_table));
    let mut counts = Counts::default();
    store.for_each(|e| {
        lists.add(e);
        counts.add(e);
    })?;
    Ok((lists, counts))
}

/// Rows added to the checker's lists per hold of their lock.
const L7_CHUNK: usize = 8_192;

/// The agent's state behind the control API.
pub struct Service {
    store: Store,
    filter: Option<Filter>,
    /// The L7 checker's in-memory view of identifiers and per-API IPs, kept in step with the
    /// store (global IPs it reads from the filter's twin).
    lists: Arc<RwLock<L7Lists>>,
    /// The checker's API definitions and counters, when it runs.
    checker: Option<(Arc<ApiRegistry>, Arc<L7Stats>)>,
    /// Where detections are reported to ABS, when the feed is configured.
    report: Option<Box<dyn Fn(serde_json::Value) + Send>>,
    config: Config,
    /// This host's addresses, and those it depends on (never deny-listed automatically).
    protected: Protected,
    /// List sizes and fixed facts for `status` and metrics, readable without the writer.
    board: Arc<Board>,
    /// The interfaces the filter was put on, attached or detached since.
    interfaces: links::Interfaces,
    /// Where applied changes are published (set by the list writer).
    changes: Option<tokio::sync::broadcast::Sender<Change>>,
    /// Local changes waiting for the fleet (see [`crate::fleet`]).
    outbox: fleet::Outbox,
    /// Packets per allow and deny entry (see [`hits`]).
    hits: hits::Hits,
}

impl Service {
    /// Wraps an open store and a loaded filter (`None`: no kernel enforcement).
    pub fn new(config: Config, store: Store, filter: Option<Filter>) -> Result<Self, ServiceError> {
        let (lists, counts) = load_views(&store, filter.as_ref())?;
        // API servers' names join at the first refresh, once the checker is connected.
        let mut protected = Protected::default();
        let redis = config.fleet.redis_host();
        protected.update(infrastructure::read(&infrastructure::names(
            &config.abs.url,
            redis.as_deref(),
        )));
        let switches = Arc::new(Switches::load(&config).map_err(ServiceError::Switches)?);
        let credentials = Arc::new(Credentials::load(&config).map_err(ServiceError::Switches)?);
        let board = Arc::new(Board::new(
            config.pin_dir.clone(),
            config.db_path(),
            switches,
            credentials,
        ));
        board.counts_mut(|c| *c = counts);
        if let Some(f) = &filter {
            let monitor = f.config()?.mode == portcullis_common::mode::MONITOR;
            board.set_mode(if monitor {
                Mode::Monitor
            } else {
                Mode::Enforce
            });
            board.set_kernel_ip_entries(f.table().len());
        }
        let outbox = fleet::Outbox::new(&config.fleet, &store);
        let hits = hits::Hits::since(filter.as_ref());
        Ok(Self {
            outbox,
            store,
            filter,
            lists: Arc::new(RwLock::new(lists)),
            checker: None,
            report: None,
            config,
            protected,
            board,
            interfaces: links::Interfaces::new(),
            changes: None,
            hits,
        })
    }

    /// Takes a new reading of the addresses the safety rules protect, and lifts the
    /// automatic deny entries that cover one of them now.
    pub fn protect(&mut self, reading: Reading) {
        self.protected.update(reading);
        self.lift_protected();
    }

    /// The L7 lists, for the checker.
    pub fn lists(&self) -> Arc<RwLock<L7Lists>> {
        self.lists.clone()
    }

    /// Connects the checker's API registry and counters (for `api` requests and stats).
    pub fn set_checker(&mut self, registry: Arc<ApiRegistry>, stats: Arc<L7Stats>) {
        registry.set_blocking_overrides(self.board.switches().api_blocking());
        self.checker = Some((registry, stats));
    }

    /// Connects the ABS feed (detections are reported to it).
    pub fn set_abs(
        &mut self,
        state: Arc<std::sync::Mutex<AbsState>>,
        report: impl Fn(serde_json::Value) + Send + 'static,
    ) {
        self.board.set_abs(Some(state));
        self.report = Some(Box::new(report));
    }

    /// Disconnects the ABS feed (a reload that removed `abs.url`): detections are no longer
    /// reported and `status` no longer shows a feed.
    pub fn clear_abs(&mut self) {
        self.board.set_abs(None);
        self.report = None;
    }

    /// Adds rows to the checker's lists, a few thousand per hold of the lock, so a request
    /// never waits for a whole import batch.
    fn l7_add(&self, entries: &[Entry]) {
        for chunk in entries.chunks(L7_CHUNK) {
            if let Ok(mut l) = self.lists.write() {
                chunk.iter().for_each(|e| l.add(e));
            }
        }
    }

    fn l7_reset(&self, list: List, ident: &Identifier) -> Result<(), ServiceError> {
        let rows = self.store.rows_of(list, ident)?;
        if let Ok(mut l) = self.lists.write() {
            l.reset(list, ident, &rows);
        }
        Ok(())
    }

    /// The status board (list sizes without a database scan).
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Takes rows the store removed off the board's counts.
    fn count_removed(&self, rows: &[Entry]) {
        if !rows.is_empty() {
            self.board
                .counts_mut(|c| rows.iter().for_each(|e| c.remove(e)));
        }
    }

    /// Brings the board's kernel entry count up to date (after each command).
    pub fn refresh_board(&self) {
        if let Some(f) = &self.filter {
            self.board.set_kernel_ip_entries(f.table().len());
        }
    }

    /// Publishes applied changes on `changes`.
    pub fn set_changes(&mut self, changes: tokio::sync::broadcast::Sender<Change>) {
        self.changes = Some(changes);
    }

    /// Tells subscribers, if any, and the fleet's outbox (the rows are only copied when
    /// someone listens).
    fn publish(&self, make: impl FnOnce() -> Change) {
        let listening = self.changes.as_ref().filter(|tx| tx.receiver_count() > 0);
        let fleet = self.outbox.wants();
        if listening.is_none() && !fleet {
            return;
        }
        let change = make();
        if fleet {
            self.fleet_note(&change);
        }
        if let Some(tx) = listening {
            let _ = tx.send(change);
        }
    }

    /// Deny-lists the culprit of a checker detection (source `checker`).
    pub fn detect(&mut self, d: &Detection) -> Result<Added, ServiceError> {
        if !self.board.switches().detections() {
            return Err(ServiceError::BadRequest(
                "real-time detections are off (portcullis switch detections on)".into(),
            ));
        }
        self.add(AddRequest {
            list: Some(List::Deny),
            kind: Some(d.kind),
            name: d.name.clone(),
            value: d.value.clone(),
            ttl_secs: d.ttl_secs,
            reason: Some(d.reason.clone()),
            api: d.scope.clone(),
            source: Some("checker".into()),
            force: false,
        })
    }

    /// The loaded filter.
    pub fn filter_mut(&mut self) -> Option<&mut Filter> {
        self.filter.as_mut()
    }

    /// Answers one control request: reads through [`Service::query`], writes here.
    pub fn handle(&mut self, req: Request) -> Response {
        if req.is_read() {
            return self.query(req);
        }
        let res = match req {
            Request::Add(r) => self.add(r).map(Response::ok),
            Request::Remove {
                list,
                kind,
                name,
                value,
                source,
            } => self
                .remove(list, kind, name.as_deref(), &value, source.as_deref())
                .map(Response::ok),
            Request::Clear {
                list,
                kind,
                source,
                all,
            } => {
                if kind.is_none() && source.is_none() && !all {
                    Err(ServiceError::BadRequest(format!(
                        "clearing the whole {list} list needs \"all\": true (or a kind or source)"
                    )))
                } else {
                    self.clear(list, kind, source).map(Response::ok)
                }
            }
            Request::AbsPush { add, remove } => self.abs_push(add, remove).map(Response::ok),
            Request::ApiReload => self.api_reload().map(Response::ok),
            Request::Attach { iface, xdp_mode } => self
                .attach(iface.as_deref(), xdp_mode)
                .map(|a| Response::ok(a.iter().map(Attachment::from).collect::<Vec<_>>())),
            Request::Restore { path, force } => self.restore(&path, force).map(Response::ok),
            Request::Switch { which, api, on } => self.switch(which, api, on).map(Response::ok),
            Request::Credentials { action } => self.credentials(action).map(Response::ok),
            Request::Detach { iface } => self
                .detach(iface.as_deref())
                .map(|detached| Response::ok(answer::Detached { detached })),
            other => Ok(self.query(other)),
        };
        res.unwrap_or_else(Response::err)
    }

    /// Answers a request that changes nothing (see [`Request::is_read`]).
    pub fn query(&self, req: Request) -> Response {
        let res = match req {
            Request::List { list, kind, source } => self
                .store
                .list(&store::Filter { list, kind, source })
                .map(|v| Response::ok(v.iter().map(EntryView::from).collect::<Vec<_>>()))
                .map_err(ServiceError::from),
            Request::Backup => self.backup().map(Response::ok),
            Request::Fleet { resync } => self.fleet_state(resync).map(Response::ok),
            Request::Status => self.status().map(Response::ok),
            Request::ApiList => self.api_list().map(Response::ok),
            Request::ApiShow { name } => self.api_show(&name).map(Response::ok),
            Request::Stats => self.stats().map(Response::ok),
            Request::Hits { list, limit } => Ok(Response::ok(
                self.entry_hits(list, limit.unwrap_or(usize::MAX)),
            )),
            _ => Err(ServiceError::BadRequest(
                "internal error: a write was routed as a read".into(),
            )),
        };
        res.unwrap_or_else(Response::err)
    }

    /// Brings the kernel maps and the checker's lists back in line with the store after a
    /// command failed half-way (a panic): the store is the list of record.
    pub fn recover(&mut self) -> Result<(), ServiceError> {
        self.lists.clear_poison();
        let (fresh, counts) = load_views(&self.store, self.filter.as_ref())?;
        match self.lists.write() {
            Ok(mut l) => *l = fresh,
            Err(p) => *p.into_inner() = fresh,
        }
        self.lists.clear_poison();
        self.board.counts_mut(|c| *c = counts);
        self.reconcile()?;
        Ok(())
    }

    fn entry_from(&self, r: &AddRequest, now: i64) -> Result<Entry, ServiceError> {
        let list = r
            .list
            .ok_or_else(|| ServiceError::BadRequest("missing list".into()))?;
        self.entry_with(list, r, identifier_of(r)?, now)
    }

    /// [`Service::entry_from`] for a request whose identifier is parsed already.
    fn entry_with(
        &self,
        list: List,
        r: &AddRequest,
        ident: Identifier,
        now: i64,
    ) -> Result<Entry, ServiceError> {
        self.check_safety(list, &ident, r.force)?;
        let text = |v: &Option<String>, what: &str| -> Result<String, ServiceError> {
            check_text(v.as_deref(), what)?;
            Ok(v.clone().unwrap_or_default())
        };
        let source = Source::parse(&text(&r.source, "source")?);
        if list == List::Deny && source.is_automatic() {
            self.check_automatic(&ident)?;
        }
        let ttl = r
            .ttl_secs
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX / 2).min(i64::MAX / 2));
        Ok(Entry {
            list,
            ident,
            source,
            reason: text(&r.reason, "reason")?,
            api: text(&r.api, "api")?,
            created: now,
            expires: ttl.map(|t| now.saturating_add(t)),
        })
    }

    /// The kernel deadline an IP identifier should have given its store rows plus `extra`.
    fn ip_deadline(
        &self,
        list: List,
        ident: &Identifier,
        extra: &[&Entry],
        now: i64,
    ) -> Result<Option<u64>, ServiceError> {
        let rows = self.store.rows_of(list, ident)?;
        let best = expiry::kernel_expiry(rows.iter().chain(extra.iter().copied()), now);
        Ok(best.map(|exp| kernel_deadline(exp, now)))
    }

    /// Makes the kernel's entry for one IP identifier match the store.
    fn sync_ip(&mut self, list: List, ident: &Identifier, now: i64) -> Result<bool, ServiceError> {
        let Some(cidr) = ident.cidr() else {
            return Ok(false);
        };
        let deadline = self.ip_deadline(list, ident, &[], now)?;
        let Some(f) = self.filter.as_mut() else {
            return Ok(false);
        };
        match deadline {
            Some(d) => f.insert(list, cidr, d)?,
            None => f.remove(list, cidr)?,
        }
        Ok(deadline.is_some())
    }

    fn add(&mut self, r: AddRequest) -> Result<Added, ServiceError> {
        let now = unix_now();
        let entry = self.entry_from(&r, now)?;
        let mut enforced = false;
        if let (Some(cidr), true) = (entry.ident.cidr(), entry.api.is_empty())
            && let Some(d) = self.ip_deadline(entry.list, &entry.ident, &[&entry], now)?
            && let Some(f) = self.filter.as_mut()
        {
            f.insert(entry.list, cidr, d)?;
            enforced = true;
        }
        let new = match self.store.upsert(std::slice::from_ref(&entry)) {
            Ok(n) => {
                if n == 1 {
                    self.board.counts_mut(|c| c.add(&entry));
                }
                n == 1
            }
            Err(e) => {
                // Take the kernel back to what the store says.
                let _ = self.sync_ip(entry.list, &entry.ident, now);
                return Err(e.into());
            }
        };
        self.l7_add(std::slice::from_ref(&entry));
        self.publish(|| Change::Added(Arc::from([entry.clone()])));
        if entry.source == Source::Checker
            && let Some(report) = &self.report
        {
            report(serde_json::json!({
                "kind": entry.ident.kind, "name": entry.ident.name, "value": entry.ident.value,
                "reason": entry.reason, "time": entry.created,
            }));
        }
        tracing::info!(list = %entry.list, ident = %entry.ident, source = %entry.source, reason = %entry.reason, expires = ?entry.expires, "entry added");
        Ok(Added {
            entry: EntryView::from(&entry),
            new,
            enforced_in_kernel: enforced,
        })
    }
}
