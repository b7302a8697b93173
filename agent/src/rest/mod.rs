//! The management REST API in ASE's layout (its port-8010 paths, `x-ase-access-key` and
//! `x-ase-secret-key`), over TLS, for the automation ASE users bring: allow and deny list
//! add, delete, clear and view; API list and read; firewall status; sideband tokens and
//! authentication. Every change is a control request to the list writer, so every rule the
//! CLI meets holds here (validation, anti-lockout, secrets digested).
//!
//! The access key is configured; the secret key is kept as a salted PBKDF2 digest
//! (`portcullis rest password`), and until one is set every request is refused. A client
//! that fails ten times in a minute gets 429 until the minute ends. Answers are JSON:
//! `{"status_code": "SUCCESS", ...}`, or a `status_code` naming the failure and a
//! `message`.

mod ase;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::checker::tls::Tls;
use crate::service::{Credentials, SecretCheck};
use crate::writer::Writer;

/// `[rest]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// HTTPS listen address ("" = off), e.g. "127.0.0.1:8010"; the checker's certificates.
    pub https: String,
    /// The `x-ase-access-key` (ASE's only one is `admin`).
    pub access_key: String,
    /// Largest request body, bytes (413).
    pub max_body_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Whether `force` in a body may deny everyone or this host (off: refused, as a leaked
    /// key must not cut the host off).
    pub allow_force: bool,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            https: String::new(),
            access_key: "admin".into(),
            max_body_bytes: 1 << 20,
            max_connections: 64,
            allow_force: false,
        }
    }
}

/// Failed attempts one address may make per minute before it gets 429.
const FAILURES_PER_MINUTE: u32 = 10;
/// How long a connection may take to complete its TLS handshake or request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
pub struct Rest {
    writer: Writer,
    credentials: Arc<Credentials>,
    cfg: RestConfig,
    /// Failed authentications per address in the current minute.
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Secret-key checks running at once.
    deriving: Semaphore,
}

/// An answer: status and JSON.
type Answer = (StatusCode, Value);

fn failure(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Answer {
    (
        status,
        json!({"status_code": code, "message": message.to_string()}),
    )
}

impl Rest {
    /// The shared state.
    pub fn new(writer: Writer, credentials: Arc<Credentials>, cfg: RestConfig) -> Arc<Self> {
        Arc::new(Self {
            writer,
            credentials,
            cfg,
            failures: Mutex::default(),
            deriving: Semaphore::new(2),
        })
    }

    /// Serves TLS connections on `listener` until `shutdown` flips.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<Tls>,
        shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        // HTTP/1.1 only: the checker's certificates, without its h2.
        let mut server = (*tls.config()).clone();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let stop = shutdown.clone();
        let listener = Accepting(listener);
        crate::listen::accept_until(listener, shutdown, "REST API", |(stream, peer)| {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                return;
            };
            let rest = self.clone();
            let acceptor = acceptor.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let work = async {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let rest = rest.clone();
                        async move { Ok::<_, std::convert::Infallible>(rest.handle(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEAD_TIMEOUT)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                };
                tokio::select! {
                    () = work => {},
                    _ = stop.changed() => {},
                }
            });
        })
        .await;
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let (status, body) = self.answer(req, peer.ip().to_canonical()).await;
        let mut r = Response::new(Full::new(Bytes::from(
            serde_json::to_vec(&body).unwrap_or_default(),
        )));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }

    async fn answer(&self, req: Request<Incoming>, peer: IpAddr) -> Answer {
        if self.over_failures(peer) {
            return failure(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_FAILURES",
                "too many failed attempts from this address: wait a minute",
            );
        }
        if let Err(a) = self.authenticate(&req).await {
            self.failed(peer);
            tracing::warn!(%peer, "REST request refused: {}", a.1["message"]);
            return a;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        // Refused on its declared length, before a `100 Continue` invites the body.
        if crate::listen::declared_length(&req).is_some_and(|n| n > self.cfg.max_body_bytes as u64)
        {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                format!("bodies are at most {} bytes", self.cfg.max_body_bytes),
            );
        }
        let body = match Limited::new(req.into_body(), self.cfg.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "TOO_LARGE",
                    format!("bodies are at most {} bytes", self.cfg.max_body_bytes),
                );
            }
            Err(_) => return failure(StatusCode::BAD_REQUEST, "BAD_REQUEST", "unreadable body"),
        };
        ase::route(self, &method, &path, &query, &body).await
    }

    /// The keys, checked: the access key as configured, the secret key against its digest.
    async fn authenticate(&self, req: &Request<Incoming>) -> Result<(), Answer> {
        let h = |n: &str| req.headers().get(n).map(|v| v.as_bytes());
        let unauthorized = |m: &str| failure(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m);
        let access =
            h("x-ase-access-key").ok_or_else(|| unauthorized("x-ase-access-key missing"))?;
        let secret =
            h("x-ase-secret-key").ok_or_else(|| unauthorized("x-ase-secret-key missing"))?;
        let access_ok = access == self.cfg.access_key.as_bytes();
        // A key not seen to match before costs a PBKDF2 derivation: off the workers, two
        // at a time at most, so guessers cannot take every core.
        let check = {
            let _permit = self.deriving.acquire().await;
            let (credentials, key) = (self.credentials.clone(), secret.to_vec());
            tokio::task::spawn_blocking(move || credentials.check_secret(&key))
                .await
                .unwrap_or(SecretCheck::Wrong)
        };
        match check {
            SecretCheck::Good if access_ok => Ok(()),
            SecretCheck::Unset => Err(unauthorized(
                "no secret key is set: run `portcullis rest password` on the host",
            )),
            _ => Err(unauthorized("wrong access key or secret key")),
        }
    }

    fn over_failures(&self, peer: IpAddr) -> bool {
        let peer = crate::checker::spikes::client_key(peer);
        let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        f.get(&peer).is_some_and(|(since, n)| {
            since.elapsed() < Duration::from_secs(60) && *n >= FAILURES_PER_MINUTE
        })
    }

    fn failed(&self, peer: IpAddr) {
        // IPv6 by /64, as the checker counts clients: a /64 is one client's to rotate.
        let peer = crate::checker::spikes::client_key(peer);
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if f.len() >= 4096 {
            f.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        if f.len() >= 4096 {
            // Still full of fresh failures: many addresses are guessing; forget the oldest.
            if let Some(oldest) = f
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(k, _)| *k)
            {
                f.remove(&oldest);
            }
        }
        let e = f.entry(peer).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Asks the list writer; its refusal becomes a 400 with its reason.
    async fn control(&self, req: crate::control::proto::Request) -> Result<Value, Answer> {
        let r = self.writer.control(req).await;
        if r.ok {
            Ok(r.result)
        } else {
            Err(failure(
                StatusCode::BAD_REQUEST,
                "REFUSED",
                r.error.unwrap_or_else(|| "refused".into()),
            ))
        }
    }
}

/// The TCP listener with the peer's address kept.
struct Accepting(tokio::net::TcpListener);

impl crate::listen::Listener for Accepting {
    type Stream = (tokio::net::TcpStream, SocketAddr);
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.0.accept().await
    }
}

/// Whether `m` is one of `ms`.
fn is(m: &Method, ms: &[Method]) -> bool {
    ms.contains(m)
}
