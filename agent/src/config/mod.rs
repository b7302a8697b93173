//! The agent's configuration file (`/etc/portcullis/portcullis.toml`): typed, defaulted and
//! checked. Unknown keys are errors, because a typo must not silently change enforcement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::kernel::Capacity;
use crate::model::Cidr;
use crate::paths;

mod abs;
pub use abs::AbsConfig;

/// Kernel enforcement mode.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop denied packets.
    #[default]
    Enforce,
    /// Pass them, count "would drop".
    Monitor,
}

impl Mode {
    /// The name the config, the CLI and `status` use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// How XDP is attached: one enum for the config, the CLI and the kernel layer.
pub use crate::kernel::AttachMode as XdpMode;

/// Kernel map capacities (entries). A change is applied at start by migrating to new maps
/// (`Filter::set_aside_stale_maps`).
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// IPv4 host-level slots.
    pub v4_hosts: u32,
    /// IPv4 /24-level slots.
    pub v4_nets: u32,
    /// IPv6 host slots.
    pub v6_hosts: u32,
    /// IPv6 prefix slots.
    pub v6_prefixes: u32,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        let c = Capacity::default();
        Self {
            v4_hosts: c.v4_hosts,
            v4_nets: c.v4_nets,
            v6_hosts: c.v6_hosts,
            v6_prefixes: c.v6_prefixes,
        }
    }
}

impl From<CapacityConfig> for Capacity {
    fn from(c: CapacityConfig) -> Self {
        Capacity {
            v4_hosts: c.v4_hosts,
            v4_nets: c.v4_nets,
            v6_hosts: c.v6_hosts,
            v6_prefixes: c.v6_prefixes,
        }
    }
}

/// The whole agent configuration.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Interfaces to attach the XDP filter to (none: lists and L7 only).
    pub interfaces: Vec<String>,
    /// native (fallback generic) or generic.
    pub xdp_mode: XdpMode,
    /// enforce or monitor.
    pub mode: Mode,
    /// Where the database lives.
    pub state_dir: PathBuf,
    /// Where maps and links are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Group that may use the control socket (mode 0660); none: root only.
    pub socket_group: Option<String>,
    /// Prometheus metrics listen address; empty string disables.
    pub metrics: String,
    /// Networks a deny must not cover without `--force` (besides the host's own addresses).
    pub management_networks: Vec<String>,
    /// A deny of an IPv4 prefix shorter than this needs `--force` (a slip of the finger
    /// must not cut off a sixteenth of the Internet).
    pub min_deny_prefix_v4: u8,
    /// Likewise for IPv6.
    pub min_deny_prefix_v6: u8,
    /// How often expired entries are pruned, e.g. "30s".
    pub prune_interval: String,
    /// How long, on SIGTERM, open connections and queued list commands get to finish (at
    /// most 10 s; the agent exits at most two seconds after it, within the unit's 15 s).
    pub shutdown_grace: String,
    /// One drop event in this many is sampled (power of two); the log shows up to 16
    /// samples a second and one summary line of all of them.
    pub drop_sample_every: u32,
    /// Whether the XDP program counts the packets each allow and deny entry decides
    /// (`allow|deny list --hits`); off (the default) saves a hash update per listed packet.
    pub hit_counters: bool,
    /// Kernel map capacities.
    pub capacity: CapacityConfig,
    /// The L7 checker (TLS-terminating proxy); off unless a listener is set.
    pub checker: crate::checker::CheckerConfig,
    /// The ABS feed; off unless `url` is set.
    pub abs: AbsConfig,
    /// The sideband and gateway decision endpoints; off unless a listener is set.
    pub sideband: crate::checker::sideband::SidebandConfig,
    /// The management REST API (ASE's layout); off unless `https` is set.
    pub rest: crate::rest::RestConfig,
    /// Fleet sync through Redis; off unless `redis` is set.
    pub fleet: crate::fleet::FleetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Native,
            mode: Mode::Enforce,
            state_dir: PathBuf::from(paths::STATE_DIR),
            pin_dir: PathBuf::from(paths::PIN_DIR),
            socket: PathBuf::from(paths::CONTROL_SOCKET),
            socket_group: None,
            metrics: paths::METRICS_ADDR.into(),
            management_networks: Vec::new(),
            min_deny_prefix_v4: 8,
            min_deny_prefix_v6: 32,
            prune_interval: "10s".into(),
            shutdown_grace: "5s".into(),
            drop_sample_every: 64,
            hit_counters: false,
            capacity: CapacityConfig::default(),
            checker: crate::checker::CheckerConfig::default(),
            abs: AbsConfig::default(),
            sideband: crate::checker::sideband::SidebandConfig::default(),
            rest: crate::rest::RestConfig::default(),
            fleet: crate::fleet::FleetConfig::default(),
        }
    }
}

