//! What the agent does for each control request, synchronously: validate, apply the safety
//! rules, write the kernel maps and the store, and answer. The control server and the
//! daemon's timers call into this; it knows nothing of sockets.
//!
//! Order of writes: the kernel first, then the store. An IP deny is enforced before the CLI
//! hears "added"; if the store write then fails, the kernel entry is taken back, and if the
//! agent dies in between, the start-up reconcile removes it (the store is the list of record).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use std::sync::{Arc, RwLock};

use crate::checker::lists::L7Lists;
use crate::checker::{ApiRegistry, L7Stats};
use crate::cidr::Cidr;
use crate::config::{Config, Mode};
use crate::control::proto::{AddRequest, ImportDefaults, Request, Response};
use crate::ident::{IdentError, Identifier, Kind};
use crate::kernel::{Attached, Filter, KernelError, List, sys};
use crate::store::{self, Entry, Store, StoreError};

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

/// The addresses ABS's URL names (resolved once, at start).
fn abs_hosts(url: &str) -> Vec<IpAddr> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Vec::new();
    };
    let Some(host) = uri.host() else {
        return Vec::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    use std::net::ToSocketAddrs as _;
    (host, port)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip().to_canonical()).collect())
        .unwrap_or_default()
}

/// The addresses of this host's interfaces (a deny covering one needs `--force`).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family tells which sockaddr type ifa_addr points to.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    // Loopback counts too: a local load balancer makes every client look like 127.0.0.1,
    // and one detection must not then deny everyone.
    out.push(IpAddr::from([127, 0, 0, 1]));
    out.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    out
}

/// Outcome of an add.
#[derive(Debug, Serialize)]
pub struct Added {
    /// The entry as stored.
    pub entry: EntryView,
    /// Whether it was new (false: updated reason or expiry).
    pub new: bool,
    /// Whether the kernel now enforces it.
    pub enforced_in_kernel: bool,
}

/// An entry as the CLI and JSON show it: secrets as fingerprints.
#[derive(Debug, Serialize)]
pub struct EntryView {
    /// allow or deny.
    pub list: List,
    /// Kind.
    pub kind: Kind,
    /// Cookie / API-key name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Value or fingerprint.
    pub value: String,
    /// Source.
    pub source: String,
    /// Reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// API scope.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub expires: Option<i64>,
}

impl From<&Entry> for EntryView {
    fn from(e: &Entry) -> Self {
        Self {
            list: e.list,
            kind: e.ident.kind,
            name: e.ident.name.clone(),
            value: e.ident.display_value(),
            source: e.source.clone(),
            reason: e.reason.clone(),
            api: e.api.clone(),
            created: e.created,
            expires: e.expires,
        }
    }
}

/// What a mirror or push changed.
#[derive(Debug, Default, Serialize)]
pub struct MirrorReport {
    /// Rows added or refreshed.
    pub added: usize,
    /// Rows removed.
    pub removed: usize,
    /// Items refused (invalid, or would block everyone or this host).
    pub skipped: usize,
}

/// Result of an import batch.
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    /// Entries accepted (new or updated).
    pub accepted: usize,
    /// New rows.
    pub new: usize,
    /// `(line, reason)` of lines refused.
    pub rejected: Vec<(u64, String)>,
}

/// The agent's state behind the control API.
pub struct Service {
    store: Store,
    filter: Option<Filter>,
    /// The L7 checker's in-memory view of the lists, kept in step with the store.
    lists: Arc<RwLock<L7Lists>>,
    /// The checker's API definitions and counters, when it runs.
    checker: Option<(Arc<ApiRegistry>, Arc<L7Stats>)>,
    /// The ABS feed, when configured: detections are queued to it, status shows its state.
    abs: Option<Arc<crate::abs::Abs>>,
    config: Config,
    own_addresses: Vec<IpAddr>,
    /// Resolvers, gateways and ABS hosts: never deny-listed by an automatic source.
    infrastructure: Vec<IpAddr>,
    attached: Vec<Attached>,
    started: Instant,
}

