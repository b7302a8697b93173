//! The attacks an API's definition detects, and the deny entries they write: decoys,
//! pattern violations, missing tokens; the detection budget; who is never deny-listed.

use http::{Request, Response, StatusCode, header};

use super::trace::pattern_outcome;
use super::{Client, Proxy, Verdict, full};
use crate::checker::api::{self, Api};
use crate::checker::budget::{Culprit, Spend};
use crate::checker::lists::RequestIdents;
use crate::checker::upstream::Body;
use crate::model::Kind;
use crate::writer::Detection;

/// The redirect `http_redirect` asks for: to its `https_url`, with the request's path and
/// query (already a valid URI's, so no header can be smuggled in).
fn redirect<B>(r: &api::HttpRedirect, req: &Request<B>) -> Response<Body> {
    let code = r
        .response_code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let tail = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let to = format!("{}{tail}", r.https_url.trim().trim_end_matches('/'));
    let mut resp = full(code, String::new());
    if let Ok(v) = http::HeaderValue::from_str(&to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

impl Proxy {
    /// The attacks the API's definition detects (a decoy path, a method, protocol or content
    /// type outside its pattern, a missing mandatory token): the culprit is deny-listed and
    /// the answer is the refusal the definition asks for. On an API with `enable_blocking:
    /// false` they are only counted (and `would_block`): nothing is written, and the request
    /// goes on — except to a decoy, which answers as a decoy (there is nothing behind it).
    pub(super) async fn attack<'a, B: hyper::body::Body>(
        &self,
        api: &Api,
        req: &Request<B>,
        path: &str,
        ids: &RequestIdents,
        client: Client,
        tls: bool,
    ) -> Option<Verdict<'a>> {
        let by_ip = || Some((Kind::Ip, None, client.ip.to_string()));
        if let Some(decoy) = api::decoy_hit(api, path) {
            self.hit("decoy");
            self.detect(api, "decoy", client, by_ip()).await;
            let code = decoy
                .response_code
                .and_then(|c| StatusCode::from_u16(c).ok());
            return Some(Verdict::Decoy(full(
                code.unwrap_or(StatusCode::OK),
                decoy.response_message.clone(),
            )));
        }
        if let Some(p) = &api.meta.api_pattern_enforcement
            && let Some(reason) = crate::checker::pattern::violation(p, req, tls)
        {
            // ASE's http_redirect: plain HTTP to an HTTPS-only API is sent there, no attack.
            if reason == "invalid-protocol"
                && !tls
                && let Some(r) = p
                    .http_redirect
                    .as_ref()
                    .filter(|r| !r.https_url.trim().is_empty())
            {
                self.hit("redirected");
                return Some(Verdict::Refuse(redirect(r, req)));
            }
            self.hit(pattern_outcome(reason));
            self.detect(api, reason, client, ids.culprit()).await;
            if !api.meta.enable_blocking {
                return None;
            }
            let code = p.error_code.and_then(|c| StatusCode::from_u16(c).ok());
            let body = if p.error_message_body.is_empty() {
                "Error: Unauthorized\n".to_owned()
            } else {
                p.error_message_body.clone()
            };
            return Some(Verdict::Refuse(full(
                code.unwrap_or(StatusCode::UNAUTHORIZED),
                body,
            )));
        }
        if api.meta.is_token_mandatory && ids.tokens.is_empty() {
            self.hit("missing_token");
            self.detect(api, "missing-token", client, by_ip()).await;
            if !api.meta.enable_blocking {
                return None;
            }
            return Some(Verdict::Refuse(full(
                StatusCode::UNAUTHORIZED,
                "Error: Unauthorized\n",
            )));
        }
        None
    }

    /// Puts the culprit of a detection by `client` on the deny list (source `checker`),
    /// within the detection budget (see [`crate::checker::budget`]): the client's address instead
    /// once it has rotated identifiers, nothing once the budget is spent. Allow-listed
    /// requests never get here.
    async fn detect(&self, api: &Api, reason: &str, who: Client, culprit: Option<Culprit>) {
        let client = who.ip;
        if !api.meta.enable_blocking || !self.switches.detections() {
            // Counted, not written: a watching API must not block anyone, in the kernel
            // least of all. Not logged above debug: its attackers could flood the log.
            self.hit("would_block");
            tracing::debug!(api = %api.name, reason, %client, "attack detected; would deny-list (enable_blocking or detections off)");
            return;
        }
        let Some(culprit) = culprit else {
            return;
        };
        match self.budget.spend(client, culprit) {
            Spend::Write(c) => {
                self.deny(api, reason, who, c).await;
            }
            Spend::Escalate { address, culprit } => {
                let why = format!("{reason} (escalated: identifiers rotated)");
                if self.deny(api, &why, who, address).await {
                    self.hit("detection_escalated");
                } else {
                    // A gateway's or this host's address: its clients' identifiers it is.
                    self.budget.cannot_escalate(client);
                    self.deny(api, reason, who, culprit).await;
                }
            }
            Spend::Over { say } => {
                self.hit("detection_over_budget");
                if say {
                    tracing::warn!(api = %api.name, reason, %client, "attack detected; this client's detection budget is spent (detection_budget, or its address is already denied): refused, nothing more written this minute");
                }
            }
        }
    }

    /// Writes one detection's deny entry; whether it was written.
    async fn deny(
        &self,
        api: &Api,
        reason: &str,
        who: Client,
        (kind, name, value): Culprit,
    ) -> bool {
        // The proxies in front of us, and a gateway asking for its clients, speak for many
        // clients: never deny-list one.
        if kind == Kind::Ip
            && let Ok(net) = value.parse::<crate::model::Cidr>()
            && (self.trusted.iter().any(|t| t.covers(&net) || net.covers(t))
                || self
                    .gateways
                    .iter()
                    .any(|g| g.covers(&net) || net.covers(g))
                || (who.peer != who.ip && net.contains(who.peer)))
        {
            tracing::warn!(api = %api.name, reason, %net, "attack detected from a trusted proxy's or gateway's address: not deny-listed");
            return false;
        }
        let shown = if kind == Kind::Ip {
            value.clone()
        } else {
            String::new()
        };
        // A decoy visitor is dropped in the kernel, or with `decoy_action = "l7"` refused
        // at L7 on every API, as ASE does.
        let scope = (reason.starts_with("decoy") && self.cfg.decoy_action == "l7")
            .then(|| crate::checker::lists::ALL_APIS.to_owned());
        let detection = Detection {
            kind,
            name,
            value,
            reason: format!("{reason} on API {}", api.name),
            ttl_secs: self.detection_ttl,
            scope,
        };
        match self.writer.detect(detection).await {
            Ok(_) => {
                tracing::warn!(api = %api.name, reason, ?kind, address = %shown, "attack detected; deny-listed");
                true
            }
            Err(e) => {
                tracing::warn!(api = %api.name, reason, "attack detected but not deny-listed: {e}");
                false
            }
        }
    }
}
