//! The request target as the origin server will resolve it: one normal form of the path and
//! host, so that the checker's routing, decoys and rules judge the same resource the backend
//! serves, and encodings that servers resolve differently are refused instead of guessed.
//!
//! Path (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded, other escapes
//! kept (hex upper-cased), `.`/`..` segments removed, repeated slashes merged. Refused with
//! 400: an encoded `/`, `\` or NUL, a bad escape, a raw backslash, and `.`/`..` hidden behind
//! a `;` parameter (Tomcat resolves `..;` as `..`). Routing matches the path with `;`
//! parameters stripped from each segment (servers ignore them when mapping), while the
//! forwarded path keeps them (`;jsessionid=` URL rewriting still works).
//!
//! Host: lower-cased, port and trailing dot removed.

/// Why a request target was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// The path is not in origin form.
    #[error("the path must start with '/'")]
    NotOrigin,
    /// An escape or character that servers decode in different ways.
    #[error("ambiguous path: {0}")]
    Ambiguous(&'static str),
    /// Host header and request authority disagree.
    #[error("the Host header and the request's authority name different hosts")]
    HostMismatch,
}

/// A request path in both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// What is forwarded to the server: normalised, `;` parameters kept.
    pub forward: String,
    /// What routing, decoys and rules match: as `forward`, parameters stripped.
    pub matched: String,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes unreserved escapes, upper-cases the rest; refuses what servers disagree on.
fn decode(raw: &str) -> Result<String, TargetError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(TargetError::Ambiguous("backslash")),
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError::Ambiguous("bad percent escape"));
                };
                let v = h * 16 + l;
                match v {
                    b'/' => return Err(TargetError::Ambiguous("encoded '/'")),
                    b'\\' => return Err(TargetError::Ambiguous("encoded backslash")),
                    0 => return Err(TargetError::Ambiguous("encoded NUL")),
                    v if unreserved(v) => out.push(v as char),
                    v => out.push_str(&format!("%{v:02X}")),
                }
                i += 3;
            }
            // Raw non-ASCII bytes (servers accept them): kept, percent-encoded.
            c if c >= 0x80 => {
                out.push_str(&format!("%{c:02X}"));
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    // `%25XX` in the result, whether its digits came in clear or encoded (`%25%34%31`): a
    // server that decodes once more sees another escape (found by the `path` fuzz target).
    let o = out.as_bytes();
    if o.windows(5)
        .any(|w| w.starts_with(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(TargetError::Ambiguous("double percent-encoding"));
    }
    Ok(out)
}

/// The normal form of `raw` (the URI's path, without the query).
pub fn normalize_path(raw: &str) -> Result<NormalPath, TargetError> {
    if !raw.starts_with('/') {
        return Err(TargetError::NotOrigin);
    }
    let decoded = decode(raw)?;
    let trailing = decoded.len() > 1 && decoded.ends_with('/');
    // One list of (segment, segment without parameters): `..` removes one entry from both
    // views at once, so they cannot drift apart.
    let mut segs: Vec<(&str, &str)> = Vec::new();
    for seg in decoded.split('/') {
        let bare = seg.split(';').next().unwrap_or("");
        match (seg, bare) {
            ("", _) | (".", _) => {}
            ("..", _) => {
                segs.pop();
            }
            (_, "." | "..") => return Err(TargetError::Ambiguous("dot segment with parameters")),
            _ => segs.push((seg, bare)),
        }
    }
    let join = |parts: Vec<&str>| {
        let mut p = String::from("/");
        p.push_str(&parts.join("/"));
        if trailing && !parts.is_empty() {
            p.push('/');
        }
        p
    };
    Ok(NormalPath {
        forward: join(segs.iter().map(|(s, _)| *s).collect()),
        matched: join(
            segs.iter()
                .map(|(_, b)| *b)
                .filter(|b| !b.is_empty())
                .collect(),
        ),
    })
}

/// The normal form of a host (`Host` header or authority): lower case, no port, no
/// trailing dot.
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The request's host: the `Host` header and the URI authority (HTTP/2's `:authority`)
/// must agree when both are present.
pub fn request_host(header: Option<&str>, authority: Option<&str>) -> Result<String, TargetError> {
    match (header.map(normalize_host), authority.map(normalize_host)) {
        (Some(h), Some(a)) if h != a => Err(TargetError::HostMismatch),
        (Some(h), _) => Ok(h),
        (None, Some(a)) => Ok(a),
        (None, None) => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(raw: &str) -> String {
        normalize_path(raw).expect("valid").matched
    }

    #[test]
    fn paths_that_dodged_rules_resolve_to_what_servers_see() {
        for (raw, want) in [
            ("/shop//admin", "/shop/admin"),
            ("/shop/%61dmin", "/shop/admin"),
            ("/shop/./admin", "/shop/admin"),
            ("/shop/admin;x", "/shop/admin"),
            ("/shop/admin;jsessionid=1/", "/shop/admin/"),
            ("//shop/x", "/shop/x"),
            ("/%73hop/x", "/shop/x"),
            ("/a/b/../../shop/x", "/shop/x"),
            ("/../../shop", "/shop"),
            ("/", "/"),
            ("/shop/", "/shop/"),
            ("/shop/%7e", "/shop/~"),
            // A parameter-only segment and `..` do not let the two views drift apart.
            ("/api/decoy/;x/..", "/api/decoy"),
            ("/admin/;/..", "/admin"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ] {
            assert_eq!(m(raw), want, "{raw}");
        }
        // Forwarded with parameters kept, other escapes upper-cased.
        let p = normalize_path("/shop//a;jsessionid=7/%3f%2a").expect("valid");
        assert_eq!(p.forward, "/shop/a;jsessionid=7/%3F%2A");
        assert_eq!(p.matched, "/shop/a/%3F%2A");
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        for raw in [
            "/shop%2Fadmin",
            "/shop%2fadmin",
            "/shop/%00",
            "/shop\\admin",
            "/shop/%5cadmin",
            "/shop/%zz",
            "/shop/%4",
            "/shop/..;/admin",
            "/shop/.;x/admin",
            "/shop/%252e%252e/admin",
            "/shop/%25%34%31",
            "/shop/%25%32e%25%32e/admin",
            "shop",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn hosts_compare_in_one_form() {
        assert_eq!(normalize_host("Shop.Example.:8443"), "shop.example");
        assert_eq!(normalize_host("[2001:DB8::1]:443"), "2001:db8::1");
        assert_eq!(normalize_host("api.test"), "api.test");
        assert_eq!(
            request_host(Some("A.test"), Some("a.test:443")),
            Ok("a.test".into())
        );
        assert_eq!(
            request_host(Some("a.test"), Some("b.test")),
            Err(TargetError::HostMismatch)
        );
    }
}
