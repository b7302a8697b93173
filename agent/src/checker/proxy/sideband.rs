//! Answering gateways (see `checker::sideband`): who may ask, the `ASE-Token`, the body,
//! then the same judgement as an inline request, told as each gateway understands it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;

use super::trace::{Pending, TRACE, Trace, clipped, trace};
use super::{Client, Proxy, Verdict, full};
use crate::checker::sideband::{self, Asked, Endpoint};
use crate::checker::upstream::Body;

impl Proxy {
    /// Answers one request on a sideband listener; never fails.
    pub async fn sideband(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        // Refusals are events for `portcullis events` (the gateway keeps its own log).
        let mut resp = match self.writer.events_if_watched() {
            None => self.ask(req, peer).await,
            Some(events) => {
                let trace = Arc::new(std::sync::Mutex::new(Trace::default()));
                let mut pending = Pending::new(None, Some(events), &req, peer, trace.clone());
                let resp = TRACE.scope(trace, self.ask(req, peer)).await;
                pending.record.status = resp.status().as_u16();
                resp
            }
        };
        if !self.sideband.keepalive {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(resp)
    }

    async fn ask(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // Peers outside `sideband.gateways` were dropped at accept (see `listen`).
        let from = peer.ip().to_canonical();
        let Some(endpoint) = Endpoint::of(req.uri().path()) else {
            return full(StatusCode::NOT_FOUND, "Error: no such sideband resource\n");
        };
        if self.credentials.authentication() {
            let valid = req
                .headers()
                .get("ase-token")
                .is_some_and(|t| self.credentials.token_valid(t.as_bytes()));
            if !valid {
                self.hit("sideband_refused");
                return full(
                    StatusCode::UNAUTHORIZED,
                    "Error: Unauthorized (ASE-Token)\n",
                );
            }
        }
        let asked = match endpoint {
            Endpoint::AseRequest | Endpoint::AseResponse => {
                if req.method() != http::Method::POST {
                    return full(StatusCode::METHOD_NOT_ALLOWED, "Error: POST only\n");
                }
                let limit = self.sideband.max_body_bytes;
                // Refused on its declared length, before a `100 Continue` invites the body.
                if crate::listen::declared_length(&req).is_some_and(|n| n > limit as u64) {
                    self.hit("bad_request");
                    return full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n");
                }
                let body = match Limited::new(req.into_body(), limit).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e)
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some() =>
                    {
                        self.hit("bad_request");
                        return full(StatusCode::PAYLOAD_TOO_LARGE, "Error: Payload Too Large\n");
                    }
                    Err(_) => {
                        self.hit("bad_request");
                        return full(StatusCode::BAD_REQUEST, "Error: Malformed Request\n");
                    }
                };
                if endpoint == Endpoint::AseResponse {
                    return match sideband::ase_response(&body) {
                        Ok(()) => full(StatusCode::OK, ""),
                        Err(e) => self.malformed(e),
                    };
                }
                sideband::ase_request(&body, self.cfg.max_headers)
            }
            Endpoint::NginxAuth => sideband::nginx_auth(req.headers()),
            Endpoint::ForwardAuth => sideband::traefik_auth(req.headers()),
            Endpoint::Envoy => sideband::envoy(req.method(), req.uri(), req.headers()),
        };
        let asked = match asked {
            Ok(a) => a,
            Err(e) => return self.malformed(e),
        };
        let Asked {
            request,
            client,
            user,
            tls,
        } = asked;
        trace(|t| {
            t.client = Some(client);
            t.asked = Some((
                clipped(request.method().as_str(), 32),
                clipped(request.uri().path(), 1024),
            ));
        });
        // The headers are the client's own: a username in them vouches for nobody; only
        // one the gateway authenticated (`user_info`) does.
        let who = Client {
            ip: client,
            peer: from,
            from_proxy: false,
        };
        let apis = self.registry.apis();
        let verdict = self.judge(&apis, &request, who, user.as_deref(), tls).await;
        let (status, answer) = match verdict {
            Verdict::Pass { .. } => {
                self.hit("sideband_passed");
                return full(StatusCode::OK, "");
            }
            // Nothing stands behind a decoy: the gateway must not forward the request.
            Verdict::Decoy(_) => (
                StatusCode::FORBIDDEN,
                full(StatusCode::FORBIDDEN, "Error: Unauthorized\n"),
            ),
            Verdict::Refuse(r) => (r.status(), r),
        };
        let refused = |status: StatusCode| {
            let mut r = full(StatusCode::FORBIDDEN, "Error: Unauthorized\n");
            r.headers_mut()
                .insert("x-portcullis-status", HeaderValue::from(status.as_u16()));
            r
        };
        match endpoint {
            // Ping's policies stop a request on 403 only (and read 401 as a bad ASE-Token):
            // every refusal but ASE's 400 and 503 is a 403, the real status beside it.
            Endpoint::AseRequest
                if status != StatusCode::BAD_REQUEST
                    && status != StatusCode::SERVICE_UNAVAILABLE =>
            {
                refused(status)
            }
            // NGINX takes 401 and 403 as refusals and anything else as its own error.
            Endpoint::NginxAuth
                if status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED =>
            {
                refused(status)
            }
            // A refusal is never a success, whatever an API file's error_code says.
            _ if !status.is_client_error() && !status.is_server_error() => refused(status),
            _ => answer,
        }
    }

    fn malformed(&self, e: sideband::AskError) -> Response<Body> {
        self.hit("bad_request");
        tracing::debug!("sideband request refused: {e}");
        full(
            StatusCode::BAD_REQUEST,
            format!("Error: Malformed Request: {e}\n"),
        )
    }
}
