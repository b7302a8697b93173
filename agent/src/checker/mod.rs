//! The L7 checker: a TLS-terminating reverse proxy in front of the API servers.
//!
//! Per request: find the API (hostname, then longest `url` prefix; none → 503
//! `Error: Unknown API`), extract the client's identifiers as the API definition says, let
//! allow-listed clients through untouched, answer deny-listed ones 403 `Error: Unauthorized`
//! (or count "would block" when the API's `enable_blocking` is off), and turn attacks into
//! deny-list entries with source `checker`: a decoy path (client IP, so the kernel drops its
//! next packets), a method, protocol or content type outside the API's pattern (the client's
//! token, cookie, API key or IP), a missing mandatory token (IP). The rest is forwarded.
//!
//! - [`api`]: ASE API JSON definitions and routing;
//! - [`access_log`]: one JSON line per request, rotated;
//! - [`listen`]: listeners, connection admission, TLS or h2c, one worker runtime per core;
//! - [`target`]: the request's host and path as the server will resolve them;
//! - [`extract`]: identifiers from a request;
//! - [`lists`]: identifiers and per-API IPs in memory; global IPs read from the kernel twin;
//! - [`pattern`]: the API's method, protocol and content-type pattern;
//! - [`spikes`]: per-client request windows;
//! - [`proxy`]: the decision per request, detections, forwarding;
//! - `upstream`: the API servers: pool (TLS with `server_ssl`), choice within limits,
//!   health, forwarded headers;
//! - `sticky`: `cookie_persistence_enabled`, the cookie naming a client's server;
//! - [`websocket`]: upgrades of WebSocket APIs, and their tunnels;
//! - [`tls`]: reloadable certificates;
//! - [`sideband`]: what gateways ask (ASE's sideband, NGINX, Traefik, Envoy), judged by
//!   the same `proxy::Proxy::judge`.

pub mod access_log;
mod activity;
pub mod admission;
pub mod api;
pub mod budget;
pub mod deadline;
pub mod extract;
pub mod listen;
pub mod lists;
pub mod pattern;
pub mod proxy;
pub mod sideband;
pub mod spikes;
mod sticky;
pub mod target;
pub mod tls;
mod upstream;
pub mod websocket;
pub mod windows;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

pub use upstream::backend_tls;