/// A configuration that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A value is out of range.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and validates `path`; a missing file at the default path means defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for net in &self.management_networks {
            net.parse::<Cidr>()
                .map_err(|e| invalid("management_networks", e))?;
        }
        if self.min_deny_prefix_v4 > 32 || self.min_deny_prefix_v6 > 128 {
            return Err(invalid(
                "min_deny_prefix_v4",
                "at most 32 (IPv4) and 128 (min_deny_prefix_v6)",
            ));
        }
        duration("prune_interval", &self.prune_interval)?;
        if duration("shutdown_grace", &self.shutdown_grace)? > 10 {
            return Err(invalid(
                "shutdown_grace",
                "at most 10s: the agent then needs up to 2s more, and the unit's TimeoutStopSec is 15s",
            ));
        }
        if !self.metrics.is_empty() {
            socket_addr("metrics", &self.metrics)?;
        }
        if !self.drop_sample_every.is_power_of_two() {
            return Err(invalid("drop_sample_every", "must be a power of two"));
        }
        for iface in &self.interfaces {
            if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
                return Err(invalid(
                    "interfaces",
                    format!("{iface:?} is not an interface name"),
                ));
            }
        }
        self.validate_checker()?;
        self.validate_sideband()?;
        self.fleet
            .validate()
            .map_err(|(field, e)| invalid(field, e))?;
        self.abs.validate()
    }

    fn validate_sideband(&self) -> Result<(), ConfigError> {
        let s = &self.sideband;
        for (field, addr) in [("sideband.https", &s.https), ("sideband.http", &s.http)] {
            if !addr.is_empty() {
                socket_addr(field, addr)?;
            }
        }
        for g in &s.gateways {
            let c = g
                .parse::<Cidr>()
                .map_err(|e| invalid("sideband.gateways", e))?;
            // Whoever may ask names clients to deny-list: not half the Internet.
            let widest = if matches!(c, Cidr::V4 { .. }) { 8 } else { 32 };
            if c.len() < widest {
                return Err(invalid(
                    "sideband.gateways",
                    format!("{g}: wider than /{widest}; list the gateways' own networks"),
                ));
            }
        }
        if s.enabled() && s.gateways.is_empty() {
            return Err(invalid(
                "sideband.gateways",
                "no gateway may ask: list the addresses of the gateways (CIDRs)",
            ));
        }
        if s.max_body_bytes < 1024 {
            return Err(invalid("sideband.max_body_bytes", "at least 1024"));
        }
        // Two listeners on one address: the second cannot bind (or takes half the clients).
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (field, addr) in [
            ("checker.https", &self.checker.https),
            ("checker.http", &self.checker.http),
            ("sideband.https", &s.https),
            ("sideband.http", &s.http),
            ("rest.https", &self.rest.https),
        ] {
            if addr.is_empty() {
                continue;
            }
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr.as_str()) {
                return Err(invalid(field, format!("{addr} is {other}'s address too")));
            }
            seen.push((field, addr));
        }
        let r = &self.rest;
        if !r.https.is_empty() {
            socket_addr("rest.https", &r.https)?;
        }
        if r.access_key.trim().is_empty() || r.access_key.len() > 256 {
            return Err(invalid("rest.access_key", "must not be empty"));
        }
        if r.max_body_bytes < 1024 || r.max_connections == 0 {
            return Err(invalid(
                "rest.max_body_bytes",
                "at least 1024, and max_connections at least 1",
            ));
        }
        Ok(())
    }

    fn validate_checker(&self) -> Result<(), ConfigError> {
        let c = &self.checker;
        for (field, addr) in [("checker.https", &c.https), ("checker.http", &c.http)] {
            if !addr.is_empty() {
                socket_addr(field, addr)?;
            }
        }
        crate::checker::detection_ttl(&c.detection_ttl)
            .map_err(|e| invalid("checker.detection_ttl", e))?;
        if c.access_log_keep > 100 {
            return Err(invalid("checker.access_log_keep", "at most 100 files"));
        }
        if !matches!(c.decoy_action.as_str(), "kernel" | "l7") {
            return Err(invalid(
                "checker.decoy_action",
                format!("{:?}: expected \"kernel\" or \"l7\"", c.decoy_action),
            ));
        }
        let most = crate::checker::budget::MAX_ESCALATE_AFTER;
        if c.detection_escalate_after > most {
            return Err(invalid(
                "checker.detection_escalate_after",
                format!("must be 0 (never) to {most}"),
            ));
        }
        if c.detection_budget == 0 || c.detection_budget_total == 0 {
            return Err(invalid(
                "checker.detection_budget",
                "0 would write no detection at all; to stop detections, remove their rules from the API definitions",
            ));
        }
        let mut secs = Vec::new();
        for (key, value) in [
            ("checker.header_timeout", &c.header_timeout),
            ("checker.idle_timeout", &c.idle_timeout),
            ("checker.body_timeout", &c.body_timeout),
            ("checker.backend_timeout", &c.backend_timeout),
        ] {
            // No off switch: a very long limit is the way to have none.
            let s = duration(key, value)?;
            if s > 86_400 {
                return Err(invalid(key, "at most 1d"));
            }
            secs.push(s);
        }
        if secs[3] < secs[2] {
            return Err(invalid(
                "checker.backend_timeout",
                "must be at least body_timeout, so a client slow to send its body gets the 408, not its backend the 504",
            ));
        }
        if c.trust_xff == Some(true) {
            return Err(invalid(
                "checker.trust_xff",
                "was removed: it trusted the left-most X-Forwarded-For hop, which any client writes; list the proxies in front of the checker instead: trusted_proxies = [\"10.0.0.0/24\"]",
            ));
        }
        for p in &c.trusted_proxies {
            p.parse::<Cidr>()
                .map_err(|e| invalid("checker.trusted_proxies", e))?;
        }
        if let Some(ca) = &c.backend_ca {
            crate::checker::backend_tls(Some(ca))
                .map_err(|e| invalid("checker.backend_ca", format!("{e:#}")))?;
        }
        if c.max_headers == 0 || c.max_header_bytes < 1024 {
            return Err(invalid(
                "checker.max_headers",
                "limits too small to serve any request",
            ));
        }
        Ok(())
    }

    /// The management networks, parsed (validated already).
    pub fn management(&self) -> Vec<Cidr> {
        self.management_networks
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Path of the database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("portcullis.db")
    }
}

