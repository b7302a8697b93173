//! The checker's listeners and per-request logic (see the module doc of `checker`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::api::{self, Api};
use super::extract;
use super::lists::L7Lists;
use super::target;
use super::{ApiRegistry, CheckerConfig, L7Stats};
use crate::model::Kind;
use crate::model::List;
use crate::service::unix_now;
use crate::writer::{Detection, Writer};

/// Errors a response body can end with.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The checker's response body.
pub(super) type Body = BoxBody<Bytes, BoxError>;

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
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

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Everything a request handler needs, shared by every connection.
pub struct Proxy {
    registry: Arc<ApiRegistry>,
    lists: Arc<RwLock<L7Lists>>,
    writer: Writer,
    stats: Arc<L7Stats>,
    cfg: CheckerConfig,
    /// `cfg.trusted_proxies`, parsed.
    trusted: Vec<crate::model::Cidr>,
    detection_ttl: u64,
    client: Client<HttpConnector, Body>,
    /// Per-client request windows (shared by workers).
    spikes: Arc<super::spikes::Spikes>,
}

/// How long a failed server is skipped when no health check will bring it back.
const RETRY_AFTER: Duration = Duration::from_secs(10);

fn backend_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(3)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

impl Proxy {
    /// Builds the shared state.
    pub fn new(
        registry: Arc<ApiRegistry>,
        lists: Arc<RwLock<L7Lists>>,
        writer: Writer,
        stats: Arc<L7Stats>,
        cfg: CheckerConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let detection_ttl =
            crate::config::parse_duration(&cfg.detection_ttl).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Self {
            registry,
            lists,
            writer,
            stats,
            trusted: cfg.trusted_proxies(),
            cfg,
            detection_ttl,
            client: backend_client(),
            spikes: Arc::default(),
        }))
    }

    /// The checker's configuration.
    pub fn config(&self) -> &CheckerConfig {
        &self.cfg
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
            client: backend_client(),
            spikes: self.spikes.clone(),
        })
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<Body>, Infallible> {
        Ok(self.decide(req, peer, tls).await)
    }

    async fn decide(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let apis = self.registry.apis();
        // The target as the server will resolve it; what servers resolve differently is
        // refused rather than guessed.
        let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
            Some(Err(_)) => Err(target::TargetError::HostMismatch),
            hdr => target::request_host(
                hdr.and_then(Result::ok),
                req.uri().authority().map(|a| a.as_str()),
            ),
        };
        let (host, path) = match (host, target::normalize_path(req.uri().path())) {
            (Ok(h), Ok(p)) => (h, p),
            (Err(e), _) | (_, Err(e)) => {
                self.stats.hit("bad_request");
                tracing::debug!("malformed request target: {e}");
                return full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n");
            }
        };
        let Some(api) = api::route(&apis, &host, &path.matched) else {
            self.stats.hit("unknown_api");
            return full(StatusCode::SERVICE_UNAVAILABLE, "Error: Unknown API\n");
        };
        let now = unix_now();
        let Some(ip) = extract::client_ip(req.headers(), peer, &self.trusted) else {
            self.stats.hit("bad_request");
            return full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n");
        };
        let from_proxy = self
            .trusted
            .iter()
            .any(|c| c.contains(peer.ip().to_canonical()));
        let ids = extract::identifiers(&api.meta, req.headers(), req.uri().query(), ip, from_proxy);
        let keys = ids.keys();
        let (allowed, denied) = {
            let lists = match self.lists.read() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            (
                ids.listed(&lists, List::Allow, &keys, &api.name, now),
                ids.listed(&lists, List::Deny, &keys, &api.name, now),
            )
        };
        if allowed.is_some() {
            self.stats.hit("allowed");
            return self.forward(api, req, &path.forward, peer, ip, tls).await;
        }
        if let Some(who) = denied {
            if api.meta.enable_blocking {
                self.stats.hit("blocked");
                tracing::debug!(api = %api.name, %who, "blocked deny-listed client");
                return full(StatusCode::FORBIDDEN, "Error: Unauthorized\n");
            }
            self.stats.hit("would_block");
        }
        // Decoys: a path no legitimate client calls.
        if let Some(decoy) = api.meta.decoy_config.as_ref().filter(|d| d.decoy_enabled) {
            let hit = decoy.decoy_subpaths.is_empty()
                || decoy.decoy_subpaths.iter().any(|s| {
                    api::under(
                        &path.matched,
                        &format!(
                            "{}/{}",
                            api.meta.url.trim_end_matches('/'),
                            s.trim_start_matches('/')
                        ),
                    )
                });
            if hit {
                self.stats.hit("decoy");
                self.detect(api, "decoy", Some((Kind::Ip, None, ip.to_string())))
                    .await;
                let code = decoy
                    .response_code
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::OK);
                return full(code, decoy.response_message.clone());
            }
        }
        if let Some(p) = &api.meta.api_pattern_enforcement {
            let violation = super::pattern::violation(p, &req, tls);
            if let Some(reason) = violation {
                self.stats.hit(&reason.replace('-', "_"));
                self.detect(api, reason, ids.culprit()).await;
                let code = p
                    .error_code
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::UNAUTHORIZED);
                let body = if p.error_message_body.is_empty() {
                    "Error: Unauthorized\n".to_owned()
                } else {
                    p.error_message_body.clone()
                };
                return full(code, body);
            }
        }
        if api.meta.is_token_mandatory && ids.tokens.is_empty() {
            self.stats.hit("missing_token");
            self.detect(api, "missing-token", Some((Kind::Ip, None, ip.to_string())))
                .await;
            return full(StatusCode::UNAUTHORIZED, "Error: Unauthorized\n");
        }
        if let Some((n, per)) = api.spike
            && self.over_spike(&api.name, ip, n, per)
        {
            self.stats.hit("rate_limited");
            return full(StatusCode::TOO_MANY_REQUESTS, "Error: Too Many Requests\n");
        }
        self.forward(api, req, &path.forward, peer, ip, tls).await
    }

    /// Puts the culprit of a detection on the deny list (source `checker`), unless the
    /// request was allow-listed (checked before any detection).
    async fn detect(
        &self,
        api: &Api,
        reason: &str,
        culprit: Option<(Kind, Option<String>, String)>,
    ) {
        let Some((kind, name, value)) = culprit else {
            return;
        };
        // The proxies in front of us speak for many clients: never deny-list one.
        if kind == Kind::Ip
            && let Ok(ip) = value.parse::<IpAddr>()
            && self.trusted.iter().any(|c| c.contains(ip))
        {
            tracing::warn!(api = %api.name, reason, %ip, "attack detected from a trusted proxy's address: not deny-listed");
            return;
        }
        let detection = Detection {
            kind,
            name,
            value,
            reason: format!("{reason} on API {}", api.name),
            ttl_secs: self.detection_ttl,
        };
        match self.writer.detect(detection).await {
            Ok(_) => {
                tracing::warn!(api = %api.name, reason, ?kind, "attack detected; client deny-listed")
            }
            Err(e) => {
                tracing::warn!(api = %api.name, reason, "attack detected but not deny-listed: {e}")
            }
        }
    }

    fn over_spike(&self, api: &str, ip: IpAddr, n: u32, per: u64) -> bool {
        // Counted per client as connections are: an IPv6 client by its /64.
        let client = super::listen::client_key(ip);
        self.spikes.over(api, client, n, Duration::from_secs(per))
    }

    /// The next usable server of `api`, round robin: a server past `health_retry_count`
    /// failures is skipped; without health checks it is tried again after [`RETRY_AFTER`].
    fn pick(api: &Api) -> Option<usize> {
        let servers = &api.meta.servers;
        let b = &api.balance;
        let start = b.next.fetch_add(1, Ordering::Relaxed);
        let limit = api.meta.health_retry_count.unwrap_or(3).max(1);
        let now = super::api::epoch_ms();
        (0..servers.len())
            .map(|i| (start + i) % servers.len())
            .find(|i| {
                b.servers.get(*i).is_none_or(|h| {
                    h.failures.load(Ordering::Relaxed) < limit
                        || (!api.meta.health_check
                            && now.saturating_sub(h.last_failure_ms.load(Ordering::Relaxed))
                                >= RETRY_AFTER.as_millis() as u64)
                })
            })
    }

    /// Records a request's or probe's outcome for server `i` of `api`.
    fn mark(api: &Api, i: usize, ok: bool) {
        if let Some(h) = api.balance.servers.get(i) {
            if ok {
                h.failures.store(0, Ordering::Relaxed);
            } else {
                h.failures.fetch_add(1, Ordering::Relaxed);
                h.last_failure_ms
                    .store(super::api::epoch_ms(), Ordering::Relaxed);
            }
        }
    }

    async fn forward(
        &self,
        api: &Api,
        req: Request<Incoming>,
        path: &str,
        peer: SocketAddr,
        client: IpAddr,
        tls: bool,
    ) -> Response<Body> {
        // A declared body over the limit is refused before any server is involved.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cfg.max_body_bytes) {
            self.stats.hit("bad_request");
            return full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n");
        }
        let Some(index) = Self::pick(api) else {
            self.stats.hit("bad_gateway");
            return full(StatusCode::BAD_GATEWAY, "Error: no healthy server\n");
        };
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // The normalised path, so the server serves what the checker judged.
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let server = &api.meta.servers[index];
        let Ok(uri) = format!("http://{}:{}{}", server.host, server.port, pq).parse() else {
            self.stats.hit("bad_request");
            return full(StatusCode::BAD_REQUEST, "Error: Bad Request\n");
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        // What the server learns of the client comes from us: a client's own claims are
        // passed on only when its peer is a trusted proxy (every X-Forwarded-For line,
        // joined in order, then this hop), and dropped otherwise.
        let peer_ip = peer.ip().to_canonical();
        let from_proxy = self.trusted.iter().any(|c| c.contains(peer_ip));
        let prev: Vec<String> = if from_proxy {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect()
        } else {
            for h in ["forwarded", "x-real-ip"] {
                parts.headers.remove(h);
            }
            Vec::new()
        };
        let xff = prev
            .into_iter()
            .chain(std::iter::once(peer_ip.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        parts.headers.remove("x-forwarded-for");
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
        let proto = if tls { "https" } else { "http" };
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        let for_ip = match client {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("\"[{a}]\""),
        };
        if let Ok(v) = HeaderValue::from_str(&format!("for={for_ip};proto={proto}")) {
            parts.headers.append(header::FORWARDED, v);
        }
        let body = Limited::new(body, self.cfg.max_body_bytes as usize).boxed();
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                Self::mark(api, index, true);
                self.stats.hit("forwarded");
                let (mut parts, body) = resp.into_parts();
                for h in HOP_BY_HOP {
                    parts.headers.remove(h);
                }
                Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
            }
            Err(e) => {
                // The client's own body failing (cut short, or past the limit) is the
                // client's fault: never count it against the server, or any client could
                // take servers out of rotation.
                match client_body_failure(&e) {
                    Some(ClientBody::TooLarge) => {
                        self.stats.hit("bad_request");
                        return full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n");
                    }
                    Some(ClientBody::Failed) => {
                        self.stats.hit("bad_request");
                        tracing::debug!(api = %api.name, "client request body failed: {e}");
                        return full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n");
                    }
                    None => {}
                }
                Self::mark(api, index, false);
                self.stats.hit("bad_gateway");
                tracing::warn!(api = %api.name, server = %format!("{}:{}", server.host, server.port), "backend failed: {e}");
                full(StatusCode::BAD_GATEWAY, "Error: Bad Gateway\n")
            }
        }
    }

    /// Probes servers of APIs with `health_check`: a failed probe counts like a failed
    /// request; a good one puts the server back.
    pub async fn health_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            for api in self
                .registry
                .apis()
                .values()
                .filter(|a| a.meta.health_check)
            {
                let every =
                    Duration::from_secs(api.meta.health_check_interval.unwrap_or(10).max(1));
                if last.get(&api.name).is_some_and(|t| t.elapsed() < every) {
                    continue;
                }
                last.insert(api.name.clone(), Instant::now());
                for (i, s) in api.meta.servers.iter().enumerate() {
                    let uri = format!("http://{}:{}{}", s.host, s.port, api.meta.health_url);
                    let Ok(req) = Request::get(uri).body(
                        Full::new(Bytes::new())
                            .map_err(|e: Infallible| match e {})
                            .boxed(),
                    ) else {
                        continue;
                    };
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(2), self.client.request(req)).await,
                        Ok(Ok(r)) if r.status().is_success()
                    );
                    Self::mark(api, i, ok);
                }
            }
        }
    }
}

/// How a client's request body failed while it was being forwarded.
enum ClientBody {
    /// Past `max_body_bytes`.
    TooLarge,
    /// Cut short or otherwise broken by the client.
    Failed,
}

/// Whether a forwarding error came from the client's request body rather than the server:
/// hyper reports a failing outgoing body as a "user" error whose source is the body's own
/// error — for the incoming body, another `hyper::Error` (the client's connection broke
/// off) or the length limit. Other "user" errors (a request Portcullis built wrongly) stay
/// server-side failures.
fn client_body_failure(e: &(dyn std::error::Error + 'static)) -> Option<ClientBody> {
    let mut user = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(ClientBody::TooLarge);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if user {
                // A hyper error inside the outgoing body's error: the incoming body failed.
                return Some(ClientBody::Failed);
            }
            user = h.is_user();
        }
        cur = err.source();
    }
    None
}
