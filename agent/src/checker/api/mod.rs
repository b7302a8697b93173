//! API definitions in ASE's API JSON format (`{"api_metadata": {...}}`), one file per API in
//! the API directory; the file's stem is the API's name. Existing ASE definitions load as
//! they are, in the loose types Ping's own files use ([`loose`]): fields Portcullis does not
//! use are reported once by their path, at any depth ([`unknown`]), never silently dropped,
//! and a broken file is reported with its path and field while the others keep working.

mod loose;
mod unknown;

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
    #[serde(deserialize_with = "loose::status")]
    pub error_code: Option<u16>,
    /// Reason phrase (informational).
    pub error_def: String,
    /// Body of the error response.
    pub error_message_body: String,
    /// Plain-HTTP requests to an API that allows only HTTPS are redirected there, not
    /// treated as attacks.
    pub http_redirect: Option<HttpRedirect>,
}

/// `api_pattern_enforcement.http_redirect`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpRedirect {
    /// Status of the redirect (300–399; default 301).
    #[serde(deserialize_with = "loose::status")]
    pub response_code: Option<u16>,
    /// Reason phrase (informational).
    pub response_def: String,
    /// Where to: `https://host[:port]`, the request's path and query appended; empty = off.
    pub https_url: String,
}

/// `decoy_config`: paths no legitimate client calls.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DecoyConfig {
    /// Whether decoys are armed.
    #[serde(deserialize_with = "loose::flag")]
    pub decoy_enabled: bool,
    /// Status of the decoy response.
    #[serde(deserialize_with = "loose::status")]
    pub response_code: Option<u16>,
    /// Reason phrase (informational).
    pub response_def: String,
    /// Body of the decoy response.
    pub response_message: String,
    /// Decoy paths: full paths under the API's `url` as ASE writes them (`/shop/admin` for
    /// `"url": "/shop"`), or relative to it without a leading `/` (`admin`); empty with
    /// `decoy_enabled` makes the whole API a decoy.
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
    /// Port (a number, or a string of digits as Ping's tools write it).
    #[serde(deserialize_with = "loose::port")]
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
    #[serde(deserialize_with = "loose::flag")]
    pub oauth2_access_token: bool,
    /// Requests without a token are an attack (client IP deny-listed).
    #[serde(deserialize_with = "loose::flag")]
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
    #[serde(deserialize_with = "loose::flag_default_true")]
    pub enable_blocking: bool,
    /// Request pattern rules.
    pub api_pattern_enforcement: Option<PatternEnforcement>,
    /// Backends.
    pub servers: Vec<Server>,
    /// TLS to the backends.
    #[serde(deserialize_with = "loose::flag")]
    pub server_ssl: bool,
    /// Probe backends.
    #[serde(deserialize_with = "loose::flag")]
    pub health_check: bool,
    /// Seconds between probes (or an ASE duration, `30s`).
    #[serde(deserialize_with = "loose::seconds")]
    pub health_check_interval: Option<u64>,
    /// Failed probes before a server is skipped.
    #[serde(deserialize_with = "loose::count")]
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
    /// Fields present in the file that Portcullis ignores, by path
    /// (`servers[0].server_spike_threshold`).
    pub ignored_fields: Vec<String>,
    /// The decoy paths in full and normal form (`decoy_subpaths` resolved against `url`):
    /// what decoys match, and what `api show` prints.
    pub decoy_paths: Vec<String>,
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
    let meta: ApiMetadata = serde_json::from_value(meta_value.clone())
        .map_err(|e| err(format!("api_metadata: {e}")))?;
    let understood = serde_json::to_value(&meta).map_err(|e| err(e.to_string()))?;
    let mut ignored_fields = unknown::unknown_fields(meta_value, &understood, "");
    if let Some(top) = value.as_object() {
        ignored_fields.extend(
            top.keys()
                .filter(|k| *k != "api_metadata")
                .map(|k| format!("{k} (beside api_metadata)")),
        );
    }
    // A file of 100k unknown keys must not make a 100k-item log line at every reload.
    const SHOWN: usize = 50;
    if ignored_fields.len() > SHOWN {
        let more = ignored_fields.len() - SHOWN;
        ignored_fields.truncate(SHOWN);
        ignored_fields.push(format!("... and {more} more"));
    }
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
    // What would silently break the API if it were only ignored: refused until supported.
    let mapped = meta_value
        .pointer("/api_mapping/internal_url")
        .and_then(|v| v.as_str())
        .map_or("", str::trim);
    if !mapped.is_empty() && mapped.trim_end_matches('/') != meta.url.trim_end_matches('/') {
        return Err(err(format!(
            "field `api_mapping.internal_url`: {mapped:?} is not supported yet (the servers would get the public path {:?}); remove it and serve the API under its public path",
            meta.url
        )));
    }
    if matches!(
        meta.protocol.trim().to_ascii_lowercase().as_str(),
        "ws" | "wss"
    ) {
        return Err(err("field `protocol`: WebSocket APIs are not supported yet (the upgrade would not be proxied)".into()));
    }
    if meta.is_token_mandatory && !meta.oauth2_access_token {
        return Err(err("field `is_token_mandatory`: needs `oauth2_access_token: true`, as in ASE (without it no token is read, and every client would be deny-listed for a missing one)".into()));
    }
    let decoy_paths =
        decoy_paths(&meta).map_err(|m| err(format!("field `decoy_config.decoy_subpaths`: {m}")))?;
    if let Some(r) = meta
        .api_pattern_enforcement
        .as_ref()
        .and_then(|p| p.http_redirect.as_ref())
    {
        let url = r.https_url.trim();
        if !url.is_empty() && (!url.starts_with("https://") || url.parse::<http::Uri>().is_err()) {
            return Err(err(format!(
                "field `api_pattern_enforcement.http_redirect.https_url`: {url:?} is not an https:// URL"
            )));
        }
        if r.response_code.is_some_and(|c| !(300..400).contains(&c)) {
            return Err(err("field `api_pattern_enforcement.http_redirect.response_code`: a redirect is 300 to 399".into()));
        }
    }
    if !meta.servers.is_empty()
        && meta
            .decoy_config
            .as_ref()
            .is_some_and(|d| d.decoy_enabled && d.decoy_subpaths.is_empty())
    {
        return Err(err("field `decoy_config`: decoy_enabled with no decoy_subpaths makes every request to this API a decoy hit, yet it has servers; list decoy_subpaths, or remove the servers for a whole-API decoy".into()));
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
        decoy_paths,
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

/// `decoy_subpaths` in full: a path with a leading `/` is a full path, as ASE reads it, and
/// must lie under `url`; one without is relative to `url`. A full path outside the API (in
/// earlier Portcullis releases `/admin` meant `url` + `/admin`) is refused rather than
/// guessed at, since either reading could be the one meant.
fn decoy_paths(meta: &ApiMetadata) -> Result<Vec<String>, String> {
    let Some(decoy) = &meta.decoy_config else {
        return Ok(Vec::new());
    };
    let base = meta.url.trim_end_matches('/');
    decoy
        .decoy_subpaths
        .iter()
        .map(|sub| {
            let s = sub.trim();
            if s.is_empty() {
                return Err("an empty path".to_owned());
            }
            if s.contains(['%', '?', '#', '\\'])
                || s.split('/').any(|seg| seg == "." || seg == "..")
            {
                return Err(format!(
                    "{sub:?}: write the path plainly (no '.' or '..' segments, escapes, '?' or '#')"
                ));
            }
            let full = if s.starts_with('/') {
                s.to_owned()
            } else {
                format!("{base}/{s}")
            };
            let normal = super::target::normalize_path(&full)
                .map_err(|e| format!("{sub:?}: {e}"))?
                .matched;
            if s.starts_with('/') && !under(&normal, &meta.url) {
                return Err(format!(
                    "{sub:?} is not under the API's url {:?}: a path starting with '/' is a full path (ASE's form): write {:?}, or {:?} relative to the url",
                    meta.url,
                    format!("{base}{normal}"),
                    normal.trim_start_matches('/')
                ));
            }
            if normal.trim_end_matches('/') == base || normal == "/" {
                return Err(format!(
                    "{sub:?} is the whole API: for a whole-API decoy leave decoy_subpaths empty"
                ));
            }
            Ok(normal)
        })
        .collect()
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
    let hit = api.decoy_paths.is_empty() || api.decoy_paths.iter().any(|p| under(path, p));
    hit.then_some(decoy)
}

/// Whether an API answers for `host` (its own hostname, or `*`).
pub fn serves_host(apis: &BTreeMap<String, Api>, host: &str) -> bool {
    apis.values().any(|a| host_matches(a, host))
}

fn host_matches(api: &Api, host: &str) -> bool {
    api.meta.hostname == "*" || api.meta.hostname.eq_ignore_ascii_case(host)
}

/// The API for `host` and `path`: hostname match (or `*`), then the longest `url` prefix.
/// `host` is in `target::normalize_host` form (no port: an IPv6 literal keeps its colons).
pub fn route<'a>(apis: &'a BTreeMap<String, Api>, host: &str, path: &str) -> Option<&'a Api> {
    apis.values()
        .filter(|a| host_matches(a, host))
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

    /// A definition as Ping's examples and tools write it: numbers as strings, `""` for
    /// unset, durations with ASE's units, full-path decoys, fields Portcullis does not use
    /// at several depths.
    const PING_STYLE: &str = r#"{"api_metadata": {
        "protocol": "https", "url": "/shop", "hostname": "*", "cookie": "JSESSIONID",
        "cookie_idle_timeout": "20m", "logout_api_enabled": false, "cookie_persistence_enabled": false,
        "oauth2_access_token": true, "is_token_mandatory": "true", "apikey_qs": "", "apikey_header": "",
        "enable_blocking": true,
        "api_mapping": {"internal_url": ""},
        "api_pattern_enforcement": {"protocol_allowed": "", "http_redirect": {"response_code": "", "response_def": "", "https_url": ""},
            "methods_allowed": [], "content_type_allowed": "", "error_code": "401", "error_def": "Unauthorized", "error_message_body": ""},
        "flow_control": {"client_spike_threshold": "0/second", "server_connection_queueing": false},
        "api_memory_size": "128mb",
        "health_check": true, "health_check_interval": "8", "health_retry_count": "2", "health_url": "/health",
        "server_ssl": false,
        "servers": [{"host": "127.0.0.1", "port": "8080", "server_spike_threshold": "0/second", "server_connection_quota": 0}],
        "decoy_config": {"decoy_enabled": true, "response_code": "", "response_def": "", "response_message": "",
            "decoy_subpaths": ["/shop/admin", "/shop/root/", "debug"]}
    }}"#;

    #[test]
    fn a_ping_style_file_loads_with_its_values() {
        let a = api("shop", PING_STYLE).expect("a Ping-style file loads");
        let p = a.meta.api_pattern_enforcement.as_ref().expect("pattern");
        assert_eq!(p.error_code, Some(401));
        let d = a.meta.decoy_config.as_ref().expect("decoy");
        assert_eq!(d.response_code, None);
        assert!(a.meta.is_token_mandatory);
        assert_eq!(a.meta.servers[0].port, 8080);
        assert_eq!(a.meta.health_check_interval, Some(8));
        assert_eq!(a.meta.health_retry_count, Some(2));
        assert_eq!(a.decoy_paths, ["/shop/admin", "/shop/root/", "/shop/debug"]);
        assert!(decoy_hit(&a, "/shop/admin").is_some());
        assert!(decoy_hit(&a, "/shop/admin/x").is_some());
        assert!(decoy_hit(&a, "/shop/root").is_some());
        assert!(decoy_hit(&a, "/shop/debug").is_some());
        assert!(decoy_hit(&a, "/shop/shop/admin").is_none());
        assert!(decoy_hit(&a, "/shop/items").is_none());
        assert_eq!(
            a.ignored_fields,
            [
                "api_mapping",
                "api_memory_size",
                "cookie_idle_timeout",
                "cookie_persistence_enabled",
                "flow_control.server_connection_queueing",
                "logout_api_enabled",
                "servers[0].server_connection_quota",
                "servers[0].server_spike_threshold",
            ]
        );
    }

    #[test]
    fn unclear_definitions_are_refused_naming_the_field() {
        let with = |field: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(PING_STYLE).expect("json");
            let mut at = &mut v["api_metadata"];
            let path: Vec<&str> = field.split('.').collect();
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            at[path[path.len() - 1]] = serde_json::from_str(value).expect("value");
            api("shop", &v.to_string())
        };
        for (field, value, says) in [
            (
                "api_pattern_enforcement.error_code",
                r#""40l""#,
                "not a whole number",
            ),
            (
                "api_pattern_enforcement.error_code",
                "700",
                "not an HTTP status",
            ),
            (
                "decoy_config.response_code",
                r#""abc""#,
                "not a whole number",
            ),
            ("health_check_interval", r#""5x""#, "unknown unit"),
            ("enable_blocking", r#""maybe""#, "not true or false"),
            // A full path outside the API: ASE's reading never fires, the old one guessed.
            (
                "decoy_config.decoy_subpaths",
                r#"["/admin"]"#,
                "write \"/shop/admin\", or \"admin\"",
            ),
            (
                "decoy_config.decoy_subpaths",
                r#"["/shopping"]"#,
                "not under the API's url",
            ),
            ("decoy_config.decoy_subpaths", r#"[""]"#, "an empty path"),
            (
                "decoy_config.decoy_subpaths",
                r#"["a%2fb"]"#,
                "decoy_subpaths",
            ),
            (
                "oauth2_access_token",
                "false",
                "needs `oauth2_access_token: true`",
            ),
            ("api_mapping.internal_url", r#""/v2""#, "not supported yet"),
            (
                "protocol",
                r#""ws""#,
                "WebSocket APIs are not supported yet",
            ),
            // Definitions that would make every path of the API a decoy, or hide what they say.
            (
                "decoy_config.decoy_subpaths",
                r#"[".."]"#,
                "write the path plainly",
            ),
            (
                "decoy_config.decoy_subpaths",
                r#"["./"]"#,
                "write the path plainly",
            ),
            (
                "decoy_config.decoy_subpaths",
                r#"["/shop/x/.."]"#,
                "write the path plainly",
            ),
            (
                "decoy_config.decoy_subpaths",
                r#"["/shop"]"#,
                "is the whole API",
            ),
            (
                "decoy_config.decoy_subpaths",
                r#"["/shop/"]"#,
                "is the whole API",
            ),
            ("decoy_config.decoy_subpaths", "[]", "yet it has servers"),
            (
                "api_pattern_enforcement.http_redirect.https_url",
                r#""http://x""#,
                "not an https:// URL",
            ),
            (
                "api_pattern_enforcement.http_redirect.response_code",
                r#""200""#,
                "300 to 399",
            ),
        ] {
            let e = with(field, value).expect_err(field);
            assert!(e.message.contains(says), "{field} = {value}: {e}");
        }
        let mut v: serde_json::Value = serde_json::from_str(PING_STYLE).expect("json");
        v["api_metadata"]["servers"][0]["port"] = serde_json::json!("0");
        let e = api("shop", &v.to_string()).expect_err("port 0");
        assert!(e.message.contains("not a port"), "{e}");
    }
}
