//! API definitions in ASE's API JSON format (`{"api_metadata": {...}}`), one file per API in
//! the API directory; the file's stem is the API's name. Existing ASE definitions load as
//! they are: fields Portcullis does not use are reported once, never silently dropped, and a
//! broken file is reported with its path and field while the others keep working.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// `api_pattern_enforcement`: what requests to this API may look like.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct PatternEnforcement {
    /// `http`, `https`, or both comma-separated; empty = any.
    pub protocol_allowed: String,
    /// Allowed methods; empty = any.
    pub methods_allowed: Vec<String>,
    /// Allowed request content types, comma-separated; empty = any.
    pub content_type_allowed: String,
    /// Status of the error response (default 401).
    pub error_code: Option<u16>,
    /// Reason phrase (informational).
    pub error_def: String,
    /// Body of the error response.
    pub error_message_body: String,
}

/// `decoy_config`: paths no legitimate client calls.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DecoyConfig {
    /// Whether decoys are armed.
    pub decoy_enabled: bool,
    /// Status of the decoy response.
    pub response_code: Option<u16>,
    /// Reason phrase (informational).
    pub response_def: String,
    /// Body of the decoy response.
    pub response_message: String,
    /// Sub-paths under the API's `url` that are decoys; empty with `decoy_enabled` makes the
    /// whole API a decoy.
    pub decoy_subpaths: Vec<String>,
}

/// `flow_control`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FlowControl {
    /// `N/second`, `N/minute` or `N/hour` per client IP; `0/second` or empty = off.
    pub client_spike_threshold: String,
}

/// `jwt`: where a JWT is and which claims name the user and client.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Jwt {
    /// `h:authorization:bearer` (header, scheme) or `h:NAME` or `qs:NAME`.
    pub location: String,
    /// Claim holding the username.
    pub username: String,
    /// Claim holding the client id.
    pub clientid: String,
}

/// One backend server.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `api_metadata`: one API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiMetadata {
    /// `http`, `https` or `ws`/`wss` (informational; see pattern enforcement).
    pub protocol: String,
    /// URL prefix this API owns, e.g. `/shop`; `/` = everything.
    pub url: String,
    /// Host this API answers for; `*` = any.
    pub hostname: String,
    /// Session cookie name.
    pub cookie: String,
    /// Whether `Authorization: Bearer` carries an OAuth2 access token.
    pub oauth2_access_token: bool,
    /// Requests without a token are an attack (client IP deny-listed).
    pub is_token_mandatory: bool,
    /// Query parameter carrying the API key.
    pub apikey_qs: String,
    /// Header carrying the API key.
    pub apikey_header: String,
    /// Header carrying the username.
    pub username_header: String,
    /// JWT settings.
    pub jwt: Option<Jwt>,
    /// Block denied clients (403); false: forward and count "would block".
    pub enable_blocking: bool,
    /// Request pattern rules.
    pub api_pattern_enforcement: Option<PatternEnforcement>,
    /// Backends.
    pub servers: Vec<Server>,
    /// TLS to the backends.
    pub server_ssl: bool,
    /// Probe backends.
    pub health_check: bool,
    /// Seconds between probes.
    pub health_check_interval: Option<u64>,
    /// Failed probes before a server is skipped.
    pub health_retry_count: Option<u32>,
    /// Path probed.
    pub health_url: String,
    /// Decoys.
    pub decoy_config: Option<DecoyConfig>,
    /// Rate limiting.
    pub flow_control: Option<FlowControl>,
}

impl Default for ApiMetadata {
    fn default() -> Self {
        Self {
            protocol: "https".into(),
            url: "/".into(),
            hostname: "*".into(),
            cookie: String::new(),
            oauth2_access_token: false,
            is_token_mandatory: false,
            apikey_qs: String::new(),
            apikey_header: String::new(),
            username_header: String::new(),
            jwt: None,
            enable_blocking: true,
            api_pattern_enforcement: None,
            servers: Vec::new(),
            server_ssl: false,
            health_check: false,
            health_check_interval: None,
            health_retry_count: None,
            health_url: "/".into(),
            decoy_config: None,
            flow_control: None,
        }
    }
}

/// A loaded API.
#[derive(Clone, Debug, Serialize)]
pub struct Api {
    /// Name (file stem).
    pub name: String,
    /// Where it came from.
    pub path: PathBuf,
    /// Its definition.
    pub meta: ApiMetadata,
    /// Fields present in the file that Portcullis ignores.
    pub ignored_fields: Vec<String>,
    /// Parsed `client_spike_threshold`: (requests, per seconds).
    #[serde(skip)]
    pub spike: Option<(u32, u64)>,
    /// Round-robin position and per-server health, shared by every checker worker (the API
    /// is shared through the registry), so the request path neither locks nor allocates.
    #[serde(skip)]
    pub balance: Arc<Balance>,
}

