//! ASE's `api_pattern_enforcement`: which methods, protocols and content types an API
//! accepts, read as frameworks read them (method-override headers and `_method`, a body
//! without a type, two types).

use http::{HeaderValue, Request, header};

use super::{api, extract};

/// Headers with which clients ask frameworks to treat a request as another method.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The detection a request's method, protocol or content type triggers, if any.
pub fn violation<B: hyper::body::Body>(
    p: &api::PatternEnforcement,
    req: &Request<B>,
    tls: bool,
) -> Option<&'static str> {
    // The method, and any method-override header a framework would honour instead of it:
    // each must be allowed.
    if !p.methods_allowed.is_empty() {
        let allowed = |m: &str| {
            p.methods_allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(m.trim()))
        };
        let overrides = METHOD_OVERRIDES
            .iter()
            .flat_map(|h| req.headers().get_all(*h))
            .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
            // Express's method-override, Laravel, Rails and Symfony also read `_method`.
            .chain(extract::query_params(req.uri().query(), "_method"));
        if !allowed(req.method().as_str()) || overrides.into_iter().any(|m| !allowed(&m)) {
            return Some("invalid-method");
        }
    }
    if !p.protocol_allowed.trim().is_empty() {
        // A WebSocket API may say `ws`/`wss`: the same transports as `http`/`https`.
        let schemes: &[&str] = if tls {
            &["https", "wss"]
        } else {
            &["http", "ws"]
        };
        if !p
            .protocol_allowed
            .split(',')
            .any(|x| schemes.iter().any(|s| x.trim().eq_ignore_ascii_case(s)))
        {
            return Some("invalid-protocol");
        }
    }
    if !p.content_type_allowed.trim().is_empty() {
        // Whether a body follows: hyper knows (a zero length or HTTP/2 END_STREAM on the
        // headers says no; any length, chunked coding or open stream says yes).
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        let types: Vec<&HeaderValue> = req.headers().get_all(header::CONTENT_TYPE).iter().collect();
        // Servers disagree on which of two Content-Types they use: refuse both.
        if types.len() > 1 {
            return Some("invalid-content-type");
        }
        let ct = types.first().map(|v| {
            v.to_str()
                .unwrap_or("\u{0}")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        match ct {
            Some(ct) => {
                let allowed = p
                    .content_type_allowed
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .any(|x| x.eq_ignore_ascii_case(&ct));
                if !allowed {
                    return Some("invalid-content-type");
                }
            }
            // A body with no declared type is not of an allowed type.
            None if has_body => return Some("invalid-content-type"),
            None => {}
        }
    }
    None
}
