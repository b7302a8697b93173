//! The L7 checker with a real backend, real clients (curl and rustls) and the real daemon:
//! every identifier kind denied (403), allow beats deny, removal restores; detections put the
//! culprit on the deny list; a decoy visit makes the kernel drop the client's next
//! connection; certificate reload; hostile input.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok};
use portcullis_tests::backend::Backend;
use portcullis_tests::checker_setup::{
    HOST, Setup, free_port, setup, setup_apis, setup_with, write_api, write_backend_api,
};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};
use portcullis_tests::privileged;
use portcullis_tests::tls::{TestCerts, TlsClient, rustls_get, self_signed};

fn shop_api(apis: &Path, backend: u16) {
    write_backend_api(
        apis,
        "shop",
        backend,
        r#""protocol":"https","hostname":"*","cookie":"JSESSIONID","oauth2_access_token":true, "apikey_header":"X-API-Key","username_header":"X-User","enable_blocking":true"#,
    );
    write_backend_api(
        apis,
        "jwt",
        backend,
        r#""jwt":{"location":"h:authorization:bearer","username":"sub"}"#,
    );
}

#[test]
fn every_identifier_kind_denied_allowed_removed() {
    privileged!();
    let s = setup(shop_api);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"jwt user"}"#);
    let jwt = format!("Authorization: Bearer eyJhbGciOiJub25lIn0.{payload}.x");
    // The CLI's words for the entry, the path, and the request header that carries it.
    let cases: [(&[&str], &str, &str); 8] = [
        (
            &["ip", "198.18.50.1"],
            "/shop/a",
            "X-Forwarded-For: 198.18.50.1",
        ),
        (
            &["ip", "198.18.51.0/24"],
            "/shop/a",
            "X-Forwarded-For: 198.18.51.9",
        ),
        (
            &["cookie", "JSESSIONID", "s3ss10n"],
            "/shop/a",
            "Cookie: theme=dark; JSESSIONID=s3ss10n",
        ),
        (
            &["token", "t0ken-1"],
            "/shop/a",
            "Authorization: Bearer t0ken-1",
        ),
        (
            &["api-key", "X-API-Key", "k3y-1"],
            "/shop/a",
            "X-API-Key: k3y-1",
        ),
        (
            &["api-key", "--any-name", "k3y-2"],
            "/shop/a",
            "X-API-Key: k3y-2",
        ),
        (
            &["username", "header user"],
            "/shop/a",
            "X-User: header user",
        ),
        (&["username", "jwt user"], "/jwt/a", jwt.as_str()),
    ];
    for (kind, path, header) in cases {
        let what = kind.join(" ");
        let args = &["-H", header];
        assert_eq!(s.curl(path, args).0, 200, "{what}: before any entry");
        let mut add = vec!["deny", "add"];
        add.extend(kind.iter());
        ok(&s.agent.cli(&add));
        let (code, body) = s.curl(path, args);
        assert_eq!(
            (code, body.trim()),
            (403, "Error: Unauthorized"),
            "{what}: denied"
        );
        let mut allow = vec!["allow", "add"];
        allow.extend(kind.iter());
        ok(&s.agent.cli(&allow));
        // A JWT claim is not verified by the checker, so it never vouches (it still blocks).
        let vouches = path != "/jwt/a";
        assert_eq!(
            s.curl(path, args).0,
            if vouches { 200 } else { 403 },
            "{what}: allow beats deny (unless unverifiable)"
        );
        allow[1] = "remove";
        ok(&s.agent.cli(&allow));
        assert_eq!(s.curl(path, args).0, 403, "{what}: denied again");
        add[1] = "remove";
        ok(&s.agent.cli(&add));
        assert_eq!(s.curl(path, args).0, 200, "{what}: removal restores");
    }
    // An entry scoped to another API does not apply here.
    ok(&s
        .agent
        .cli(&["deny", "add", "token", "scoped", "--api", "jwt"]));
    assert_eq!(
        s.curl("/shop/a", &["-H", "Authorization: Bearer scoped"]).0,
        200
    );
    // The backend saw what a proxy should add.
    let head = s.backend.last().expect("backend saw requests");
    assert!(
        head.to_ascii_lowercase().contains("x-forwarded-for:"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("forwarded: for="),
        "{head}"
    );
    // A rustls client and HTTP/2 get the same answers.
    let addr = format!("127.0.0.1:{}", s.port);
    let (code, body) = rustls_get(&addr, HOST, &s.ca, "/shop/x", &[]).expect("rustls");
    assert_eq!((code, body.trim()), (200, "backend GET /shop/x"));
    ok(&s.agent.cli(&["deny", "add", "token", "rt"]));
    assert_eq!(
        rustls_get(
            &addr,
            HOST,
            &s.ca,
            "/shop/x",
            &[("authorization", "Bearer rt")]
        )
        .expect("rustls")
        .0,
        403
    );
    assert_eq!(
        s.curl("/shop/x", &["--http2", "-H", "Authorization: Bearer rt"])
            .0,
        403
    );
    // ...and HTTP/2 really is what ALPN negotiated.
    let (_, version) = s.curl(
        "/shop/x",
        &[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}\n%{http_code}",
        ],
    );
    assert_eq!(version.trim(), "2", "negotiated HTTP version");
    // Unknown API.
    let (code, body) = s.curl("/nowhere", &[]);
    assert_eq!((code, body.trim()), (503, "Error: Unknown API"));
    let l7 = s.agent.stats().l7;
    assert!(l7.get("blocked").copied().unwrap_or(0) >= 18, "{l7:?}");
}