/// A config error for `field`.
fn invalid(field: &'static str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.to_string(),
    }
}

/// `value` of `field` as a duration in seconds.
fn duration(field: &'static str, value: &str) -> Result<u64, ConfigError> {
    parse_duration(value).map_err(|m| invalid(field, m))
}

/// Checks that `value` of `field` is an address:port.
fn socket_addr(field: &'static str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<SocketAddr>()
        .map(drop)
        .map_err(|e| invalid(field, format!("{value:?}: {e}")))
}

/// Parses `90`, `30s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 15m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("duration {s:?} is zero or too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let cfg: Config =
            toml::from_str(include_str!("../../../dist/portcullis.toml")).expect("example parses");
        cfg.validate().expect("example validates");
        assert_eq!(cfg.interfaces, vec!["eth0".to_string()]);
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let mut cfg = Config::default();
        cfg.checker.https = "0.0.0.0:443".into();
        cfg.sideband.https = "0.0.0.0:443".into();
        let e = cfg.validate().expect_err("one address twice").to_string();
        assert!(
            e.contains("sideband.https") && e.contains("checker.https"),
            "{e}"
        );
        cfg.sideband.https = "0.0.0.0:8443".into();
        cfg.rest.https = "0.0.0.0:8443".into();
        assert!(cfg.validate().is_err());
        cfg.rest.https = "127.0.0.1:8010".into();
        cfg.validate().expect("distinct addresses");
        cfg.sideband.gateways = vec!["0.0.0.0/0".into()];
        assert!(cfg.validate().is_err(), "gateways wider than /8");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn checker_limits_are_checked() {
        let err = |text: &str| {
            let cfg: Config = toml::from_str(&format!("[checker]\n{text}")).expect("parses");
            cfg.validate().expect_err(text).to_string()
        };
        assert!(err("idle_timeout = \"soon\"").contains("checker.idle_timeout"));
        assert!(err("body_timeout = \"0s\"").contains("checker.body_timeout"));
        assert!(err("body_timeout = \"18446744073709551615\"").contains("at most 1d"));
        let e = err("body_timeout = \"90s\"\nbackend_timeout = \"60s\"");
        assert!(e.contains("checker.backend_timeout"), "{e}");
        let ok: Config =
            toml::from_str("[checker]\nbody_timeout = \"1d\"\nbackend_timeout = \"1d\"\n")
                .expect("parses");
        ok.validate().expect("a day each is allowed");
    }

    #[test]
    fn abs_nodes_come_as_a_list_or_comma_separated() {
        let listed: Config =
            toml::from_str("[abs]\nurl = [\"https://a:8080\", \"https://b:8080\"]\n")
                .expect("parses");
        assert_eq!(listed.abs.urls(), ["https://a:8080", "https://b:8080"]);
        listed.validate().expect("valid");
        let ase: Config =
            toml::from_str("[abs]\nurl = \"https://a:8080 ,https://b:8080,\"\n").expect("parses");
        assert_eq!(ase.abs.urls(), ["https://a:8080", "https://b:8080"]);
        let bare: Config =
            toml::from_str("[abs]\nurl = \"10.0.0.5:8080, abs2:8080\"\n").expect("parses");
        assert_eq!(
            bare.abs.urls(),
            ["https://10.0.0.5:8080", "https://abs2:8080"]
        );
        for bad in [
            "\",\"",
            "\"https://a:8080, ftp://b\"",
            "\"https://a, http://b\"",
        ] {
            let cfg: Config = toml::from_str(&format!("[abs]\nurl = {bad}\n")).expect("parses");
            let err = cfg.validate().expect_err(bad);
            assert!(err.to_string().contains("abs.url"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let bad: Result<Config, _> =
            toml::from_str("interfaces = [\"eth0\"]\nmdoe = \"monitor\"\n");
        assert!(
            bad.err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("mdoe")
        );
        let cfg: Config =
            toml::from_str("management_networks = [\"10.0.0.0/33\"]").expect("parses");
        let err = cfg.validate().expect_err("invalid");
        assert!(err.to_string().contains("management_networks"), "{err}");
        let ok: Config = toml::from_str(
            "interfaces = [\"eth0\"]\nmode = \"monitor\"\n[capacity]\nv4_hosts = 1000\n",
        )
        .expect("ok");
        assert_eq!(ok.mode, Mode::Monitor);
        assert_eq!(ok.capacity.v4_hosts, 1000);
        ok.validate().expect("valid");
        // ABS over plain HTTP sends the secret key in clear: only when asked for.
        let clear: Config = toml::from_str("[abs]\nurl = \"http://abs.test\"\n").expect("parses");
        let err = clear.validate().expect_err("http refused");
        assert!(err.to_string().contains("abs.insecure"), "{err}");
        let shout: Config = toml::from_str("[abs]\nurl = \"HTTP://abs.test\"\n").expect("parses");
        assert!(
            shout.validate().is_err(),
            "the scheme in capitals is still http"
        );
        let asked: Config =
            toml::from_str("[abs]\nurl = \"http://abs.test\"\ninsecure = true\n").expect("parses");
        asked.validate().expect("explicitly insecure");
        // The removed trust_xff is refused with the way forward.
        let xff: Config = toml::from_str("[checker]\ntrust_xff = true\n").expect("parses");
        assert!(
            xff.validate()
                .expect_err("removed")
                .to_string()
                .contains("trusted_proxies")
        );
    }
}
