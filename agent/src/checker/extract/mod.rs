//! Pulls the client's identifiers out of a request, as the API definition says where they
//! are, and as the origin server will read them: every occurrence counts, because servers
//! disagree on which of two cookies, tokens or keys they use, and an attacker picks the one
//! the checker does not look at.
//!
//! - Session cookie: every `Cookie` header (HTTP/2 sends one per crumb), split on `;` as
//!   RFC 6265 §5.4 servers do, names exact, values with whitespace trimmed and one pair of
//!   quotes removed; a non-UTF-8 byte elsewhere in the header hides nothing.
//! - OAuth2 token: every `Authorization: Bearer` (scheme in any case) and every
//!   `access_token` query parameter (RFC 6750 §2.3).
//! - API key: every value of the header (names are case-insensitive in HTTP) or of the query
//!   parameter (names percent-decoded, compared without case, as the identity of an
//!   `api-key` entry is).
//! - Username: the gateway's header, or a JWT claim decoded locally. There is no HTTP Basic
//!   fallback: any client can claim a Basic username, so it would let one claim an
//!   allow-listed user (ASE has none either).

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use http::HeaderMap;

use super::api::ApiMetadata;
use super::lists::RequestIdents;
use crate::model::Cidr;
use crate::model::{Identifier, Kind};

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Every value of header `name` (any case), trimmed, non-empty, UTF-8.
fn headers_all<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// [`headers_all`], also under the name with `-` spelt `_`: CGI, WSGI and Rack servers map
/// both to the same variable.
fn headers_any_spelling(h: &HeaderMap, name: &str) -> Vec<String> {
    let mut out: Vec<String> = headers_all(h, name).map(str::to_owned).collect();
    let alt = name.replace('-', "_");
    if alt != name {
        out.extend(headers_all(h, &alt).map(str::to_owned));
    }
    out
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Every value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4), in order,
/// without duplicates — and, since some servers match cookie names without case (ASP.NET)
/// or percent-decode values (Express, PHP), also those spellings: more candidates only
/// make a deny match likelier, and (several values) an allow exemption impossible.
pub fn cookies(h: &HeaderMap, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |v: &str| {
        if !v.is_empty() && !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    };
    for header in h.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = trim_ows(pair);
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if !trim_ows(&pair[..eq]).eq_ignore_ascii_case(name.as_bytes()) {
                continue;
            }
            let mut v = trim_ows(&pair[eq + 1..]);
            if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                v = &v[1..v.len() - 1];
            }
            if let Ok(v) = std::str::from_utf8(v) {
                add(v);
                if v.contains('%') {
                    add(&percent_decode(v, false));
                }
            }
        }
    }
    out
}

/// Every value of query parameter `name` (names and values percent-decoded, `+` as space;
/// names compared without case).
pub fn query_params(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(q) = query else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| percent_decode(k, true).eq_ignore_ascii_case(name))
        .map(|(_, v)| percent_decode(v, true))
        .filter(|v| !v.is_empty())
        .collect()
}