/// A client that rotates tokens on refused requests would add a row (and an fsync) per
/// request and never be blocked itself: the fourth distinct token in a minute denies its
/// address instead, and a budget bounds what all detections together write.
#[test]
fn rotating_tokens_gets_the_address_denied_and_detections_are_budgeted() {
    privileged!();
    let s = setup_with("detection_budget_total = 12\n", |apis, backend| {
        let fields = r#""oauth2_access_token":true, "api_pattern_enforcement":{"methods_allowed":["GET"],"error_code":401}"#;
        write_backend_api(apis, "shop", backend, fields);
    });
    let delete = |token: &str, client: &str| {
        let (auth, from) = (
            format!("Authorization: Bearer {token}"),
            format!("X-Forwarded-For: {client}"),
        );
        let mut args = vec!["-X", "DELETE", "-H", &auth];
        if !client.is_empty() {
            args.extend(["-H", &from]);
        }
        s.curl("/shop/x", &args).0
    };
    let codes: Vec<u16> = (0..10)
        .map(|i| delete(&format!("rotated-{i}"), "198.18.96.1"))
        .collect();
    // Three tokens denied, the fourth denies the address: from then on 403 for anything.
    assert_eq!(codes, [401, 401, 401, 401, 403, 403, 403, 403, 403, 403]);
    let rows = |s: &portcullis_tests::checker_setup::Setup| {
        let mut r: Vec<String> = s
            .agent
            .entries_from("deny", "checker")
            .iter()
            .map(|e| format!("{} {}", e.kind.as_str(), e.reason))
            .collect();
        r.sort();
        r
    };
    let first = rows(&s);
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(
        first[0].starts_with("ip invalid-method (escalated: identifiers rotated)"),
        "{first:?}"
    );
    let honest = ["-H", "X-Forwarded-For: 198.18.96.2"];
    assert_eq!(
        s.curl("/shop/x", &honest).0,
        200,
        "another client is served"
    );
    // The gateway itself (a trusted proxy, no X-Forwarded-For) cannot be denied: its
    // clients' tokens go on being denied one by one.
    let codes: Vec<u16> = (0..5).map(|i| delete(&format!("gw-{i}"), "")).collect();
    assert_eq!(codes, [401; 5]);
    assert_eq!(rows(&s).len(), 9, "{:?}", rows(&s));
    // Ten more clients, one detection each: the total budget (12 a minute) writes three.
    for i in 10..20 {
        let client = format!("198.18.97.{i}");
        assert_eq!(delete(&format!("other-{i}"), &client), 401, "{client}");
    }
    assert_eq!(rows(&s).len(), 12, "{:?}", rows(&s));
    let l7 = s.agent.stats().l7;
    let counted = (
        l7.get("detection_escalated"),
        l7.get("detection_over_budget"),
    );
    assert_eq!(counted, (Some(&1), Some(&7)), "{l7:?}");
    assert!(
        s.agent.log_text().contains("detection budget spent"),
        "said in the log"
    );
    // The list writer is not held up: an operator's change still lands at once.
    ok(&s.agent.cli(&["deny", "add", "token", "by-hand"]));
}

