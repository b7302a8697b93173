//! `[abs]`: where the ABS feed polls, with which keys and trust, and how much of an answer
//! it takes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

/// `[abs]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbsConfig {
    /// Base URL, e.g. `https://abs.example:8080`; several ABS nodes, tried in turn, as a list
    /// or comma-separated as ASE's `abs_endpoint`; empty = feed off.
    #[serde(deserialize_with = "one_or_many")]
    pub url: String,
    /// Access key (sent as `x-abs-ak`).
    pub access_key: String,
    /// File holding the secret key (sent as `x-abs-sk`); never logged.
    pub secret_key_file: PathBuf,
    /// Send the keys as ABS's restricted user (`x-abs-ak-ru`/`x-abs-sk-ru`), whose lists hold
    /// obfuscated identifiers that match no real traffic; warned about at start.
    pub restricted_keys: bool,
    /// Whether the ABS list is enforced (ASE's `enable_abs_attack`); off, polls go on but
    /// nothing is applied. `portcullis switch abs on|off` changes it at run time, and that
    /// choice is kept.
    pub blocking: bool,
    /// Accept any certificate from ABS (ABS's own is self-signed); warned about at start.
    /// Prefer `ca_file`.
    pub insecure_skip_verify: bool,
    /// Poll interval, e.g. "60s".
    pub poll: String,
    /// PEM CA bundle to trust for HTTPS (default: none, so HTTPS needs it).
    pub ca_file: Option<PathBuf>,
    /// Allow an `http://` URL, which sends the secret key in clear (tests, a loopback ABS).
    pub insecure: bool,
    /// Per-request timeout.
    pub timeout: String,
    /// Largest attack list accepted, bytes (it is parsed as it arrives: memory holds its
    /// items, never the document).
    pub max_body_bytes: usize,
    /// Most items accepted in one attack list (each held costs about 100 bytes while the
    /// list is applied).
    pub max_items: usize,
    /// How far back the attack-list query reaches (`earlier_date`; ABS answers for a period,
    /// so an item older than the window would be missing from the answer, and lifted).
    pub window: String,
    /// The largest share of the ABS rows one poll may remove; a larger shrink is applied
    /// when the next poll asks for it too. 1.0: no limit.
    pub max_shrink: f64,
    /// Post the checker's detections to `{url}/v4/abs/detections` — a Portcullis
    /// invention no ABS serves, hence off by default.
    pub report: bool,
    /// Most detections kept while ABS is unreachable.
    pub report_queue: usize,
}

impl Default for AbsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            access_key: String::new(),
            secret_key_file: PathBuf::from("/etc/portcullis/abs.secret"),
            restricted_keys: false,
            blocking: true,
            insecure_skip_verify: false,
            poll: "60s".into(),
            ca_file: None,
            insecure: false,
            timeout: "10s".into(),
            max_body_bytes: 64 << 20,
            max_items: 2_000_000,
            window: "365d".into(),
            max_shrink: 0.5,
            report: false,
            report_queue: 10_000,
        }
    }
}

impl AbsConfig {
    /// The ABS nodes, in the order they are tried; a bare `host:port`, as ASE's
    /// `abs_endpoint` writes them, is HTTPS (ABS's default).
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.contains("://") {
                    u.to_owned()
                } else {
                    format!("https://{u}")
                }
            })
            .collect()
    }
}

/// A string, or a list of strings joined with `, ` (`abs.url`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(", "),
    })
}

impl AbsConfig {
    /// Checks `[abs]` (nothing when the feed is off).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Ok(());
        }
        for url in self.urls() {
            let uri = url.parse::<http::Uri>().ok();
            let scheme = uri.as_ref().and_then(|u| u.scheme_str());
            let ok = uri.as_ref().is_some_and(|u| u.host().is_some())
                && scheme.is_some_and(|s| {
                    s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https")
                });
            if !ok {
                return Err(invalid("abs.url", format!("{url:?} is not an http(s) URL")));
            }
            if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http")) && !self.insecure {
                return Err(invalid(
                    "abs.url",
                    "http:// would send the ABS secret key in clear: use https:// (with abs.ca_file for ABS's certificate), or set abs.insecure = true",
                ));
            }
        }
        if self.urls().is_empty() {
            return Err(invalid("abs.url", "no URL in the list"));
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            return Err(invalid(
                "abs.insecure_skip_verify",
                "set together with abs.ca_file: keep ca_file (ABS's certificate verified) and remove insecure_skip_verify",
            ));
        }
        duration("abs.poll", &self.poll)?;
        duration("abs.window", &self.window)?;
        if !(self.max_shrink > 0.0 && self.max_shrink <= 1.0) {
            return Err(invalid(
                "abs.max_shrink",
                format!("{} is not a share above 0 and at most 1.0", self.max_shrink),
            ));
        }
        duration("abs.timeout", &self.timeout)?;
        Ok(())
    }
}
