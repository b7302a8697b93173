//! Which allow and deny entries traffic actually hits, and when it last did. The XDP program
//! counts packets and bytes per deciding *slot* (kernel map `HITS`, keyed by the slot's
//! prefix and the list that decided the packet); each second the agent reads the counters,
//! takes what every key gained since the previous read and credits it to the most specific
//! entry of that list covering the key. Counts are exact while a key stays in the kernel map
//! between two reads; a key evicted by [`portcullis_common::HITS_CAPACITY`] other slots seen
//! within one second loses what it gained since the last read, and up to its last total if it
//! comes back and passes that total within three reads (a baseline outlives a read that
//! misses its key, which a walk of a changing map can do). Totals start at zero with the agent:
//! what the pinned map counted before is the baseline, not a hit.

use std::collections::HashMap;

use portcullis_common::{Counter, DropEvent, HitKey, family, hit_list};

use super::Service;
use crate::control::answer::EntryHits;
use crate::kernel::IpTable;
use crate::model::{Cidr, List};

/// Entries tracked at most: a flood spread over a million listed addresses must not grow
/// the agent without bound (the rest are counted as untracked).
const TRACKED: usize = 65_536;

/// Packets, bytes and the last read that saw them grow, per entry.
#[derive(Clone, Copy, Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    last_hit: i64,
}

/// The kernel counters as last read, and what they added up to per entry.
#[derive(Default)]
pub struct Hits {
    /// Totals per kernel key at the last read that saw it (a key's count only grows while
    /// it stays), and how many reads since have missed it: a walk of a map that changes
    /// under it may miss a key that is there, whose total must not be credited again.
    seen: HashMap<HitKey, (Counter, u32)>,
    by_entry: HashMap<(List, Cidr), Tally>,
    /// Packets not credited to an entry: the table was full, or the entry was removed
    /// before the read.
    untracked: u64,
}

impl Hits {
    /// Counting from now: the counters a previous agent left in the pinned map are the
    /// baseline (crediting them would show entries idle for weeks as hit a second ago).
    pub fn since(filter: Option<&crate::kernel::Filter>) -> Self {
        let seen = match filter.map(crate::kernel::Filter::hit_counts) {
            Some(Ok(c)) => c.into_iter().map(|(k, t)| (k, (t, 0))).collect(),
            Some(Err(e)) => {
                tracing::warn!(
                    "reading the hit counters failed: {e}; what they counted before this start may show as new hits"
                );
                HashMap::new()
            }
            None => HashMap::new(),
        };
        Self {
            seen,
            ..Self::default()
        }
    }

    /// Forgets the tallies of entries no longer on their list (expired, removed, replaced
    /// by a feed), so churn does not fill the table.
    fn forget_unlisted(&mut self, table: &IpTable, now: u64) {
        self.by_entry
            .retain(|(list, c), _| listed(table, *list, c, now));
    }
}

/// Whether `entry` is on `list` in `table` and not expired at `now` (boot-time ns, the
/// kernel's clock: an entry the agent has not pruned yet no longer decides anything).
fn listed(table: &IpTable, list: List, entry: &Cidr, now: u64) -> bool {
    let d = table.entry(entry);
    match list {
        List::Allow => d.allow_until > now,
        List::Deny => d.deny_until > now,
    }
}

/// Reads a baseline survives without being seen (then the key is taken as evicted).
const MISSES: u32 = 3;

/// The prefix a kernel key stands for.
fn key_prefix(k: &HitKey) -> Option<Cidr> {
    let ip = if k.family == family::V4 {
        std::net::IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
    } else {
        std::net::IpAddr::from(k.addr)
    };
    Cidr::new(ip, u8::try_from(k.prefix_len).ok()?).ok()
}

/// The most specific entry of `list` in `table` that covers all of `prefix` (probing each
/// shorter length: at most 33 or 129 hash lookups, whatever the table's size).
pub fn covering(table: &IpTable, list: List, prefix: &Cidr, now: u64) -> Option<Cidr> {
    let (Cidr::V4 { len, .. } | Cidr::V6 { len, .. }) = *prefix;
    (0..=len)
        .rev()
        .filter_map(|l| Cidr::new(prefix.network(), l).ok())
        .find(|c| listed(table, list, c, now))
}

impl Service {
    /// Drains the kernel's drop samples and matches each to its deny entry (for the event
    /// stream and the log); reads the hit counters while at it.
    pub fn drain_drops(&mut self) -> Vec<(DropEvent, Option<Cidr>)> {
        self.harvest_hits();
        let Some(f) = self.filter.as_mut() else {
            return Vec::new();
        };
        let drained = f.drain_events().unwrap_or_default();
        let table = f.table();
        drained
            .into_iter()
            .map(|e| {
                let matched = crate::events::matched_deny(&table, crate::events::drop_source(&e));
                (e, matched)
            })
            .collect()
    }

