//! What gateways ask: ASE's sideband resources and the gateway-native decision endpoints,
//! read into the request they describe, so the checker judges it as it judges its own.
//!
//! - `POST /ase/request`: ASE's request metadata (`source_ip`, `method`, `url`,
//!   `http_version`, `headers` as one-key objects, `user_info`), as Ping's gateway policies
//!   and the WSO2 handler send it;
//! - `POST /ase/response`: the response metadata (bare, or inside `ASEPayload`), checked
//!   for shape and acknowledged;
//! - `/portcullis/auth` (NGINX `auth_request`: 200, or 401/403): the original request in
//!   `X-Original-Method/-URI/-Host/-Proto` and the client in `X-Real-IP`, all required (the
//!   configuration sets them, so a client cannot);
//! - `/portcullis/forward-auth` (Traefik ForwardAuth: the real status): the original request
//!   in `X-Forwarded-Method/-Uri/-Host/-Proto`, the client in the right-most
//!   `X-Forwarded-For` hop, as Traefik writes them. Each endpoint reads only its own
//!   gateway's headers: a client's own `X-Original-*` through Traefik means nothing;
//! - `/portcullis/envoy/…` (Envoy `ext_authz` HTTP service with this `path_prefix`): the
//!   original method, path and authority, the client in `x-envoy-external-address` or the
//!   right-most `X-Forwarded-For` hop.
//!
//! Only peers in `sideband.gateways` may ask, so no one else can name a client to be
//! deny-listed; with authentication on they must also present a valid `ASE-Token`.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use serde::Deserialize;

/// `[sideband]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidebandConfig {
    /// Plain HTTP listen address ("" = off), e.g. "127.0.0.1:8000".
    pub http: String,
    /// HTTPS listen address ("" = off), with the checker's certificates.
    pub https: String,
    /// The peers that may ask (CIDRs): the gateways. Anyone else gets 403, since whoever
    /// asks names the client a detection deny-lists.
    pub gateways: Vec<String>,
    /// ASE's `enable_sideband_authentication`: every request needs a valid `ASE-Token`
    /// (`portcullis sideband token create`). The first value; a change by the CLI or REST
    /// is kept and wins.
    pub authentication: bool,
    /// ASE's `enable_sideband_keepalive`: off, every answer says `Connection: close`.
    pub keepalive: bool,
    /// Largest sideband body, bytes (413 past it).
    pub max_body_bytes: usize,
}

impl Default for SidebandConfig {
    fn default() -> Self {
        Self {
            http: String::new(),
            https: String::new(),
            gateways: vec!["127.0.0.0/8".into(), "::1/128".into()],
            authentication: false,
            keepalive: true,
            max_body_bytes: 128 << 10,
        }
    }
}

impl SidebandConfig {
    /// Whether a sideband listener is configured.
    pub fn enabled(&self) -> bool {
        !self.http.is_empty() || !self.https.is_empty()
    }

    /// `gateways` parsed (validated by `Config::validate`; bad entries are skipped here).
    pub fn gateways(&self) -> Vec<crate::model::Cidr> {
        self.gateways
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

/// Which of the sideband endpoints a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// ASE's request resource.
    AseRequest,
    /// ASE's response resource.
    AseResponse,
    /// NGINX `auth_request`: 200, or 403 for every refusal (NGINX takes nothing else).
    NginxAuth,
    /// Traefik ForwardAuth: 200, or the refusal as it is.
    ForwardAuth,
    /// Envoy `ext_authz`: 200, or the refusal as it is.
    Envoy,
}

/// The prefix of Envoy's `path_prefix`.
pub const ENVOY_PREFIX: &str = "/portcullis/envoy";

impl Endpoint {
    /// The endpoint a path names.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/ase/request" | "/ase/request/" => Some(Self::AseRequest),
            "/ase/response" | "/ase/response/" => Some(Self::AseResponse),
            "/portcullis/auth" | "/portcullis/auth/" => Some(Self::NginxAuth),
            "/portcullis/forward-auth" | "/portcullis/forward-auth/" => Some(Self::ForwardAuth),
            p if p.starts_with(ENVOY_PREFIX) && p[ENVOY_PREFIX.len()..].starts_with('/') => {
                Some(Self::Envoy)
            }
            _ => None,
        }
    }
}

