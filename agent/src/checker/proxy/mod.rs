//! The checker's per-request logic: the decision, detections, and forwarding (see the module
//! doc of `checker`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::access_log::AccessLog;
use super::api::{self, Api};
use super::budget::{Budget, Limits};
use super::deadline::Deadlines;
use super::extract;
use super::lists::{L7Lists, RequestIdents};
use super::target::{self, NormalPath, TargetError};
use super::upstream::{self, Backends, Body};
use super::{ApiRegistry, CheckerConfig, L7Stats};
use crate::model::Kind;
use crate::model::List;
use crate::service::unix_now;
use crate::writer::Writer;

mod attacks;
mod forward;
mod sideband;
mod trace;

use trace::{Pending, TRACE, Trace, logged_ids, trace};

pub(super) fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(text.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Everything a request handler needs, shared by every connection.
pub struct Proxy {
    registry: Arc<ApiRegistry>,
    lists: Arc<RwLock<L7Lists>>,
    writer: Writer,
    stats: Arc<L7Stats>,
    cfg: CheckerConfig,
    /// `cfg.trusted_proxies`, parsed.
    trusted: Vec<crate::model::Cidr>,
    detection_ttl: Option<u64>,
    /// How long bodies may stall and backends may take to answer.
    deadlines: Deadlines,
    client: Backends,
    /// How `server_ssl` servers are verified (each worker's pool is built from it).
    backend_tls: rustls::ClientConfig,
    /// Per-client request windows (shared by workers).
    spikes: Arc<super::spikes::Spikes>,
    /// What detections may still write (shared by workers).
    budget: Arc<Budget>,
    /// When a backend warning was last logged (`api::epoch_ms`).
    warned_ms: AtomicU64,
    /// Whether detections write (ASE's global switch).
    switches: Arc<crate::service::Switches>,
    /// Where each request is logged, when `access_log` is set.
    access_log: Option<Arc<AccessLog>>,
    /// A WebSocket tunnel with no byte either way for this long is closed (`idle_timeout`).
    ws_idle: Duration,
    /// Set when the agent stops (WebSocket tunnels close).
    stop: watch::Receiver<bool>,
    /// The sideband listeners' settings.
    sideband: super::sideband::SidebandConfig,
    /// `sideband.gateways`, parsed.
    gateways: Vec<crate::model::Cidr>,
    /// Sideband tokens and the authentication switch.
    credentials: Arc<crate::service::Credentials>,
}

/// What every generation of the checker's settings shares.
struct Parts {
    registry: Arc<ApiRegistry>,
    lists: Arc<RwLock<L7Lists>>,
    writer: Writer,
    stats: Arc<L7Stats>,
    switches: Arc<crate::service::Switches>,
    credentials: Arc<crate::service::Credentials>,
    stop: watch::Receiver<bool>,
    spikes: Arc<super::spikes::Spikes>,
}

/// Who sent a request: the client as judged, and the connection it came on.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// The client's address (from a trusted proxy's header, or a sideband body).
    pub ip: IpAddr,
    /// The connection's peer: the client itself, a proxy, or a gateway asking.
    pub peer: IpAddr,
    /// Whether the peer vouches for what it says of the client (a trusted proxy, a gateway).
    pub from_proxy: bool,
}

/// A request judged on its head, before anything is forwarded: the one decision inline and
/// sideband requests share.
pub enum Verdict<'a> {
    /// Go on: inline, forward it; sideband, answer 200.
    Pass {
        /// Its API.
        api: &'a Api,
        /// Its path, as routed and as it goes on.
        path: NormalPath,
    },
    /// A decoy was visited: inline, this is the decoy's answer; sideband, 403 (there is
    /// nothing behind a decoy to forward to).
    Decoy(Response<Body>),
    /// Refused: the answer the client gets.
    Refuse(Response<Body>),
}

/// What the lists say of one request's client.
enum Listing {
    /// An identifier is on the allow list: the request goes through untouched.
    Allowed,
    /// On the deny list (and not allowed): this identifier, for the log.
    Denied(String),
    /// On neither list.
    Unlisted,
}