/// `%XX` escapes decoded (an incomplete or invalid one stays as it is), and `+` as a space
/// when `plus_is_space` (query strings; cookie libraries leave `+` alone).
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bearer token of one `Authorization` value (scheme in any case, then spaces or tabs).
fn bearer_of(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Every OAuth2 bearer token of the request: `Authorization` headers and `access_token`
/// query parameters, without duplicates.
pub fn tokens(h: &HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let found = headers_all(h, "authorization")
        .filter_map(bearer_of)
        .map(str::to_owned)
        .chain(query_params(query, "access_token"));
    for t in found {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// A claim of a JWT's payload, decoded without verifying or fetching anything (the API
/// server verifies; the checker only needs to know who the token claims to be).
pub fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    match v.get(claim)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Where the JWT is: `h:authorization:bearer`, `h:NAME`, or `qs:NAME`.
fn jwt_token(h: &HeaderMap, query: Option<&str>, location: &str) -> Option<String> {
    let mut parts = location.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("h"), Some(name), Some(scheme)) => {
            let v = header(h, name)?;
            let (s, rest) = v.split_once(' ')?;
            s.eq_ignore_ascii_case(scheme)
                .then(|| rest.trim().to_owned())
        }
        (Some("h"), Some(name), None) => header(h, name).map(str::to_owned),
        (Some("qs"), Some(name), None) => query_params(query, name).into_iter().next(),
        _ => None,
    }
}

/// One X-Forwarded-For hop: an address, with or without a port, brackets or an IPv6 zone.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(trim_ows(hop)).ok()?;
    let bare = if let Some(rest) = hop.strip_prefix('[') {
        rest.split(']').next()?
    } else if hop.matches(':').count() == 1 {
        hop.split(':').next()? // 203.0.113.7:8080
    } else {
        hop
    };
    let bare = bare.split('%').next()?; // fe80::1%eth0
    bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The client address. The socket peer, unless the peer is a trusted proxy: then the
/// right-most X-Forwarded-For address (over every such header, in order) that is not a
/// trusted proxy — the hops to its left are written by the client and prove nothing.
/// `None` when that hop cannot be read (garbage, a non-UTF-8 byte): the request is refused
/// rather than blamed on the proxy, which would dodge every IP entry.
pub fn client_ip(h: &HeaderMap, peer: SocketAddr, trusted: &[Cidr]) -> Option<IpAddr> {
    let mut ip = peer.ip().to_canonical();
    let is_trusted = |a: IpAddr| trusted.iter().any(|c| c.contains(a));
    if !is_trusted(ip) {
        return Some(ip);
    }
    let values: Vec<&[u8]> = h
        .get_all("x-forwarded-for")
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
    let hops: Vec<&[u8]> = values
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .filter(|hop| !trim_ows(hop).is_empty())
        .collect();
    for hop in hops.iter().rev() {
        ip = parse_hop(hop)?;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(ip)
}

/// Every identifier the API's definition locates in this request. Values that fail
/// validation (oversized, control characters) are treated as absent. `from_proxy`: the peer
/// is a trusted proxy (a gateway), so a username it put in the API's username header
/// vouches for the client; otherwise the client wrote it, and it counts only for the deny
/// list (as does a JWT claim, which the checker does not verify).
pub fn identifiers(
    meta: &ApiMetadata,
    h: &HeaderMap,
    query: Option<&str>,
    ip: IpAddr,
    from_proxy: bool,
) -> RequestIdents {
    let mut r = RequestIdents {
        ip: Some(ip),
        ..RequestIdents::default()
    };
    if !meta.cookie.is_empty() {
        r.cookies = cookies(h, &meta.cookie)
            .iter()
            .filter_map(|v| Identifier::parse(Kind::Cookie, Some(&meta.cookie), v).ok())
            .collect();
    }
    if meta.oauth2_access_token {
        r.tokens = tokens(h, query)
            .iter()
            .filter_map(|t| Identifier::parse(Kind::Token, None, t).ok())
            .collect();
    }
    let mut keys: Vec<(&str, String)> = Vec::new();
    if !meta.apikey_header.is_empty() {
        keys.extend(
            headers_any_spelling(h, &meta.apikey_header)
                .into_iter()
                .map(|v| (meta.apikey_header.as_str(), v)),
        );
    }
    if !meta.apikey_qs.is_empty() {
        keys.extend(
            query_params(query, &meta.apikey_qs)
                .into_iter()
                .map(|v| (meta.apikey_qs.as_str(), v)),
        );
    }
    for (name, v) in keys {
        if let (Ok(named), Ok(any)) = (
            Identifier::parse(Kind::ApiKey, Some(name), &v),
            Identifier::parse(Kind::ApiKey, None, &v),
        ) && !r.api_keys.iter().any(|(n, _)| *n == named)
        {
            r.api_keys.push((named, any));
        }
    }
    let mut users: Vec<String> = if meta.username_header.is_empty() {
        Vec::new()
    } else {
        headers_any_spelling(h, &meta.username_header)
    };
    r.username_vouched = from_proxy && !users.is_empty();
    if users.is_empty()
        && let Some(jwt) = meta
            .jwt
            .as_ref()
            .filter(|j| !j.location.is_empty() && !j.username.is_empty())
        && let Some(claim) =
            jwt_token(h, query, &jwt.location).and_then(|t| jwt_claim(&t, &jwt.username))
    {
        users.push(claim);
    }
    for u in users {
        if let Ok(id) = Identifier::parse(Kind::Username, None, &u)
            && !r.usernames.contains(&id)
        {
            r.usernames.push(id);
        }
    }
    r
}

#[cfg(test)]
mod tests;