/// The request a gateway asks about, rebuilt.
#[derive(Debug)]
pub struct Asked {
    /// Method, target and headers as the client sent them to the gateway (the body stands
    /// for whether one follows).
    pub request: Request<Full<Bytes>>,
    /// The client.
    pub client: IpAddr,
    /// A username the gateway authenticated (ASE's `user_info`).
    pub user: Option<String>,
    /// Whether the client reached the gateway over TLS (`X-Forwarded-Proto`; unknown: yes,
    /// so a gateway that does not say is not taken for a protocol attack).
    pub tls: bool,
}

/// Why a gateway's question could not be read: answered 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    /// Not the JSON ASE's resource takes.
    #[error("malformed sideband JSON: {0}")]
    Json(String),
    /// A field with a value no request can have.
    #[error("bad {0}")]
    Field(&'static str),
    /// A required header is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// More headers than the checker takes.
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
}

/// ASE's request resource body.
#[derive(Deserialize)]
struct AseRequest {
    source_ip: String,
    #[serde(default)]
    #[allow(dead_code)]
    source_port: serde_json::Value,
    method: String,
    url: String,
    #[serde(default)]
    http_version: String,
    #[serde(default)]
    headers: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    user_info: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Reads ASE's request resource body.
pub fn ase_request(body: &[u8], max_headers: usize) -> Result<Asked, AskError> {
    let r: AseRequest = serde_json::from_slice(body).map_err(|e| AskError::Json(e.to_string()))?;
    let client = r
        .source_ip
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| AskError::Field("source_ip"))?
        .to_canonical();
    // Counted by name, not by object: one object may hold many.
    if r.headers.iter().map(serde_json::Map::len).sum::<usize>() > max_headers {
        return Err(AskError::TooManyHeaders(max_headers));
    }
    let mut headers = HeaderMap::new();
    for h in &r.headers {
        for (name, value) in h {
            let value = value.as_str().ok_or(AskError::Field("headers"))?;
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| AskError::Field("headers"))?,
                HeaderValue::from_bytes(value.as_bytes())
                    .map_err(|_| AskError::Field("headers"))?,
            );
        }
    }
    let mut user = None;
    for u in &r.user_info {
        if let Some(name) = u.get("username") {
            user = Some(
                name.as_str()
                    .ok_or(AskError::Field("user_info"))?
                    .to_owned(),
            );
        }
    }
    let version = match r.http_version.trim() {
        "" | "1.1" => http::Version::HTTP_11,
        "1.0" => http::Version::HTTP_10,
        "2" | "2.0" => http::Version::HTTP_2,
        _ => return Err(AskError::Field("http_version")),
    };
    let tls = forwarded_tls(&headers);
    let request = build(&r.method, &r.url, version, headers)?;
    Ok(Asked {
        request,
        client,
        user,
        tls,
    })
}

/// ASE's response resource body: bare, or inside `ASEPayload` (as the WSO2 handler sends
/// it). Nothing in it changes a decision; its shape is checked so a broken policy shows.
pub fn ase_response(body: &[u8]) -> Result<(), AskError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AskError::Json(e.to_string()))?;
    let payload = v.get("ASEPayload").unwrap_or(&v);
    let code = payload
        .get("response_code")
        .ok_or(AskError::Missing("response_code"))?;
    let code = match code {
        serde_json::Value::String(s) => s.trim().parse::<u16>().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    if !code.is_some_and(|c| (100..=599).contains(&c)) {
        return Err(AskError::Field("response_code"));
    }
    if payload.get("headers").is_some_and(|h| !h.is_array()) {
        return Err(AskError::Field("headers"));
    }
    Ok(())
}