/// Where the next request goes, and which servers are failing.
#[derive(Debug, Default)]
pub struct Balance {
    /// Requests so far (the round-robin position).
    pub next: AtomicUsize,
    /// One per server, in `servers` order.
    pub servers: Vec<ServerHealth>,
}

/// Consecutive failures of one server and when the last one was.
#[derive(Debug, Default)]
pub struct ServerHealth {
    /// Consecutive failures (requests or health probes).
    pub failures: AtomicU32,
    /// Milliseconds since [`epoch_ms`]'s start at the last failure.
    pub last_failure_ms: AtomicU64,
}

/// Milliseconds on a process-wide monotonic clock.
pub fn epoch_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Why an API file was refused.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the field.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

const KNOWN: &[&str] = &[
    "protocol",
    "url",
    "hostname",
    "cookie",
    "oauth2_access_token",
    "is_token_mandatory",
    "apikey_qs",
    "apikey_header",
    "username_header",
    "jwt",
    "enable_blocking",
    "api_pattern_enforcement",
    "servers",
    "server_ssl",
    "health_check",
    "health_check_interval",
    "health_retry_count",
    "health_url",
    "decoy_config",
    "flow_control",
];

/// Parses `N/second|minute|hour`.
fn parse_spike(s: &str) -> Result<Option<(u32, u64)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (n, unit) = s.split_once('/').ok_or_else(|| {
        format!("client_spike_threshold {s:?}: expected N/second, N/minute or N/hour")
    })?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("client_spike_threshold {s:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "second" | "sec" | "s" => 1,
        "minute" | "min" | "m" => 60,
        "hour" | "h" => 3600,
        u => return Err(format!("client_spike_threshold {s:?}: unknown unit {u:?}")),
    };
    Ok((n > 0).then_some((n, per)))
}