impl Proxy {
    /// Builds the shared state.
    pub fn new(
        registry: Arc<ApiRegistry>,
        lists: Arc<RwLock<L7Lists>>,
        writer: Writer,
        stats: Arc<L7Stats>,
        config: &crate::config::Config,
        board: &crate::service::Board,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let parts = Parts {
            registry,
            lists,
            writer,
            stats,
            switches: board.switches().clone(),
            credentials: board.credentials().clone(),
            stop,
            spikes: Arc::default(),
        };
        Self::build(parts, config, None)
    }

    /// The same checker (lists, APIs, counters, request windows) with the `[checker]` and
    /// `[sideband]` settings of a reloaded configuration, for the connections accepted from
    /// now on. The access log carries over unless its path changed, the detection budget
    /// unless its limits did. An error (a CA or log file that does not open) changes
    /// nothing.
    pub fn reconfigured(&self, config: &crate::config::Config) -> anyhow::Result<Arc<Self>> {
        let parts = Parts {
            registry: self.registry.clone(),
            lists: self.lists.clone(),
            writer: self.writer.clone(),
            stats: self.stats.clone(),
            switches: self.switches.clone(),
            credentials: self.credentials.clone(),
            stop: self.stop.clone(),
            spikes: self.spikes.clone(),
        };
        Self::build(parts, config, Some(self))
    }

    fn build(
        parts: Parts,
        config: &crate::config::Config,
        before: Option<&Self>,
    ) -> anyhow::Result<Arc<Self>> {
        let cfg = config.checker.clone();
        let sideband = config.sideband.clone();
        let ws_idle = Duration::from_secs(
            crate::config::parse_duration(&cfg.idle_timeout).map_err(anyhow::Error::msg)?,
        );
        let detection_ttl = super::detection_ttl(&cfg.detection_ttl).map_err(anyhow::Error::msg)?;
        let deadlines = Deadlines::from_config(&cfg).map_err(anyhow::Error::msg)?;
        let backend_tls = upstream::backend_tls(cfg.backend_ca.as_deref())?;
        // One writer per file: the same path keeps the open log (its rotation settings are
        // restart-only), a new path gets its own.
        let same_log = |b: &&Self| b.cfg.access_log == cfg.access_log;
        let access_log = match before.filter(same_log) {
            Some(b) => b.access_log.clone(),
            None if cfg.access_log.as_os_str().is_empty() => None,
            None => Some(
                AccessLog::open(
                    &cfg.access_log,
                    cfg.access_log_max_bytes,
                    cfg.access_log_keep,
                    parts.stats.clone(),
                )
                .with_context(|| format!("opening the access log {}", cfg.access_log.display()))?,
            ),
        };
        let same_budget = |b: &&Self| {
            b.cfg.detection_escalate_after == cfg.detection_escalate_after
                && b.cfg.detection_budget == cfg.detection_budget
                && b.cfg.detection_budget_total == cfg.detection_budget_total
        };
        let budget = match before.filter(same_budget) {
            Some(b) => b.budget.clone(),
            None => Arc::new(Budget::new(Limits {
                escalate_after: cfg.detection_escalate_after,
                per_client: cfg.detection_budget,
                total: cfg.detection_budget_total,
            })),
        };
        Ok(Arc::new(Self {
            registry: parts.registry,
            lists: parts.lists,
            writer: parts.writer,
            stats: parts.stats,
            trusted: cfg.trusted_proxies(),
            cfg,
            detection_ttl,
            deadlines,
            client: upstream::backend_client(backend_tls.clone()),
            backend_tls,
            spikes: parts.spikes,
            budget,
            warned_ms: AtomicU64::new(0),
            switches: parts.switches,
            access_log,
            ws_idle,
            stop: parts.stop,
            gateways: sideband.gateways(),
            sideband,
            credentials: parts.credentials,
        }))
    }

    /// The checker's configuration.
    pub fn config(&self) -> &CheckerConfig {
        &self.cfg
    }

    /// The peers that may ask on the sideband listeners.
    pub fn gateways(&self) -> &[crate::model::Cidr] {
        &self.gateways
    }

