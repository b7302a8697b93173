//! Extraction as origin servers read requests, including the spellings attackers try.

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
    let proxies: Vec<Cidr> = vec!["198.18.0.0/30".parse().expect("cidr")];
    let ip = client_ip(&h, peer, &proxies).expect("readable");
    assert_eq!(ip.to_string(), "10.0.0.1", "the right-most untrusted hop");
    assert_eq!(
        client_ip(&h, peer, &[]).map(|i| i.to_string()),
        Some("198.18.0.2".into())
    );
    let r = identifiers(&meta, &h, Some("x=1&key=k%20y"), ip, false);
    assert_eq!(r.cookies.len(), 1);
    assert_eq!(r.cookies[0].value, crate::model::digest("s3ss"));
    assert_eq!(r.tokens.len(), 1);
    assert_eq!(r.tokens[0].value, crate::model::digest(&jwt));
    assert_eq!(r.api_keys.len(), 1);
    assert_eq!(r.api_keys[0].1.value, crate::model::digest("k y"));
    assert_eq!(r.usernames.len(), 1);
    assert_eq!(r.usernames[0].value, "your name");
    // No Basic-auth username: any client could claim an allow-listed user with it.
    let basic = headers(&[("authorization", "Basic dXNlcjE6cGFzcw==")]);
    assert!(
        identifiers(&meta, &basic, None, ip, false)
            .usernames
            .is_empty()
    );
    assert_eq!(query_params(Some("a=%zz"), "a"), ["%zz"]);
}

/// X-Forwarded-For: the client writes the left of it; only trusted proxies' hops count.
#[test]
fn forwarded_for_trusts_only_the_proxies() {
    let proxies: Vec<Cidr> = vec![
        "198.18.0.0/30".parse().expect("cidr"),
        "2001:db8::/64".parse().expect("cidr"),
    ];
    let via_proxy: SocketAddr = "198.18.0.1:1".parse().expect("addr");
    let direct: SocketAddr = "198.18.9.9:1".parse().expect("addr");
    let ip = |h: &[(&str, &str)], peer| {
        client_ip(&headers(h), peer, &proxies).map_or("unreadable".into(), |i| i.to_string())
    };
    // The client forges an allow-listed address on the left: ignored.
    assert_eq!(
        ip(&[("x-forwarded-for", "203.0.113.1, 198.18.5.5")], via_proxy),
        "198.18.5.5"
    );
    // Trusted hops on the right are skipped, over several headers.
    assert_eq!(
        ip(
            &[
                ("x-forwarded-for", "198.18.5.5"),
                ("x-forwarded-for", "198.18.0.2, 2001:db8::7")
            ],
            via_proxy
        ),
        "198.18.5.5"
    );
    // A client that is not a proxy cannot speak for anyone.
    assert_eq!(
        ip(&[("x-forwarded-for", "203.0.113.1")], direct),
        "198.18.9.9"
    );
    // Garbage where the client's hop should be: refused, never blamed on the proxy.
    assert_eq!(
        ip(&[("x-forwarded-for", "198.18.5.5, junk")], via_proxy),
        "unreadable"
    );
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\x80, 198.18.5.6").expect("value"),
    );
    assert_eq!(
        client_ip(&h, via_proxy, &proxies).map(|i| i.to_string()),
        Some("198.18.5.6".into()),
        "a bad byte in the client's part hides nothing"
    );
    // Ports, brackets and zones are read as servers read them.
    for (hop, want) in [
        ("198.18.5.5:8080", "198.18.5.5"),
        ("[2001:db9::1]:443", "2001:db9::1"),
        ("[2001:db9::1]", "2001:db9::1"),
        ("fe80::1%eth0", "fe80::1"),
    ] {
        assert_eq!(ip(&[("x-forwarded-for", hop)], via_proxy), want, "{hop}");
    }
    assert_eq!(
        ip(&[("x-forwarded-for", "::ffff:198.18.5.5")], via_proxy),
        "198.18.5.5"
    );
}

