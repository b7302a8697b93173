//! Identifier extraction from an arbitrary header set and query: never a panic, and every
//! occurrence of the session cookie (any header, any position, quoted or not, any name case)
//! is among the values checked against the deny list: a denied cookie cannot hide.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::checker::extract;

const COOKIE: &str = "JSESSIONID";

fuzz_target!(|data: &[u8]| {
    let (query, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    let mut h = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            h.append(n, v);
        }
    }
    let found = extract::cookies(&h, COOKIE);
    for header in h.get_all(http::header::COOKIE) {
        let Ok(text) = std::str::from_utf8(header.as_bytes()) else {
            continue;
        };
        for pair in text.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if !name.trim_matches([' ', '\t']).eq_ignore_ascii_case(COOKIE) {
                continue;
            }
            let value = value.trim_matches([' ', '\t']);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            assert!(
                value.is_empty() || found.iter().any(|f| f == value),
                "cookie value {value:?} in {text:?} not checked (found {found:?})"
            );
        }
    }
    let _ = extract::tokens(&h, query);
    let _ = extract::query_params(query, "api_key");
    for t in extract::tokens(&h, query) {
        let _ = extract::jwt_claim(&t, "sub");
    }
    let peer = std::net::SocketAddr::from(([198, 18, 0, 1], 443));
    let trusted = ["198.18.0.0/24".parse().expect("cidr")];
    let _ = extract::client_ip(&h, peer, &trusted);
});
