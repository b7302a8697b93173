//! The allow and deny lists as the L7 checker consults them on every request: in memory,
//! keyed by the store's 128-bit identity keys (secrets are never held in clear), with each
//! entry's scope (global or per API) and expiry. The service keeps it in step with the store.
//! Global IP entries are not copied here when the kernel filter is loaded: the checker reads
//! the filter's twin, so it judges a client address exactly as XDP does.

use std::net::IpAddr;
use std::sync::PoisonError;

use rustc_hash::FxHashMap as HashMap;

use crate::kernel::filter::SharedTable;
use crate::kernel::sys::boottime_ns;
use crate::kernel::table::lookup;
use crate::model::Entry;
use crate::model::List;
use crate::model::{Cidr, mask32, mask128};
use crate::model::{Identifier, Kind};
use crate::store::hash_fields;

/// Where and until when one identifier is listed, in 16 bytes (a million entries of each
/// kind live here): the latest global expiry (`NONE` = not global, `i64::MAX` = never), and
/// per-API rows only when there are any.
#[derive(Clone, Debug)]
struct Presence {
    global: i64,
    scoped: Option<Box<ScopedRows>>,
}

/// Per-API rows of one identifier: (API name, expiry).
type ScopedRows = Vec<(Box<str>, i64)>;

const NONE: i64 = i64::MIN;

impl Default for Presence {
    fn default() -> Self {
        Self {
            global: NONE,
            scoped: None,
        }
    }
}

/// The scope of an entry that holds on every API at L7 but is never put in the kernel
/// (`--api '*'`; decoy visitors with `checker.decoy_action = "l7"`).
pub const ALL_APIS: &str = "*";

impl Presence {
    fn add(&mut self, api: &str, expires: Option<i64>) {
        let e = expires.unwrap_or(i64::MAX);
        if api.is_empty() {
            self.global = self.global.max(e);
            return;
        }
        let scoped = self.scoped.get_or_insert_with(Default::default);
        match scoped.iter_mut().find(|(a, _)| &**a == api) {
            Some(s) => s.1 = s.1.max(e),
            None => scoped.push((api.into(), e)),
        }
    }

    fn matches(&self, api: &str, now: i64) -> bool {
        (self.global != NONE && self.global > now)
            || self.scoped.as_ref().is_some_and(|s| {
                s.iter()
                    .any(|(a, e)| (&**a == api || &**a == ALL_APIS) && *e > now)
            })
    }
}

/// Key of a non-IP identifier, independent of the list, so a request hashes each of its
/// identifiers once and probes both lists with [`on_list`].
pub fn l7_key(ident: &Identifier) -> (i64, i64) {
    // API-key names are header names: case-insensitive (rows stored before names were
    // lower-cased on entry still match).
    if ident.kind == Kind::ApiKey && ident.name.bytes().any(|b| b.is_ascii_uppercase()) {
        let name = ident.name.to_ascii_lowercase();
        return hash_fields(&[ident.kind.as_str(), &name, &ident.value]);
    }
    hash_fields(&[ident.kind.as_str(), &ident.name, &ident.value])
}

/// The key of `key` on `list`: one bit of the hash flipped for the allow list.
fn on_list(key: (i64, i64), list: List) -> (i64, i64) {
    (key.0, key.1 ^ i64::from(list == List::Allow))
}

/// IPv4 key: address, prefix length and list packed in 8 bytes.
fn v4_key(list: List, addr: u32, len: u8) -> u64 {
    (u64::from(addr) << 16) | (u64::from(len) << 1) | u64::from(list == List::Allow)
}

/// IPv6 key: address, and prefix length with the list.
fn v6_key(list: List, addr: u128, len: u8) -> (u128, u16) {
    (addr, (u16::from(len) << 1) | u16::from(list == List::Allow))
}

/// One family's IP entries by (prefix, length, list) key, and how many there are of each
/// prefix length, so that a lookup probes only the lengths present.
#[derive(Debug)]
struct Prefixes<K> {
    by_key: HashMap<K, Presence>,
    per_len: Vec<u32>,
}

impl<K: std::hash::Hash + Eq> Prefixes<K> {
    fn new(max_len: u8) -> Self {
        Self {
            by_key: HashMap::default(),
            per_len: vec![0; usize::from(max_len) + 1],
        }
    }

    fn add(&mut self, key: K, len: u8, api: &str, expires: Option<i64>) {
        let p = self.by_key.entry(key);
        if matches!(p, std::collections::hash_map::Entry::Vacant(_)) {
            self.per_len[usize::from(len)] += 1;
        }
        p.or_default().add(api, expires);
    }

