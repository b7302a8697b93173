//! What detections may write. Without a bound, a client that rotates tokens (or cookies, or
//! keys) on refused requests adds a deny row, a kernel write and an fsync per request and is
//! never blocked itself; and a flood of detections would keep the list writer from ABS
//! syncs and operators.
//!
//! Per client (an address; IPv6 by /64) and [`WINDOW`]:
//! - after `escalate_after` distinct identifiers detected (0: never), the next detection
//!   denies the client's address instead (an IPv6 client's /64): one row ends the rotation;
//!   where the address cannot be denied (a gateway's, this host's), the identifiers go on
//!   being denied one by one;
//! - at most `per_client` rows are written;
//!
//! and at most `total` rows per window from all clients together. A detection over budget
//! is refused as usual but not written: it is counted (`detection_over_budget`) and said in
//! the log once per client and window (and once per window for the total).

use std::hash::{BuildHasher as _, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::spikes::client_key;
use super::windows::{WindowState, Windows};
use crate::model::Kind;

/// The window budgets count in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most distinct identifiers remembered per client and window (the largest
/// `detection_escalate_after`; 0 turns escalation off).
pub const MAX_ESCALATE_AFTER: u8 = 8;
/// Sets in the per-client table (four clients each).
const SETS: usize = 4096;

/// The budgets (`[checker]` settings).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Distinct identifiers from one client before its address is denied instead (0: never).
    pub escalate_after: u8,
    /// Rows one client's detections may write per window.
    pub per_client: u16,
    /// Rows all detections together may write per window.
    pub total: u32,
}

/// What one detection's culprit is: `(kind, name, value)`.
pub type Culprit = (Kind, Option<String>, String);

/// What to do with a detection.
#[derive(Debug, PartialEq, Eq)]
pub enum Spend {
    /// Deny-list the culprit.
    Write(Culprit),
    /// Deny-list the client's address (IPv6: its /64), `address`: it has rotated
    /// identifiers. Should the address be refused, deny `culprit` and say
    /// [`Budget::cannot_escalate`].
    Escalate {
        /// The client's address or /64.
        address: Culprit,
        /// What the detection found.
        culprit: Culprit,
    },
    /// Refuse the request, write nothing: the budget is spent (`say`: the first time this
    /// window for this client, worth a log line).
    Over {
        /// Whether to say so.
        say: bool,
    },
}

#[derive(Clone, Copy, Default)]
struct ClientWindow {
    writes: u16,
    /// Its whole address (or /64) is denied: nothing more to write.
    escalated: bool,
    /// Its address could not be denied: identifiers are denied one by one.
    unescalable: bool,
    /// The log has said it is over budget.
    said: bool,
    seen: u8,
    culprits: [u64; MAX_ESCALATE_AFTER as usize],
}

impl WindowState for ClientWindow {
    fn weight(&self) -> u32 {
        u32::from(self.writes)
    }
}

/// The detection budgets, shared by the checker's workers.
pub struct Budget {
    limits: Limits,
    clients: Windows<ClientWindow>,
    keys: std::collections::hash_map::RandomState,
    /// (window start, rows written in it, whether the log has said it is spent).
    total: Mutex<(Instant, u32, bool)>,
}

impl Budget {
    /// Empty budgets with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                escalate_after: limits.escalate_after.min(MAX_ESCALATE_AFTER),
                ..limits
            },
            clients: Windows::new(SETS),
            keys: std::collections::hash_map::RandomState::new(),
            total: Mutex::new((Instant::now(), 0, false)),
        }
    }

    /// What a detection of `culprit` from `client` may write.
    pub fn spend(&self, client: IpAddr, culprit: Culprit) -> Spend {
        if !self.take_total() {
            return Spend::Over { say: false };
        }
        let key = client_key(client);
        let id = self.keys.hash_one(Identity(&culprit));
        let limits = self.limits;
        let escalate = limits.escalate_after > 0;
        let spend = self.clients.with(key, WINDOW, |w| {
            if w.escalated || w.writes >= limits.per_client {
                let say = !w.said;
                w.said = true;
                return Spend::Over { say };
            }
            w.writes += 1;
            if culprit.0 == Kind::Ip && culprit.2 == address_of(key).2 {
                // Its whole address (IPv4, or the /64): nothing left to escalate to.
                w.escalated = true;
                return Spend::Write(culprit);
            }
            let known = w.culprits[..usize::from(w.seen)].contains(&id);
            if known {
                return Spend::Write(culprit);
            }
            if escalate && !w.unescalable && w.seen >= limits.escalate_after {
                w.escalated = true;
                return Spend::Escalate {
                    address: address_of(key),
                    culprit,
                };
            }
            if usize::from(w.seen) < w.culprits.len() {
                w.culprits[usize::from(w.seen)] = id;
                w.seen += 1;
            }
            Spend::Write(culprit)
        });
        if matches!(spend, Spend::Over { .. }) {
            self.give_back_total();
        }
        spend
    }

    /// The address an [`Spend::Escalate`] named was refused (a gateway's, this host's):
    /// `client`'s identifiers go on being denied one by one this window.
    pub fn cannot_escalate(&self, client: IpAddr) {
        self.clients.with(client_key(client), WINDOW, |w| {
            w.escalated = false;
            w.unescalable = true;
        });
    }

    fn give_back_total(&self) {
        let mut t = self.total.lock().unwrap_or_else(PoisonError::into_inner);
        t.1 = t.1.saturating_sub(1);
    }

    /// Takes one row from the total budget; false (said once per window) when it is spent.
    fn take_total(&self) -> bool {
        let mut t = self.total.lock().unwrap_or_else(PoisonError::into_inner);
        if t.0.elapsed() >= WINDOW {
            *t = (Instant::now(), 0, false);
        }
        if t.1 < self.limits.total {
            t.1 += 1;
            return true;
        }
        if !t.2 {
            t.2 = true;
            tracing::warn!(
                total = self.limits.total,
                "detection budget spent: further detections this minute are refused but not deny-listed (detection_budget_total)"
            );
        }
        false
    }
}