    /// Reads the kernel's hit counters and credits what each slot gained since the last
    /// read to the entry that owns it.
    pub fn harvest_hits(&mut self) {
        // Off: the kernel counts nothing, and a big host's read is not free.
        let Some(f) = self.filter.as_ref().filter(|_| self.config.hit_counters) else {
            return;
        };
        let counts = match f.hit_counts() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading the hit counters failed: {e}");
                return;
            }
        };
        let table = f.table();
        let now = super::unix_now();
        let boot = crate::kernel::sys::boottime_ns();
        let hits = &mut self.hits;
        if hits.by_entry.len() >= TRACKED / 4 * 3 {
            hits.forget_unlisted(&table, boot);
        }
        // Keys this read missed keep their baseline a few reads.
        let mut seen: HashMap<HitKey, (Counter, u32)> = hits
            .seen
            .drain()
            .filter(|(_, (_, missed))| *missed < MISSES)
            .map(|(k, (t, missed))| (k, (t, missed + 1)))
            .collect();
        for (key, total) in counts {
            let before = seen.get(&key).map(|(t, _)| *t).unwrap_or_default();
            // A smaller total: the key was evicted and came back, counting from zero.
            let gained = if total.packets >= before.packets {
                Counter {
                    packets: total.packets - before.packets,
                    bytes: total.bytes.saturating_sub(before.bytes),
                }
            } else {
                total
            };
            seen.insert(key, (total, 0));
            if gained.packets == 0 {
                continue;
            }
            let list = if key.list == hit_list::ALLOW {
                List::Allow
            } else {
                List::Deny
            };
            let Some(entry) = key_prefix(&key).and_then(|p| covering(&table, list, &p, boot))
            else {
                hits.untracked += gained.packets;
                continue;
            };
            let full = hits.by_entry.len() >= TRACKED;
            match hits.by_entry.get_mut(&(list, entry)) {
                Some(t) => {
                    t.packets += gained.packets;
                    t.bytes += gained.bytes;
                    t.last_hit = now;
                }
                None if !full => {
                    hits.by_entry.insert(
                        (list, entry),
                        Tally {
                            packets: gained.packets,
                            bytes: gained.bytes,
                            last_hit: now,
                        },
                    );
                }
                None => hits.untracked += gained.packets,
            }
        }
        hits.seen = seen;
    }

    /// Packets counted by the kernel but credited to no entry (see [`Hits`]).
    pub fn hits_untracked(&self) -> u64 {
        self.hits.untracked
    }

    /// The entries of `list` hit since the agent started, most hit first (at most `limit`);
    /// entries no longer on the list are left out.
    pub fn entry_hits(&self, list: List, limit: usize) -> Vec<EntryHits> {
        let Some(f) = self.filter.as_ref() else {
            return Vec::new();
        };
        let table = f.table();
        let boot = crate::kernel::sys::boottime_ns();
        let mut v: Vec<EntryHits> = self
            .hits
            .by_entry
            .iter()
            .filter(|((l, c), _)| *l == list && listed(&table, list, c, boot))
            .map(|((_, c), t)| EntryHits {
                entry: c.to_string(),
                packets: t.packets,
                bytes: t.bytes,
                last_hit: t.last_hit,
            })
            .collect();
        v.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.entry.cmp(&b.entry)));
        v.truncate(limit);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_common::NEVER;

    fn c(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    fn key(addr: [u8; 4], prefix_len: u32) -> HitKey {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        HitKey {
            addr: a,
            prefix_len,
            family: family::V4,
            list: hit_list::DENY,
            reserved: 0,
        }
    }

    #[test]
    fn a_slot_is_credited_to_the_most_specific_entry_covering_all_of_it() {
        let mut t = IpTable::default();
        for (list, e) in [
            (List::Deny, "10.0.0.0/8"),
            (List::Deny, "10.1.0.0/16"),
            (List::Deny, "10.1.2.0/23"),
            (List::Deny, "10.1.2.128/25"),
            (List::Allow, "10.1.2.7"),
        ] {
            t.set(list, c(e), Some(NEVER)).expect("fits");
        }
        let credit = |k: HitKey, list| key_prefix(&k).and_then(|p| covering(&t, list, &p, 1));
        // A /24 slot: the /23 covers it; the /25 inside it does not cover all of it.
        assert_eq!(
            credit(key([10, 1, 2, 0], 24), List::Deny),
            Some(c("10.1.2.0/23"))
        );
        assert_eq!(
            credit(key([10, 1, 2, 200], 32), List::Deny),
            Some(c("10.1.2.128/25"))
        );
        assert_eq!(
            credit(key([10, 1, 0, 0], 16), List::Deny),
            Some(c("10.1.0.0/16"))
        );
        assert_eq!(
            credit(key([10, 9, 0, 0], 16), List::Deny),
            Some(c("10.0.0.0/8"))
        );
        // An allow hit goes to the allow entry even where deny entries are more specific.
        assert_eq!(
            credit(key([10, 1, 2, 7], 32), List::Allow),
            Some(c("10.1.2.7/32"))
        );
        // A removed entry leaves its slot uncredited, and a bad key is no entry at all.
        assert_eq!(credit(key([11, 0, 0, 0], 16), List::Deny), None);
        assert_eq!(credit(key([10, 1, 2, 0], 40), List::Deny), None);
        // An expired entry no longer decides: the broader live one gets the credit.
        t.set(List::Deny, c("10.1.2.0/23"), Some(5)).expect("fits");
        assert_eq!(
            key_prefix(&key([10, 1, 2, 0], 24)).and_then(|p| covering(&t, List::Deny, &p, 10)),
            Some(c("10.1.0.0/16"))
        );
    }
}
