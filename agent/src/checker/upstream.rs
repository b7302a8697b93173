//! The API servers behind the checker: the backend connection pool (plain HTTP, or TLS for
//! `server_ssl`), the choice of a healthy server within its limits (round robin, or the
//! client's own with `cookie_persistence_enabled`), health probes, the headers a forwarded
//! request carries about its client, and telling a client's broken body from a server's
//! failure.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::ApiRegistry;
use super::api::{Api, epoch_ms};

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The checker's response body.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a failed server is skipped when no health check will bring it back.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
pub(super) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One worker's pool of keep-alive connections to the API servers.
pub(super) type Backends = Client<HttpsConnector<HttpConnector>, Body>;

/// A fresh backend pool (one per worker runtime: no cross-thread wake-ups per request);
/// `tls` verifies the servers of `server_ssl` APIs.
pub(super) fn backend_client(tls: rustls::ClientConfig) -> Backends {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(3)));
    // A small send buffer: the backend clock (`deadline::Progress`) moves when hyper can
    // write more of a request body, and with the kernel's up-to-4 MiB autotuned buffer a
    // backend steadily reading a large upload could look stalled between wake-ups.
    connector.set_send_buffer_size(Some(64 << 10));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// How the checker verifies `server_ssl` servers: against `ca` (PEM) when set, else the
/// system's trust store; TLS 1.2 or 1.3, names checked, as any HTTPS client.
pub fn backend_tls(ca: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    /// Where Debian, RHEL/Fedora and SUSE keep the system's bundle.
    const SYSTEM: [&str; 3] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
    ];
    let mut roots = rustls::RootCertStore::empty();
    if let Some(file) = ca {
        for c in CertificateDer::pem_file_iter(file)
            .with_context(|| format!("reading {}", file.display()))?
        {
            let c = c.with_context(|| format!("parsing {}", file.display()))?;
            roots
                .add(c)
                .with_context(|| format!("a CA certificate in {}", file.display()))?;
        }
        anyhow::ensure!(!roots.is_empty(), "no CA certificate in {}", file.display());
    } else if let Some(file) = SYSTEM.iter().find(|f| std::path::Path::new(f).is_file()) {
        // The system's bundle as it is: a certificate rustls cannot use is skipped, never a
        // reason to refuse to start.
        if let Ok(certs) = CertificateDer::pem_file_iter(file) {
            let (added, skipped) = roots.add_parsable_certificates(certs.flatten());
            tracing::debug!(file, added, skipped, "system CA store for server_ssl");
        }
    } else {
        tracing::debug!("no system CA store: server_ssl servers need [checker] backend_ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `scheme://host:port` of server `s` of `api`.
pub(super) fn origin(api: &Api, s: &super::api::Server) -> String {
    let scheme = if api.meta.server_ssl { "https" } else { "http" };
    match s.host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("{scheme}://[{v6}]:{}", s.port),
        Err(_) => format!("{scheme}://{}:{}", s.host, s.port),
    }
}

/// Where a request can go.
pub(super) enum Choice {
    /// To this server, whose slot the request holds until dropped.
    Server(Slot),
    /// Every healthy server is at its `server_connection_quota` or `server_spike_threshold`.
    Busy,
    /// No server is healthy.
    Down,
}

/// A request's place at one server: counted against its `server_connection_quota` until
/// dropped (which wakes requests queued for a server).
pub(super) struct Slot {
    balance: Arc<super::api::Balance>,
    /// The server, by its index in `servers`.
    pub index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.balance.servers.get(self.index) {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.balance.freed.notify_one();
    }
}

/// Takes a place at server `i` if it is under its limits.
fn take(api: &Api, i: usize) -> Option<Slot> {
    let s = api.balance.servers.get(i)?;
    // Counted first, so that two requests cannot both take a server's last place; given
    // back without a wake-up when refused (a wake-up would only make a queued request try
    // again, and fail, and wake the next).
    let before = s.in_flight.fetch_add(1, Ordering::Relaxed);
    let refuse = || {
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        None
    };
    if s.quota > 0 && before >= s.quota {
        return refuse();
    }
    if let Some((n, per)) = s.spike {
        let now = epoch_ms();
        let mut w = s
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_sub(w.0) >= per * 1000 {
            *w = (now, 0);
        }
        if w.1 >= n {
            return refuse();
        }
        w.1 += 1;
    }
    Some(Slot {
        balance: api.balance.clone(),
        index: i,
    })
}

/// Whether server `i` of `api` is usable: under `health_retry_count` failures, or, without
/// health checks, failed longer than [`RETRY_AFTER`] ago.
fn healthy(api: &Api, i: usize, now: u64) -> bool {
    let limit = api.meta.health_retry_count.unwrap_or(3).max(1);
    api.balance.servers.get(i).is_none_or(|h| {
        h.failures.load(Ordering::Relaxed) < limit
            || (!api.meta.health_check
                && now.saturating_sub(h.last_failure_ms.load(Ordering::Relaxed))
                    >= RETRY_AFTER.as_millis() as u64)
    })
}

/// The server for the next request to `api`: `sticky` (the client's own server) if it is
/// healthy and under its limits, else the next such server round robin.
pub(super) fn pick(api: &Api, sticky: Option<usize>) -> Choice {
    let n = api.meta.servers.len();
    let now = epoch_ms();
    let mut any_healthy = false;
    if let Some(i) = sticky.filter(|i| *i < n && healthy(api, *i, now)) {
        any_healthy = true;
        if let Some(slot) = take(api, i) {
            return Choice::Server(slot);
        }
    }
    let start = api.balance.next.fetch_add(1, Ordering::Relaxed);
    for i in (0..n).map(|k| (start + k) % n) {
        if Some(i) == sticky || !healthy(api, i, now) {
            continue;
        }
        any_healthy = true;
        if let Some(slot) = take(api, i) {
            return Choice::Server(slot);
        }
    }
    if any_healthy {
        Choice::Busy
    } else {
        Choice::Down
    }
}

/// Most requests waiting for the servers of one API; past it they get 503 at once.
const MAX_QUEUED: usize = 1024;

/// [`pick`], waiting up to `wait` for a server to free up when all are busy (ASE's
/// `server_connection_queueing`); at most [`MAX_QUEUED`] requests wait at once.
pub(super) async fn pick_queued(api: &Api, sticky: Option<usize>, wait: Duration) -> Choice {
    let first = pick(api, sticky);
    if !matches!(first, Choice::Busy) {
        return first;
    }
    /// A place in the queue, given back however the wait ends (the client may go away).
    struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Queued<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let queued = &api.balance.queued;
    let place = Queued(queued);
    if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
        return first;
    }
    let choice = wait_for_server(api, sticky, wait).await;
    drop(place);
    choice
}

