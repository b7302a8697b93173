//! Per-client windows of counted state, shared by the checker's workers: bounded memory and
//! O(1) per use, whatever the number of clients.
//!
//! A set-associative table: a keyed hash of the key picks one of `sets` sets of [`WAYS`]
//! windows, each set behind its own lock. A key takes the slot holding its tag, or an
//! expired one, or the set's lightest window ([`WindowState::weight`]). Under more active
//! keys than slots, some windows restart early — counting too little, never charging one
//! client for another's doing. The hash key is random per process, so clients cannot aim at
//! one set.

use std::hash::{BuildHasher as _, Hash};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Windows per set.
const WAYS: usize = 4;

/// What a window counts.
pub trait WindowState: Copy + Default {
    /// How much the window holds: a full set gives up its lightest one (evicting the
    /// heaviest would free the clients closest to their limit).
    fn weight(&self) -> u32;
}

#[derive(Clone, Copy)]
struct Window<S> {
    tag: u64,
    start: Instant,
    state: S,
}

/// A window of `S` per key.
pub struct Windows<S> {
    sets: Vec<Mutex<[Option<Window<S>>; WAYS]>>,
    keys: std::collections::hash_map::RandomState,
}

impl<S: WindowState> Windows<S> {
    /// A table of `sets × 4` windows.
    pub fn new(sets: usize) -> Self {
        Self {
            sets: (0..sets.max(1)).map(|_| Mutex::new([None; WAYS])).collect(),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Runs `f` on `key`'s window of `per`: a fresh one when its window has passed (or the
    /// table had to give it up).
    pub fn with<R>(&self, key: impl Hash, per: Duration, f: impl FnOnce(&mut S) -> R) -> R {
        let hash = self.keys.hash_one(key);
        let tag = hash | 1; // never 0
        let set = &self.sets[(hash >> 32) as usize % self.sets.len()];
        let mut ways = set.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let live = |w: &Window<S>| now.duration_since(w.start) < per;
        let slot = match ways.iter().position(|w| w.is_some_and(|w| w.tag == tag)) {
            Some(i) => i,
            None => ways
                .iter()
                .position(|w| w.is_none_or(|w| !live(&w)))
                .unwrap_or_else(|| {
                    (0..WAYS)
                        .min_by_key(|i| ways[*i].map(|w| w.state.weight()))
                        .unwrap_or(0)
                }),
        };
        let mut w = match ways[slot] {
            Some(w) if w.tag == tag && live(&w) => w,
            _ => Window {
                tag,
                start: now,
                state: S::default(),
            },
        };
        let r = f(&mut w.state);
        ways[slot] = Some(w);
        r
    }

    /// How many sets the table has (its memory is fixed by it).
    pub fn sets(&self) -> usize {
        self.sets.len()
    }
}
