//! The checker's listeners: sockets, which connections are admitted, and how long a
//! connection may hold a slot without doing anything.
//!
//! One client must not be able to exhaust the process's file descriptors or the server's
//! patience: a connection that sends no first byte (or no TLS handshake) within
//! `header_timeout` is closed; HTTP/1 keep-alive connections are closed after the same time
//! without a new request head (hyper's header timeout); HTTP/2 connections with no request in
//! flight for `idle_timeout` (before their first request: `header_timeout`) get a GOAWAY, and
//! writes to a client that stops reading fail after `body_timeout` (see `deadline`). At most `max_connections` are open at once, and at
//! most `max_connections_per_client` from one address (IPv6 clients by /64; trusted proxies
//! count only against the total). Accept errors (EMFILE) back off instead of spinning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::CheckerConfig;
use super::activity::{Activity, Busy};
use super::deadline::WriteStall;
use super::proxy::Proxy;
use super::tls::Tls;
use crate::model::Cidr;

/// Open connections, in total and per client; a [`Ticket`] holds one slot.
pub struct Admission {
    total: AtomicUsize,
    /// Per client: connections, and HTTP/2 requests beyond each connection's first.
    per_client: Mutex<HashMap<IpAddr, [u32; 2]>>,
    max_total: usize,
    max_per_client: [u32; 2],
    exempt: Vec<Cidr>,
    /// Connections refused at the door since start.
    pub refused: AtomicU64,
}

/// One admitted connection's slot, given back on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    client: Option<IpAddr>,
}

impl Admission {
    /// Limits from the checker's configuration; `exempt` (trusted proxies) count only
    /// against the total.
    pub fn new(cfg: &CheckerConfig, exempt: Vec<Cidr>) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            max_total: cfg.max_connections.max(1),
            max_per_client: [
                cfg.max_connections_per_client.max(1),
                cfg.max_streams_per_client,
            ],
            exempt,
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `peer`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let peer = peer.to_canonical();
        let client = (!self.exempt.iter().any(|c| c.contains(peer)))
            .then(|| super::spikes::client_key(peer));
        if let Some(key) = client
            && !self.take(key, CONNECTION)
        {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Ticket {
            admission: self.clone(),
            client,
        })
    }

    /// One of `key`'s slots of `kind` ([`CONNECTION`] or [`STREAM`]), unless all are taken.
    fn take(&self, key: IpAddr, kind: usize) -> bool {
        let mut m = self
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = m.entry(key).or_insert([0, 0]);
        if held[kind] >= self.max_per_client[kind] {
            if held == &[0, 0] {
                m.remove(&key);
            }
            return false;
        }
        held[kind] += 1;
        true
    }

    fn give_back(&self, key: IpAddr, kind: usize) {
        let mut m = self
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = m.get_mut(&key) {
            held[kind] = held[kind].saturating_sub(1);
            if held == &[0, 0] {
                m.remove(&key);
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Which of a client's slots: its connections.
const CONNECTION: usize = 0;
/// Which of a client's slots: its HTTP/2 requests beyond each connection's first.
const STREAM: usize = 1;

impl Ticket {
    /// A slot for an HTTP/2 request beyond the connection's first: each holds a backend
    /// request as a connection does, so `max_streams_per_client` caps them per client.
    /// `None` when the client has none left (trusted proxies always have).
    pub fn stream(self: &Arc<Self>) -> Option<StreamSlot> {
        if let Some(key) = self.client
            && !self.admission.take(key, STREAM)
        {
            return None;
        }
        Some(StreamSlot(self.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            self.admission.give_back(key, CONNECTION);
        }
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client slot held by an HTTP/2 request beyond its connection's first; given back on
/// drop.
pub struct StreamSlot(Arc<Ticket>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(key) = self.0.client {
            self.0.admission.give_back(key, STREAM);
        }
    }
}

/// The connection's timing limits.
#[derive(Clone, Copy)]
struct Limits {
    /// First byte / TLS handshake / request head.
    head: Duration,
    /// HTTP/2 with nothing in flight.
    idle: Duration,
    /// A client not reading what is sent to it.
    write_stall: Duration,
}

fn limits(cfg: &CheckerConfig) -> Limits {
    let secs = |t: &str, d| crate::config::parse_duration(t).unwrap_or(d);
    Limits {
        head: Duration::from_secs(secs(&cfg.header_timeout, 30).max(1)),
        idle: Duration::from_secs(secs(&cfg.idle_timeout, 60).max(1)),
        write_stall: Duration::from_secs(secs(&cfg.body_timeout, 30).max(1)),
    }
}

/// A listening socket with SO_REUSEPORT, so each worker thread accepts on its own.
pub fn reuseport_listener(addr: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("listen address {addr:?}"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(1024)?)
}

/// Where a checker listener comes from.
pub enum Endpoint {
    /// An address each worker binds with its own SO_REUSEPORT socket (the kernel spreads
    /// connections between them).
    Bind(String),
    /// A socket the service manager passed (see [`crate::activation`]), shared by the
    /// workers: it outlives the agent, so clients wait in its backlog during a restart.
    Passed(std::net::TcpListener),
}

impl Endpoint {
    /// One worker's listener, registered with the runtime entered.
    fn listener(&self) -> anyhow::Result<TcpListener> {
        match self {
            Self::Bind(addr) => reuseport_listener(addr),
            Self::Passed(l) => {
                let l = l.try_clone()?;
                l.set_nonblocking(true)?;
                Ok(TcpListener::from_std(l)?)
            }
        }
    }
}

/// Runs the checker's listeners on `workers` threads, each with its own single-threaded
/// runtime, until `shutdown` flips; then each worker drains its connections (see
/// [`serve`]). Listeners are set up before this returns, so address errors surface at
/// start-up.
pub fn spawn_workers(
    workers: usize,
    https: Option<(Endpoint, Arc<Tls>)>,
    http: Option<Endpoint>,
    proxy: &Arc<Proxy>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let admission = Admission::new(proxy.config(), proxy.config().trusted_proxies());
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tls_l, http_l) = {
            let _guard = rt.enter();
            let t = https
                .as_ref()
                .map(|(e, tls)| e.listener().map(|l| (l, tls.clone())))
                .transpose()?;
            let h = http.as_ref().map(Endpoint::listener).transpose()?;
            (t, h)
        };
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        let admission = admission.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("checker-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let worker = proxy.worker();
                        let mut tasks = Vec::new();
                        for (l, tls) in
                            [tls_l.map(|(l, t)| (l, Some(t))), http_l.map(|l| (l, None))]
                                .into_iter()
                                .flatten()
                        {
                            tasks.push(tokio::spawn(serve(
                                l,
                                tls,
                                worker.clone(),
                                admission.clone(),
                                shutdown.clone(),
                            )));
                        }
                        for t in tasks {
                            let _ = t.await;
                        }
                    });
                })?,
        );
    }
    Ok(handles)
}

