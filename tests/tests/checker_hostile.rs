//! The checker must see what the origin server will see. Each case here is a way a hostile
//! client got a denied identifier past the checker, or got an allow-listed one to vouch for
//! it, or dodged an API's rules by spelling a path or host differently; each failed before
//! the checker learnt to read requests as servers do.

use std::net::SocketAddr;

use portcullis_tests::agent::{err, ok};
use portcullis_tests::checker_setup::{Setup, setup_apis};
use portcullis_tests::{http, privileged};

fn plain(s: &Setup) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.http_port))
}

/// Panics unless the raw `request` is answered with `want`.
fn assert_status(s: &Setup, request: impl AsRef<[u8]>, want: u16, why: &str) {
    assert_eq!(raw(s, request.as_ref()), want, "{why}");
}

/// Status of a raw request (exact bytes on the wire: no client-side normalisation).
fn raw(s: &Setup, request: &[u8]) -> u16 {
    exchange(
        std::net::TcpStream::connect(plain(s)).expect("connect"),
        request,
    )
}

/// Sends `request` on `c` and returns the answer's status (0: none).
fn exchange(mut c: std::net::TcpStream, request: &[u8]) -> u16 {
    use std::io::{Read as _, Write as _};
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get(s: &Setup, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http::get(plain(s), path, headers).expect("http")
}

fn checker_rows(s: &Setup) -> String {
    ok(&s
        .agent
        .cli(&["deny", "list", "--source", "checker", "--json"]))
}

/// Status of a raw request sent from `src` (a loopback address that is not a trusted proxy).
fn raw_from(s: &Setup, src: std::net::Ipv4Addr, request: &[u8]) -> u16 {
    exchange(http::connect_from(src, plain(s)).expect("connect"), request)
}

fn hostile_setup() -> Setup {
    setup_apis(&[
        (
            "shop",
            r#""cookie":"JSESSIONID","oauth2_access_token":true,"apikey_header":"X-API-Key","apikey_qs":"api_key", "username_header":"X-User","jwt":{"location":"h:authorization:bearer","username":"sub"}, "api_pattern_enforcement":{"methods_allowed":["GET","POST"],"error_code":401}, "decoy_config":{"decoy_enabled":true,"response_code":200,"response_message":"decoy\n","decoy_subpaths":["admin"]}"#,
        ),
        ("hosted", r#""hostname":"api.test""#),
    ])
}

#[test]
fn denied_cookies_tokens_and_keys_are_found_however_they_are_spelt() {
    privileged!();
    let s = hostile_setup();
    ok(&s
        .agent
        .cli(&["deny", "add", "cookie", "JSESSIONID", "DENIED"]));
    ok(&s.agent.cli(&["deny", "add", "token", "DENIED-T"]));
    ok(&s
        .agent
        .cli(&["deny", "add", "api-key", "X-API-Key", "DENIED-K"]));
    ok(&s
        .agent
        .cli(&["deny", "add", "api-key", "api_key", "DENIED-Q"]));
    // Honest requests pass.
    assert_eq!(get(&s, "/shop/x", &[("Cookie", "JSESSIONID=fine")]).0, 200);
    // Cookies.
    for cookie in [
        vec!["JSESSIONID= DENIED"],
        vec!["JSESSIONID=\"DENIED\""],
        vec!["JSESSIONID=fine; JSESSIONID=DENIED"],
        vec!["JSESSIONID=fine", "JSESSIONID=DENIED"],
        vec!["a=1", "JSESSIONID=DENIED"],
    ] {
        let h: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", *c)).collect();
        assert_eq!(get(&s, "/shop/x", &h).0, 403, "{cookie:?}");
    }
    assert_eq!(
        raw(
            &s,
            b"GET /shop/x HTTP/1.1\r\nHost: t\r\nCookie: x=\xff\xfe; JSESSIONID=DENIED\r\nConnection: close\r\n\r\n"
        ),
        403,
        "a non-UTF-8 byte in another cookie"
    );
    // HTTP/2 sends each cookie crumb as its own field.
    let (code, _) = s.curl(
        "/shop/x",
        &[
            "--http2",
            "-H",
            "Cookie: a=1",
            "-H",
            "Cookie: JSESSIONID=DENIED",
        ],
    );
    assert_eq!(code, 403, "HTTP/2 cookie crumbs");
    // Tokens.
    for h in [
        vec![("Authorization", "bEaReR DENIED-T")],
        vec![
            ("Authorization", "Bearer fine"),
            ("Authorization", "Bearer DENIED-T"),
        ],
    ] {
        assert_eq!(get(&s, "/shop/x", &h).0, 403, "{h:?}");
    }
    assert_eq!(
        get(&s, "/shop/x?access_token=DENIED-T", &[]).0,
        403,
        "RFC 6750 query"
    );
    // API keys: the header in any case, every duplicate, the query name decoded.
    for h in [
        vec![("x-api-key", "DENIED-K")],
        vec![("X-API-KEY", "fine"), ("x-Api-Key", "DENIED-K")],
    ] {
        assert_eq!(get(&s, "/shop/x", &h).0, 403, "{h:?}");
    }
    for q in [
        "/shop/x?api%5Fkey=DENIED-Q",
        "/shop/x?API_KEY=DENIED-Q",
        "/shop/x?api_key=a&api_key=DENIED-Q",
    ] {
        assert_eq!(get(&s, q, &[]).0, 403, "{q}");
    }
    // An api-key entry's identity does not depend on the name's case.
    ok(&s
        .agent
        .cli(&["deny", "add", "api-key", "x-api-key", "DENIED-K2"]));
    assert_eq!(get(&s, "/shop/x", &[("X-Api-Key", "DENIED-K2")]).0, 403);
    let e = err(&s
        .agent
        .cli(&["deny", "remove", "api-key", "X-API-KEY", "nope"]));
    assert!(
        e.contains("not on the deny list") || e.contains("not found"),
        "{e}"
    );
    ok(&s
        .agent
        .cli(&["deny", "remove", "api-key", "X-API-KEY", "DENIED-K2"]));
}

#[test]
fn allow_entries_cannot_be_borrowed_to_vouch_for_a_denied_client() {
    privileged!();
    let s = hostile_setup();
    let allow: [&[&str]; 3] = [
        &["username", "admin"],
        &["ip", "198.18.90.1"],
        &["cookie", "JSESSIONID", "trusted"],
    ];
    s.agent.add("allow", &allow);
    let deny: [&[&str]; 3] = [
        &["token", "DENIED-T"],
        &["ip", "198.18.90.2"],
        &["cookie", "JSESSIONID", "DENIED"],
    ];
    s.agent.add("deny", &deny);
    // HTTP Basic names no one: it cannot claim the allow-listed user.
    assert_eq!(
        get(
            &s,
            "/shop/x",
            &[
                ("Authorization", "Basic YWRtaW46eA=="),
                ("X-API-Key", "x"),
                ("Cookie", "JSESSIONID=DENIED")
            ]
        )
        .0,
        403
    );
    // X-Forwarded-For: the client writes the left part; the proxy (127.0.0.1, trusted) adds
    // the right-most address, which is what counts.
    assert_eq!(
        get(
            &s,
            "/shop/x",
            &[("X-Forwarded-For", "198.18.90.1, 198.18.90.2")]
        )
        .0,
        403,
        "a forged allow-listed hop on the left"
    );
    assert_eq!(
        get(&s, "/shop/x", &[("X-Forwarded-For", "198.18.90.1")]).0,
        200
    );
    // Two values of the session cookie: the allow-listed one vouches for nothing.
    assert_eq!(
        get(
            &s,
            "/shop/x",
            &[("Cookie", "JSESSIONID=trusted; JSESSIONID=DENIED")]
        )
        .0,
        403
    );
    assert_eq!(
        get(&s, "/shop/x", &[("Cookie", "JSESSIONID=trusted")]).0,
        200
    );
}

#[test]
fn paths_and_hosts_are_judged_as_the_server_resolves_them() {
    privileged!();
    let s = hostile_setup();
    // Decoys dodged by spelling: each is the decoy, and its client is deny-listed.
    for (i, path) in [
        "/shop//admin",
        "/shop/%61dmin",
        "/shop/./admin",
        "/shop/admin;x",
        "/shop/x/../admin",
    ]
    .iter()
    .enumerate()
    {
        let client = format!("198.18.92.{i}");
        let (code, body) = get(&s, path, &[("X-Forwarded-For", &client)]);
        assert_eq!((code, body.as_str()), (200, "decoy\n"), "{path}");
        assert!(
            checker_rows(&s).contains(&client),
            "{path}: {client} not deny-listed"
        );
    }
    // The API's rules dodged by spelling the API's url differently.
    for path in ["//shop/x", "/%73hop/x", "/./shop/x"] {
        assert_status(
            &s,
            format!("DELETE {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            401,
            &format!("{path}: the /shop API's method rule"),
        );
    }
    // Encodings servers resolve differently: refused, never forwarded.
    let before = s.backend.arrived.lock().map(|v| v.len()).unwrap_or(0);
    for path in [
        "/shop%2Fadmin",
        "/shop/%00x",
        "/shop\\admin",
        "/shop/%zz",
        "/shop/..;/admin",
    ] {
        assert_status(
            &s,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            400,
            path,
        );
    }
    assert_eq!(
        s.backend.arrived.lock().map(|v| v.len()).unwrap_or(0),
        before
    );
    // The server gets the path the checker judged.
    assert_eq!(get(&s, "/shop//items/./a/../b", &[]).0, 200);
    let head = s.backend.last().expect("forwarded");
    assert!(head.starts_with("GET /shop/items/b HTTP/1.1"), "{head}");
    // Hosts: case, trailing dot and port do not matter; Host and authority must agree.
    for host in ["API.TEST", "api.test.", "api.test:8080"] {
        assert_status(
            &s,
            format!("GET /hosted/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            200,
            host,
        );
    }
    assert_status(
        &s,
        b"GET http://other.test/hosted/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        400,
        "authority and Host disagree",
    );
}

#[test]
fn a_method_override_header_does_not_get_around_the_allowed_methods() {
    privileged!();
    let s = hostile_setup();
    for (i, h) in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ]
    .iter()
    .enumerate()
    {
        assert_status(
            &s,
            format!(
                "POST /shop/x HTTP/1.1\r\nHost: t\r\n{h}: DELETE\r\nX-Forwarded-For: 198.18.93.{i}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            401,
            h,
        );
    }
    let allowed = b"POST /shop/x HTTP/1.1\r\nHost: t\r\nX-HTTP-Method-Override: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_status(&s, allowed, 200, "an allowed override is fine");
}

#[test]
fn anti_lockout_refuses_what_would_block_the_world_or_turn_enforcement_off() {
    privileged!();
    let s = hostile_setup();
    for (args, want) in [
        (vec!["deny", "add", "ip", "128.0.0.0/1"], "more than a /8"),
        (vec!["deny", "add", "ip", "10.0.0.0/7"], "more than a /8"),
        (vec!["deny", "add", "ip", "2000::/3"], "more than a /32"),
        (
            vec!["allow", "add", "ip", "0.0.0.0/0"],
            "turns enforcement off",
        ),
        (vec!["allow", "add", "ip", "::/0"], "turns enforcement off"),
    ] {
        let e = err(&s.agent.cli(&args));
        assert!(e.contains(want) && e.contains("--force"), "{args:?}: {e}");
    }
    ok(&s.agent.cli(&["deny", "add", "ip", "10.0.0.0/8"]));
    ok(&s.agent.cli(&["deny", "add", "ip", "2001:db8::/32"]));
    ok(&s
        .agent
        .cli(&["deny", "add", "ip", "128.0.0.0/1", "--force"]));
    // An IPv4-mapped IPv6 address is the IPv4 address it maps (packets come as IPv4).
    let out = ok(&s.agent.cli(&["deny", "add", "ip", "::ffff:198.18.94.1"]));
    assert!(out.contains("198.18.94.1/32"), "{out}");
    assert_eq!(
        get(&s, "/shop/x", &[("X-Forwarded-For", "198.18.94.1")]).0,
        403
    );
}

/// Found by the attacker review of the first round: each of these still got through.
#[test]
fn second_round_bypasses_are_closed() {
    privileged!();
    let s = hostile_setup();
    s.agent.add("allow", &[&["username", "alice"]]);
    let deny: [&[&str]; 4] = [
        &["token", "DENIED-T"],
        &["ip", "198.18.95.1"],
        &["api-key", "X-API-Key", "DENIED-K"],
        &["username", "mallory"],
    ];
    s.agent.add("deny", &deny);
    // A username is written by the client (a header, or an unsigned JWT claim): it never
    // exempts, though a denied one still blocks.
    use base64::Engine as _;
    let claim = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"alice"}"#);
    let forged = format!("Bearer eyJhbGciOiJub25lIn0.{claim}.");
    assert_eq!(
        get(
            &s,
            "/shop/x?access_token=DENIED-T",
            &[("Authorization", &forged)]
        )
        .0,
        403,
        "a forged allow-listed JWT user"
    );
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 3);
    assert_eq!(
        raw_from(&s, attacker, b"GET /shop/x?access_token=DENIED-T HTTP/1.1\r\nHost: t\r\nX-User: alice\r\nConnection: close\r\n\r\n"),
        403,
        "a client's own allow-listed username header"
    );
    // From the gateway (a trusted proxy: this test's own connections), it vouches.
    assert_eq!(
        get(&s, "/shop/x?access_token=DENIED-T", &[("X-User", "alice")]).0,
        200,
        "the gateway's username header"
    );
    assert_eq!(
        get(&s, "/shop/x", &[("X_User", "mallory")]).0,
        403,
        "X_User is X-User to CGI"
    );
    // Tab after the scheme; underscore spelling of the key's header.
    assert_eq!(
        get(&s, "/shop/x", &[("Authorization", "Bearer\tDENIED-T")]).0,
        403
    );
    assert_eq!(get(&s, "/shop/x", &[("X_API_Key", "DENIED-K")]).0, 403);
    // A parameter-only segment before `..` no longer splits the checker's view from the
    // server's.
    let (code, body) = get(
        &s,
        "/shop/admin/;x/..",
        &[("X-Forwarded-For", "198.18.96.1")],
    );
    assert_eq!((code, body.as_str()), (200, "decoy\n"));
    // X-Forwarded-For: a bad byte or a port in the client's part hides nothing; an unreadable
    // client hop is refused, not blamed on the proxy (which is exempt from everything).
    assert_eq!(
        raw(&s, b"GET /shop/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: \x80, 198.18.95.1\r\nConnection: close\r\n\r\n"),
        403
    );
    assert_eq!(
        get(&s, "/shop/x", &[("X-Forwarded-For", "198.18.95.1:4242")]).0,
        403
    );
    assert_eq!(get(&s, "/shop/x", &[("X-Forwarded-For", "unknown")]).0, 400);
    // `_method` in the query is a method override too.
    assert_eq!(
        raw(&s, b"POST /shop/x?_method=DELETE HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.18.96.2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        401
    );
    // A client that is not a proxy cannot tell the server who it is.
    assert_eq!(
        raw_from(&s, attacker, b"GET /shop/who HTTP/1.1\r\nHost: t\r\nForwarded: for=198.18.90.1\r\nX-Real-IP: 198.18.90.1\r\nX-Forwarded-For: 198.18.90.1\r\nConnection: close\r\n\r\n"),
        200
    );
    let head = s.backend.last().expect("forwarded").to_ascii_lowercase();
    assert!(head.contains("x-forwarded-for: 127.0.0.3\r\n"), "{head}");
    assert!(!head.contains("198.18.90.1"), "{head}");
    // An allow of half the Internet turns enforcement off there: --force only.
    let e = portcullis_tests::agent::err(&s.agent.cli(&["allow", "add", "ip", "0.0.0.0/1"]));
    assert!(e.contains("turns enforcement off"), "{e}");
}

/// Content types: a body with no type, two types, and the empty type are not allowed types.
#[test]
fn content_type_rules_hold_for_every_body() {
    privileged!();
    let s = setup_apis(&[(
        "json",
        r#""api_pattern_enforcement":{"content_type_allowed":"application/json,","error_code":415}"#,
    )]);
    let post = |extra: &str, body: &str| {
        raw(
            &s,
            format!("POST /json/x HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n{body}")
                .as_bytes(),
        )
    };
    assert_eq!(
        post(
            "Content-Type: application/json\r\nContent-Length: 2\r\n",
            "{}"
        ),
        200
    );
    assert_eq!(
        post("Content-Length: 0\r\n", ""),
        200,
        "an empty POST needs no type"
    );
    assert_eq!(
        post("Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"),
        415,
        "chunked, no type"
    );
    assert_eq!(
        post(
            "Content-Type: application/json\r\nContent-Type: text/xml\r\nContent-Length: 2\r\n",
            "{}"
        ),
        415,
        "two types"
    );
    assert_eq!(
        post("Content-Type: ;x\r\nContent-Length: 2\r\n", "{}"),
        415,
        "the empty type"
    );
}