/// Parses and checks one API file's text.
pub fn parse(name: &str, path: &Path, text: &str) -> Result<Api, ApiError> {
    let err = |message: String| ApiError {
        path: path.into(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let meta_value = value
        .get("api_metadata")
        .ok_or_else(|| err("missing top-level \"api_metadata\" object".into()))?;
    let ignored_fields: Vec<String> = meta_value
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| !KNOWN.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let meta: ApiMetadata = serde_json::from_value(meta_value.clone())
        .map_err(|e| err(format!("api_metadata: {e}")))?;
    if !meta.url.starts_with('/') {
        return Err(err(format!(
            "field `url`: {:?} must start with '/'",
            meta.url
        )));
    }
    if meta.servers.is_empty()
        && !meta
            .decoy_config
            .as_ref()
            .is_some_and(|d| d.decoy_enabled && d.decoy_subpaths.is_empty())
    {
        return Err(err("field `servers`: at least one {\"host\", \"port\"} is needed (unless the whole API is a decoy)".into()));
    }
    if meta.server_ssl {
        return Err(err("field `server_ssl`: TLS to the API servers is not supported yet; terminate it on the servers' side or use plain HTTP on a private network".into()));
    }
    for m in meta
        .api_pattern_enforcement
        .iter()
        .flat_map(|p| &p.methods_allowed)
    {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(err(format!(
                "field `api_pattern_enforcement.methods_allowed`: {m:?} is not an HTTP method"
            )));
        }
    }
    let spike = parse_spike(
        meta.flow_control
            .as_ref()
            .map_or("", |f| f.client_spike_threshold.as_str()),
    )
    .map_err(|m| err(format!("field `flow_control.{m}`")))?;
    let meta_servers = meta.servers.clone();
    Ok(Api {
        name: name.into(),
        path: path.into(),
        meta,
        ignored_fields,
        spike,
        balance: Arc::new(Balance {
            next: AtomicUsize::new(0),
            servers: meta_servers
                .iter()
                .map(|_| ServerHealth::default())
                .collect(),
        }),
    })
}

/// Every API in `dir` that loads, and the files that do not.
pub fn load_dir(dir: &Path) -> (BTreeMap<String, Api>, Vec<ApiError>) {
    let mut apis = BTreeMap::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ApiError {
                path: dir.into(),
                message: format!("cannot read API directory: {e}"),
            });
            return (apis, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) if t.len() <= 1 << 20 => t,
            Ok(_) => {
                errors.push(ApiError {
                    path,
                    message: "larger than 1 MiB".into(),
                });
                continue;
            }
            Err(e) => {
                errors.push(ApiError {
                    path,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse(&name, &path, &text) {
            Ok(api) => {
                apis.insert(name, api);
            }
            Err(e) => errors.push(e),
        }
    }
    (apis, errors)
}

/// Whether `path` is `prefix` or below it (segment-wise: `/shop` owns `/shop/x`, not `/shopping`).
pub fn under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The armed decoy of `api` that `path` falls under, if any (every path of the API when it
/// lists no sub-paths).
pub fn decoy_hit<'a>(api: &'a Api, path: &str) -> Option<&'a DecoyConfig> {
    let decoy = api.meta.decoy_config.as_ref().filter(|d| d.decoy_enabled)?;
    let base = api.meta.url.trim_end_matches('/');
    let hit = decoy.decoy_subpaths.is_empty()
        || decoy
            .decoy_subpaths
            .iter()
            .any(|s| under(path, &format!("{base}/{}", s.trim_start_matches('/'))));
    hit.then_some(decoy)
}

/// The API for `host` and `path`: hostname match (or `*`), then the longest `url` prefix.
/// `host` is in `target::normalize_host` form (no port: an IPv6 literal keeps its colons).
pub fn route<'a>(apis: &'a BTreeMap<String, Api>, host: &str, path: &str) -> Option<&'a Api> {
    apis.values()
        .filter(|a| a.meta.hostname == "*" || a.meta.hostname.eq_ignore_ascii_case(host))
        .filter(|a| under(path, &a.meta.url))
        .max_by_key(|a| {
            (
                a.meta.url.trim_end_matches('/').len(),
                a.meta.hostname != "*",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, json: &str) -> Result<Api, ApiError> {
        parse(name, Path::new(name), json)
    }

    #[test]
    fn loads_ase_definitions_and_reports_unknown_fields() {
        let a = api("shop", r#"{"api_metadata":{"protocol":"https","url":"/shop","hostname":"*","cookie":"JSESSIONID",
            "oauth2_access_token":true,"apikey_header":"X-API-Key","enable_blocking":true,"cookie_idle_timeout":"200m",
            "api_pattern_enforcement":{"methods_allowed":["GET","POST"],"error_code":401,"error_message_body":"nope"},
            "flow_control":{"client_spike_threshold":"10/second"},
            "servers":[{"host":"127.0.0.1","port":8080}]}}"#).expect("valid");
        assert_eq!(a.ignored_fields, vec!["cookie_idle_timeout".to_string()]);
        assert_eq!(a.spike, Some((10, 1)));
        let e = api(
            "bad",
            r#"{"api_metadata":{"url":"shop","servers":[{"host":"h","port":1}]}}"#,
        )
        .expect_err("bad url");
        assert!(e.message.contains("`url`"), "{e}");
        let e = api(
            "bad",
            r#"{"api_metadata":{"url":"/x","servers":[{"host":"h","port":"eighty"}]}}"#,
        )
        .expect_err("bad port");
        assert!(e.message.contains("api_metadata"), "{e}");
        assert!(
            api("bad", "{not json")
                .expect_err("json")
                .message
                .contains("invalid JSON")
        );
        assert!(
            api("bad", r#"{"api_metadata":{"url":"/x","servers":[]}}"#)
                .expect_err("no servers")
                .message
                .contains("servers")
        );
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let mut apis = BTreeMap::new();
        for (n, url, host) in [
            ("root", "/", "*"),
            ("shop", "/shop", "*"),
            ("cart", "/shop/cart", "*"),
            ("other", "/shop", "api.example"),
        ] {
            let json = format!(
                r#"{{"api_metadata":{{"url":"{url}","hostname":"{host}","servers":[{{"host":"h","port":1}}]}}}}"#
            );
            apis.insert(n.to_string(), api(n, &json).expect("valid"));
        }
        let r = |h: &str, p: &str| route(&apis, h, p).map(|a| a.name.clone());
        assert_eq!(r("x", "/shop/cart/1"), Some("cart".into()));
        assert_eq!(r("x", "/shopping"), Some("root".into()));
        // Hosts arrive normalised (target::normalize_host): no port.
        assert_eq!(r("x", "/shop"), Some("shop".into()));
        assert_eq!(r("api.example", "/shop/x"), Some("other".into()));
        assert_eq!(r("2001:db8::1", "/shop/x"), Some("shop".into()));
        assert_eq!(r("x", "/elsewhere"), Some("root".into()));
        apis.remove("root");
        assert!(route(&apis, "x", "/elsewhere").is_none());
    }
}
