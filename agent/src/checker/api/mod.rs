//! API definitions in ASE's API JSON format (`{"api_metadata": {...}}`), one file per API in
//! the API directory; the file's stem is the API's name. Existing ASE definitions load as
//! they are, in the loose types Ping's own files use ([`loose`]): fields Portcullis does not
//! use are reported once by their path, at any depth ([`unknown`]), never silently dropped,
//! and a broken file is reported with its path and field while the others keep working.

mod loose;
mod rules;
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
    /// A request that finds every server at its `server_connection_quota` or
    /// `server_spike_threshold` waits for one (up to `backend_timeout`) instead of getting
    /// 503 at once.
    #[serde(deserialize_with = "loose::flag")]
    pub server_connection_queueing: bool,
    /// WebSocket APIs: bytes one connection may send, `N/second|minute|hour`; past it the
    /// connection is closed.
    pub bytes_in_threshold: String,
    /// WebSocket APIs: bytes one connection may receive, as `bytes_in_threshold`.
    pub bytes_out_threshold: String,
}

/// `api_mapping`: the path the servers know the API under.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiMapping {
    /// Replaces the API's `url` at the front of forwarded paths; empty = no mapping.
    pub internal_url: String,
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port (a number, or a string of digits as Ping's tools write it).
    #[serde(deserialize_with = "loose::port")]
    pub port: u16,
    /// Most requests this server gets, `N/second|minute|hour`; `0/second` or empty = off.
    #[serde(default)]
    pub server_spike_threshold: String,
    /// Most requests in flight to this server at once; 0 or unset = no limit.
    #[serde(default, deserialize_with = "loose::count")]
    pub server_connection_quota: Option<u32>,
}

/// `api_metadata`: one API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiMetadata {
    /// `http`, `https`, or `ws`/`wss` for a WebSocket API (upgrades proxied).
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
    /// The path the servers know the API under.
    pub api_mapping: Option<ApiMapping>,
    /// Sticky servers: a client's later requests go to the server that answered its first
    /// (a `portcullis_server` cookie names it).
    #[serde(deserialize_with = "loose::flag")]
    pub cookie_persistence_enabled: bool,
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
            api_mapping: None,
            cookie_persistence_enabled: false,
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
    /// Parsed `bytes_in_threshold` and `bytes_out_threshold` (WebSocket APIs).
    #[serde(skip)]
    pub bytes: crate::checker::websocket::Thresholds,
    /// Round-robin position and per-server health, shared by every checker worker (the API
    /// is shared through the registry), so the request path neither locks nor allocates.
    #[serde(skip)]
    pub balance: Arc<Balance>,
}

/// Where the next request goes, which servers are failing, and which are at their limits.
#[derive(Debug, Default)]
pub struct Balance {
    /// Requests so far (the round-robin position).
    pub next: AtomicUsize,
    /// One per server, in `servers` order.
    pub servers: Vec<ServerState>,
    /// Woken when a request to one of the servers ends (for `server_connection_queueing`).
    pub freed: tokio::sync::Notify,
    /// Requests waiting for a server now (`server_connection_queueing`).
    pub queued: AtomicUsize,
}

/// One server's health and load against its limits.
#[derive(Debug, Default)]
pub struct ServerState {
    /// Consecutive failures (requests or health probes).
    pub failures: AtomicU32,
    /// Milliseconds since [`epoch_ms`]'s start at the last failure.
    pub last_failure_ms: AtomicU64,
    /// Requests in flight to the server now.
    pub in_flight: AtomicU32,
    /// `server_connection_quota` (0: no limit).
    pub quota: u32,
    /// Parsed `server_spike_threshold`: (requests, per seconds).
    pub spike: Option<(u32, u64)>,
    /// The current spike window: (start, [`epoch_ms`]; requests in it).
    pub window: std::sync::Mutex<(u64, u32)>,
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
    let ignored_fields = unknown::ignored_fields(&value, &understood);
    rules::check(&meta).map_err(err)?;
    let decoy_paths = rules::decoy_paths(&meta)
        .map_err(|m| err(format!("field `decoy_config.decoy_subpaths`: {m}")))?;
    let spike = rules::parse_spike(
        "client_spike_threshold",
        meta.flow_control
            .as_ref()
            .map_or("", |f| f.client_spike_threshold.as_str()),
    )
    .map_err(|m| err(format!("field `flow_control.{m}`")))?;
    let flow = meta.flow_control.clone().unwrap_or_default();
    let bytes = crate::checker::websocket::Thresholds {
        bytes_in: rules::parse_spike("bytes_in_threshold", &flow.bytes_in_threshold)
            .map_err(|m| err(format!("field `flow_control.{m}`")))?,
        bytes_out: rules::parse_spike("bytes_out_threshold", &flow.bytes_out_threshold)
            .map_err(|m| err(format!("field `flow_control.{m}`")))?,
    };
    let servers = meta
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let spike = rules::parse_spike("server_spike_threshold", &s.server_spike_threshold)
                .map_err(|m| err(format!("field `servers[{i}].{m}`")))?;
            Ok(ServerState {
                quota: s.server_connection_quota.unwrap_or(0),
                spike,
                ..ServerState::default()
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Api {
        name: name.into(),
        path: path.into(),
        meta,
        ignored_fields,
        decoy_paths,
        spike,
        bytes,
        balance: Arc::new(Balance {
            next: AtomicUsize::new(0),
            servers,
            freed: tokio::sync::Notify::new(),
            queued: AtomicUsize::new(0),
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

impl Api {
    /// Whether this is a WebSocket API (`protocol` `ws` or `wss`): upgrades are proxied.
    pub fn websocket(&self) -> bool {
        matches!(
            self.meta.protocol.trim().to_ascii_lowercase().as_str(),
            "ws" | "wss"
        )
    }
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

/// The path the servers get for a request to `api`: `api_mapping.internal_url` in place of
/// the API's `url`. `forward` and `matched` are the request path's two normal forms
/// (`target::NormalPath`); when the `url` prefix is hidden behind `;` parameters in
/// `forward`, the tail is taken from `matched`, the form routing judged.
pub fn internal_path(api: &Api, forward: &str, matched: &str) -> String {
    let mapped = api
        .meta
        .api_mapping
        .as_ref()
        .map_or("", |m| m.internal_url.trim());
    if mapped.is_empty() {
        return forward.to_owned();
    }
    let mapped = mapped.trim_end_matches('/');
    let base = api.meta.url.trim_end_matches('/');
    let tail = if under(forward, api.meta.url.as_str()) {
        &forward[base.len()..]
    } else {
        matched.get(base.len()..).unwrap_or("")
    };
    let path = format!("{mapped}{tail}");
    if path.is_empty() {
        "/".to_owned()
    } else {
        path
    }
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
mod tests;