#[test]
fn detections_deny_list_the_culprit() {
    privileged!();
    // A TTL set for detections (the default is until removed: see checker_ase.rs).
    let s = setup_with("detection_ttl = \"1h\"\n", |dir, backend| {
        for (name, fields) in [
            (
                "shop",
                r#""oauth2_access_token":true, "api_pattern_enforcement":{"methods_allowed":["GET","POST"],"content_type_allowed":"application/json", "error_code":401,"error_message_body":"Error: Unauthorized method\n"}, "decoy_config":{"decoy_enabled":true,"response_code":200,"response_message":"admin console\n","decoy_subpaths":["admin"]}"#,
            ),
            (
                "bank",
                r#""oauth2_access_token":true,"is_token_mandatory":true"#,
            ),
        ] {
            write_backend_api(dir, name, backend, fields);
        }
    });
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}");
    // Invalid method with a token: the configured error, the token deny-listed.
    let (code, body) = s.curl(
        "/shop/items",
        &[
            "-X",
            "DELETE",
            "-H",
            "Authorization: Bearer thief",
            "-H",
            &xff("198.18.60.1"),
        ],
    );
    assert_eq!((code, body.trim()), (401, "Error: Unauthorized method"));
    assert_eq!(
        s.curl(
            "/shop/items",
            &[
                "-H",
                "Authorization: Bearer thief",
                "-H",
                &xff("198.18.60.9")
            ]
        )
        .0,
        403,
        "token now denied"
    );
    // Wrong content type, no token: the client IP.
    let (code, _) = s.curl(
        "/shop/items",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: text/xml",
            "--data",
            "<x/>",
            "-H",
            &xff("198.18.60.2"),
        ],
    );
    assert_eq!(code, 401);
    // Decoy: the decoy answer, the IP deny-listed.
    let (code, body) = s.curl("/shop/admin/login", &["-H", &xff("198.18.60.3")]);
    assert_eq!((code, body.trim()), (200, "admin console"));
    assert_eq!(s.curl("/shop/items", &["-H", &xff("198.18.60.3")]).0, 403);
    // Missing mandatory token: the IP.
    assert_eq!(s.curl("/bank/balance", &["-H", &xff("198.18.60.4")]).0, 401);
    assert_eq!(
        s.curl(
            "/bank/balance",
            &["-H", "Authorization: Bearer ok", "-H", &xff("198.18.60.4")]
        )
        .0,
        403
    );
    // Allow-listed clients are never deny-listed.
    ok(&s.agent.cli(&["allow", "add", "ip", "198.18.60.5"]));
    assert_eq!(s.curl("/shop/admin", &["-H", &xff("198.18.60.5")]).0, 200);
    let listed = s.agent.entries_from("deny", "checker");
    let reasons: Vec<String> = listed
        .iter()
        .map(|e| format!("{} {}", e.kind.as_str(), e.reason))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for want in [
        "token invalid-method",
        "ip invalid-content-type",
        "ip decoy",
        "ip missing-token",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(want)),
            "{want} missing from {reasons:?}"
        );
    }
    assert!(
        listed.iter().all(|e| e.expires.is_some()),
        "detections carry the detection TTL"
    );
    let text = serde_json::to_string(&listed).unwrap_or_default();
    assert!(!text.contains("198.18.60.5"), "{text}");
    // Loopback (this host) is never deny-listed by a detection: no new entry, and the next
    // request from it is still served.
    let (code, _) = s.curl("/shop/admin", &[]);
    assert_eq!(code, 200);
    let after = s.agent.entries_from("deny", "checker");
    assert_eq!(after, listed, "a detection from loopback added an entry");
    assert_eq!(s.curl("/shop/items", &[]).0, 200, "loopback still served");
}

