//! A brute-force model of the kernel's verdict, and random operation sequences to check the
//! real thing against it.
//!
//! The model is a plain list scan over integers, written independently of [`super::table`]: it
//! shares no mask, containment or deadline-merge code with what it checks, so a bug there cannot
//! hide in both. [`Chains`] draws operations over a few nested prefix chains (every length, both
//! families, allow and deny, single changes, batches, deadline changes and prunes), which is
//! where slot aggregation goes wrong. The unit tests and the privileged kernel tests
//! (`BPF_PROG_TEST_RUN`) use it; it is compiled only for tests (`cfg(test)` or the
//! `testkit` feature the test crate turns on), never into the production binary.

use std::net::IpAddr;

use crate::model::Cidr;
use crate::model::List;
use portcullis_common::NEVER;

/// xorshift64: deterministic, dependency-free randomness for property tests and benchmarks.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random value (never 0 for a non-zero seed).
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

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True once in `n` draws.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// One entry as the model holds it: plain integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefEntry {
    /// On the allow list (else deny).
    pub allow: bool,
    /// IPv6 (else IPv4, held in the low 32 bits).
    pub v6: bool,
    /// Network address.
    pub addr: u128,
    /// Prefix length.
    pub len: u8,
    /// Deadline (`CLOCK_BOOTTIME` ns, [`NEVER`] for none).
    pub until: u64,
}

impl RefEntry {
    fn covers(&self, v6: bool, ip: u128) -> bool {
        if self.v6 != v6 {
            return false;
        }
        let bits: u32 = if v6 { 128 } else { 32 };
        let keep = u32::from(self.len);
        if keep == 0 {
            return true;
        }
        // Equal top `len` bits: shift the rest away (written without any shared mask helper).
        let drop = bits - keep;
        (ip >> drop) == (self.addr >> drop)
    }
}

/// What the filter does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed, no live entry.
    Pass,
    /// Passed because a live allow entry covers it.
    Allowed,
    /// Dropped: a live deny entry covers it and no live allow entry does.
    Drop,
}

/// The allow and deny lists as a flat list of entries.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    entries: Vec<RefEntry>,
}