/// A culprit's identity for the distinct count: kind, name (case-insensitive for API keys,
/// as headers are) and value.
struct Identity<'a>(&'a Culprit);

impl Hash for Identity<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let (kind, name, value) = self.0;
        kind.hash(h);
        name.as_deref().map(str::to_ascii_lowercase).hash(h);
        value.hash(h);
    }
}

/// The culprit an escalation denies: the client's address, IPv6 as its /64.
fn address_of(key: IpAddr) -> Culprit {
    let value = match key {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("{a}/64"),
    };
    (Kind::Ip, None, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Culprit {
        (Kind::Token, None, t.into())
    }

    const LIMITS: Limits = Limits {
        escalate_after: 3,
        per_client: 10,
        total: 1000,
    };

    #[test]
    fn a_client_rotating_tokens_gets_its_address_denied_and_then_nothing_more() {
        let b = Budget::new(LIMITS);
        let ip: IpAddr = "198.18.0.9".parse().expect("ip");
        for t in ["a", "b", "c"] {
            assert_eq!(b.spend(ip, token(t)), Spend::Write(token(t)));
        }
        // The same token again is not a new one.
        assert_eq!(b.spend(ip, token("a")), Spend::Write(token("a")));
        assert_eq!(
            b.spend(ip, token("d")),
            Spend::Escalate {
                address: (Kind::Ip, None, "198.18.0.9".into()),
                culprit: token("d")
            }
        );
        assert_eq!(b.spend(ip, token("e")), Spend::Over { say: true });
        assert_eq!(b.spend(ip, token("f")), Spend::Over { say: false });
        // Another client has its own budget.
        let other: IpAddr = "198.18.0.10".parse().expect("ip");
        for t in ["d", "e", "f"] {
            assert_eq!(b.spend(other, token(t)), Spend::Write(token(t)));
        }
    }

    #[test]
    fn an_address_that_cannot_be_denied_leaves_the_identifiers_denied() {
        let b = Budget::new(LIMITS);
        let gateway: IpAddr = "198.18.0.1".parse().expect("ip");
        for t in ["a", "b", "c"] {
            b.spend(gateway, token(t));
        }
        assert!(matches!(
            b.spend(gateway, token("d")),
            Spend::Escalate { .. }
        ));
        b.cannot_escalate(gateway);
        assert_eq!(b.spend(gateway, token("e")), Spend::Write(token("e")));
        let off = Budget::new(Limits {
            escalate_after: 0,
            ..LIMITS
        });
        for t in ["a", "b", "c", "d", "e"] {
            assert_eq!(off.spend(gateway, token(t)), Spend::Write(token(t)));
        }
    }

    #[test]
    fn ipv6_clients_share_their_64_and_escalate_to_it() {
        let b = Budget::new(Limits {
            escalate_after: 1,
            ..LIMITS
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:2::99".parse().expect("ip");
        // One address of the /64 denied (a decoy hit) does not end the /64's budget: it
        // is one more identifier, and the next one escalates to the /64.
        let one = (Kind::Ip, None, "2001:db8:1:2::1".to_owned());
        assert_eq!(b.spend(a, one.clone()), Spend::Write(one));
        assert_eq!(
            b.spend(c, token("y")),
            Spend::Escalate {
                address: (Kind::Ip, None, "2001:db8:1:2::/64".into()),
                culprit: token("y")
            }
        );
    }

    #[test]
    fn per_client_and_total_budgets_bound_the_rows() {
        let b = Budget::new(Limits {
            escalate_after: 8,
            per_client: 2,
            total: 5,
        });
        let ip: IpAddr = "198.18.0.1".parse().expect("ip");
        let cookie = |v: &str| (Kind::Cookie, Some("S".into()), v.to_owned());
        assert!(matches!(b.spend(ip, cookie("1")), Spend::Write(_)));
        assert!(matches!(b.spend(ip, cookie("2")), Spend::Write(_)));
        let over = b.spend(ip, cookie("3"));
        assert_eq!(over, Spend::Over { say: true }, "per client");
        // A refusal does not use up the total: three more rows.
        let written = (2..=20u8)
            .filter(|i| {
                let ip = IpAddr::from([198, 18, 1, *i]);
                matches!(b.spend(ip, cookie("x")), Spend::Write(_))
            })
            .count();
        assert_eq!(written, 3, "five rows in total per window");
    }
}