#[test]
fn hostile_input_is_refused_and_others_are_served() {
    privileged!();
    let s = setup(|apis, backend| {
        shop_api(apis, backend);
        std::fs::write(
            apis.join("broken.json"),
            "{\"api_metadata\": {\"url\": \"/b\", \"servers\": [ }",
        )
        .expect("broken");
    });
    // The broken file is reported with its path; the others serve.
    let list = ok(&s.agent.cli(&["api", "list", "--json"]));
    assert!(
        list.contains("broken.json") && list.contains("invalid JSON"),
        "{list}"
    );
    assert_eq!(s.curl("/shop/ok", &[]).0, 200);
    // `api show` gives the definition as loaded.
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&s.agent.cli(&["api", "show", "shop"]))).expect("JSON");
    let text = shown.to_string();
    assert!(
        text.contains("\"/shop\"")
            && text.contains("JSESSIONID")
            && text.contains(&s.backend.addr.port().to_string()),
        "{shown}"
    );
    assert!(!s.agent.cli(&["api", "show", "nope"]).status.success());
    // Oversized headers: refused, and the next request is fine.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let (code, _) = s.curl("/shop/ok", &["-H", &big]);
    assert_eq!(code, 431, "oversized header answered {code}");
    assert_eq!(s.curl("/shop/ok", &[]).0, 200);
    // TLS garbage: the connection is dropped, others are served.
    let mut g = std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    g.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .expect("garbage");
    g.write_all(&vec![0x42; 4096]).ok();
    g.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The checker must end the connection (EOF, a reset, or a TLS alert then EOF), not
    // leave it hanging until our read timeout.
    let t = Instant::now();
    let mut answer = Vec::new();
    let ended = match g.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        ended && t.elapsed() < Duration::from_secs(4),
        "TLS garbage: connection not closed ({:?}, {} bytes)",
        t.elapsed(),
        answer.len()
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "TLS garbage answered with something other than an alert: {answer:02x?}"
    );
    assert_eq!(s.curl("/shop/ok", &[]).0, 200);
    // Garbage HTTP on the plain listener: 400.
    let mut h = std::net::TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    h.write_all(b"NOT HTTP AT ALL\r\n\r\n").expect("write");
    let mut resp = String::new();
    h.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t = Instant::now();
    h.read_to_string(&mut resp)
        .expect("the checker answers and closes, within the timeout");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // Slowloris: a head that never completes is cut off after header_timeout (2 s).
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    slow.write_all(b"GET /shop/ok HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "idle half-request kept open for {:?}",
        t.elapsed()
    );
    let addr = format!("127.0.0.1:{}", s.port);
    // Fixing the broken file and reloading loads it.
    std::fs::write(
        s.dirs.root.join("apis/broken.json"),
        format!(
            r#"{{"api_metadata":{{"url":"/b","servers":[{{"host":"127.0.0.1","port":{}}}]}}}}"#,
            s.backend.addr.port()
        ),
    )
    .expect("fix");
    assert!(ok(&s.agent.cli(&["api", "reload"])).contains("3 API definitions loaded"));
    assert_eq!(
        rustls_get(&addr, HOST, &s.ca, "/b/x", &[])
            .expect("fixed API")
            .0,
        200
    );
}