/// `[checker]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckerConfig {
    /// HTTPS listen address ("" = off).
    pub https: String,
    /// Plain HTTP listen address ("" = off).
    pub http: String,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Further certificates, each served to clients whose SNI its names cover (wildcards
    /// as clients read them); `tls_cert` to the others.
    pub tls_certs: Vec<CertFiles>,
    /// Directory of ASE API JSON files.
    pub api_dir: PathBuf,
    /// CA certificates (PEM) that `server_ssl` API servers are verified against; unset: the
    /// system's trust store.
    pub backend_ca: Option<PathBuf>,
    /// Proxies in front of the checker (CIDRs): only when the peer is one of them is
    /// X-Forwarded-For read, and the client is its right-most address that is not one.
    pub trusted_proxies: Vec<String>,
    /// Removed: it trusted the left-most X-Forwarded-For hop, which the client writes.
    /// `true` is refused with a pointer to `trusted_proxies`.
    #[serde(skip_serializing)]
    pub trust_xff: Option<bool>,
    /// Whether detections deny-list their culprits (ASE's `enable_ase_detected_attack`); off,
    /// they are counted as `would_block` and the requests still refused. `portcullis switch
    /// detections on|off` changes it at run time, and that choice is kept.
    pub detections: bool,
    /// What a decoy visit does to the client's address: `kernel` (the default) puts it on the
    /// deny list, so XDP drops its packets for the whole host; `l7`, as ASE, refuses its
    /// requests to every API with 403 and leaves the kernel alone (scope `*`).
    pub decoy_action: String,
    /// The access log (JSON lines, see README); empty: none.
    pub access_log: PathBuf,
    /// Size past which the access log is rotated, bytes.
    pub access_log_max_bytes: u64,
    /// Rotated access logs kept (`access.log.1` …).
    pub access_log_keep: u32,
    /// How long detections stay on the deny list: a duration (default "1h"), or "never"
    /// (until removed, as in ASE; see README for why that is not the default).
    pub detection_ttl: String,
    /// Distinct identifiers (tokens, cookies, keys) one client may have deny-listed per
    /// minute before its address is denied instead (IPv6: its /64); 0 (never) to 8.
    pub detection_escalate_after: u8,
    /// Rows one client's detections may add per minute.
    pub detection_budget: u16,
    /// Rows all detections together may add per minute.
    pub detection_budget_total: u32,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body forwarded, bytes.
    pub max_body_bytes: u64,
    /// A client that sends no complete request head (or first byte, or TLS handshake) for
    /// this long is disconnected, e.g. "30s".
    pub header_timeout: String,
    /// An HTTP/2 connection with no request in flight for this long is closed, e.g. "60s".
    pub idle_timeout: String,
    /// Longest silence inside a request body (408), or while a client does not read its
    /// response (closed), e.g. "30s".
    pub body_timeout: String,
    /// Longest a backend goes without asking for more of the request or starting its answer
    /// (504), or silent inside its response body (cut off); at least `body_timeout`.
    pub backend_timeout: String,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: per /64); trusted
    /// proxies count only against `max_connections`.
    pub max_connections_per_client: u32,
    /// Most HTTP/2 requests in flight at once from one client beyond each connection's
    /// first (each holds a backend request; 429 past it); trusted proxies are not capped.
    pub max_streams_per_client: u32,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        Self {
            https: String::new(),
            http: String::new(),
            tls_cert: PathBuf::from("/etc/portcullis/tls/cert.pem"),
            tls_key: PathBuf::from("/etc/portcullis/tls/key.pem"),
            tls_certs: Vec::new(),
            api_dir: PathBuf::from("/etc/portcullis/apis"),
            backend_ca: None,
            trusted_proxies: Vec::new(),
            trust_xff: None,
            detections: true,
            decoy_action: "kernel".into(),
            access_log: PathBuf::new(),
            access_log_max_bytes: 100 << 20,
            access_log_keep: 5,
            detection_ttl: "1h".into(),
            detection_escalate_after: 3,
            detection_budget: 10,
            detection_budget_total: 1000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 << 20,
            header_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            body_timeout: "30s".into(),
            backend_timeout: "60s".into(),
            max_connections: 20_000,
            max_connections_per_client: 200,
            max_streams_per_client: 1000,
        }
    }
}

/// One certificate chain and its key (PEM files).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl CheckerConfig {
    /// Every certificate and key the HTTPS listener serves: `tls_cert` first (the default),
    /// then `tls_certs`.
    pub fn tls_pairs(&self) -> Vec<(PathBuf, PathBuf)> {
        std::iter::once((self.tls_cert.clone(), self.tls_key.clone()))
            .chain(
                self.tls_certs
                    .iter()
                    .map(|c| (c.cert.clone(), c.key.clone())),
            )
            .collect()
    }

    /// `trusted_proxies` parsed (validated by `Config::validate`; bad entries are skipped
    /// here).
    pub fn trusted_proxies(&self) -> Vec<crate::model::Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// Whether any listener is configured.
    pub fn enabled(&self) -> bool {
        !self.https.is_empty() || !self.http.is_empty()
    }
}

/// The loaded APIs, swapped whole on reload.
#[derive(Default)]
pub struct ApiRegistry {
    dir: PathBuf,
    current: RwLock<Arc<BTreeMap<String, api::Api>>>,
    errors: RwLock<Vec<api::ApiError>>,
    /// `enable_blocking` set by the CLI per API (ASE's `enable_blocking API`), over the
    /// files; applied at every load.
    blocking: RwLock<BTreeMap<String, bool>>,
}

/// Definitions read from the API directory, every file loaded (see [`ApiRegistry::read`]).
pub struct Apis(BTreeMap<String, api::Api>);

impl ApiRegistry {
    /// Loads every API file in `dir`; broken files are reported and skipped.
    pub fn load(dir: PathBuf) -> Self {
        let r = Self {
            dir,
            ..Self::default()
        };
        r.reload();
        r
    }

    /// The directory the definitions are read from.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Re-reads the directory; returns the number of APIs loaded and the broken files.
    /// At start: what loads is installed, broken files are logged and listed.
    pub fn reload(&self) -> (usize, Vec<api::ApiError>) {
        let (apis, errors) = api::load_dir(&self.dir);
        for e in &errors {
            tracing::error!("API definition refused: {e}");
        }
        let n = self.install_with(apis, &errors);
        (n, errors)
    }

