//! Fleet sync: one allow and deny list on every host, through Redis.
//!
//! Per fleet, Redis holds a Stream (the ordered change log), a Hash (the snapshot: every
//! identity's current record) and an epoch key, under `portcullis:{NAME}:`. One Lua script
//! writes the log and the snapshot together ([`log`]), so the snapshot always equals the
//! log up to its last id. Each agent:
//! - queues its local changes in the store (an outbox that survives restarts and outages)
//!   and publishes them in order; changes it received from the fleet are never republished;
//! - reads the log from its persisted (epoch, last id) with blocking reads on a connection
//!   of its own, and applies every record, its own included, through the list writer with
//!   source `fleet` (so they reach the kernel the one way everything does);
//! - when it cannot resume exactly (the log was trimmed past it, the epoch changed, Redis
//!   lost writes it had seen), it resyncs: the snapshot pinned to a log position replaces
//!   its `fleet` rows in one step, and it replays from there ([`engine`]).
//!
//! Redis down or slow changes nothing locally: enforcement goes on, local changes queue,
//! and the agent reconnects with back-off and jitter. Expiry is data: every host expires
//! entries itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::control::answer::FleetState;

mod engine;
mod log;
pub mod record;

pub use engine::{check, run};

/// `[fleet]`: off unless `redis` is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; empty: no fleet.
    pub redis: String,
    /// The fleet's name: the key prefix every host of one fleet shares.
    pub name: String,
    /// This host's name in the records it publishes (default: the hostname).
    pub host: String,
    /// A file holding the Redis password (instead of one in the URL).
    pub password_file: Option<PathBuf>,
    /// A PEM file of the CA that signed Redis's certificate (`rediss://`; default: the
    /// system's and webpki's roots).
    pub ca: Option<PathBuf>,
    /// The log keeps about this many records (older ones are trimmed; a host further behind
    /// resyncs from the snapshot).
    pub max_log: u64,
    /// ... and none older than this (`24h`, `7d`; empty: no age limit).
    pub max_log_age: String,
    /// Local changes kept while Redis is unreachable; beyond it the fleet rebuilds its list
    /// from every host's own entries when Redis is back.
    pub queue_limit: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            name: "default".into(),
            host: String::new(),
            password_file: None,
            ca: None,
            max_log: 100_000,
            max_log_age: "24h".into(),
            queue_limit: 1_000_000,
        }
    }
}

impl FleetConfig {
    /// Whether the fleet is configured.
    pub fn enabled(&self) -> bool {
        !self.redis.trim().is_empty()
    }

    /// This host's name in records: `host`, or the kernel's hostname.
    pub fn origin(&self) -> String {
        if !self.host.is_empty() {
            return self.host.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    /// The URL with any password replaced (and any query, which may hold one), for
    /// status and logs.
    pub fn redacted_url(&self) -> String {
        let url = self.redis.split('?').next().unwrap_or("");
        match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((auth, host)) => {
                    let user = auth.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{host}")
                }
                None => url.to_owned(),
            },
            None => url.to_owned(),
        }
    }

    /// Redis's host, which the safety rules protect like ABS's: no deny may cut a host off
    /// from its fleet.
    pub fn redis_host(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let rest = self.redis.split_once("://")?.1;
        let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let hostport = hostport.split(['/', '?']).next()?;
        let host = match hostport.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
        };
        (!host.is_empty()).then(|| host.to_owned())
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        use ::redis::IntoConnectionInfo;
        self.redis
            .as_str()
            .into_connection_info()
            .map_err(|e| ("fleet.redis", e.to_string()))?;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !name_ok(&self.name) {
            return Err(("fleet.name", NAME_RULE.into()));
        }
        if !self.host.is_empty() && !name_ok(&self.host) {
            return Err(("fleet.host", NAME_RULE.into()));
        }
        if self.ca.is_some() && !self.redis.trim_start().starts_with("rediss://") {
            return Err(("fleet.ca", "a CA is for TLS: use a rediss:// URL".into()));
        }
        if self.queue_limit < 1000 {
            return Err(("fleet.queue_limit", "at least 1000".into()));
        }
        if self.max_log < 1000 {
            return Err(("fleet.max_log", "at least 1000".into()));
        }
        if !self.max_log_age.is_empty() && crate::config::parse_duration(&self.max_log_age).is_err()
        {
            return Err((
                "fleet.max_log_age",
                format!("{:?} is not a duration", self.max_log_age),
            ));
        }
        Ok(())
    }
}

const NAME_RULE: &str = "1 to 64 letters, digits, '.', '_' or '-'";

/// What the engine and the rest of the agent share: the state `status` shows, and the
/// nudges the engine waits for.
#[derive(Default)]
pub struct Shared {
    state: Mutex<FleetState>,
    /// Local changes were queued: publish them.
    pub queued: Notify,
    /// An operator asked for a resync (`portcullis fleet resync`).
    pub resync: Notify,
}

impl Shared {
    /// A copy of the state.
    pub fn state(&self) -> FleetState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the state.
    pub fn update<T>(&self, f: impl FnOnce(&mut FleetState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The shared state of a configured fleet, for the board and the engine.
pub fn shared(config: &FleetConfig) -> Arc<Shared> {
    let s = Arc::new(Shared::default());
    s.update(|st| {
        st.fleet = config.name.clone();
        st.host = config.origin();
        st.redis = config.redacted_url();
        st.state = "starting".into();
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_status_and_bad_settings_are_named() {
        let c = FleetConfig {
            redis: "redis://portcullis:hunter2@127.0.0.1:6379/0".into(),
            ..FleetConfig::default()
        };
        assert_eq!(c.redacted_url(), "redis://portcullis:***@127.0.0.1:6379/0");
        assert_eq!(c.redis_host().as_deref(), Some("127.0.0.1"));
        let q = FleetConfig {
            redis: "rediss://[2001:db8::9]:6380/0?password=hunter2".into(),
            ..FleetConfig::default()
        };
        assert!(!q.redacted_url().contains("hunter2"));
        assert_eq!(q.redis_host().as_deref(), Some("2001:db8::9"));
        assert!(c.validate().is_ok());
        for (bad, field) in [
            (
                FleetConfig {
                    redis: "http://x".into(),
                    ..FleetConfig::default()
                },
                "fleet.redis",
            ),
            (
                FleetConfig {
                    name: "a b".into(),
                    ..c.clone()
                },
                "fleet.name",
            ),
            (
                FleetConfig {
                    max_log: 10,
                    ..c.clone()
                },
                "fleet.max_log",
            ),
            (
                FleetConfig {
                    queue_limit: 0,
                    ..c.clone()
                },
                "fleet.queue_limit",
            ),
            (
                FleetConfig {
                    ca: Some("/etc/ca.pem".into()),
                    ..c.clone()
                },
                "fleet.ca",
            ),
            (
                FleetConfig {
                    max_log_age: "soon".into(),
                    ..c.clone()
                },
                "fleet.max_log_age",
            ),
        ] {
            let (got, _) = bad.validate().expect_err(field);
            assert_eq!(got, field);
        }
        assert!(FleetConfig::default().validate().is_ok(), "off is valid");
    }
}
