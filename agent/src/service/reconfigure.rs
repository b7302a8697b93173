//! A new configuration applied to the running service (SIGHUP, `portcullis reload`): the
//! interfaces (attached and detached), the attach mode of interfaces attached from now on,
//! enforce or monitor, drop sampling, hit counting, the safety limits a deny is checked
//! against, and the ABS nodes the safety rules protect. The fleet's outbox follows a new
//! `[fleet]` separately ([`Service::switch_fleet`], when the daemon restarts the engine). The
//! rest (database, pins) stays as it started: the daemon names it as needing a restart.

use super::{Service, ServiceError};
use crate::config::{Config, Mode};

/// The keys [`Service::reconfigure`] applies, as dotted TOML keys (for the daemon's diff).
pub const LIVE_KEYS: &[&str] = &[
    "interfaces",
    "xdp_mode",
    "mode",
    "drop_sample_every",
    "hit_counters",
    "management_networks",
    "min_deny_prefix_v4",
    "min_deny_prefix_v6",
];

impl Service {
    /// Applies the live keys of `new`; returns what changed, one line each. All or nothing:
    /// the kernel's mode first, then the new interfaces; when one cannot be attached, the
    /// links this call made are taken off again (links it found in place stay), the mode is
    /// put back, and nothing else changes. A file that lists no interface while the filter
    /// runs on some is refused: an emptied file must not switch enforcement off
    /// (`portcullis detach` does that on purpose).
    pub fn reconfigure(&mut self, new: &Config) -> Result<Vec<String>, ServiceError> {
        let old = self.config.clone();
        if new.interfaces.is_empty() && !old.interfaces.is_empty() && self.filter.is_some() {
            return Err(ServiceError::BadRequest(
                "the new configuration lists no interface: that would take the filter off every one (use `portcullis detach` for that)".into(),
            ));
        }
        let mut next = old.clone();
        next.interfaces.clone_from(&new.interfaces);
        next.xdp_mode = new.xdp_mode;
        next.mode = new.mode;
        next.drop_sample_every = new.drop_sample_every;
        next.hit_counters = new.hit_counters;
        next.management_networks
            .clone_from(&new.management_networks);
        next.min_deny_prefix_v4 = new.min_deny_prefix_v4;
        next.min_deny_prefix_v6 = new.min_deny_prefix_v6;
        // The safety rules follow the checker's trusted proxies, which a reload changes
        // for new connections (a proxy speaks for many clients: never deny-listed).
        next.checker
            .trusted_proxies
            .clone_from(&new.checker.trusted_proxies);
        // The ABS nodes the safety rules keep off the deny list follow the feed's new URLs.
        next.abs = new.abs.clone();
        let mut done = self.set_kernel_mode(&next, &old)?;
        self.config = next;
        match self.apply_interfaces(&old) {
            Ok(lines) => {
                done.extend(lines);
                Ok(done)
            }
            Err(e) => {
                let _ = self.set_kernel_mode(&old, &self.config.clone());
                self.config = old;
                Err(e)
            }
        }
    }

    /// Enforce or monitor, the sampling rate and the hit counters, as `to` says (when they
    /// differ from `from`).
    fn set_kernel_mode(&mut self, to: &Config, from: &Config) -> Result<Vec<String>, ServiceError> {
        let mut done = Vec::new();
        if to.mode == from.mode
            && to.drop_sample_every == from.drop_sample_every
            && to.hit_counters == from.hit_counters
        {
            return Ok(done);
        }
        if let Some(f) = &self.filter {
            let mode = match to.mode {
                Mode::Enforce => portcullis_common::mode::ENFORCE,
                Mode::Monitor => portcullis_common::mode::MONITOR,
            };
            f.set_config(portcullis_common::Config {
                mode,
                sample_mask: to.drop_sample_every - 1,
                count_hits: u32::from(to.hit_counters),
                ..f.config()?
            })?;
        }
        self.board.set_mode(to.mode);
        if to.mode != from.mode {
            done.push(format!("mode {:?}", to.mode).to_lowercase());
        }
        if to.drop_sample_every != from.drop_sample_every {
            done.push(format!("drop_sample_every {}", to.drop_sample_every));
        }
        if to.hit_counters != from.hit_counters {
            done.push(format!("hit_counters {}", to.hit_counters));
        }
        Ok(done)
    }

    fn apply_interfaces(&mut self, old: &Config) -> Result<Vec<String>, ServiceError> {
        let mut done = Vec::new();
        let added: Vec<String> = (self.config.interfaces.iter())
            .filter(|i| !old.interfaces.contains(i))
            .cloned()
            .collect();
        let removed: Vec<String> = (old.interfaces.iter())
            .filter(|i| !self.config.interfaces.contains(i))
            .cloned()
            .collect();
        if self.filter.is_some() {
            // Links this call created (not ones it found in place): the undo list.
            let mut fresh: Vec<String> = Vec::new();
            for iface in &added {
                match self.attach(Some(iface), None) {
                    Ok(a) => {
                        if a.iter().all(|a| !a.reused_link && !a.replaced) {
                            fresh.push(iface.clone());
                        }
                        done.push(format!("attached to {iface}"));
                    }
                    Err(e) => {
                        for a in &fresh {
                            let _ = self.detach(Some(a));
                            self.interfaces.remove(a);
                        }
                        self.board.set_interfaces(&self.interfaces);
                        return Err(e);
                    }
                }
            }
            for iface in &removed {
                // Off the list whatever happens: an interface gone from the host cannot be
                // detached, and is no longer the agent's to watch.
                match self.detach(Some(iface)) {
                    Ok(_) => done.push(format!("detached from {iface}")),
                    Err(e) => done.push(format!("no longer watching {iface} ({e})")),
                }
                self.interfaces.remove(iface);
            }
            self.board.set_interfaces(&self.interfaces);
        }
        if self.config.xdp_mode != old.xdp_mode {
            done.push(format!(
                "xdp_mode {:?} for interfaces attached from now on (`portcullis attach --iface NAME --xdp-mode ...` switches a running one)",
                self.config.xdp_mode
            ));
        }
        if self.config.management_networks != old.management_networks
            || self.config.min_deny_prefix_v4 != old.min_deny_prefix_v4
            || self.config.min_deny_prefix_v6 != old.min_deny_prefix_v6
        {
            done.push("safety limits (management_networks, min_deny_prefix_v4/v6)".into());
        }
        Ok(done)
    }
}