/// Accepts connections on `listener` until `shutdown` flips; with `tls`, terminates TLS.
/// Then it stops accepting (a passed socket keeps queueing clients for the next agent) and
/// waits for its connections to finish what they are doing: each closes once idle, after
/// its request in flight. The agent's `shutdown_grace` bounds the wait.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    proxy: Arc<Proxy>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = limits(proxy.config());
    let mut last_warning: Option<Instant> = None;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // Finished connections are reaped as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close instead of spinning,
                    // and say so once a second at most.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!("checker accept failed: {e} (backing off)");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let Some(ticket) = admission.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let tls = tls.clone();
        connections.spawn(connection(
            stream,
            peer,
            tls,
            proxy,
            limits,
            Arc::new(ticket),
            shutdown.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once the agent is stopping (at once if it already is).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel means the agent is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Tls>>,
    proxy: Arc<Proxy>,
    limits: Limits,
    ticket: Arc<Ticket>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let stream = WriteStall::new(stream, limits.write_stall);
            let s = match tokio::time::timeout(limits.head, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = Conn {
                peer,
                tls: true,
                limits,
                ticket,
                shutdown,
            };
            http(TokioIo::new(s), h2, conn, proxy).await;
        }
        None => {
            // Nothing sent within the head limit: the slot goes back.
            let mut first = [0u8; 24];
            let n = match tokio::time::timeout(limits.head, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            };
            let h2 = H2_PREFACE.starts_with(&first[..n]) && n >= 3;
            let stream = WriteStall::new(stream, limits.write_stall);
            let conn = Conn {
                peer,
                tls: false,
                limits,
                ticket,
                shutdown,
            };
            http(TokioIo::new(stream), h2, conn, proxy).await;
        }
    }
}

/// One client connection's facts and limits, for [`http`].
struct Conn {
    peer: SocketAddr,
    tls: bool,
    limits: Limits,
    ticket: Arc<Ticket>,
    shutdown: watch::Receiver<bool>,
}

/// While draining, an HTTP/1 connection is closed once it has had nothing in flight for
/// this long (a client that just connected gets to send its request).
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// How often a draining HTTP/1 connection looks whether it is idle.
const DRAIN_TICK: Duration = Duration::from_millis(100);