    /// A copy for another worker thread: same lists, APIs, health and rate state, but its own
    /// backend connection pool on that thread's runtime (no cross-thread wake-ups per request).
    pub fn worker(&self) -> Arc<Self> {
        Arc::new(Self {
            registry: self.registry.clone(),
            lists: self.lists.clone(),
            writer: self.writer.clone(),
            stats: self.stats.clone(),
            cfg: self.cfg.clone(),
            trusted: self.trusted.clone(),
            detection_ttl: self.detection_ttl,
            deadlines: self.deadlines,
            client: upstream::backend_client(self.backend_tls.clone()),
            backend_tls: self.backend_tls.clone(),
            spikes: self.spikes.clone(),
            budget: self.budget.clone(),
            warned_ms: AtomicU64::new(0),
            switches: self.switches.clone(),
            access_log: self.access_log.clone(),
            ws_idle: self.ws_idle,
            stop: self.stop.clone(),
            sideband: self.sideband.clone(),
            gateways: self.gateways.clone(),
            credentials: self.credentials.clone(),
        })
    }

    /// Whether a backend warning may be logged now: one a second per worker at most, so
    /// clients that make backends fail or time out cannot flood the log (the outcome
    /// counters still count every one).
    fn may_warn(&self) -> bool {
        let now = api::epoch_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The answer to an HTTP/2 request over its client's share of slots (see
    /// `admission::Ticket::stream`).
    pub fn over_share(&self) -> Response<Body> {
        self.hit("too_many_streams");
        full(StatusCode::TOO_MANY_REQUESTS, "Error: Too Many Requests\n")
    }

    /// Answers one request; never fails (errors become responses). With an access log,
    /// the request's line is written once its response body is done.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<Body>, Infallible> {
        let log = self.access_log.clone();
        let events = self.writer.events_if_watched();
        if log.is_none() && events.is_none() {
            return Ok(self.decide(req, peer, tls).await);
        }
        let trace = Arc::new(std::sync::Mutex::new(Trace::default()));
        let mut pending = Pending::new(log, events, &req, peer, trace.clone());
        let resp = TRACE.scope(trace, self.decide(req, peer, tls)).await;
        pending.record.status = resp.status().as_u16();
        Ok(resp.map(|body| {
            body.map_frame(move |f| {
                // The whole `Pending` is captured (not only its counter): its drop writes
                // the line when the body is done.
                let p = &mut pending;
                if let Some(d) = f.data_ref() {
                    p.record.bytes += d.len() as u64;
                }
                f
            })
            .boxed()
        }))
    }

    /// Counts one request's outcome (and notes it for the access log).
    fn hit(&self, outcome: &'static str) {
        self.stats.hit(outcome);
        // A no-op unless the request is traced (access log, event stream).
        trace(|t| t.outcomes.push(outcome));
    }

    async fn decide(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let Some(ip) = extract::client_ip(req.headers(), peer, &self.trusted) else {
            self.hit("bad_request");
            return full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n");
        };
        let client = Client {
            ip,
            peer: peer.ip().to_canonical(),
            from_proxy: self.is_trusted_proxy(peer),
        };
        let apis = self.registry.apis();
        match self.judge(&apis, &req, client, None, tls).await {
            Verdict::Pass { api, path } => self.forward(api, req, &path, peer, ip, tls).await,
            Verdict::Decoy(r) | Verdict::Refuse(r) => r,
        }
    }