fn split(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn parts(cidr: &Cidr) -> (bool, u128, u8) {
    match *cidr {
        Cidr::V4 { addr, len } => (false, u128::from(addr), len),
        Cidr::V6 { addr, len } => (true, addr, len),
    }
}

impl Reference {
    /// Empty lists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `cidr` on `list` until `until`, or takes it off with `None` (one entry per list
    /// and CIDR, as the lists hold them).
    pub fn set(&mut self, list: List, cidr: Cidr, until: Option<u64>) {
        let (v6, addr, len) = parts(&cidr);
        let allow = list == List::Allow;
        self.entries
            .retain(|e| !(e.allow == allow && e.v6 == v6 && e.addr == addr && e.len == len));
        if let Some(until) = until.filter(|u| *u != 0) {
            self.entries.push(RefEntry {
                allow,
                v6,
                addr,
                len,
                until,
            });
        }
    }

    /// Every entry.
    pub fn entries(&self) -> &[RefEntry] {
        &self.entries
    }

    /// The entries as (list, CIDR, deadline).
    pub fn items(&self) -> Vec<(List, Cidr, u64)> {
        self.entries
            .iter()
            .map(|e| {
                let list = if e.allow { List::Allow } else { List::Deny };
                let cidr = if e.v6 {
                    Cidr::V6 {
                        addr: e.addr,
                        len: e.len,
                    }
                } else {
                    Cidr::V4 {
                        addr: e.addr as u32,
                        len: e.len,
                    }
                };
                (list, cidr, e.until)
            })
            .collect()
    }

    /// The latest (allow, deny) deadlines among the entries covering `ip` (0 = none).
    pub fn deadlines(&self, ip: IpAddr) -> (u64, u64) {
        let (v6, ip) = split(ip);
        let (mut allow, mut deny) = (0, 0);
        for e in self.entries.iter().filter(|e| e.covers(v6, ip)) {
            let d = if e.allow { &mut allow } else { &mut deny };
            if e.until > *d {
                *d = e.until;
            }
        }
        (allow, deny)
    }

    /// The verdict for `ip` at `now`.
    pub fn verdict(&self, ip: IpAddr, now: u64) -> Verdict {
        let (allow, deny) = self.deadlines(ip);
        if allow > now {
            Verdict::Allowed
        } else if deny > now {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }

    /// The entries whose deadline has passed at `now` (what the agent's pruner removes).
    pub fn expired(&self, now: u64) -> Vec<(List, Cidr, Option<u64>)> {
        self.items()
            .into_iter()
            .filter(|(_, _, u)| *u <= now)
            .map(|(l, c, _)| (l, c, None))
            .collect()
    }
}

/// One step of a sequence, in the calls the agent makes on the kernel layer.
#[derive(Clone, Debug)]
pub enum Op {
    /// One entry added or its deadline changed (`Filter::insert`).
    Insert(List, Cidr, u64),
    /// One entry removed (`Filter::remove`).
    Remove(List, Cidr),
    /// Several changes in one write (`Filter::apply_many`: imports, ABS syncs).
    Batch(Vec<(List, Cidr, Option<u64>)>),
    /// Every entry expired at this time removed in one batch (the pruner).
    Prune(u64),
}

impl Op {
    /// Applies the step to the model.
    pub fn apply_to(&self, model: &mut Reference) {
        match self {
            Op::Insert(l, c, u) => model.set(*l, *c, Some(*u)),
            Op::Remove(l, c) => model.set(*l, *c, None),
            Op::Batch(items) => {
                for (l, c, u) in items {
                    model.set(*l, *c, *u);
                }
            }
            Op::Prune(now) => {
                for (l, c, u) in model.expired(*now) {
                    model.set(l, c, u);
                }
            }
        }
    }

    /// The changes as (list, CIDR, deadline or removal), given the model before the step.
    pub fn changes(&self, model: &Reference) -> Vec<(List, Cidr, Option<u64>)> {
        match self {
            Op::Insert(l, c, u) => vec![(*l, *c, Some(*u))],
            Op::Remove(l, c) => vec![(*l, *c, None)],
            Op::Batch(items) => items.clone(),
            Op::Prune(now) => model.expired(*now),
        }
    }
}

/// Draws entries, probes and operations around a few nested prefix chains per family.
#[derive(Clone, Debug)]
pub struct Chains {
    v4: [u32; 3],
    v6: [u128; 3],
    /// Shortest IPv4 prefix drawn (a /0 rewrites 65 536 kernel slots: keep kernel runs fast).
    pub min_v4_len: u8,
}

impl Chains {
    /// Three chain bases per family, drawn from `rng`.
    pub fn new(rng: &mut Rng) -> Self {
        let mut v6 = || (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let v6 = [v6(), v6(), v6()];
        Self {
            v4: [rng.next() as u32, rng.next() as u32, rng.next() as u32],
            v6,
            min_v4_len: 0,
        }
    }

    /// An address on (or beside) one chain: a base with a random tail below a random prefix,
    /// and now and then one bit flipped above it (a sibling branch).
    fn address(&self, rng: &mut Rng, v6: bool) -> u128 {
        let bits: u32 = if v6 { 128 } else { 32 };
        let base = if v6 {
            self.v6[rng.below(3) as usize]
        } else {
            u128::from(self.v4[rng.below(3) as usize])
        };
        let keep = rng.below(u64::from(bits) + 1) as u32;
        let tail = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let low = if keep == bits {
            0
        } else {
            let below = bits - keep;
            let m = if below == 128 {
                u128::MAX
            } else {
                (1u128 << below) - 1
            };
            tail & m
        };
        let mut addr = if keep == 0 {
            low
        } else {
            ((base >> (bits - keep)) << (bits - keep)) | low
        };
        if keep > 0 && rng.one_in(4) {
            addr ^= 1u128 << (bits - 1 - rng.below(u64::from(keep)) as u32);
        }
        if !v6 {
            addr &= u128::from(u32::MAX);
        }
        addr
    }

    /// A CIDR on one of the chains, any length.
    pub fn cidr(&self, rng: &mut Rng) -> Cidr {
        let v6 = rng.one_in(2);
        let addr = self.address(rng, v6);
        let len = if v6 {
            rng.below(129) as u8
        } else if rng.one_in(8) {
            (u64::from(self.min_v4_len) + rng.below(u64::from(33 - self.min_v4_len))) as u8
        } else {
            (16.max(self.min_v4_len) as u64 + rng.below(u64::from(33 - 16.max(self.min_v4_len))))
                as u8
        };
        let ip = if v6 {
            IpAddr::V6(addr.into())
        } else {
            IpAddr::V4((addr as u32).into())
        };
        // Cidr::new clears the host bits; the length is in range by construction.
        Cidr::new(ip, len).unwrap_or(Cidr::v4_host(0))
    }

    /// A probe address: on a chain (inside some entries, beside others), or anywhere.
    pub fn probe(&self, rng: &mut Rng) -> IpAddr {
        let v6 = rng.one_in(2);
        if rng.one_in(10) {
            return if v6 {
                IpAddr::V6(((u128::from(rng.next()) << 64) | u128::from(rng.next())).into())
            } else {
                IpAddr::V4((rng.next() as u32).into())
            };
        }
        let addr = self.address(rng, v6);
        if v6 {
            IpAddr::V6(addr.into())
        } else {
            IpAddr::V4((addr as u32).into())
        }
    }

    /// A deadline: mostly none, some far, some already past, some expiring within `soon_ns`.
    fn until(&self, rng: &mut Rng, now: u64, soon_ns: u64) -> u64 {
        match rng.below(10) {
            0..=4 => NEVER,
            5 | 6 => now + 3_600_000_000_000,
            7 => now.saturating_sub(1 + rng.below(1_000_000)).max(1),
            _ => now + 1 + rng.below(soon_ns.max(1)),
        }
    }

    fn list(rng: &mut Rng) -> List {
        // Sparse allow lists: most probes must be able to end in a drop or a plain pass.
        if rng.one_in(4) {
            List::Allow
        } else {
            List::Deny
        }
    }

    /// The next operation at time `now`, given the current model (to remove or re-time
    /// existing entries). `soon_ns` bounds the short deadlines, so some entries expire while
    /// the sequence runs.
    pub fn op(&self, rng: &mut Rng, model: &Reference, now: u64, soon_ns: u64) -> Op {
        let existing = model.items();
        let pick = |rng: &mut Rng| {
            (!existing.is_empty()).then(|| existing[rng.below(existing.len() as u64) as usize])
        };
        match rng.below(20) {
            0..=7 => Op::Insert(
                Self::list(rng),
                self.cidr(rng),
                self.until(rng, now, soon_ns),
            ),
            8..=11 => match pick(rng) {
                Some((l, c, _)) => Op::Remove(l, c),
                None => Op::Remove(Self::list(rng), self.cidr(rng)),
            },
            12 | 13 => match pick(rng) {
                Some((l, c, _)) => Op::Insert(l, c, self.until(rng, now, soon_ns)),
                None => Op::Prune(now),
            },
            14..=17 => {
                let n = 2 + rng.below(12);
                let items = (0..n)
                    .map(|_| match (rng.one_in(3), pick(rng)) {
                        (true, Some((l, c, _))) => (l, c, None),
                        _ => (
                            Self::list(rng),
                            self.cidr(rng),
                            Some(self.until(rng, now, soon_ns)),
                        ),
                    })
                    .collect();
                Op::Batch(items)
            }
            _ => Op::Prune(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn model_answers_by_hand_examples() {
        let mut m = Reference::new();
        let c = |s: &str| s.parse::<Cidr>().expect("test cidr");
        m.set(List::Deny, c("10.0.0.0/8"), Some(NEVER));
        m.set(List::Allow, c("10.1.0.0/16"), Some(50));
        m.set(List::Deny, c("2001:db8:10::/48"), Some(NEVER));
        m.set(List::Allow, c("2001:db8::/32"), Some(NEVER));
        m.set(List::Deny, c("0.0.0.0/0"), Some(7));
        assert_eq!(m.verdict(ip("10.2.3.4"), 0), Verdict::Drop);
        assert_eq!(m.verdict(ip("10.1.3.4"), 10), Verdict::Allowed);
        assert_eq!(m.verdict(ip("10.1.3.4"), 50), Verdict::Drop);
        assert_eq!(m.verdict(ip("11.0.0.1"), 6), Verdict::Drop);
        assert_eq!(m.verdict(ip("11.0.0.1"), 7), Verdict::Pass);
        assert_eq!(m.verdict(ip("2001:db8:10::2"), 0), Verdict::Allowed);
        assert_eq!(m.verdict(ip("2001:db9::1"), 0), Verdict::Pass);
        assert_eq!(m.deadlines(ip("10.1.0.1")), (50, NEVER));
        m.set(List::Allow, c("2001:db8::/32"), None);
        assert_eq!(m.verdict(ip("2001:db8:10::2"), 0), Verdict::Drop);
        assert_eq!(m.entries().len(), 4);
    }

    #[test]
    fn chains_draw_nested_prefixes_and_all_outcomes() {
        let mut rng = Rng(7);
        let chains = Chains::new(&mut rng);
        let mut model = Reference::new();
        for _ in 0..300 {
            chains.op(&mut rng, &model, 1000, 100).apply_to(&mut model);
        }
        // Some entry lies inside another of the same family: chains nest.
        let e = model.entries();
        let nested = e.iter().any(|a| {
            e.iter()
                .any(|b| a != b && a.len < b.len && a.covers(b.v6, b.addr))
        });
        assert!(nested, "no nested prefixes among {} entries", e.len());
        let mut seen = [0; 3];
        for _ in 0..2000 {
            let v = model.verdict(chains.probe(&mut rng), 1000);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 20), "outcomes {seen:?}");
    }
}