/// Headers a gateway adds to say what it asks about: not the client's own.
const GATEWAY_HEADERS: [&str; 12] = [
    "x-original-method",
    "x-original-uri",
    "x-original-url",
    "x-original-host",
    "x-original-proto",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "ase-token",
    "x-envoy-external-address",
];

/// Reads an NGINX `auth_request` subrequest: every `X-Original-*` header and `X-Real-IP`
/// are required, since a header the configuration does not set is the client's to write.
pub fn nginx_auth(headers: &HeaderMap) -> Result<Asked, AskError> {
    let client = header_text(headers, "x-real-ip", "X-Real-IP")?
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| AskError::Field("X-Real-IP"))?;
    described(
        headers,
        [
            ("x-original-method", "X-Original-Method"),
            ("x-original-uri", "X-Original-URI"),
            ("x-original-host", "X-Original-Host"),
            ("x-original-proto", "X-Original-Proto"),
        ],
        client,
    )
}

/// Reads a Traefik ForwardAuth request: Traefik's own `X-Forwarded-*` headers, the client
/// as the right-most `X-Forwarded-For` hop (the address Traefik saw).
pub fn traefik_auth(headers: &HeaderMap) -> Result<Asked, AskError> {
    let client = right_most_hop(headers).ok_or(AskError::Missing("X-Forwarded-For"))?;
    described(
        headers,
        [
            ("x-forwarded-method", "X-Forwarded-Method"),
            ("x-forwarded-uri", "X-Forwarded-Uri"),
            ("x-forwarded-host", "X-Forwarded-Host"),
            ("x-forwarded-proto", "X-Forwarded-Proto"),
        ],
        client,
    )
}

/// The request a gateway's subrequest describes in the headers `names` (method, URI, host,
/// protocol; each `(name, as shown)`), all required, for `client`.
fn described(
    headers: &HeaderMap,
    names: [(&'static str, &'static str); 4],
    client: IpAddr,
) -> Result<Asked, AskError> {
    let [method, uri, host, proto] = names;
    let (method, uri) = (
        header_text(headers, method.0, method.1)?,
        header_text(headers, uri.0, uri.1)?,
    );
    let (host, proto) = (
        header_text(headers, host.0, host.1)?,
        header_text(headers, proto.0, proto.1)?,
    );
    let request = build(
        method,
        uri,
        http::Version::HTTP_11,
        client_headers(headers, host)?,
    )?;
    Ok(Asked {
        request,
        client: client.to_canonical(),
        user: None,
        tls: is_tls(proto),
    })
}

fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    shown: &'static str,
) -> Result<&'a str, AskError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(AskError::Missing(shown))
}

fn is_tls(proto: &str) -> bool {
    let p = proto.trim();
    p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("wss")
}

/// Reads an Envoy `ext_authz` check: the original request under [`ENVOY_PREFIX`].
pub fn envoy(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Asked, AskError> {
    let tail = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .strip_prefix(ENVOY_PREFIX)
        .ok_or(AskError::Field("path"))?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(AskError::Missing("Host"))?;
    let client = match headers.get("x-envoy-external-address") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .ok_or(AskError::Field("x-envoy-external-address"))?,
        None => right_most_hop(headers).ok_or(AskError::Missing(
            "x-envoy-external-address or X-Forwarded-For",
        ))?,
    };
    let tls = forwarded_tls(headers);
    let request = build(
        method.as_str(),
        tail,
        http::Version::HTTP_11,
        client_headers(headers, host)?,
    )?;
    Ok(Asked {
        request,
        client: client.to_canonical(),
        user: None,
        tls,
    })
}

