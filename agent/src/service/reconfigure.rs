//! A new configuration applied to the running service (SIGHUP, `portcullis reload`): the
//! interfaces (attached and detached), the attach mode of interfaces attached from now on,
//! enforce or monitor, drop sampling, and the safety limits a deny is checked against. The
//! rest of the service's settings (database, pins, the fleet's outbox) stay as they started:
//! the daemon names those as needing a restart.

use super::{Service, ServiceError};
use crate::config::{Config, Mode};

/// The keys [`Service::reconfigure`] applies, as dotted TOML keys (for the daemon's diff).
pub const LIVE_KEYS: &[&str] = &[
    "interfaces",
    "xdp_mode",
    "mode",
    "drop_sample_every",
    "management_networks",
    "min_deny_prefix_v4",
    "min_deny_prefix_v6",
];

impl Service {
    /// Applies the live keys of `new`; returns what changed, one line each. The interfaces
    /// are all or nothing: when a new one cannot be attached, the ones this call attached
    /// are detached again and nothing else changes.
    pub fn reconfigure(&mut self, new: &Config) -> Result<Vec<String>, ServiceError> {
        let old = self.config.clone();
        let mut next = old.clone();
        next.interfaces.clone_from(&new.interfaces);
        next.xdp_mode = new.xdp_mode;
        next.mode = new.mode;
        next.drop_sample_every = new.drop_sample_every;
        next.management_networks
            .clone_from(&new.management_networks);
        next.min_deny_prefix_v4 = new.min_deny_prefix_v4;
        next.min_deny_prefix_v6 = new.min_deny_prefix_v6;
        self.config = next;
        match self.apply(&old) {
            Ok(done) => Ok(done),
            Err(e) => {
                self.config = old;
                Err(e)
            }
        }
    }

    fn apply(&mut self, old: &Config) -> Result<Vec<String>, ServiceError> {
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
            let mut attached: Vec<String> = Vec::new();
            for iface in &added {
                if let Err(e) = self.attach(Some(iface), None) {
                    for a in &attached {
                        let _ = self.detach(Some(a));
                        self.interfaces.remove(a);
                    }
                    self.board.set_interfaces(&self.interfaces);
                    return Err(e);
                }
                attached.push(iface.clone());
                done.push(format!("attached to {iface}"));
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
        if self.config.mode != old.mode || self.config.drop_sample_every != old.drop_sample_every {
            if let Some(f) = &self.filter {
                let mode = match self.config.mode {
                    Mode::Enforce => portcullis_common::mode::ENFORCE,
                    Mode::Monitor => portcullis_common::mode::MONITOR,
                };
                f.set_config(portcullis_common::Config {
                    mode,
                    sample_mask: self.config.drop_sample_every - 1,
                    ..f.config()?
                })?;
            }
            self.board.set_mode(self.config.mode);
            if self.config.mode != old.mode {
                done.push(format!("mode {:?}", self.config.mode).to_lowercase());
            }
            if self.config.drop_sample_every != old.drop_sample_every {
                done.push(format!(
                    "drop_sample_every {}",
                    self.config.drop_sample_every
                ));
            }
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
