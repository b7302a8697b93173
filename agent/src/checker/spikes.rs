//! Per-client request counts for `client_spike_threshold`: bounded memory, O(1) per request,
//! whatever the number of clients.
//!
//! A set-associative table: a keyed hash of (API, client) picks one of [`SETS`] sets of
//! [`WAYS`] windows, each behind its own lock. A client takes the slot holding its tag, or
//! an expired one, or the set's lightest window. Under more than `SETS × WAYS` active clients
//! per window some windows restart early — counting too little, never blaming an honest
//! client for another's requests. The hash key is random per process, so clients cannot aim
//! at one set.

use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sets in the table.
const SETS: usize = 16_384;
/// Windows per set.
const WAYS: usize = 4;

#[derive(Clone, Copy)]
struct Window {
    tag: u64,
    start: Instant,
    count: u32,
}

/// Request windows of every (API, client) pair, shared by the checker's workers.
pub struct Spikes {
    sets: Vec<Mutex<[Option<Window>; WAYS]>>,
    keys: std::collections::hash_map::RandomState,
}

impl Default for Spikes {
    fn default() -> Self {
        Self {
            sets: (0..SETS).map(|_| Mutex::new([None; WAYS])).collect(),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Spikes {
    /// Counts one request of `client` on `api`; true when it is past `limit` requests in the
    /// current window of `per`.
    pub fn over(&self, api: &str, client: IpAddr, limit: u32, per: Duration) -> bool {
        let mut h = self.keys.build_hasher();
        api.hash(&mut h);
        client.hash(&mut h);
        let hash = h.finish();
        let tag = hash | 1; // never 0
        let set = &self.sets[(hash >> 32) as usize % SETS];
        let mut ways = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let live = |w: &Window| now.duration_since(w.start) < per;
        let slot = match ways.iter().position(|w| w.is_some_and(|w| w.tag == tag)) {
            Some(i) => i,
            None => ways
                .iter()
                .position(|w| w.is_none_or(|w| !live(&w)))
                .unwrap_or_else(|| {
                    // The lightest window goes: evicting the busiest would free the clients
                    // closest to their limit.
                    (0..WAYS)
                        .min_by_key(|i| ways[*i].map(|w| w.count))
                        .unwrap_or(0)
                }),
        };
        let w = match ways[slot] {
            Some(w) if w.tag == tag && live(&w) => Window {
                count: w.count.saturating_add(1),
                ..w
            },
            _ => Window {
                tag,
                start: now,
                count: 1,
            },
        };
        ways[slot] = Some(w);
        w.count > limit
    }
}

/// The key a client's connections (and request rate) are counted under: the address, IPv6
/// by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_window_and_stays_bounded() {
        let s = Spikes::default();
        let a: IpAddr = "198.18.0.1".parse().expect("ip");
        let b: IpAddr = "198.18.0.2".parse().expect("ip");
        let per = Duration::from_millis(200);
        assert!((0..3).all(|_| !s.over("shop", a, 3, per)));
        assert!(s.over("shop", a, 3, per), "fourth in the window");
        assert!(
            !s.over("shop", b, 3, per),
            "another client has its own count"
        );
        assert!(!s.over("cart", a, 3, per), "and another API");
        std::thread::sleep(per);
        assert!(!s.over("shop", a, 3, per), "a new window");
        // A million clients: memory stays the table's, every call O(1).
        for i in 0..1_000_000u32 {
            let _ = s.over("shop", IpAddr::V4(i.into()), 3, per);
        }
        assert_eq!(s.sets.len(), SETS);
    }
}