impl Service {
    /// Wraps an open store and a loaded filter (`None`: no kernel enforcement).
    pub fn new(config: Config, store: Store, filter: Option<Filter>) -> Result<Self, ServiceError> {
        let mut lists = L7Lists::default();
        store.for_each(|e| lists.add(e))?;
        let mut infrastructure = crate::infrastructure::addresses();
        infrastructure.extend(abs_hosts(&config.abs.url));
        Ok(Self {
            store,
            filter,
            lists: Arc::new(RwLock::new(lists)),
            checker: None,
            abs: None,
            config,
            own_addresses: host_addresses(),
            infrastructure,
            attached: Vec::new(),
            started: Instant::now(),
        })
    }

    /// The L7 lists, for the checker.
    pub fn lists(&self) -> Arc<RwLock<L7Lists>> {
        self.lists.clone()
    }

    /// Connects the checker's API registry and counters (for `api` requests and stats).
    pub fn set_checker(&mut self, registry: Arc<ApiRegistry>, stats: Arc<L7Stats>) {
        self.checker = Some((registry, stats));
    }

    /// Connects the ABS feed (detections are reported to it).
    pub fn set_abs(&mut self, abs: Arc<crate::abs::Abs>) {
        self.abs = Some(abs);
    }

    fn l7_add(&self, entries: &[Entry]) {
        if let Ok(mut l) = self.lists.write() {
            for e in entries {
                l.add(e);
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

    /// Records what was attached (for status).
    pub fn set_attached(&mut self, attached: Vec<Attached>) {
        self.attached = attached;
    }

    /// The loaded filter.
    pub fn filter_mut(&mut self) -> Option<&mut Filter> {
        self.filter.as_mut()
    }

    /// Answers one control request.
    pub fn handle(&mut self, req: Request) -> Response {
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
            Request::List { list, kind, source } => self
                .store
                .list(&store::Filter { list, kind, source })
                .map(|v| Response::ok(v.iter().map(EntryView::from).collect::<Vec<_>>()))
                .map_err(ServiceError::from),
            Request::Clear { list, kind, source } => {
                self.clear(list, kind, source).map(Response::ok)
            }
            Request::Import {
                list,
                lines,
                defaults,
            } => self.import(list, &lines, &defaults).map(Response::ok),
            Request::Status => self.status().map(Response::ok),
            Request::ApiList => self.api_list(),
            Request::ApiShow { name } => self.api_show(&name),
            Request::ApiReload => self.api_reload(),
            Request::AbsPush { add, remove } => self.abs_push(add, remove).map(Response::ok),
            Request::Stats => self.stats().map(Response::ok),
        };
        res.unwrap_or_else(Response::err)
    }

    /// Refuses, unless forced: denies that would cut off everyone, a large part of the
    /// Internet, this host or a management network; and an allow of every address, which
    /// would turn enforcement off.
    fn check_safety(
        &self,
        list: List,
        ident: &Identifier,
        force: bool,
    ) -> Result<(), ServiceError> {
        let Some(cidr) = ident.cidr() else {
            return Ok(());
        };
        if force {
            return Ok(());
        }
        let min = match cidr {
            Cidr::V4 { .. } => self.config.min_deny_prefix_v4,
            Cidr::V6 { .. } => self.config.min_deny_prefix_v6,
        };
        if list == List::Allow {
            // An allow of a huge range (or two halves of everything) turns enforcement off.
            if cidr.len() < min {
                return Err(ServiceError::WorldBlocking {
                    list,
                    cidr,
                    what: format!(
                        "more than a /{min} (min_deny_prefix), which turns enforcement off there,"
                    ),
                });
            }
            return Ok(());
        }
        if cidr.len() == 0 {
            return Err(ServiceError::WorldBlocking {
                list,
                cidr,
                what: "every address".into(),
            });
        }
        if cidr.len() < min {
            return Err(ServiceError::WorldBlocking {
                list,
                cidr,
                what: format!("more than a /{min} (min_deny_prefix)"),
            });
        }
        if let Some(a) = self.own_addresses.iter().find(|a| cidr.contains(**a)) {
            return Err(ServiceError::WorldBlocking {
                list,
                cidr,
                what: format!("this host's own address {a}"),
            });
        }
        // The proxies in front of the checker speak for many clients.
        if let Some(p) = self
            .config
            .checker
            .trusted_proxies()
            .iter()
            .find(|p| p.covers(&cidr) || cidr.covers(p))
        {
            return Err(ServiceError::WorldBlocking {
                list,
                cidr,
                what: format!("trusted proxy {p}, and every client behind it"),
            });
        }
        if let Some(m) = self
            .config
            .management()
            .iter()
            .find(|m| m.covers(&cidr) || cidr.covers(m))
        {
            return Err(ServiceError::WorldBlocking {
                list,
                cidr,
                what: format!("management network {m}"),
            });
        }
        Ok(())
    }

    /// What an automatic source (ABS, detections, the fleet) may never deny-list: the
    /// configured backends, ABS's hosts, this host's resolvers and gateways. (This host's
    /// addresses, loopback, trusted proxies and management networks are refused for every
    /// source by `check_safety`.)
    fn check_automatic(&self, ident: &Identifier) -> Result<(), ServiceError> {
        let Some(cidr) = ident.cidr() else {
            return Ok(());
        };
        let backends: Vec<IpAddr> = self
            .checker
            .as_ref()
            .map(|(registry, _)| {
                registry
                    .apis()
                    .values()
                    .flat_map(|a| a.meta.servers.iter())
                    .filter_map(|s| s.host.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let hit = self
            .infrastructure
            .iter()
            .map(|a| {
                (
                    a,
                    "an address this host depends on (resolver, gateway or ABS)",
                )
            })
            .chain(backends.iter().map(|a| (a, "a configured API server")))
            .find(|(a, _)| cidr.contains(**a));
        match hit {
            Some((a, what)) => Err(ServiceError::WorldBlocking {
                list: List::Deny,
                cidr,
                what: format!("{a}, {what}"),
            }),
            None => Ok(()),
        }
    }

    fn entry_from(&self, r: &AddRequest, now: i64) -> Result<Entry, ServiceError> {
        let list = r
            .list
            .ok_or_else(|| ServiceError::BadRequest("missing list".into()))?;
        let kind = r
            .kind
            .ok_or_else(|| ServiceError::BadRequest("missing kind".into()))?;
        let ident = Identifier::parse(kind, r.name.as_deref(), &r.value)?;
        self.check_safety(list, &ident, r.force)?;
        if list == List::Deny && matches!(r.source.as_deref(), Some("abs" | "checker" | "fleet")) {
            self.check_automatic(&ident)?;
        }
        let text = |v: &Option<String>, what: &str| -> Result<String, ServiceError> {
            let v = v.clone().unwrap_or_default();
            if v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(ServiceError::BadRequest(format!(
                    "{what} must be at most 1024 printable characters"
                )));
            }
            Ok(v)
        };
        let ttl = r
            .ttl_secs
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX / 2).min(i64::MAX / 2));
        Ok(Entry {
            list,
            ident,
            source: {
                let s = text(&r.source, "source")?;
                if s.is_empty() { "manual".into() } else { s }
            },
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
        let mut best: Option<Option<i64>> = None;
        for e in rows.iter().chain(extra.iter().copied()) {
            if !e.api.is_empty() || e.expires.is_some_and(|x| x <= now) {
                continue;
            }
            best = Some(match (best, e.expires) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
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
            Ok(n) => n == 1,
            Err(e) => {
                // Take the kernel back to what the store says.
                let _ = self.sync_ip(entry.list, &entry.ident, now);
                return Err(e.into());
            }
        };
        self.l7_add(std::slice::from_ref(&entry));
        if entry.source == "checker"
            && let Some(abs) = &self.abs
        {
            abs.queue_detection(serde_json::json!({
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

    fn remove(
        &mut self,
        list: List,
        kind: Kind,
        name: Option<&str>,
        value: &str,
        source: Option<&str>,
    ) -> Result<Vec<EntryView>, ServiceError> {
        let ident = Identifier::parse(kind, name, value)?;
        let removed = self.store.remove(list, &ident, source)?;
        if removed.is_empty() {
            return Err(ServiceError::NotFound(ident.to_string(), list));
        }
        self.sync_ip(list, &ident, unix_now())?;
        self.l7_reset(list, &ident)?;
        tracing::info!(%list, %ident, rows = removed.len(), "entry removed");
        Ok(removed.iter().map(EntryView::from).collect())
    }

    fn clear(
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
        if let Some(f) = self.filter.as_mut() {
            f.apply_many(items)?;
        }
        let mut done = std::collections::HashSet::new();
        for e in &removed {
            if done.insert(crate::store::ident_key(e.list, &e.ident)) {
                self.l7_reset(e.list, &e.ident)?;
            }
        }
        tracing::info!(%list, ?kind, rows = removed.len(), "list cleared");
        Ok(removed.len())
    }

    fn import(
        &mut self,
        list: List,
        lines: &[(u64, String)],
        defaults: &ImportDefaults,
    ) -> Result<Imported, ServiceError> {
        let now = unix_now();
        let mut out = Imported::default();
        let mut good: Vec<Entry> = Vec::with_capacity(lines.len());
        for (no, line) in lines {
            match parse_import_line(line) {
                Ok(None) => {}
                Ok(Some(mut req)) => {
                    req.list = Some(list);
                    req.ttl_secs = req.ttl_secs.or(defaults.ttl_secs);
                    req.reason = req.reason.or_else(|| defaults.reason.clone());
                    req.source = req.source.or_else(|| defaults.source.clone());
                    req.force |= defaults.force;
                    match self.entry_from(&req, now) {
                        Ok(e) => good.push(e),
                        Err(e) => out.rejected.push((*no, e.to_string())),
                    }
                }
                Err(msg) => out.rejected.push((*no, msg)),
            }
        }
        out.new = self.add_batch(list, &good)?;
        out.accepted = good.len();
        tracing::info!(%list, accepted = out.accepted, rejected = out.rejected.len(), "import batch");
        Ok(out)
    }

    /// Adds validated entries: kernel first (one batched write for every global IP entry;
    /// adding only raises deadlines, so the new deadline is the later of what the kernel
    /// holds, which the twin knows, and the batch's own: no database lookups), then the
    /// store, then the L7 lists. Returns how many rows were new.
    fn add_batch(&mut self, list: List, good: &[Entry]) -> Result<usize, ServiceError> {
        let now = unix_now();
        let mut by_cidr: BTreeMap<Cidr, Vec<&Entry>> = BTreeMap::new();
        for e in good {
            if let (Some(c), true) = (e.ident.cidr(), e.api.is_empty()) {
                by_cidr.entry(c).or_default().push(e);
            }
        }
        let mut items = Vec::with_capacity(by_cidr.len());
        let mut undo = Vec::with_capacity(by_cidr.len());
        for (cidr, extra) in &by_cidr {
            let current = self
                .filter
                .as_ref()
                .map(|f| f.table().entry(cidr))
                .unwrap_or_default();
            let current = match list {
                List::Allow => current.allow_until,
                List::Deny => current.deny_until,
            };
            let new = extra
                .iter()
                .map(|e| kernel_deadline(e.expires, now))
                .max()
                .unwrap_or(0);
            items.push((list, *cidr, Some(current.max(new))));
            undo.push((list, *cidr, (current != 0).then_some(current)));
        }
        if let Some(f) = self.filter.as_mut() {
            f.apply_many(items)?;
        }
        let new = match self.store.upsert(good) {
            Ok(n) => n,
            Err(e) => {
                // The store refused (disk full, I/O error): put the kernel back as it was, so
                // neither side holds what the other does not.
                if let Some(f) = self.filter.as_mut()
                    && let Err(k) = f.apply_many(undo)
                {
                    tracing::error!(
                        "store write failed and the kernel could not be rolled back: {k}; it now enforces entries the store lacks until the next restart reconciles"
                    );
                }
                return Err(e.into());
            }
        };
        self.l7_add(good);
        Ok(new)
    }

    /// Removes one source's rows of these identifiers, then brings the kernel and the L7
    /// lists in line with what other sources still hold.
    fn remove_batch(
        &mut self,
        list: List,
        idents: &[Identifier],
        source: &str,
    ) -> Result<usize, ServiceError> {
        let now = unix_now();
        let mut removed = 0;
        let mut kernel = Vec::new();
        for ident in idents {
            removed += self.store.remove(list, ident, Some(source))?.len();
            if let Some(c) = ident.cidr() {
                kernel.push((list, c, self.ip_deadline(list, ident, &[], now)?));
            }
            self.l7_reset(list, ident)?;
        }
        if let Some(f) = self.filter.as_mut() {
            f.apply_many(kernel)?;
        }
        Ok(removed)
    }

    /// Makes the `abs` rows of the deny list exactly `items` (see [`crate::abs`]), as a diff.
    /// Memory stays proportional to the list's keys, not its entries: items are validated
    /// once to find their identity, and only the ones to add are turned into entries, in
    /// chunks.
    pub fn abs_mirror(
        &mut self,
        items: Vec<crate::abs::AbsItem>,
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
        self.store.for_each(|e| {
            if e.list == List::Deny && e.source == "abs" {
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
            self.add_batch(List::Deny, &entries)?;
        }
        drop(items);
        report.removed = self.remove_batch(List::Deny, &stale, "abs")?;
        // SAFETY: glibc's malloc_trim has no preconditions; it returns the sync's buffers.
        unsafe { libc::malloc_trim(0) };
        Ok(report)
    }

    fn abs_entry(&self, it: &crate::abs::AbsItem, now: i64) -> Result<Entry, ServiceError> {
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
    fn abs_push(
        &mut self,
        add: Vec<crate::abs::AbsItem>,
        remove: Vec<crate::abs::AbsItem>,
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
        self.add_batch(List::Deny, &good)?;
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

    /// Rebuilds the kernel maps from the store (at start-up, after reusing pinned maps).
    pub fn reconcile(&mut self) -> Result<(usize, usize), ServiceError> {
        let now = unix_now();
        let all = self.store.list(&store::Filter {
            kind: Some(Kind::Ip),
            ..store::Filter::default()
        })?;
        let mut best: BTreeMap<(List, Cidr), Option<i64>> = BTreeMap::new();
        for e in &all {
            let Some(c) = e.ident.cidr() else { continue };
            if !e.api.is_empty() || e.expires.is_some_and(|x| x <= now) {
                continue;
            }
            let slot = best.entry((e.list, c)).or_insert(Some(i64::MIN));
            *slot = match (*slot, e.expires) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
        }
        let Some(f) = self.filter.as_mut() else {
            return Ok((0, 0));
        };
        let report = f.reconcile(
            best.into_iter()
                .map(|((l, c), exp)| (l, c, kernel_deadline(exp, now))),
        )?;
        Ok((report.written, report.removed))
    }

    /// Removes expired entries from the store and the kernel; returns them.
    pub fn prune(&mut self) -> Result<Vec<Entry>, ServiceError> {
        let now = unix_now();
        let gone = self.store.prune_expired(now)?;
        for e in &gone {
            self.sync_ip(e.list, &e.ident, now)?;
            self.l7_reset(e.list, &e.ident)?;
            tracing::info!(list = %e.list, ident = %e.ident, source = %e.source, "entry expired");
        }
        Ok(gone)
    }

    fn status(&self) -> Result<serde_json::Value, ServiceError> {
        let counts = self.store.counts()?;
        let mode = match self.filter.as_ref().map(Filter::config).transpose()? {
            Some(c) if c.mode == portcullis_common::mode::MONITOR => Mode::Monitor,
            _ => Mode::Enforce,
        };
        Ok(serde_json::json!({
            "mode": mode,
            "interfaces": self.attached.iter().map(|a| serde_json::json!({
                "iface": a.iface,
                "xdp_mode": match a.mode { crate::kernel::AttachMode::Native => "native", crate::kernel::AttachMode::Generic => "generic" },
                "fell_back": a.fell_back,
                "reused_pinned_link": a.reused_link,
            })).collect::<Vec<_>>(),
            "pin_dir": self.config.pin_dir,
            "database": self.config.db_path(),
            "lists": counts.iter().map(|(l, k, s, n)| serde_json::json!({"list": l, "kind": k, "source": s, "count": n})).collect::<Vec<_>>(),
            "kernel_ip_entries": self.filter.as_ref().map_or(0, |f| f.table().len()),
            "abs": self.abs.as_ref().and_then(|a| a.state.lock().ok().map(|s| s.clone())),
            "uptime_secs": self.started.elapsed().as_secs(),
        }))
    }

    /// Kernel counters by verdict name.
    pub fn stats(&self) -> Result<serde_json::Value, ServiceError> {
        let mut kernel = serde_json::Map::new();
        let mut by_iface = serde_json::Map::new();
        if let Some(f) = &self.filter {
            for (iface, counters) in f.counters_by_iface()? {
                let m: serde_json::Map<String, serde_json::Value> = counters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            portcullis_common::counter::NAMES[i].to_owned(),
                            serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                        )
                    })
                    .collect();
                by_iface.insert(iface, serde_json::Value::Object(m));
            }
        }
        if let Some(f) = &self.filter {
            for (i, c) in f.counters()?.iter().enumerate() {
                kernel.insert(
                    portcullis_common::counter::NAMES[i].into(),
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                );
            }
        }
        let l7: serde_json::Map<String, serde_json::Value> = self
            .checker
            .as_ref()
            .map(|(_, st)| {
                st.snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::json!(v)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(serde_json::json!({ "kernel": kernel, "interfaces": by_iface, "l7": l7 }))
    }

    /// List sizes for metrics.
    pub fn counts(&self) -> Result<Vec<(List, Kind, String, u64)>, ServiceError> {
        Ok(self.store.counts()?)
    }
}

impl Service {
    fn registry(&self) -> Result<&Arc<ApiRegistry>, ServiceError> {
        self.checker.as_ref().map(|(r, _)| r).ok_or_else(|| {
            ServiceError::BadRequest(
                "the L7 checker is not enabled (set [checker] https or http)".into(),
            )
        })
    }

    fn api_list(&self) -> Result<Response, ServiceError> {
        let r = self.registry()?;
        let apis: Vec<serde_json::Value> = r
            .apis()
            .values()
            .map(|a| serde_json::json!({
                "name": a.name, "hostname": a.meta.hostname, "url": a.meta.url,
                "servers": a.meta.servers.iter().map(|s| format!("{}:{}", s.host, s.port)).collect::<Vec<_>>(),
                "enable_blocking": a.meta.enable_blocking,
                "decoy": a.meta.decoy_config.as_ref().is_some_and(|d| d.decoy_enabled),
                "ignored_fields": a.ignored_fields,
            }))
            .collect();
        let errors: Vec<String> = r.errors().iter().map(ToString::to_string).collect();
        Ok(Response::ok(
            serde_json::json!({ "apis": apis, "errors": errors }),
        ))
    }

    fn api_show(&self, name: &str) -> Result<Response, ServiceError> {
        let apis = self.registry()?.apis();
        let api = apis.get(name).ok_or_else(|| {
            ServiceError::BadRequest(format!("no API named {name:?} (see `portcullis api list`)"))
        })?;
        Ok(Response::ok(
            serde_json::json!({ "name": api.name, "path": api.path, "api_metadata": api.meta, "ignored_fields": api.ignored_fields }),
        ))
    }

    fn api_reload(&self) -> Result<Response, ServiceError> {
        let (n, errors) = self.registry()?.reload();
        Ok(Response::ok(
            serde_json::json!({ "loaded": n, "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
        ))
    }
}

/// Parses one import line: blank lines and `#` comments are skipped; `{...}` is NDJSON
/// (`{"kind":"ip","value":"203.0.113.7","ttl":"1h","reason":"..."}`); otherwise
/// `KIND [NAME] VALUE` as on the command line, or a bare IP/CIDR.
pub fn parse_import_line(line: &str) -> Result<Option<AddRequest>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Json {
            kind: String,
            #[serde(default)]
            name: Option<String>,
            value: String,
            #[serde(default)]
            ttl: Option<String>,
            #[serde(default)]
            reason: Option<String>,
            #[serde(default)]
            api: Option<String>,
        }
        let j: Json = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let kind: Kind = j.kind.parse().map_err(|e: IdentError| e.to_string())?;
        let ttl_secs = j
            .ttl
            .as_deref()
            .map(crate::config::parse_duration)
            .transpose()?;
        return Ok(Some(AddRequest {
            kind: Some(kind),
            name: j.name,
            value: j.value,
            ttl_secs,
            reason: j.reason,
            api: j.api,
            ..AddRequest::default()
        }));
    }
    let (first, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let kind = match first.parse::<Kind>() {
        Ok(k) => k,
        Err(_) if rest.is_empty() && first.parse::<Cidr>().is_ok() => {
            return Ok(Some(AddRequest {
                kind: Some(Kind::Ip),
                value: first.to_owned(),
                ..AddRequest::default()
            }));
        }
        Err(e) => return Err(e.to_string()),
    };
    let (name, value) = match kind {
        Kind::Cookie | Kind::ApiKey => match rest.split_once(char::is_whitespace) {
            Some(("--any-name", v)) if kind == Kind::ApiKey => (None, v.trim().to_owned()),
            Some((n, v)) => (Some(n.to_owned()), v.trim().to_owned()),
            None if kind == Kind::ApiKey => (None, rest.to_owned()),
            None => return Err("a cookie line needs a name and a value: cookie NAME VALUE".into()),
        },
        Kind::Username => (None, rest.trim_matches('"').to_owned()),
        Kind::Ip | Kind::Token => (None, rest.to_owned()),
    };
    if value.is_empty() {
        return Err(format!("{kind} line has no value"));
    }
    Ok(Some(AddRequest {
        kind: Some(kind),
        name,
        value,
        ..AddRequest::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines() {
        let r = parse_import_line("203.0.113.7")
            .expect("ok")
            .expect("entry");
        assert_eq!((r.kind, r.value.as_str()), (Some(Kind::Ip), "203.0.113.7"));
        let r = parse_import_line("cookie JSESSIONID abc")
            .expect("ok")
            .expect("entry");
        assert_eq!(
            (r.name.as_deref(), r.value.as_str()),
            (Some("JSESSIONID"), "abc")
        );
        let r = parse_import_line("username \"your name\"")
            .expect("ok")
            .expect("entry");
        assert_eq!(r.value, "your name");
        let r = parse_import_line("api-key --any-name k1")
            .expect("ok")
            .expect("entry");
        assert_eq!((r.name, r.value.as_str()), (None, "k1"));
        let r = parse_import_line(r#"{"kind":"token","value":"t","ttl":"1h"}"#)
            .expect("ok")
            .expect("entry");
        assert_eq!(r.ttl_secs, Some(3600));
        assert_eq!(
            parse_import_line("  # comment")
                .expect("ok")
                .map(|r| r.value),
            None
        );
        assert!(parse_import_line("bogus 1.2.3.4").is_err());
        assert!(parse_import_line("{\"kind\":\"ip\"").is_err());
        assert!(parse_import_line(r#"{"kind":"ip","value":"1.2.3.4","colour":"red"}"#).is_err());
        assert!(parse_import_line("cookie JSESSIONID").is_err());
    }
}