/// Replaces the checker's certificate files with `new`'s; with `keep_mtime` the files keep
/// their old modification times, so only a SIGHUP can notice.
fn replace_cert(s: &Setup, new: &TestCerts, keep_mtime: bool) {
    for (from, to) in [(&new.key, "a-key.pem"), (&new.cert, "a-cert.pem")] {
        let to = s.dirs.root.join(to);
        let old = std::fs::metadata(&to)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::fs::copy(from, &to).expect("replace");
        if keep_mtime {
            std::fs::File::options()
                .write(true)
                .open(&to)
                .and_then(|f| f.set_modified(old))
                .expect("set mtime");
        }
    }
}

fn wait_until_served(addr: &str, ca: &std::path::Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if rustls_get(addr, HOST, ca, "/shop/ok", &[]).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn certificate_reload_by_signal_and_by_file_change_keeps_connections() {
    privileged!();
    let s = setup(shop_api);
    let addr = format!("127.0.0.1:{}", s.port);
    // An established keep-alive connection, kept busy (idle ones are closed after the header
    // timeout) through both reloads: no reload may drop it.
    let mut kept = TlsClient::connect(&addr, HOST, &s.ca).expect("connect");
    let first_leaf = kept.peer_leaf();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| {
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, _) = kept
                    .get("/shop/ok", &[])
                    .map_err(|e| format!("request {served} on the kept connection: {e:#}"))?;
                if code != 200 {
                    return Err(format!("request {served} answered {code}"));
                }
                served += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok::<_, String>(served)
        });
        // SIGHUP alone (file times unchanged, so the file watch cannot be what reloads).
        let b = self_signed(&s.dirs.root, HOST, "b").expect("cert");
        assert!(
            rustls_get(&addr, HOST, &b.ca, "/shop/ok", &[]).is_err(),
            "new CA not trusted yet"
        );
        replace_cert(&s, &b, true);
        std::thread::sleep(Duration::from_secs(6));
        assert!(
            rustls_get(&addr, HOST, &b.ca, "/shop/ok", &[]).is_err(),
            "reloaded without a signal although the file times did not change"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(s.agent.pid().expect("pid") as i32, libc::SIGHUP) };
        assert!(
            wait_until_served(&addr, &b.ca, Duration::from_secs(3)),
            "SIGHUP did not load the new certificate"
        );

        // A changed file alone, no signal: the watch picks it up.
        let c = self_signed(&s.dirs.root, HOST, "c").expect("cert");
        replace_cert(&s, &c, false);
        assert!(
            wait_until_served(&addr, &c.ca, Duration::from_secs(12)),
            "a replaced certificate file was not picked up without a signal"
        );
        // The busy client stops first, so that a failure below ends the test, not hangs it.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            s.agent
                .log_text()
                .matches("TLS certificate reloaded")
                .count(),
            2,
            "{}",
            s.agent.log_text()
        );
        let served = busy.join().expect("busy client").expect("kept connection");
        assert!(served > 20, "only {served} requests on the kept connection");
    });
    // The connection made before both reloads kept its original certificate.
    assert_eq!(kept.peer_leaf(), first_leaf);
}

