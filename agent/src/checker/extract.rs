//! Pulls the client's identifiers out of a request, as the API definition says where they
//! are: session cookie, OAuth2 bearer token, API key (header or query parameter), username
//! (header, a JWT claim decoded locally, or HTTP Basic auth), and the client address.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use http::HeaderMap;

use super::api::ApiMetadata;
use super::lists::RequestIdents;
use crate::ident::{Identifier, Kind};

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The value of query parameter `name` (percent-decoding `%XX` and `+`).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
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

/// The bearer token of an `Authorization` header.
pub fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = header(h, "authorization")?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The username of HTTP Basic auth.
pub fn basic_user(h: &HeaderMap) -> Option<String> {
    let v = header(h, "authorization")?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':')
        .map(|(u, _)| u.to_owned())
        .filter(|u| !u.is_empty())
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
        (Some("qs"), Some(name), None) => query_param(query, name),
        _ => None,
    }
}

/// The client address: the socket peer, or with `trust_xff` the first X-Forwarded-For hop.
pub fn client_ip(h: &HeaderMap, peer: SocketAddr, trust_xff: bool) -> IpAddr {
    if trust_xff
        && let Some(first) = header(h, "x-forwarded-for").and_then(|v| v.split(',').next())
        && let Ok(ip) = first.trim().parse::<IpAddr>()
    {
        return ip;
    }
    peer.ip().to_canonical()
}

/// Every identifier the API's definition locates in this request. Values that fail
/// validation (oversized, control characters) are treated as absent.
pub fn identifiers(
    meta: &ApiMetadata,
    h: &HeaderMap,
    query: Option<&str>,
    ip: IpAddr,
) -> RequestIdents {
    let mut r = RequestIdents {
        ip: Some(ip),
        ..RequestIdents::default()
    };
    if !meta.cookie.is_empty()
        && let Some(v) = cookie(h, &meta.cookie)
    {
        r.cookie = Identifier::parse(Kind::Cookie, Some(&meta.cookie), v).ok();
    }
    if meta.oauth2_access_token
        && let Some(t) = bearer(h)
    {
        r.token = Identifier::parse(Kind::Token, None, t).ok();
    }
    let key = if !meta.apikey_header.is_empty() {
        header(h, &meta.apikey_header).map(|v| (meta.apikey_header.as_str(), v.to_owned()))
    } else {
        None
    };
    let key = key.or_else(|| {
        (!meta.apikey_qs.is_empty())
            .then(|| query_param(query, &meta.apikey_qs).map(|v| (meta.apikey_qs.as_str(), v)))
            .flatten()
    });
    if let Some((name, v)) = key {
        r.api_key = Identifier::parse(Kind::ApiKey, Some(name), &v).ok();
        r.api_key_any = Identifier::parse(Kind::ApiKey, None, &v).ok();
    }
    let user = (!meta.username_header.is_empty())
        .then(|| header(h, &meta.username_header).map(str::to_owned))
        .flatten();
    let user = user.or_else(|| {
        let jwt = meta
            .jwt
            .as_ref()
            .filter(|j| !j.location.is_empty() && !j.username.is_empty())?;
        jwt_claim(&jwt_token(h, query, &jwt.location)?, &jwt.username)
    });
    let user = user.or_else(|| basic_user(h));
    if let Some(u) = user {
        r.username = Identifier::parse(Kind::Username, None, &u).ok();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn finds_every_identifier() {
        let meta: ApiMetadata = serde_json::from_str(
            r#"{"cookie":"JSESSIONID","oauth2_access_token":true,"apikey_qs":"key",
                "jwt":{"location":"h:authorization:bearer","username":"sub"}}"#,
        )
        .expect("meta");
        // {"sub":"your name"} as a JWT payload.
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"your name"}"#);
        let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        let h = headers(&[
            ("cookie", "a=1; JSESSIONID=s3ss; b=2"),
            ("authorization", &format!("Bearer {jwt}")),
            ("x-forwarded-for", "198.18.7.7, 10.0.0.1"),
        ]);
        let peer: SocketAddr = "198.18.0.2:5555".parse().expect("addr");
        let ip = client_ip(&h, peer, true);
        assert_eq!(ip.to_string(), "198.18.7.7");
        assert_eq!(client_ip(&h, peer, false).to_string(), "198.18.0.2");
        let r = identifiers(&meta, &h, Some("x=1&key=k%20y"), ip);
        assert_eq!(
            r.cookie.as_ref().map(|c| c.name.as_str()),
            Some("JSESSIONID")
        );
        assert_eq!(
            r.token.as_ref().map(|t| t.value.clone()),
            Some(crate::ident::digest(&jwt))
        );
        assert_eq!(
            r.api_key_any.as_ref().map(|k| k.value.clone()),
            Some(crate::ident::digest("k y"))
        );
        assert_eq!(
            r.username.as_ref().map(|u| u.value.as_str()),
            Some("your name")
        );
        let basic = headers(&[("authorization", "Basic dXNlcjE6cGFzcw==")]);
        assert_eq!(basic_user(&basic).as_deref(), Some("user1"));
        assert_eq!(query_param(Some("a=%zz"), "a").as_deref(), Some("%zz"));
    }
}