    fn remove(&mut self, key: &K, len: u8) {
        if self.by_key.remove(key).is_some() {
            self.per_len[usize::from(len)] -= 1;
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether one of the prefixes `key(len)` (an address's prefix of each length present)
    /// is held and matches `api` at `now`.
    fn covers(&self, key: impl Fn(u8) -> K, api: &str, now: i64) -> bool {
        (0..self.per_len.len())
            .filter(|len| self.per_len[*len] > 0)
            .any(|len| {
                self.by_key
                    .get(&key(len as u8))
                    .is_some_and(|p| p.matches(api, now))
            })
    }
}

/// The L7 view of both lists.
#[derive(Debug)]
pub struct L7Lists {
    idents: HashMap<(i64, i64), Presence>,
    /// IP entries scoped to an API, and global ones too when there is no kernel twin.
    ips4: Prefixes<u64>,
    ips6: Prefixes<(u128, u16)>,
    /// The kernel filter's twin, which holds every global IP entry (at a million entries a
    /// second copy here cost ~50 bytes each).
    kernel: Option<SharedTable>,
}

impl Default for L7Lists {
    fn default() -> Self {
        Self::new(None)
    }
}

impl L7Lists {
    /// Empty lists; global IP entries are read from `kernel` when there is one.
    pub fn new(kernel: Option<SharedTable>) -> Self {
        Self {
            idents: HashMap::default(),
            ips4: Prefixes::new(32),
            ips6: Prefixes::new(128),
            kernel,
        }
    }

    /// Builds the lists from store rows.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut l = Self::default();
        for e in entries {
            l.add(e);
        }
        l
    }

    /// Records one row (a global IP entry only when there is no kernel twin to hold it).
    pub fn add(&mut self, e: &Entry) {
        if self.kernel.is_some() && e.api.is_empty() && e.ident.kind == Kind::Ip {
            return;
        }
        match e.ident.cidr() {
            Some(Cidr::V4 { addr, len }) => {
                self.ips4
                    .add(v4_key(e.list, addr, len), len, &e.api, e.expires)
            }
            Some(Cidr::V6 { addr, len }) => {
                self.ips6
                    .add(v6_key(e.list, addr, len), len, &e.api, e.expires)
            }
            None => self
                .idents
                .entry(on_list(l7_key(&e.ident), e.list))
                .or_default()
                .add(&e.api, e.expires),
        }
    }

    /// Replaces what is known of one identifier on one list with `rows` (after a removal,
    /// a clear or an expiry, from the store's remaining rows).
    pub fn reset(&mut self, list: List, ident: &Identifier, rows: &[Entry]) {
        match ident.cidr() {
            Some(Cidr::V4 { addr, len }) => self.ips4.remove(&v4_key(list, addr, len), len),
            Some(Cidr::V6 { addr, len }) => self.ips6.remove(&v6_key(list, addr, len), len),
            None => {
                self.idents.remove(&on_list(l7_key(ident), list));
            }
        }
        for r in rows {
            self.add(r);
        }
    }

    /// Whether `ident` is on `list` for `api` at `now`.
    pub fn has(&self, list: List, ident: &Identifier, api: &str, now: i64) -> bool {
        self.has_key(list, l7_key(ident), api, now)
    }

    /// [`L7Lists::has`] with the identifier's [`l7_key`] already computed.
    pub fn has_key(&self, list: List, key: (i64, i64), api: &str, now: i64) -> bool {
        self.idents
            .get(&on_list(key, list))
            .is_some_and(|p| p.matches(api, now))
    }

    /// Whether any entry on `list` covers `ip` for `api`: a global one live in the kernel
    /// twin now, or one this view holds, live at `now` (unix seconds).
    pub fn has_ip(&self, list: List, ip: IpAddr, api: &str, now: i64) -> bool {
        self.kernel_verdict(ip).on(list) || self.own_has_ip(list, ip, api, now)
    }

    /// What the kernel twin says of `ip`: the XDP program's own lookup, over the twin,
    /// against the kernel's clock; one lock and one lookup for both lists.
    pub fn kernel_verdict(&self, ip: IpAddr) -> KernelVerdict {
        let Some(table) = &self.kernel else {
            return KernelVerdict::default();
        };
        let d = lookup(&*table.read().unwrap_or_else(PoisonError::into_inner), ip);
        let now = boottime_ns();
        KernelVerdict {
            allow: d.allow_until > now,
            deny: d.deny_until > now,
        }
    }

    /// Whether an entry this view holds (per-API, or any without a kernel twin) on `list`
    /// covers `ip` for `api` at `now`.
    fn own_has_ip(&self, list: List, ip: IpAddr, api: &str, now: i64) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let key = |len| v4_key(list, a & mask32(len), len);
                self.ips4.covers(key, api, now)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let key = |len| v6_key(list, a & mask128(len), len);
                self.ips6.covers(key, api, now)
            }
        }
    }

    /// Number of identifiers and IP entries this view holds (global IP entries are counted
    /// by the kernel twin when there is one).
    pub fn len(&self) -> usize {
        self.idents.len() + self.ips4.len() + self.ips6.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a live global IP entry covers an address, per list, as the kernel twin says.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelVerdict {
    /// On the allow list.
    pub allow: bool,
    /// On the deny list.
    pub deny: bool,
}

impl KernelVerdict {
    /// The answer for `list`.
    pub fn on(self, list: List) -> bool {
        match list {
            List::Allow => self.allow,
            List::Deny => self.deny,
        }
    }
}

/// The identifiers found in one request: every occurrence, without duplicates.
#[derive(Debug, Default)]
pub struct RequestIdents {
    /// Client address (socket peer, or the X-Forwarded-For hop the trusted proxies vouch for).
    pub ip: Option<IpAddr>,
    /// Session cookie values (name, value), validated.
    pub cookies: Vec<Identifier>,
    /// Bearer tokens.
    pub tokens: Vec<Identifier>,
    /// API keys: under their name, and as an any-name entry would match them.
    pub api_keys: Vec<(Identifier, Identifier)>,
    /// Usernames.
    pub usernames: Vec<Identifier>,
    /// The username came from a trusted proxy's header (a gateway), so it may vouch.
    pub username_vouched: bool,
}

impl RequestIdents {
    /// The non-IP identifiers present, each with whether it counts for the deny list only:
    /// its kind has several values in this request (an allow entry for one of them proves
    /// nothing), or it is a username the client itself wrote (its own header, or an
    /// unverified JWT claim) rather than a trusted gateway.
    pub fn idents(&self) -> impl Iterator<Item = (&Identifier, bool)> {
        let many = |n: usize| n > 1;
        let keys = self
            .api_keys
            .iter()
            .flat_map(|(named, any)| [named, any])
            .map(move |k| (k, many(self.api_keys.len())));
        self.cookies
            .iter()
            .map(move |c| (c, many(self.cookies.len())))
            .chain(
                self.tokens
                    .iter()
                    .map(move |t| (t, many(self.tokens.len()))),
            )
            .chain(keys)
            .chain(
                self.usernames
                    .iter()
                    .map(move |u| (u, !self.username_vouched || many(self.usernames.len()))),
            )
    }

    /// What the kernel twin says of this request's client address (nothing without one).
    pub fn kernel_verdict(&self, lists: &L7Lists) -> KernelVerdict {
        self.ip
            .map(|ip| lists.kernel_verdict(ip))
            .unwrap_or_default()
    }

    /// The [`l7_key`] of each of [`RequestIdents::idents`], in order: computed once per
    /// request, then used for both lists.
    pub fn keys(&self) -> Vec<(i64, i64)> {
        self.idents().map(|(i, _)| l7_key(i)).collect()
    }

    /// Whether an identifier of this request is on `list`; `keys` from
    /// [`RequestIdents::keys`], `kernel` the twin's [`L7Lists::kernel_verdict`] on the client
    /// address (both computed once per request). Any occurrence on the deny list counts; on
    /// the allow list, only identifiers that are not deny-only (see [`RequestIdents::idents`]).
    pub fn listed(
        &self,
        lists: &L7Lists,
        list: List,
        keys: &[(i64, i64)],
        kernel: KernelVerdict,
        api: &str,
        now: i64,
    ) -> Option<String> {
        if let Some(ip) = self.ip
            && (kernel.on(list) || lists.own_has_ip(list, ip, api, now))
        {
            return Some(format!("ip {ip}"));
        }
        self.idents()
            .zip(keys)
            .filter(|((_, deny_only), _)| list == List::Deny || !deny_only)
            .find(|(_, k)| lists.has_key(list, **k, api, now))
            .map(|((i, _), _)| i.to_string())
    }

    /// The most specific identifier to deny-list for a detection: token, then cookie, then
    /// API key, then the client IP.
    pub fn culprit(&self) -> Option<(Kind, Option<String>, String)> {
        if let Some(t) = self.tokens.first() {
            return Some((Kind::Token, None, t.value.clone()));
        }
        if let Some(c) = self.cookies.first() {
            return Some((Kind::Cookie, Some(c.name.clone()), c.value.clone()));
        }
        if let Some((k, _)) = self.api_keys.first() {
            return Some((Kind::ApiKey, Some(k.name.clone()), k.value.clone()));
        }
        self.ip.map(|ip| (Kind::Ip, None, ip.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unnamed identifier's row, scoped to `api` ("" = global).
    fn entry(list: List, kind: Kind, value: &str, api: &str, expires: Option<i64>) -> Entry {
        Entry {
            api: api.into(),
            expires,
            ..Entry::sample(list, kind, None, value)
        }
    }

    #[test]
    fn scopes_expiry_and_cidrs() {
        let mut l = L7Lists::from_entries(&[
            entry(List::Deny, Kind::Token, "t1", "", None),
            entry(List::Deny, Kind::Token, "t2", "shop", Some(100)),
            entry(List::Deny, Kind::Ip, "198.18.0.0/24", "", None),
            entry(List::Allow, Kind::Ip, "2001:db8::/32", "", None),
        ]);
        let t = |v: &str| Identifier::parse(Kind::Token, None, v).expect("valid");
        assert!(l.has(List::Deny, &t("t1"), "any", 0));
        assert!(l.has(List::Deny, &t("t2"), "shop", 50));
        assert!(!l.has(List::Deny, &t("t2"), "other", 50), "scoped to shop");
        assert!(!l.has(List::Deny, &t("t2"), "shop", 100), "expired");
        assert!(l.has_ip(List::Deny, "198.18.0.77".parse().expect("ip"), "x", 0));
        assert!(!l.has_ip(List::Deny, "198.18.1.77".parse().expect("ip"), "x", 0));
        assert!(l.has_ip(List::Allow, "2001:db8:1::1".parse().expect("ip"), "x", 0));
        let ip = Identifier::parse(Kind::Ip, None, "198.18.0.0/24").expect("ip");
        l.reset(List::Deny, &ip, &[]);
        assert!(!l.has_ip(List::Deny, "198.18.0.77".parse().expect("ip"), "x", 0));
        l.reset(List::Deny, &t("t1"), &[]);
        assert!(!l.has(List::Deny, &t("t1"), "any", 0));
    }

    #[test]
    fn global_ips_are_read_from_the_kernel_twin() {
        let table = SharedTable::default();
        let mut l = L7Lists::new(Some(table.clone()));
        let now = 1_000;
        l.add(&entry(List::Deny, Kind::Ip, "198.18.0.0/24", "", None));
        let ip: IpAddr = "198.18.0.77".parse().expect("ip");
        assert!(
            !l.has_ip(List::Deny, ip, "x", now),
            "a global IP row is not copied: the twin holds it"
        );
        let set = |list, cidr: &str, until| {
            let cidr: Cidr = cidr.parse().expect("cidr");
            let mut t = table.write().expect("lock");
            t.set(list, cidr, until).expect("set");
        };
        set(List::Deny, "198.18.0.0/24", Some(portcullis_common::NEVER));
        assert!(l.has_ip(List::Deny, ip, "x", now));
        assert!(!l.has_ip(List::Allow, ip, "x", now));
        set(
            List::Allow,
            "198.18.0.77/32",
            Some(portcullis_common::NEVER),
        );
        let v = l.kernel_verdict(ip);
        assert!(v.allow && v.deny, "both lists, as XDP sees them: {v:?}");
        set(List::Deny, "198.18.0.0/24", Some(1));
        assert!(
            !l.has_ip(List::Deny, ip, "x", now),
            "past the kernel deadline"
        );
        // IPv6 through the trie slots, with a short prefix that makes every lookup walk it.
        set(List::Deny, "2001:db8::/32", Some(portcullis_common::NEVER));
        set(List::Deny, "2000::/8", Some(portcullis_common::NEVER));
        let v6: IpAddr = "2001:db8::9".parse().expect("ip");
        assert!(l.has_ip(List::Deny, v6, "x", now));
        assert!(!l.has_ip(List::Deny, "3000::1".parse().expect("ip"), "x", now));
        // Per-API rows stay in this view, judged at `now`, and a reset drops them.
        let shop = entry(
            List::Deny,
            Kind::Ip,
            "198.18.1.0/24",
            "shop",
            Some(now + 10),
        );
        l.add(&shop);
        let other: IpAddr = "198.18.1.9".parse().expect("ip");
        assert!(
            l.has_ip(List::Deny, other, "shop", now),
            "scoped rows stay here"
        );
        assert!(!l.has_ip(List::Deny, other, "else", now));
        assert!(!l.has_ip(List::Deny, other, "shop", now + 10), "expired");
        l.reset(List::Deny, &shop.ident, &[]);
        assert!(!l.has_ip(List::Deny, other, "shop", now));
    }
}