async fn http<I>(io: I, h2: bool, conn: Conn, proxy: Arc<Proxy>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Conn {
        peer,
        tls,
        limits,
        ticket,
        mut shutdown,
    } = conn;
    let cfg = proxy.config().clone();
    let activity = Activity::new(h2);
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (proxy, seen, ticket) = (proxy.clone(), seen.clone(), ticket.clone());
        async move {
            // In flight until the response body is done or dropped — also when the client
            // resets the stream and the handler is dropped half-way. A second request at
            // once (HTTP/2) takes another of the client's slots.
            let Some(busy) = Busy::new(seen, || ticket.stream()) else {
                return Ok(proxy.over_share());
            };
            let r = proxy.handle(req, peer, tls).await;
            r.map(|mut resp| {
                if busy.closing() {
                    // Draining (HTTP/1): this is the connection's last response.
                    resp.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                resp.map(|body| busy.body(body).boxed())
            })
        }
    });
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_bytes as u32)
            // Each stream holds a backend request: few per connection.
            .max_concurrent_streams(16)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let mut going_away: Option<Instant> = None;
        loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                // The agent stops: GOAWAY; streams in flight finish.
                _ = stopping(&mut shutdown), if going_away.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    going_away = Some(Instant::now());
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Some(since) = going_away {
                        // A client that ignores the GOAWAY loses the connection anyway.
                        if since.elapsed() >= limits.head {
                            break Ok(());
                        }
                        continue;
                    }
                    // Responses the client lets wait through flow control: the socket never
                    // blocks, so only this notices.
                    if activity.stalled_for() >= limits.write_stall {
                        tracing::debug!(%peer, "HTTP/2 client took no response data for {:?}", limits.write_stall);
                        break Ok(());
                    }
                    // Before its first request, a connection has the head limit, as on HTTP/1.
                    let limit = if activity.served() { limits.idle } else { limits.head.min(limits.idle) };
                    if activity.idle_for() >= limit {
                        conn.as_mut().graceful_shutdown();
                        going_away = Some(Instant::now());
                    }
                }
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head)
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .max_headers(cfg.max_headers)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let done = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = stopping(&mut shutdown) => None,
        };
        match done {
            Some(r) => r,
            None => {
                // Draining: the request in flight, if any, gets `Connection: close` on its
                // response; an idle connection is asked to close.
                activity.close_after_response();
                let mut asked = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => break r,
                        _ = tokio::time::sleep(DRAIN_TICK), if !asked => {
                            if activity.idle_for() >= DRAIN_IDLE {
                                conn.as_mut().graceful_shutdown();
                                asked = true;
                            }
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_total_and_per_client_and_gives_slots_back() {
        let cfg = CheckerConfig {
            max_connections: 5,
            max_connections_per_client: 2,
            ..CheckerConfig::default()
        };
        let proxy: Cidr = "198.18.0.1/32".parse().expect("cidr");
        let a = Admission::new(&cfg, vec![proxy]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let t1 = a.admit(ip("198.18.5.5")).expect("first");
        let _t2 = a.admit(ip("198.18.5.5")).expect("second");
        assert!(a.admit(ip("198.18.5.5")).is_none(), "third from one client");
        // IPv6 clients count per /64.
        let _v1 = a.admit(ip("2001:db8::1")).expect("v6");
        let _v2 = a.admit(ip("2001:db8::2")).expect("v6 same /64");
        assert!(a.admit(ip("2001:db8::3")).is_none(), "third from one /64");
        // The trusted proxy counts only against the total (5).
        let _p = a.admit(ip("198.18.0.1")).expect("proxy");
        assert!(a.admit(ip("198.18.0.1")).is_none(), "total reached");
        drop(t1);
        assert!(a.admit(ip("198.18.5.5")).is_some(), "slot given back");
        assert_eq!(a.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn http2_requests_beyond_the_first_take_the_clients_slots() {
        let cfg = CheckerConfig {
            max_connections: 10,
            max_connections_per_client: 2,
            max_streams_per_client: 1,
            ..CheckerConfig::default()
        };
        let proxy: Cidr = "198.18.0.1/32".parse().expect("cidr");
        let a = Admission::new(&cfg, vec![proxy]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let conn = Arc::new(a.admit(ip("198.18.5.5")).expect("connection"));
        let second = conn.stream().expect("second request");
        assert!(conn.stream().is_none(), "third request");
        // Connections are counted apart.
        let _other = a.admit(ip("198.18.5.5")).expect("another connection");
        drop(second);
        assert!(conn.stream().is_some(), "slot given back");
        // Streams do not count against the total; a trusted proxy's are not capped.
        assert_eq!(a.open(), 2);
        let p = Arc::new(a.admit(ip("198.18.0.1")).expect("proxy"));
        let held: Vec<StreamSlot> = (0..5).map(|_| p.stream().expect("proxy stream")).collect();
        assert_eq!(held.len(), 5);
    }
}