async fn wait_for_server(api: &Api, sticky: Option<usize>, wait: Duration) -> Choice {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let freed = api.balance.freed.notified();
        match pick(api, sticky) {
            Choice::Busy if tokio::time::Instant::now() < until => {}
            c => return c,
        }
        // Woken by a request ending, or after a tick (a spike window may have passed).
        let tick = (tokio::time::Instant::now() + Duration::from_millis(50)).min(until);
        let _ = tokio::time::timeout_at(tick, freed).await;
    }
}

/// Records a request's or probe's outcome for server `i` of `api`.
pub(super) fn mark(api: &Api, i: usize, ok: bool) {
    if let Some(h) = api.balance.servers.get(i) {
        if ok {
            h.failures.store(0, Ordering::Relaxed);
        } else {
            h.failures.fetch_add(1, Ordering::Relaxed);
            h.last_failure_ms.store(epoch_ms(), Ordering::Relaxed);
        }
    }
}

/// Rewrites what a forwarded request tells the server about its client. The client's own
/// claims are passed on only when its peer is a trusted proxy (every X-Forwarded-For line,
/// joined in order, then this hop) and dropped otherwise; `Forwarded` gains this hop's view.
pub(super) fn set_client_headers(
    headers: &mut HeaderMap,
    peer_ip: IpAddr,
    from_proxy: bool,
    client: IpAddr,
    tls: bool,
) {
    let prev: Vec<String> = if from_proxy {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    } else {
        for h in ["forwarded", "x-real-ip"] {
            headers.remove(h);
        }
        Vec::new()
    };
    let xff = prev
        .into_iter()
        .chain(std::iter::once(peer_ip.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    headers.remove("x-forwarded-for");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let for_ip = match client {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("for={for_ip};proto={proto}")) {
        headers.append(header::FORWARDED, v);
    }
}

/// Probes servers of APIs with `health_check`: a failed probe counts like a failed request;
/// a good one puts the server back. `client` gives the backend client of the settings in
/// force (a reload may change the backend CA).
pub(super) async fn health_loop(
    registry: Arc<ApiRegistry>,
    mut client: impl FnMut() -> Backends,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let client = client();
        for api in registry.apis().values().filter(|a| a.meta.health_check) {
            let every = Duration::from_secs(api.meta.health_check_interval.unwrap_or(10).max(1));
            if last.get(&api.name).is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            last.insert(api.name.clone(), Instant::now());
            for (i, s) in api.meta.servers.iter().enumerate() {
                let uri = format!("{}{}", origin(api, s), api.meta.health_url);
                let Ok(req) = Request::get(uri).body(
                    Full::new(Bytes::new())
                        .map_err(|e: Infallible| match e {})
                        .boxed(),
                ) else {
                    continue;
                };
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(2), client.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success()
                );
                mark(api, i, ok);
            }
        }
    }
}

/// How a client's request body failed while it was being forwarded.
pub(super) enum ClientBody {
    /// Past `max_body_bytes`.
    TooLarge,
    /// Silent for longer than `body_timeout`.
    Stalled,
    /// Cut short or otherwise broken by the client.
    Failed,
}

/// Whether a forwarding error came from the client's request body rather than the server:
/// hyper reports a failing outgoing body as a "user" error whose source is the body's own
/// error — for the incoming body, another `hyper::Error` (the client's connection broke
/// off) or the length limit. Other "user" errors (a request Portcullis built wrongly) stay
/// server-side failures.
pub(super) fn client_body_failure(e: &(dyn std::error::Error + 'static)) -> Option<ClientBody> {
    let mut user = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(ClientBody::TooLarge);
        }
        if err.is::<super::deadline::BodyStalled>() {
            return Some(ClientBody::Stalled);
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