    /// Judges a request on its head: its API, the lists, the attacks its definition detects
    /// (deny-listing their culprits), and its client's rate. `user`: a username a gateway
    /// authenticated (ASE's sideband `user_info`).
    pub async fn judge<'a, B: hyper::body::Body>(
        &self,
        apis: &'a std::collections::BTreeMap<String, Api>,
        req: &Request<B>,
        client: Client,
        user: Option<&str>,
        tls: bool,
    ) -> Verdict<'a> {
        let (host, path) = match request_target(req) {
            Ok(t) => t,
            Err(e) => {
                self.hit("bad_request");
                tracing::debug!("malformed request target: {e}");
                return Verdict::Refuse(full(
                    StatusCode::BAD_REQUEST,
                    "Error: Malformed Request\n",
                ));
            }
        };
        let Some(api) = api::route(apis, &host, &path.matched) else {
            // As ASE: a host no API answers for, then a path no API of the host owns.
            if !api::serves_host(apis, &host) {
                self.hit("unknown_hostname");
                return Verdict::Refuse(full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Error: Unknown Hostname\n",
                ));
            }
            self.hit("unknown_api");
            return Verdict::Refuse(full(
                StatusCode::SERVICE_UNAVAILABLE,
                "Error: Unknown API\n",
            ));
        };
        let ip = client.ip;
        let mut ids = extract::identifiers(
            &api.meta,
            req.headers(),
            req.uri().query(),
            ip,
            client.from_proxy,
        );
        // A gateway that authenticated the user names it: that, not a header, is the user.
        if let Some(u) =
            user.and_then(|u| crate::model::Identifier::parse(Kind::Username, None, u).ok())
        {
            ids.usernames = vec![u];
            ids.username_vouched = true;
        }
        if TRACE.try_with(|_| ()).is_ok() {
            trace(|t| {
                t.api.clone_from(&api.name);
                t.client = Some(ip);
                t.ids = logged_ids(&ids);
            });
        }
        match self.listing(&ids, &api.name) {
            Listing::Allowed => {
                self.hit("allowed");
                return Verdict::Pass { api, path };
            }
            Listing::Denied(who) if api.meta.enable_blocking => {
                trace(|t| t.matched = Some(who.clone()));
                self.hit("blocked");
                tracing::debug!(api = %api.name, %who, "blocked deny-listed client");
                return Verdict::Refuse(full(StatusCode::FORBIDDEN, "Error: Unauthorized\n"));
            }
            Listing::Denied(who) => {
                trace(|t| t.matched = Some(who));
                self.hit("would_block");
            }
            Listing::Unlisted => {}
        }
        if let Some(verdict) = self
            .attack(api, req, &path.matched, &ids, client, tls)
            .await
        {
            return verdict;
        }
        if let Some((n, per)) = api.spike
            && self.over_spike(&api.name, ip, n, per)
        {
            self.hit("rate_limited");
            return Verdict::Refuse(full(
                StatusCode::TOO_MANY_REQUESTS,
                "Error: Too Many Requests\n",
            ));
        }
        Verdict::Pass { api, path }
    }

    /// Whether `peer` is one of the trusted proxies (whose forwarded headers count).
    fn is_trusted_proxy(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The request's identifiers against both lists (allow wins).
    fn listing(&self, ids: &RequestIdents, api: &str) -> Listing {
        let now = unix_now();
        let keys = ids.keys();
        let lists = match self.lists.read() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let kernel = ids.kernel_verdict(&lists);
        if ids
            .listed(&lists, List::Allow, &keys, kernel, api, now)
            .is_some()
        {
            return Listing::Allowed;
        }
        match ids.listed(&lists, List::Deny, &keys, kernel, api, now) {
            Some(who) => Listing::Denied(who),
            None => Listing::Unlisted,
        }
    }

    fn over_spike(&self, api: &str, ip: IpAddr, n: u32, per: u64) -> bool {
        // Counted per client as connections are: an IPv6 client by its /64.
        let client = super::spikes::client_key(ip);
        self.spikes.over(api, client, n, Duration::from_secs(per))
    }

    /// Probes the servers of APIs with `health_check` (see [`upstream::health_loop`]).
    pub async fn health_loop(proxies: watch::Receiver<Arc<Self>>, shutdown: watch::Receiver<bool>) {
        let registry = proxies.borrow().registry.clone();
        let client = move || proxies.borrow().client.clone();
        upstream::health_loop(registry, client, shutdown).await;
    }
}

/// The host and normalised path as the server will resolve them; what servers resolve
/// differently is refused rather than guessed.
fn request_target<B>(req: &Request<B>) -> Result<(String, NormalPath), TargetError> {
    let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
        Some(Err(_)) => Err(TargetError::HostMismatch),
        hdr => target::request_host(
            hdr.and_then(Result::ok),
            req.uri().authority().map(|a| a.as_str()),
        ),
    };
    Ok((host?, target::normalize_path(req.uri().path())?))
}