#[test]
fn a_decoy_visit_gets_the_client_dropped_by_xdp() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let backend = in_netns(&pair.server, || {
        Backend::start(TcpListener::bind((SERVER_V4, 0)).expect("backend"))
    })
    .expect("netns");
    let certs = self_signed(&dirs.root, HOST, "a").expect("cert");
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let apis = dirs.root.join("apis");
    write_api(
        &apis,
        "shop",
        &format!(
            r#"{{"url":"/shop","decoy_config":{{"decoy_enabled":true,"response_code":200,"response_message":"admin\n","decoy_subpaths":["admin"]}},
                "servers":[{{"host":"{SERVER_V4}","port":{}}}]}}"#,
            backend.addr.port()
        ),
    );
    let config = format!(
        "[checker]\nhttps = \"{SERVER_V4}:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\ndetection_ttl = \"10m\"\n",
        cert.display(),
        key.display(),
        apis.display()
    );
    let opts = AgentOpts {
        config,
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let [attacker, bystander, _] = CLIENT_V4;
    let curl = |src: &str, path: &str| -> (i32, String) {
        let out = pair
            .curl_https(src, &certs.ca, (HOST, 8443), path, &[])
            .expect("curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        curl(attacker, "/shop/items"),
        (0, "backend GET /shop/items\n".to_string())
    );
    assert_eq!(
        curl(attacker, "/shop/admin"),
        (0, "admin\n".to_string()),
        "decoy answer"
    );
    // The attacker's next connection never completes: XDP drops its SYN.
    let (code, _) = curl(attacker, "/shop/items");
    assert_eq!(
        code, 28,
        "curl should time out (exit 28) connecting from a denied source"
    );
    assert_eq!(pair.ping(attacker, SERVER_V4, 2).expect("ping"), 0);
    assert_eq!(curl(bystander, "/shop/items").0, 0, "others still served");
    let listed = ok(&agent.cli(&["deny", "list", "--source", "checker"]));
    assert!(
        listed.contains(&format!("{attacker}/32")) && listed.contains("decoy"),
        "{listed}"
    );
}

#[test]
fn round_robin_spreads_over_live_servers_and_skips_a_dead_one() {
    privileged!();
    let dead = free_port();
    let second = Backend::start(TcpListener::bind("127.0.0.1:0").expect("backend"));
    let second_port = second.addr.port();
    let s = setup(|apis, backend| {
        write_api(
            apis,
            "shop",
            &format!(
                r#"{{"url":"/shop","health_retry_count":2,"servers":[{{"host":"127.0.0.1","port":{dead}}},{{"host":"127.0.0.1","port":{backend}}},{{"host":"127.0.0.1","port":{second_port}}}]}}"#
            ),
        );
    });
    let codes: Vec<u16> = (0..16).map(|_| s.curl("/shop/x", &[]).0).collect();
    let failed = codes.iter().filter(|c| **c == 502).count();
    assert!(
        failed <= 2,
        "the dead server is skipped after 2 failures: {codes:?}"
    );
    assert!(codes[8..].iter().all(|c| *c == 200), "{codes:?}");
    // Both live servers take a fair share: round robin, not "always the first live one".
    let served = |b: &Backend| b.seen.lock().map(|v| v.len()).unwrap_or(0);
    let (a, b) = (served(&s.backend), served(&second));
    assert!(
        a >= 5 && b >= 5 && a + b == codes.iter().filter(|c| **c == 200).count(),
        "live servers served {a} and {b} of {codes:?}"
    );
    let head = second.last().expect("second server served");
    assert!(head.starts_with("GET /shop/x"), "{head}");
}

#[test]
fn spike_threshold_and_monitoring_apis() {
    privileged!();
    let s = setup_apis(&[
        (
            "limited",
            r#""flow_control":{"client_spike_threshold":"5/minute"}"#,
        ),
        (
            "watch",
            r#""oauth2_access_token":true,"enable_blocking":false"#,
        ),
    ]);
    // Five requests a minute per client, then 429; another client has its own budget.
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}");
    let codes: Vec<u16> = (0..7)
        .map(|_| s.curl("/limited/x", &["-H", &xff("198.18.80.1")]).0)
        .collect();
    assert_eq!(codes, vec![200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(s.curl("/limited/x", &["-H", &xff("198.18.80.2")]).0, 200);
    // With enable_blocking off, a denied client is forwarded and counted as "would block".
    ok(&s.agent.cli(&["deny", "add", "token", "watched"]));
    assert_eq!(
        s.curl("/watch/x", &["-H", "Authorization: Bearer watched"])
            .0,
        200
    );
    let l7 = s.agent.stats().l7;
    assert_eq!(
        (l7.get("would_block"), l7.get("rate_limited")),
        (Some(&1), Some(&2)),
        "{l7:?}"
    );
}