/// The client's own headers of a subrequest, with `Host` the original host's.
fn client_headers(headers: &HeaderMap, host: &str) -> Result<HeaderMap, AskError> {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if GATEWAY_HEADERS.contains(&name.as_str())
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(
        header::HOST,
        HeaderValue::from_str(host).map_err(|_| AskError::Field("host"))?,
    );
    Ok(out)
}

/// The right-most `X-Forwarded-For` hop: the address the gateway itself saw.
fn right_most_hop(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let hop = last.to_str().ok()?.rsplit(',').next()?.trim();
    hop.parse().ok()
}

fn forwarded_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_none_or(is_tls)
}

/// The request the gateway describes. A body is taken to follow when the headers say so.
fn build(
    method: &str,
    target: &str,
    version: http::Version,
    headers: HeaderMap,
) -> Result<Request<Full<Bytes>>, AskError> {
    let method =
        Method::from_bytes(method.trim().as_bytes()).map_err(|_| AskError::Field("method"))?;
    if !target.starts_with('/') {
        return Err(AskError::Field("url"));
    }
    let uri: Uri = target.parse().map_err(|_| AskError::Field("url"))?;
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let body = if has_body {
        Full::new(Bytes::from_static(b" "))
    } else {
        Full::new(Bytes::new())
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the WSO2 handler builds it (`HttpDataPublisher`, `createRequestJson`).
    const WSO2_REQUEST: &str = r#"{"source_ip":"198.18.0.7","source_port":8080,"method":"POST","url":"/shop/cart?x=1","http_version":"1.1","headers":[{"Host":"shop.example"},{"Authorization":"Bearer abc"},{"Content-Type":"application/json"},{"Content-Length":"12"}],"user_info":[{"username":"alice"},{"client_id":"c1"}]}"#;

    #[test]
    fn reads_the_wso2_request_body() {
        let a = ase_request(WSO2_REQUEST.as_bytes(), 100).expect("parsed");
        assert_eq!(a.client, "198.18.0.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(a.request.method(), Method::POST);
        assert_eq!(a.request.uri().path(), "/shop/cart");
        assert_eq!(a.request.uri().query(), Some("x=1"));
        assert_eq!(a.request.headers()["host"], "shop.example");
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert!(!hyper::body::Body::is_end_stream(a.request.body()));
    }

    #[test]
    fn refuses_what_no_request_can_be() {
        for (body, want) in [
            (
                r#"{"source_ip":"nope","method":"GET","url":"/"}"#,
                "source_ip",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"G T","url":"/"}"#,
                "method",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"GET","url":"http://x/"}"#,
                "url",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"GET","url":"/","headers":[{"a b":"c"}]}"#,
                "headers",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"GET","url":"/","headers":[{"a":1}]}"#,
                "headers",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"GET","url":"/","headers":[{"a":"x\ny"}]}"#,
                "headers",
            ),
            (
                r#"{"source_ip":"198.18.0.1","method":"GET","url":"/","http_version":"9"}"#,
                "http_version",
            ),
        ] {
            assert_eq!(
                ase_request(body.as_bytes(), 100).expect_err(body),
                AskError::Field(want),
                "{body}"
            );
        }
        assert!(matches!(ase_request(b"{", 100), Err(AskError::Json(_))));
        assert!(matches!(ase_request(b"[]", 100), Err(AskError::Json(_))));
        let many = format!(
            r#"{{"source_ip":"198.18.0.1","method":"GET","url":"/","headers":[{}]}}"#,
            [r#"{"a":"b"}"#; 5].join(",")
        );
        assert_eq!(
            ase_request(many.as_bytes(), 4).expect_err("many"),
            AskError::TooManyHeaders(4)
        );
        let one_object = r#"{"source_ip":"198.18.0.1","method":"GET","url":"/","headers":[{"a":"1","b":"2","c":"3","d":"4","e":"5"}]}"#;
        assert_eq!(
            ase_request(one_object.as_bytes(), 4).expect_err("many in one"),
            AskError::TooManyHeaders(4)
        );
    }

    #[test]
    fn reads_response_bodies_bare_or_wrapped() {
        ase_response(
            br#"{"response_code":"200","response_status":"OK","http_version":"1.1","headers":[]}"#,
        )
        .expect("bare");
        ase_response(br#"{"ASEPayload":{"response_code":"404","headers":[{"a":"b"}]}}"#)
            .expect("wrapped");
        assert!(ase_response(br#"{"response_code":"abc"}"#).is_err());
        assert!(ase_response(br#"{"headers":[]}"#).is_err());
        assert!(ase_response(b"nope").is_err());
    }

    #[test]
    fn reads_nginx_and_traefik_subrequests_without_their_own_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-original-method", HeaderValue::from_static("DELETE"));
        h.insert(
            "x-original-uri",
            HeaderValue::from_static("/shop/item/1?a=b"),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
        h.insert("x-original-host", HeaderValue::from_static("shop.example"));
        h.insert("x-original-proto", HeaderValue::from_static("https"));
        h.insert("x-real-ip", HeaderValue::from_static("198.18.0.9"));
        h.insert("ase-token", HeaderValue::from_static("secret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let a = nginx_auth(&h).expect("nginx");
        assert_eq!(a.request.method(), Method::DELETE);
        assert_eq!(a.request.uri(), "/shop/item/1?a=b");
        assert_eq!(a.request.headers()[header::HOST], "shop.example");
        assert!(a.request.headers().get("ase-token").is_none());
        assert_eq!(a.request.headers()[header::AUTHORIZATION], "Bearer t");
        assert_eq!(a.client, "198.18.0.9".parse::<IpAddr>().expect("ip"));
        assert!(a.tls);

        let mut t = HeaderMap::new();
        t.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        t.insert("x-forwarded-uri", HeaderValue::from_static("/shop/"));
        t.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        t.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        t.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 198.18.0.10"),
        );
        // A client's own X-Original-* through Traefik changes nothing.
        t.insert("x-original-uri", HeaderValue::from_static("/elsewhere"));
        t.insert("x-real-ip", HeaderValue::from_static("203.0.113.1"));
        let a = traefik_auth(&t).expect("traefik");
        assert_eq!(
            a.client,
            "198.18.0.10".parse::<IpAddr>().expect("ip"),
            "the hop the gateway saw, not the one the client wrote"
        );
        assert_eq!(a.request.uri(), "/shop/");
        assert!(!a.tls);
        assert_eq!(
            nginx_auth(&t).expect_err("not NGINX's headers"),
            AskError::Missing("X-Original-Method")
        );

        for missing in ["x-real-ip", "x-original-proto", "x-original-host"] {
            let mut none = h.clone();
            none.remove(missing);
            assert!(nginx_auth(&none).is_err(), "{missing} is required");
        }
        let mut bad = h;
        bad.insert("x-original-uri", HeaderValue::from_static("shop"));
        assert_eq!(
            nginx_auth(&bad).expect_err("relative"),
            AskError::Field("url")
        );
    }

    #[test]
    fn reads_envoy_checks_under_the_prefix() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert(
            "x-envoy-external-address",
            HeaderValue::from_static("2001:db8::5"),
        );
        let uri: Uri = "/portcullis/envoy/shop/a?b=c".parse().expect("uri");
        let a = envoy(&Method::PUT, &uri, &h).expect("envoy");
        assert_eq!(a.request.uri(), "/shop/a?b=c");
        assert_eq!(a.request.method(), Method::PUT);
        assert_eq!(
            Endpoint::of("/portcullis/envoy/shop/a"),
            Some(Endpoint::Envoy)
        );
        assert_eq!(Endpoint::of("/portcullis/envoyx"), None);
        assert_eq!(Endpoint::of("/ase/request"), Some(Endpoint::AseRequest));
    }
}