    /// Reads every definition in the directory, once, for [`Self::install`]; `Err` is the
    /// files that do not load, and then nothing should be installed (their APIs would
    /// vanish from the running checker).
    pub fn read(&self) -> Result<Apis, Vec<api::ApiError>> {
        let (apis, errors) = api::load_dir(&self.dir);
        if errors.is_empty() {
            Ok(Apis(apis))
        } else {
            Err(errors)
        }
    }

    /// Puts what [`Self::read`] returned in place of the running definitions; returns how
    /// many there are.
    pub fn install(&self, apis: Apis) -> usize {
        self.install_with(apis.0, &[])
    }

    fn install_with(
        &self,
        mut apis: BTreeMap<String, api::Api>,
        errors: &[api::ApiError],
    ) -> usize {
        for a in apis.values().filter(|a| !a.ignored_fields.is_empty()) {
            tracing::info!(api = %a.name, fields = ?a.ignored_fields, "API definition fields Portcullis does not use");
        }
        let n = apis.len();
        if let Ok(mut c) = self.current.write() {
            // Under the lock: a `set_blocking` at the same moment is either seen here or
            // applied to this map after it.
            self.override_blocking(&mut apis);
            // An API whose servers are unchanged keeps their health, requests in flight and
            // spike windows: a reload must not reset quotas or bring a failed server back.
            for (name, a) in &mut apis {
                if let Some(old) = c.get(name)
                    && old.meta.servers == a.meta.servers
                {
                    a.balance = old.balance.clone();
                }
            }
            *c = Arc::new(apis);
        }
        if let Ok(mut e) = self.errors.write() {
            *e = errors.to_vec();
        }
        n
    }

    /// Sets the CLI's `enable_blocking` of API `name`, now and for every later load.
    pub fn set_blocking(&self, name: &str, on: bool) {
        if let Ok(mut b) = self.blocking.write() {
            b.insert(name.to_owned(), on);
        }
        if let Ok(mut c) = self.current.write() {
            let mut apis = (**c).clone();
            self.override_blocking(&mut apis);
            *c = Arc::new(apis);
        }
    }

    /// The CLI's `enable_blocking` overrides kept from earlier runs.
    pub fn set_blocking_overrides(&self, overrides: BTreeMap<String, bool>) {
        for (name, on) in overrides {
            self.set_blocking(&name, on);
        }
    }

    fn override_blocking(&self, apis: &mut BTreeMap<String, api::Api>) {
        let Ok(b) = self.blocking.read() else {
            return;
        };
        for (name, on) in b.iter() {
            if let Some(a) = apis.get_mut(name) {
                a.meta.enable_blocking = *on;
            }
        }
    }

    /// The current APIs.
    pub fn apis(&self) -> Arc<BTreeMap<String, api::Api>> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Files refused at the last load.
    pub fn errors(&self) -> Vec<api::ApiError> {
        self.errors.read().map(|e| e.clone()).unwrap_or_default()
    }
}

/// `checker.detection_ttl` in seconds; `None` for "never" (until removed).
pub fn detection_ttl(value: &str) -> Result<Option<u64>, String> {
    match value.trim() {
        "never" => Ok(None),
        v => crate::config::parse_duration(v)
            .map(Some)
            .map_err(|e| format!("{e}, or \"never\"")),
    }
}

/// What happened to requests, by outcome (exported in stats and metrics). Then two that
/// count detections, which are also counted under their attack's outcome, and the access
/// log's dropped lines.
pub const OUTCOMES: [&str; 25] = [
    "forwarded",
    "allowed",
    "blocked",
    "would_block",
    "decoy",
    "invalid_method",
    "invalid_protocol",
    "invalid_content_type",
    "missing_token",
    "unknown_api",
    "unknown_hostname",
    "redirected",
    "rate_limited",
    "too_many_streams",
    "bad_gateway",
    "server_busy",
    "websocket_over_threshold",
    "bad_request",
    "request_timeout",
    "gateway_timeout",
    "detection_escalated",
    "detection_over_budget",
    "access_log_dropped",
    "sideband_passed",
    "sideband_refused",
];

/// Request counters per outcome.
#[derive(Default)]
pub struct L7Stats {
    counts: [AtomicU64; OUTCOMES.len()],
}

impl L7Stats {
    /// Counts one request with `outcome` (one of [`OUTCOMES`]).
    pub fn hit(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(outcome, count)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .zip(&self.counts)
            .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
            .collect()
    }
}