/// Each way a client hid a denied cookie from the checker while the server still read it:
/// the checker must find the value the server would use.
#[test]
fn hostile_spellings_still_yield_the_cookie() {
    let cookie = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        cookies(&h, "JSESSIONID")
    };
    for (case, hdrs) in [
        ("space after =", vec![("cookie", "JSESSIONID= DENIED")]),
        (
            "tab around",
            vec![("cookie", "a=1;\tJSESSIONID =\tDENIED\t")],
        ),
        ("quoted", vec![("cookie", "JSESSIONID=\"DENIED\"")]),
        (
            "repeated name",
            vec![("cookie", "JSESSIONID=ok; JSESSIONID=DENIED")],
        ),
        (
            "second header",
            vec![("cookie", "JSESSIONID=ok"), ("cookie", "JSESSIONID=DENIED")],
        ),
        (
            "h2 crumbs",
            vec![("cookie", "a=1"), ("cookie", "JSESSIONID=DENIED")],
        ),
    ] {
        assert!(
            cookie(&hdrs).iter().any(|v| v == "DENIED"),
            "{case}: {:?}",
            cookie(&hdrs)
        );
    }
    // A non-UTF-8 byte in another cookie hides nothing.
    let mut h = HeaderMap::new();
    h.append(
        http::header::COOKIE,
        http::HeaderValue::from_bytes(b"x=\xff; JSESSIONID=DENIED").expect("value"),
    );
    assert_eq!(cookies(&h, "JSESSIONID"), ["DENIED"]);
    // Some servers match names without case, some decode values: those spellings count.
    assert_eq!(cookie(&[("cookie", "jsessionid=DENIED")]), ["DENIED"]);
    assert!(
        cookie(&[("cookie", "JSESSIONID=%44ENIED")]).contains(&"DENIED".to_string()),
        "percent-encoded value"
    );
}

/// The same for bearer tokens and API keys.
#[test]
fn hostile_spellings_still_yield_the_token_and_key() {
    let d = crate::model::digest;
    // Tokens: any scheme case, every header, RFC 6750's query parameter.
    let meta: ApiMetadata = serde_json::from_str(
        r#"{"oauth2_access_token":true,"apikey_header":"X-API-Key","apikey_qs":"api_key"}"#,
    )
    .expect("meta");
    let ip: IpAddr = "198.18.0.1".parse().expect("ip");
    let h = headers(&[("authorization", "bEaReR  DENIED ")]);
    let r = identifiers(&meta, &h, None, ip, false);
    assert_eq!(r.tokens[0].value, d("DENIED"));
    let h = headers(&[
        ("authorization", "Bearer ok"),
        ("authorization", "Bearer DENIED"),
    ]);
    assert_eq!(identifiers(&meta, &h, None, ip, false).tokens.len(), 2);
    let r = identifiers(
        &meta,
        &HeaderMap::new(),
        Some("a=1&access_token=DENIED"),
        ip,
        false,
    );
    assert_eq!(r.tokens[0].value, d("DENIED"));

    // API keys: header any case and every duplicate; query names decoded, any case.
    let h = headers(&[("x-api-key", "ok"), ("X-Api-Key", "DENIED")]);
    let r = identifiers(&meta, &h, None, ip, false);
    assert!(
        r.api_keys
            .iter()
            .any(|(n, _)| n.value == d("DENIED") && n.name == "x-api-key")
    );
    for q in [
        "api%5Fkey=DENIED",
        "API_KEY=DENIED",
        "api_key=ok&api_key=DENIED",
    ] {
        let r = identifiers(&meta, &HeaderMap::new(), Some(q), ip, false);
        assert!(
            r.api_keys.iter().any(|(_, any)| any.value == d("DENIED")),
            "{q}"
        );
    }
}
