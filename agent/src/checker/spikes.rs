//! Per-client request counts for `client_spike_threshold`: bounded memory, O(1) per request,
//! whatever the number of clients (a [`Windows`] table).

use std::net::IpAddr;
use std::time::Duration;

use super::windows::{WindowState, Windows};

/// Sets in the table (four windows each).
const SETS: usize = 16_384;

impl WindowState for u32 {
    fn weight(&self) -> u32 {
        *self
    }
}

/// Request windows of every (API, client) pair, shared by the checker's workers.
pub struct Spikes(Windows<u32>);

impl Default for Spikes {
    fn default() -> Self {
        Self(Windows::new(SETS))
    }
}

impl Spikes {
    /// Counts one request of `client` on `api`; true when it is past `limit` requests in the
    /// current window of `per`.
    pub fn over(&self, api: &str, client: IpAddr, limit: u32, per: Duration) -> bool {
        self.0.with((api, client), per, |n| {
            *n = n.saturating_add(1);
            *n > limit
        })
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
        assert_eq!(s.0.sets(), SETS);
    }
}
