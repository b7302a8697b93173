//! The API servers behind the checker: the backend connection pool, round-robin choice of a
//! healthy server, health probes, the headers a forwarded request carries about its client,
//! and telling a client's broken body from a server's failure.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
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
pub(super) type Backends = Client<HttpConnector, Body>;

/// A fresh backend pool (one per worker runtime: no cross-thread wake-ups per request).
pub(super) fn backend_client() -> Backends {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(3)));
    // A small send buffer: the backend clock (`deadline::Progress`) moves when hyper can
    // write more of a request body, and with the kernel's up-to-4 MiB autotuned buffer a
    // backend steadily reading a large upload could look stalled between wake-ups.
    connector.set_send_buffer_size(Some(64 << 10));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// The next usable server of `api`, round robin: a server past `health_retry_count`
/// failures is skipped; without health checks it is tried again after [`RETRY_AFTER`].
pub(super) fn pick(api: &Api) -> Option<usize> {
    let servers = &api.meta.servers;
    let b = &api.balance;
    let start = b.next.fetch_add(1, Ordering::Relaxed);
    let limit = api.meta.health_retry_count.unwrap_or(3).max(1);
    let now = epoch_ms();
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
/// a good one puts the server back.
pub(super) async fn health_loop(
    registry: Arc<ApiRegistry>,
    client: Backends,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for api in registry.apis().values().filter(|a| a.meta.health_check) {
            let every = Duration::from_secs(api.meta.health_check_interval.unwrap_or(10).max(1));
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
