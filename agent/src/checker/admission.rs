//! Which connections the checker admits: at most `max_connections` open at once, at most
//! `max_connections_per_client` from one address (IPv6 clients by /64; trusted proxies count
//! only against the total), and HTTP/2 requests beyond a connection's first take further
//! slots of the client's (`max_streams_per_client`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::CheckerConfig;
use crate::model::Cidr;

/// Open connections, in total and per client; a [`Ticket`] holds one slot.
pub struct Admission {
    total: AtomicUsize,
    /// Per client: connections, and HTTP/2 requests beyond each connection's first.
    per_client: Mutex<HashMap<IpAddr, [u32; 2]>>,
    /// The limits, which a configuration reload may change (slots held stay held).
    limits: RwLock<Limits>,
    /// Connections refused at the door since start.
    pub refused: AtomicU64,
}

/// One admitted connection's slot, given back on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    client: Option<IpAddr>,
}

/// What [`Admission`] admits.
struct Limits {
    max_total: usize,
    max_per_client: [u32; 2],
    exempt: Vec<Cidr>,
}

impl Limits {
    fn new(cfg: &CheckerConfig, exempt: Vec<Cidr>) -> Self {
        Self {
            max_total: cfg.max_connections.max(1),
            max_per_client: [
                cfg.max_connections_per_client.max(1),
                cfg.max_streams_per_client,
            ],
            exempt,
        }
    }
}

impl Admission {
    /// Limits from the checker's configuration; `exempt` (trusted proxies) count only
    /// against the total.
    pub fn new(cfg: &CheckerConfig, exempt: Vec<Cidr>) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            limits: RwLock::new(Limits::new(cfg, exempt)),
            refused: AtomicU64::new(0),
        })
    }

    /// New limits from a reloaded configuration. Connections open now keep their slots
    /// (a lower limit refuses new ones until enough close).
    pub fn retune(&self, cfg: &CheckerConfig, exempt: Vec<Cidr>) {
        *self.limits.write().unwrap_or_else(PoisonError::into_inner) = Limits::new(cfg, exempt);
    }

    fn limits(&self) -> std::sync::RwLockReadGuard<'_, Limits> {
        self.limits.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `peer`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.limits().max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let peer = peer.to_canonical();
        let client = (!self.limits().exempt.iter().any(|c| c.contains(peer)))
            .then(|| super::spikes::client_key(peer));
        if let Some(key) = client
            && !self.take(key, CONNECTION)
        {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Ticket {
            admission: self.clone(),
            client,
        })
    }

    /// One of `key`'s slots of `kind` ([`CONNECTION`] or [`STREAM`]), unless all are taken.
    fn take(&self, key: IpAddr, kind: usize) -> bool {
        let mut m = self
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = m.entry(key).or_insert([0, 0]);
        if held[kind] >= self.limits().max_per_client[kind] {
            if held == &[0, 0] {
                m.remove(&key);
            }
            return false;
        }
        held[kind] += 1;
        true
    }

    fn give_back(&self, key: IpAddr, kind: usize) {
        let mut m = self
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = m.get_mut(&key) {
            held[kind] = held[kind].saturating_sub(1);
            if held == &[0, 0] {
                m.remove(&key);
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Which of a client's slots: its connections.
const CONNECTION: usize = 0;
/// Which of a client's slots: its HTTP/2 requests beyond each connection's first.
const STREAM: usize = 1;

impl Ticket {
    /// A slot for an HTTP/2 request beyond the connection's first: each holds a backend
    /// request as a connection does, so `max_streams_per_client` caps them per client.
    /// `None` when the client has none left (trusted proxies always have).
    pub fn stream(self: &Arc<Self>) -> Option<StreamSlot> {
        if let Some(key) = self.client
            && !self.admission.take(key, STREAM)
        {
            return None;
        }
        Some(StreamSlot(self.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            self.admission.give_back(key, CONNECTION);
        }
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client slot held by an HTTP/2 request beyond its connection's first; given back on
/// drop.
pub struct StreamSlot(Arc<Ticket>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(key) = self.0.client {
            self.0.admission.give_back(key, STREAM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_total_and_per_client_and_gives_slots_back() {
        let cfg = CheckerConfig {
            max_connections: 5,
            max_connections_per_client: 2,
            ..CheckerConfig::default()
        };
        let proxy: Cidr = "198.18.0.1/32".parse().expect("cidr");
        let a = Admission::new(&cfg, vec![proxy]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let t1 = a.admit(ip("198.18.5.5")).expect("first");
        let _t2 = a.admit(ip("198.18.5.5")).expect("second");
        assert!(a.admit(ip("198.18.5.5")).is_none(), "third from one client");
        // IPv6 clients count per /64.
        let _v1 = a.admit(ip("2001:db8::1")).expect("v6");
        let _v2 = a.admit(ip("2001:db8::2")).expect("v6 same /64");
        assert!(a.admit(ip("2001:db8::3")).is_none(), "third from one /64");
        // The trusted proxy counts only against the total (5).
        let _p = a.admit(ip("198.18.0.1")).expect("proxy");
        assert!(a.admit(ip("198.18.0.1")).is_none(), "total reached");
        drop(t1);
        assert!(a.admit(ip("198.18.5.5")).is_some(), "slot given back");
        assert_eq!(a.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn http2_requests_beyond_the_first_take_the_clients_slots() {
        let cfg = CheckerConfig {
            max_connections: 10,
            max_connections_per_client: 2,
            max_streams_per_client: 1,
            ..CheckerConfig::default()
        };
        let proxy: Cidr = "198.18.0.1/32".parse().expect("cidr");
        let a = Admission::new(&cfg, vec![proxy]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let conn = Arc::new(a.admit(ip("198.18.5.5")).expect("connection"));
        let second = conn.stream().expect("second request");
        assert!(conn.stream().is_none(), "third request");
        // Connections are counted apart.
        let _other = a.admit(ip("198.18.5.5")).expect("another connection");
        drop(second);
        assert!(conn.stream().is_some(), "slot given back");
        // Streams do not count against the total; a trusted proxy's are not capped.
        assert_eq!(a.open(), 2);
        let p = Arc::new(a.admit(ip("198.18.0.1")).expect("proxy"));
        let held: Vec<StreamSlot> = (0..5).map(|_| p.stream().expect("proxy stream")).collect();
        assert_eq!(held.len(), 5);
    }
}
