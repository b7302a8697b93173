//! What `status` reports about the lists, kept up to date by the list writer and readable
//! without it: `status` answers at once even while a million-line import holds the writer,
//! and neither it nor a metrics scrape scans the database (a `GROUP BY` over millions of rows
//! took seconds).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::config::Mode;
use crate::control::answer::{AbsState, Interface, ListCount, Status};
use crate::model::{Entry, Kind, List};

const KINDS: [Kind; 5] = [
    Kind::Ip,
    Kind::Cookie,
    Kind::Token,
    Kind::ApiKey,
    Kind::Username,
];

/// Rows by source, then by list and kind (`list * 5 + kind`): counting a row allocates
/// nothing unless its source is new.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(HashMap<String, [u64; 10]>);

fn slot(list: List, kind: Kind) -> usize {
    let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
    usize::from(list == List::Deny) * KINDS.len() + k
}

impl Counts {
    /// From the store's `(list, kind, source, count)` rows.
    pub fn from_rows(rows: &[(List, Kind, String, u64)]) -> Self {
        let mut c = Self::default();
        for (list, kind, source, n) in rows {
            c.0.entry(source.clone()).or_default()[slot(*list, *kind)] += n;
        }
        c
    }

    /// One more row.
    pub fn add(&mut self, e: &Entry) {
        let s = slot(e.list, e.ident.kind);
        match self.0.get_mut(e.source.as_str()) {
            Some(v) => v[s] += 1,
            None => self.0.entry(e.source.to_string()).or_default()[s] += 1,
        }
    }

    /// One row fewer (a source with no rows left is forgotten).
    pub fn remove(&mut self, e: &Entry) {
        if let Some(v) = self.0.get_mut(e.source.as_str()) {
            let s = slot(e.list, e.ident.kind);
            v[s] = v[s].saturating_sub(1);
            if v.iter().all(|n| *n == 0) {
                self.0.remove(e.source.as_str());
            }
        }
    }

    /// Adds another set of counts (built outside the board's lock).
    pub fn merge(&mut self, other: Counts) {
        for (source, v) in other.0 {
            let mine = self.0.entry(source).or_default();
            for (m, n) in mine.iter_mut().zip(v) {
                *m += n;
            }
        }
    }

