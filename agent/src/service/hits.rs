//! Which deny entries traffic actually hits, and when it last did, from the kernel's drop
//! samples (one drop in `drop_sample_every`): each sample is matched to the most specific
//! deny entry covering its source and counts for `drop_sample_every` packets. The XDP
//! program is untouched (its hit and miss paths cost what they did); the counts are
//! estimates that start at zero with the agent, and allow entries, which pass packets that
//! are never sampled, have none.

use std::collections::HashMap;

use portcullis_common::DropEvent;

use super::Service;
use crate::control::answer::EntryHits;
use crate::model::Cidr;

/// Entries tracked at most: a flood spread over a million listed addresses must not grow
/// the agent without bound (the rest are counted as untracked).
const TRACKED: usize = 65_536;

/// Estimated packets and the last sample, per deny entry.
#[derive(Default)]
pub struct Hits {
    by_entry: HashMap<Cidr, (u64, i64)>,
    /// Samples whose entry could not be tracked (table full).
    pub untracked: u64,
}

impl Service {
    /// Drains the kernel's drop samples, matches each to its deny entry and counts it.
    pub fn drain_drops(&mut self) -> Vec<(DropEvent, Option<Cidr>)> {
        let every = u64::from(self.config.drop_sample_every);
        let Some(f) = self.filter.as_mut() else {
            return Vec::new();
        };
        let drained = f.drain_events().unwrap_or_default();
        let table = f.table();
        let now = super::unix_now();
        let mut out = Vec::with_capacity(drained.len());
        for e in drained {
            let matched = crate::events::matched_deny(&table, crate::events::drop_source(&e));
            if let Some(c) = matched {
                let full = self.hits.by_entry.len() >= TRACKED;
                match self.hits.by_entry.get_mut(&c) {
                    Some((n, last)) => {
                        *n += every;
                        *last = now;
                    }
                    None if !full => {
                        self.hits.by_entry.insert(c, (every, now));
                    }
                    None => self.hits.untracked += 1,
                }
            }
            out.push((e, matched));
        }
        out
    }

    /// The deny entries hit since the agent started, most hit first (at most `limit`);
    /// entries no longer on the deny list are left out.
    pub fn deny_hits(&self, limit: usize) -> Vec<EntryHits> {
        let Some(f) = self.filter.as_ref() else {
            return Vec::new();
        };
        let table = f.table();
        let mut v: Vec<EntryHits> = self
            .hits
            .by_entry
            .iter()
            .filter(|(c, _)| table.entry(c).deny_until != 0)
            .map(|(c, (n, last))| EntryHits {
                entry: c.to_string(),
                packets: *n,
                last_hit: *last,
            })
            .collect();
        v.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.entry.cmp(&b.entry)));
        v.truncate(limit);
        v
    }
}
