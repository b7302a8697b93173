//! The reference verdict: brute force over the entries, no clever layout.
//!
//! An address is allowed if any unexpired allow entry covers it; otherwise dropped if any
//! unexpired deny entry covers it. Per list this equals a longest-prefix match over the
//! unexpired entries.

use std::net::IpAddr;

use portcullis::cidr::Cidr;
use portcullis::kernel::List;

/// What the filter should do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed, no entry.
    Pass,
    /// Passed because allowed.
    Allowed,
    /// Dropped.
    Drop,
}

/// The brute-force verdict for `ip` at time `now`.
pub fn verdict(entries: &[(List, Cidr, u64)], ip: IpAddr, now: u64) -> Verdict {
    let live = |l: List| {
        entries
            .iter()
            .any(|(list, c, until)| *list == l && *until > now && c.contains(ip))
    };
    if live(List::Allow) {
        Verdict::Allowed
    } else if live(List::Deny) {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// xorshift64: deterministic randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random value.
    #[expect(
        clippy::should_implement_trait,
        reason = "an endless generator, not an iterator"
    )]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