    /// Non-zero counts in the order the store lists them: list, kind and source by name.
    pub fn rows(&self) -> Vec<(List, Kind, String, u64)> {
        let mut out: Vec<(List, Kind, String, u64)> = self
            .0
            .iter()
            .flat_map(|(source, v)| {
                [List::Allow, List::Deny].into_iter().flat_map(move |list| {
                    KINDS.into_iter().filter_map(move |kind| {
                        let n = v[slot(list, kind)];
                        (n > 0).then(|| (list, kind, source.clone(), n))
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (a.0.as_str(), a.1.as_str(), &a.2).cmp(&(b.0.as_str(), b.1.as_str(), &b.2))
        });
        out
    }
}

/// The status board: list sizes and the agent's fixed facts.
pub struct Board {
    counts: Mutex<Counts>,
    kernel_ip_entries: AtomicUsize,
    mode: Mutex<Mode>,
    interfaces: Mutex<Vec<Interface>>,
    abs: Mutex<Option<Arc<Mutex<AbsState>>>>,
    fleet: Mutex<Option<Arc<crate::fleet::Shared>>>,
    pin_dir: PathBuf,
    database: PathBuf,
    started: Instant,
    switches: Arc<super::Switches>,
    credentials: Arc<super::Credentials>,
}

impl Board {
    /// A board for an agent with these paths.
    pub fn new(
        pin_dir: PathBuf,
        database: PathBuf,
        switches: Arc<super::Switches>,
        credentials: Arc<super::Credentials>,
    ) -> Self {
        Self {
            switches,
            credentials,
            counts: Mutex::default(),
            kernel_ip_entries: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Enforce),
            interfaces: Mutex::default(),
            abs: Mutex::default(),
            fleet: Mutex::default(),
            pin_dir,
            database,
            started: Instant::now(),
        }
    }

    /// Changes the counts (the writer, after each store write).
    pub fn counts_mut<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        f(&mut self.counts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The counts as `(list, kind, source, count)` rows.
    pub fn counts(&self) -> Vec<(List, Kind, String, u64)> {
        self.counts_mut(|c| c.rows())
    }

    /// How many IP entries the kernel twin holds.
    pub fn set_kernel_ip_entries(&self, n: usize) {
        self.kernel_ip_entries.store(n, Ordering::Relaxed);
    }

    /// The filter's mode, as set at start.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// The interfaces the filter was put on, and whether it is still there.
    pub fn set_interfaces(&self, interfaces: &super::links::Interfaces) {
        let v = interfaces
            .values()
            .map(|i| super::views::interface(&i.attached, i.detached))
            .collect();
        *self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = v;
    }

    /// The ABS feed's state, which status shows.
    pub fn set_abs(&self, abs: Option<Arc<Mutex<AbsState>>>) {
        *self.abs.lock().unwrap_or_else(PoisonError::into_inner) = abs;
    }

    /// The fleet engine's state, which status shows.
    pub fn set_fleet(&self, fleet: Arc<crate::fleet::Shared>) {
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = Some(fleet);
    }

    /// No fleet any more (a reload removed `[fleet]`).
    pub fn clear_fleet(&self) {
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The fleet engine's state, when a fleet is configured.
    pub fn fleet(&self) -> Option<crate::control::answer::FleetState> {
        self.fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|f| f.state())
    }

    /// The ABS feed's state, when one is configured.
    pub fn abs(&self) -> Option<AbsState> {
        self.abs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|a| a.lock().ok().map(|s| s.clone()))
    }

    /// Everything `status` answers.
    pub fn status(&self) -> Status {
        let fleet = self.fleet();
        let abs = self.abs();
        let lists = self
            .counts()
            .into_iter()
            .map(|(list, kind, source, count)| ListCount {
                list,
                kind,
                source,
                count,
            })
            .collect();
        Status {
            mode: *self.mode.lock().unwrap_or_else(PoisonError::into_inner),
            interfaces: self
                .interfaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            pin_dir: self.pin_dir.clone(),
            database: self.database.clone(),
            lists,
            kernel_ip_entries: self.kernel_ip_entries.load(Ordering::Relaxed),
            abs,
            fleet,
            uptime_secs: self.started.elapsed().as_secs(),
            detections: self.switches.detections(),
            abs_blocking: self.switches.abs(),
            api_blocking: self.switches.api_blocking(),
        }
    }

    /// Sideband tokens and the REST secret (see `service::credentials`).
    pub fn credentials(&self) -> &Arc<super::Credentials> {
        &self.credentials
    }

    /// ASE's switches (see `service::switches`).
    pub fn switches(&self) -> &Arc<super::Switches> {
        &self.switches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_rows_in_store_order() {
        let t = Entry::sample(List::Deny, Kind::Token, None, "t");
        let ip = Entry::sample(List::Allow, Kind::Ip, None, "198.18.0.1");
        let abs = Entry {
            source: crate::model::Source::Abs,
            ..Entry::sample(List::Deny, Kind::ApiKey, Some("k"), "v")
        };
        let mut c = Counts::default();
        for e in [&t, &t, &ip, &abs] {
            c.add(e);
        }
        c.remove(&t);
        c.remove(&ip);
        c.remove(&ip);
        assert_eq!(
            c.rows(),
            vec![
                (List::Deny, Kind::ApiKey, "abs".into(), 1),
                (List::Deny, Kind::Token, "manual".into(), 1),
            ]
        );
        assert_eq!(Counts::from_rows(&c.rows()), c);
    }
}
