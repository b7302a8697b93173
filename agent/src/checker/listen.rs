//! The checker's listeners: sockets, connections (admitted by `admission`), and how long a
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::CheckerConfig;
use super::activity::{Activity, Busy};
use super::admission::{Admission, Ticket};
use super::deadline::WriteStall;
use super::proxy::Proxy;
use super::tls::Tls;

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

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Clients, whose requests are judged and forwarded.
    Inline,
    /// Gateways asking about their clients' requests (see `checker::sideband`).
    Sideband,
}

/// The checker's listeners: each an endpoint, its certificates when it speaks TLS, and
/// what it serves.
pub type Listeners = Vec<(Endpoint, Option<Arc<Tls>>, Role)>;

/// Runs the checker's listeners on `workers` threads, each with its own single-threaded
/// runtime, until `shutdown` flips; then each worker drains its connections (see
/// [`serve`]). Listeners are set up before this returns, so address errors surface at
/// start-up. `proxies` holds the checker's current settings: a configuration reload sends
/// a new [`Proxy`], which each listener takes for the connections it accepts next.
pub fn spawn_workers(
    workers: usize,
    listeners: Listeners,
    proxies: &watch::Receiver<Arc<Proxy>>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let proxy = proxies.borrow().clone();
    let inline = Admission::new(proxy.config(), proxy.config().trusted_proxies());
    // Gateways carry many clients' requests: only the total caps them.
    let sideband = Admission::new(proxy.config(), proxy.gateways().to_vec());
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bound = {
            let _guard = rt.enter();
            listeners
                .iter()
                .map(|(e, tls, role)| e.listener().map(|l| (l, tls.clone(), *role)))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let bound = match bound {
            Ok(b) => b,
            Err(e) => {
                // Called from the agent's runtime: a runtime may not be dropped there.
                rt.shutdown_background();
                return Err(e);
            }
        };
        let mut proxies = proxies.clone();
        let shutdown = shutdown.clone();
        let (inline, sideband) = (inline.clone(), sideband.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("checker-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let worker = proxies.borrow_and_update().worker();
                        let mut tasks = Vec::new();
                        for (l, tls, role) in bound {
                            let admission = match role {
                                Role::Inline => inline.clone(),
                                Role::Sideband => sideband.clone(),
                            };
                            tasks.push(tokio::spawn(serve(
                                l,
                                tls,
                                role,
                                (worker.clone(), proxies.clone()),
                                admission,
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
/// its request in flight. The agent's `shutdown_grace` bounds the wait. When `proxies`
/// brings new settings, connections accepted from then on use them (and the admission
/// limits follow), and the connections open are drained as at a stop (closed after the
/// request in flight), so their clients come back under the new settings: a proxy no longer
/// trusted or a limit tightened must not live on in a keep-alive connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    role: Role,
    (mut proxy, mut proxies): (Arc<Proxy>, watch::Receiver<Arc<Proxy>>),
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut limits = limits(proxy.config());
    let mut last_warning: Option<Instant> = None;
    let mut connections = tokio::task::JoinSet::new();
    // The connections of the settings in force drain when this flips (new settings, or the
    // agent stops).
    let mut generation = watch::channel(false).0;
    let mut settings_open = true;
    loop {
        let (stream, peer) = tokio::select! {
            // Finished connections are reaped as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            changed = proxies.changed(), if settings_open => {
                if changed.is_err() {
                    settings_open = false;
                    continue;
                }
                proxy = proxies.borrow_and_update().worker();
                limits = self::limits(proxy.config());
                admission.retune(
                    proxy.config(),
                    match role {
                        Role::Inline => proxy.config().trusted_proxies(),
                        Role::Sideband => proxy.gateways().to_vec(),
                    },
                );
                let _ = generation.send(true);
                generation = watch::channel(false).0;
                continue;
            }
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

        // Only gateways may ask: anyone else is dropped before TLS or a request is read.
        if role == Role::Sideband
            && !proxy
                .gateways()
                .iter()
                .any(|g| g.contains(peer.ip().to_canonical()))
        {
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                tracing::warn!(%peer, "sideband connection from a peer outside sideband.gateways: dropped");
                last_warning = Some(Instant::now());
            }
            drop(stream);
            continue;
        }
        let Some(ticket) = admission.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let tls = tls.clone();
        connections.spawn(connection(
            stream,
            (peer, role),
            tls,
            proxy,
            limits,
            Arc::new(ticket),
            generation.subscribe(),
        ));
    }
    let _ = generation.send(true);
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// `work`, unless the agent is stopping and [`DRAIN_FIRST`] has passed since without it
/// finishing: a connection that has not sent its request yet must not hold up the drain.
async fn unless_draining<F: Future>(
    work: F,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    tokio::select! {
        r = work => Some(r),
        _ = async {
            stopping(shutdown).await;
            tokio::time::sleep(DRAIN_FIRST).await;
        } => None,
    }
}

/// Resolves once the agent is stopping (at once if it already is).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel means the agent is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The HTTP/2 server settings for client connections.
fn h2_builder(cfg: &CheckerConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        // Each stream holds a backend request: few per connection.
        .max_concurrent_streams(16)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The HTTP/1 server settings for client connections.
fn h1_builder(cfg: &CheckerConfig, limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers);
    b
}

/// One request on a client connection: counted in flight until its response body is done or
/// dropped (also when the client resets the stream and the handler is dropped half-way); a
/// second request at once (HTTP/2) takes another of the client's slots, and while the
/// connection drains (HTTP/1) the response says `Connection: close`.
async fn respond(
    proxy: Arc<Proxy>,
    seen: Arc<Activity>,
    ticket: Arc<Ticket>,
    req: hyper::Request<hyper::body::Incoming>,
    (peer, role): (SocketAddr, Role),
    tls: bool,
) -> Result<hyper::Response<super::upstream::Body>, std::convert::Infallible> {
    let Some(busy) = Busy::new(seen, || ticket.stream()) else {
        return Ok(proxy.over_share());
    };
    let mut req = req;
    // A WebSocket tunnel outlives the connection's HTTP part: it keeps the ticket.
    req.extensions_mut().insert(ticket);
    let r = match role {
        Role::Inline => proxy.handle(req, peer, tls).await,
        Role::Sideband => proxy.sideband(req, peer).await,
    };
    r.map(|mut resp| {
        // A switch of protocols keeps its `Connection: upgrade`.
        if busy.closing() && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        resp.map(|body| busy.body(body).boxed())
    })
}

/// What the once-a-second look at an HTTP/2 connection decides.
enum H2Tick {
    /// Nothing to do.
    Keep,
    /// Ask the client to go away (GOAWAY); streams in flight finish.
    GoAway,
    /// Close the connection now.
    Close,
}

/// The once-a-second look at an HTTP/2 connection: closed once a response waited on the
/// client for `body_timeout` (flow control never blocks the socket, so only this notices),
/// or once a GOAWAY went unheeded for the head limit;
/// asked to go away once idle for its limit (before its first request, the head limit, as
/// on HTTP/1).
fn h2_tick(
    activity: &Activity,
    limits: &Limits,
    going_away: Option<Instant>,
    peer: SocketAddr,
) -> H2Tick {
    if activity.stalled_for() >= limits.write_stall {
        tracing::debug!(%peer, "HTTP/2 client took no response data for {:?}", limits.write_stall);
        return H2Tick::Close;
    }
    if let Some(since) = going_away {
        // A client that ignores the GOAWAY loses the connection once nothing is in flight
        // for the head limit (at shutdown, the grace ends it sooner; after a reload, long
        // streams finish). Not on a short idleness: hyper may still be sending a response's
        // tail, and closes the connection itself once it is done.
        return if since.elapsed() >= limits.head && activity.idle_for() >= limits.head {
            H2Tick::Close
        } else {
            H2Tick::Keep
        };
    }
    let limit = if activity.served() {
        limits.idle
    } else {
        limits.head.min(limits.idle)
    };
    if activity.idle_for() >= limit {
        H2Tick::GoAway
    } else {
        H2Tick::Keep
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(
    stream: TcpStream,
    (peer, role): (SocketAddr, Role),
    tls: Option<Arc<Tls>>,
    proxy: Arc<Proxy>,
    limits: Limits,
    ticket: Arc<Ticket>,
    mut shutdown: watch::Receiver<bool>,
) {
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let stream = WriteStall::new(stream, limits.write_stall);
            let handshake = tokio::time::timeout(limits.head, acceptor.accept(stream));
            let s = match unless_draining(handshake, &mut shutdown).await {
                Some(Ok(Ok(s))) => s,
                Some(Ok(Err(e))) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Some(Err(_)) => return tracing::debug!(%peer, "TLS handshake timed out"),
                None => return tracing::debug!(%peer, "TLS handshake cut: the agent stops"),
            };
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = Conn {
                peer,
                role,
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
            let peek = tokio::time::timeout(limits.head, stream.peek(&mut first));
            let n = match unless_draining(peek, &mut shutdown).await {
                Some(Ok(Ok(n))) if n > 0 => n,
                _ => return,
            };
            let h2 = H2_PREFACE.starts_with(&first[..n]) && n >= 3;
            let stream = WriteStall::new(stream, limits.write_stall);
            let conn = Conn {
                peer,
                role,
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
    role: Role,
    tls: bool,
    limits: Limits,
    ticket: Arc<Ticket>,
    shutdown: watch::Receiver<bool>,
}

/// While draining, an HTTP/1 connection is closed once it has had nothing in flight for
/// this long (a client that just connected gets to send its request).
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// While draining, how long a connection still in its TLS handshake or before its first byte
/// is given (a client accepted just before the stop, on a slow link).
const DRAIN_FIRST: Duration = Duration::from_secs(2);

/// How often a draining HTTP/1 connection looks whether it is idle.
const DRAIN_TICK: Duration = Duration::from_millis(100);

async fn http<I>(io: I, h2: bool, conn: Conn, proxy: Arc<Proxy>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Conn {
        peer,
        role,
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
        respond(proxy, seen, ticket, req, (peer, role), tls)
    });
    let result = if h2 {
        let conn = h2_builder(&cfg).serve_connection(io, svc);
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
                    match h2_tick(&activity, &limits, going_away, peer) {
                        H2Tick::Close => break Ok(()),
                        H2Tick::GoAway => {
                            conn.as_mut().graceful_shutdown();
                            going_away = Some(Instant::now());
                        }
                        H2Tick::Keep => {}
                    }
                }
            }
        }
    } else {
        let conn = h1_builder(&cfg, &limits)
            .serve_connection(io, svc)
            .with_upgrades();
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
                let mut asked: Option<Instant> = None;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => break r,
                        _ = tokio::time::sleep(DRAIN_TICK) => match asked {
                            None => {
                                if activity.idle_for() >= DRAIN_IDLE {
                                    conn.as_mut().graceful_shutdown();
                                    asked = Some(Instant::now());
                                }
                            }
                            // Still open after being asked. Before its first request: half
                            // a head that never completes, dropped. After one: perhaps the
                            // last response's tail still going out to a slow reader, given
                            // the write-stall limit as any write is.
                            Some(at) => {
                                let wait = if activity.served() { limits.write_stall } else { DRAIN_IDLE };
                                if at.elapsed() >= wait {
                                    break Ok(());
                                }
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
