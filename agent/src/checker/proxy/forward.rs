//! Forwarding a judged request to one of its API's servers, and the answers when that
//! fails or the server switches to WebSocket.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::{Proxy, full};
use crate::checker::admission::Ticket;
use crate::checker::api::{self, Api};
use crate::checker::deadline::{self, Deadlines, Progress, Stalling};
use crate::checker::sticky;
use crate::checker::target::NormalPath;
use crate::checker::upstream::{self, Body, Choice, ClientBody, HOP_BY_HOP};
use crate::checker::websocket;

impl Proxy {
    pub(super) async fn forward(
        &self,
        api: &Api,
        req: Request<Incoming>,
        path: &NormalPath,
        peer: SocketAddr,
        client: IpAddr,
        tls: bool,
    ) -> Response<Body> {
        // A declared body over the limit is refused before any server is involved.
        if crate::listen::declared_length(&req).is_some_and(|n| n > self.cfg.max_body_bytes) {
            self.hit("bad_request");
            return full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n");
        }
        let upgrading = api.websocket() && websocket::requested(&req);
        let sticky = api
            .meta
            .cookie_persistence_enabled
            .then(|| sticky::chosen(api, req.headers()))
            .flatten();
        let queueing = api
            .meta
            .flow_control
            .as_ref()
            .is_some_and(|f| f.server_connection_queueing);
        let choice = if queueing {
            upstream::pick_queued(api, sticky, self.deadlines.backend).await
        } else {
            upstream::pick(api, sticky)
        };
        let slot = match choice {
            Choice::Server(slot) => slot,
            Choice::Busy => {
                self.hit("server_busy");
                return full(StatusCode::SERVICE_UNAVAILABLE, "Error: Server Busy\n");
            }
            Choice::Down if api.meta.servers.is_empty() => {
                self.hit("bad_gateway");
                return full(
                    StatusCode::BAD_GATEWAY,
                    "Error: this API has no servers (it is for gateways to ask about)\n",
                );
            }
            Choice::Down => {
                self.hit("bad_gateway");
                return full(StatusCode::BAD_GATEWAY, "Error: no healthy server\n");
            }
        };
        let index = slot.index;
        let server = &api.meta.servers[index];
        let (mut parts, body) = req.into_parts();
        let client_upgrade = parts.extensions.remove::<OnUpgrade>().filter(|_| upgrading);
        let ticket = parts.extensions.remove::<Arc<Ticket>>();
        let ws_key = client_upgrade
            .as_ref()
            .and_then(|_| parts.headers.get("sec-websocket-key").cloned());
        // The normalised path (mapped to the servers' own), so the server serves what the
        // checker judged.
        let path = api::internal_path(api, &path.forward, &path.matched);
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let Ok(uri) = format!("{}{pq}", upstream::origin(api, server)).parse() else {
            self.hit("bad_request");
            return full(StatusCode::BAD_REQUEST, "Error: Bad Request\n");
        };
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        if client_upgrade.is_some() {
            websocket::ask_upgrade(&mut parts.headers);
        }
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        let peer_ip = peer.ip().to_canonical();
        let from_proxy = self.is_trusted_proxy(peer);
        upstream::set_client_headers(&mut parts.headers, peer_ip, from_proxy, client, tls);
        let Deadlines {
            body: client_limit,
            backend: backend_limit,
        } = self.deadlines;
        let progress = Progress::start();
        let body = Stalling::tracked(body, client_limit, progress.clone());
        let body = Limited::new(body, self.cfg.max_body_bytes as usize).boxed();
        let request = self.client.request(Request::from_parts(parts, body));
        match deadline::answer_within(request, &progress, backend_limit).await {
            Some(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                upstream::mark(api, index, true);
                self.upgraded(api, resp, client_upgrade, ws_key, (slot, ticket))
            }
            Some(Ok(resp)) => {
                upstream::mark(api, index, true);
                self.hit("forwarded");
                let (mut parts, body) = resp.into_parts();
                for h in HOP_BY_HOP {
                    parts.headers.remove(h);
                }
                if api.meta.cookie_persistence_enabled && sticky != Some(index) {
                    sticky::remember(api, index, tls, &mut parts.headers);
                }
                // The server's place is held until its answer is read to the end.
                let body = Stalling::new(body, backend_limit).map_frame(move |f| {
                    let _held = &slot;
                    f
                });
                Response::from_parts(parts, body.boxed())
            }
            Some(Err(e)) => self.forward_failed(api, index, &e),
            None => {
                // Not the server's health: a client may pick a slow path on purpose.
                self.hit("gateway_timeout");
                let server = &api.meta.servers[index];
                if self.may_warn() {
                    tracing::warn!(api = %api.name, server = %format!("{}:{}", server.host, server.port), "backend went {backend_limit:?} without taking the request or answering");
                }
                full(StatusCode::GATEWAY_TIMEOUT, "Error: Gateway Timeout\n")
            }
        }
    }

    /// The answer when the server switched protocols: the client is told so, and both
    /// connections go to a WebSocket tunnel holding `hold` (see [`websocket`]).
    fn upgraded(
        &self,
        api: &Api,
        mut resp: Response<Incoming>,
        client: Option<OnUpgrade>,
        key: Option<HeaderValue>,
        hold: impl Send + 'static,
    ) -> Response<Body> {
        // A switch the client did not ask for, or not the WebSocket it asked for: a tunnel
        // would let the client speak raw HTTP to the server past every check.
        let (Some(client), true) = (client, websocket::accepted(key.as_ref(), resp.headers()))
        else {
            self.hit("bad_gateway");
            return full(StatusCode::BAD_GATEWAY, "Error: Bad Gateway\n");
        };
        let server = hyper::upgrade::on(&mut resp);
        let (stats, limits) = (self.stats.clone(), api.bytes);
        let (idle, stop) = (self.ws_idle, self.stop.clone());
        tokio::spawn(async move {
            if websocket::tunnel(client, server, limits, idle, stop, hold).await
                == websocket::Ended::OverThreshold
            {
                stats.hit("websocket_over_threshold");
            }
        });
        self.hit("forwarded");
        let (mut parts, _) = resp.into_parts();
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        websocket::ask_upgrade(&mut parts.headers);
        let empty = Full::new(Bytes::new())
            .map_err(|e: Infallible| match e {})
            .boxed();
        Response::from_parts(parts, empty)
    }

    /// The answer when forwarding failed. The client's own body failing (cut short, or past
    /// the limit) is the client's fault: never counted against the server, or any client
    /// could take servers out of rotation.
    fn forward_failed(
        &self,
        api: &Api,
        index: usize,
        e: &hyper_util::client::legacy::Error,
    ) -> Response<Body> {
        match upstream::client_body_failure(e) {
            Some(ClientBody::TooLarge) => {
                self.hit("bad_request");
                full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n")
            }
            Some(ClientBody::Stalled) => {
                self.hit("request_timeout");
                full(StatusCode::REQUEST_TIMEOUT, "Error: Request Timeout\n")
            }
            Some(ClientBody::Failed) => {
                self.hit("bad_request");
                tracing::debug!(api = %api.name, "client request body failed: {e}");
                full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n")
            }
            None => {
                upstream::mark(api, index, false);
                self.hit("bad_gateway");
                let server = &api.meta.servers[index];
                if self.may_warn() {
                    tracing::warn!(api = %api.name, server = %format!("{}:{}", server.host, server.port), "backend failed: {e}");
                }
                full(StatusCode::BAD_GATEWAY, "Error: Bad Gateway\n")
            }
        }
    }
}
