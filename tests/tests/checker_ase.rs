//! API files as Ping writes them, and ASE's semantics around them, through a running checker
//! with curl: loose types, full-path decoys, fields reported by path, `enable_blocking:
//! false` covering detections, Unknown Hostname apart from Unknown API, definitions ASE
//! would refuse, detections that last until removed.

use std::process::Command;

use portcullis_tests::agent::ok;
use portcullis_tests::checker_setup::{setup_with, write_api};
use portcullis_tests::privileged;

/// An API as Ping's examples and tools write it: numbers as strings, `""` for unset, ASE
/// duration units, full-path and relative decoys, fields Portcullis does not use.
fn ping_style(url: &str, blocking: bool, backend: u16) -> String {
    format!(
        r#"{{"protocol": "https", "url": "{url}", "hostname": "api.test", "cookie": "", "cookie_idle_timeout": "20m",
        "oauth2_access_token": false, "is_token_mandatory": false, "apikey_qs": "", "apikey_header": "",
        "enable_blocking": {blocking}, "api_mapping": {{"internal_url": ""}},
        "api_pattern_enforcement": {{"protocol_allowed": "", "http_redirect": {{"response_code": "", "response_def": "", "https_url": ""}},
            "methods_allowed": ["GET"], "content_type_allowed": "", "error_code": "405", "error_def": "Method Not Allowed",
            "error_message_body": "Error: method\n"}},
        "flow_control": {{"client_spike_threshold": "0/second"}},
        "health_check": false, "health_check_interval": "8", "health_retry_count": "", "health_url": "/",
        "servers": [{{"host": "127.0.0.1", "port": "{backend}", "server_spike_threshold": "0/second"}}],
        "decoy_config": {{"decoy_enabled": true, "response_code": "", "response_def": "", "response_message": "decoy\n",
            "decoy_subpaths": ["{url}/admin", "debug"]}}}}"#
    )
}

#[test]
fn ping_style_api_files_behave_as_they_do_in_ase() {
    privileged!();
    // Until removed, as in ASE (the default is 1h: see README).
    let s = setup_with("detection_ttl = \"never\"\n", |apis, backend| {
        write_api(apis, "shop", &ping_style("/shop", true, backend));
        write_api(apis, "watch", &ping_style("/watch", false, backend));
        // Plain HTTP to an HTTPS-only API: redirected, as ASE's http_redirect says.
        write_api(
            apis,
            "secure",
            &format!(
                r#"{{"url":"/secure","hostname":"api.test","api_pattern_enforcement":{{"protocol_allowed":"https",
                "http_redirect":{{"response_code":"302","response_def":"Found","https_url":"https://api.test:8443/"}}}},
                "servers":[{{"host":"127.0.0.1","port":{backend}}}]}}"#
            ),
        );
        // ASE refuses a mandatory token without a token to read: so does Portcullis.
        write_api(
            apis,
            "refused",
            &format!(
                r#"{{"url":"/refused","hostname":"api.test","is_token_mandatory":true,"servers":[{{"host":"127.0.0.1","port":{backend}}}]}}"#
            ),
        );
    });
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    let listed = || ok(&s.agent.cli(&["deny", "list", "--source", "checker"]));

    // Loaded with their values: the string port and codes, the decoys in full.
    assert_eq!(s.curl("/shop/items", &[]).0, 200);
    let out = s.agent.cli(&["api", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused.json") && stderr.contains("needs `oauth2_access_token: true`"),
        "{stderr}"
    );
    // ASE's `list_api` and `api_info NAME` are `api list` and `api show NAME`.
    let listed_apis = ok(&s.agent.cli(&["-u", "admin", "-p", "admin", "list_api"]));
    assert!(
        listed_apis.contains("shop") && listed_apis.contains("watch"),
        "{listed_apis}"
    );
    let shown = ok(&s
        .agent
        .cli(&["-u", "admin", "-p", "admin", "api_info", "shop"]));
    for part in [
        "\"/shop/admin\"",
        "\"/shop/debug\"",
        "\"server_spike_threshold\": \"0/second\"",
        "api_mapping",
        "cookie_idle_timeout",
    ] {
        assert!(shown.contains(part), "api show lacks {part}: {shown}");
    }

    // A method outside the pattern: the file's string error_code, the client denied.
    assert_eq!(
        s.curl("/shop/items", &["-X", "DELETE", "-H", &from("198.18.81.1")]),
        (405, "Error: method\n".into())
    );
    // ASE's full-path decoy, and the relative one, fire; the response_code "" is 200.
    assert_eq!(
        s.curl("/shop/admin", &["-H", &from("198.18.81.2")]),
        (200, "decoy\n".into())
    );
    assert_eq!(
        s.curl("/shop/debug/x", &["-H", &from("198.18.81.3")]).0,
        200
    );
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.81.2")]).0, 403);
    let denied = listed();
    for ip in ["198.18.81.1/32", "198.18.81.2/32", "198.18.81.3/32"] {
        assert!(denied.contains(ip), "{ip} not denied: {denied}");
    }
    // Detections last until removed, as in ASE (detection_ttl = "never" by default).
    assert!(
        denied
            .lines()
            .filter(|l| l.contains("198.18.81."))
            .all(|l| l.contains("never")),
        "{denied}"
    );

    // enable_blocking false: detections are counted, nothing is written or refused, and a
    // decoy still answers as a decoy.
    let before = s.agent.stats().l7;
    assert_eq!(
        s.curl(
            "/watch/items",
            &["-X", "DELETE", "-H", &from("198.18.81.4")]
        )
        .0,
        200
    );
    assert_eq!(
        s.curl("/watch/admin", &["-H", &from("198.18.81.5")]),
        (200, "decoy\n".into())
    );
    assert_eq!(s.curl("/watch/items", &["-H", &from("198.18.81.5")]).0, 200);
    let after = s.agent.stats().l7;
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (grew("would_block"), grew("invalid_method"), grew("decoy")),
        (2, 1, 1),
        "{after:?}"
    );
    let denied = listed();
    assert!(
        !denied.contains("198.18.81.4") && !denied.contains("198.18.81.5"),
        "a watching API deny-listed a client: {denied}"
    );

    // A host no API serves, then a path no API of the host owns (plain HTTP: no SNI).
    let plain = |host: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://127.0.0.1:{}{path}", s.http_port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", "Host: api.test", "-H", "X-Forwarded-For: 198.18.81.6"])
        .arg(format!("http://127.0.0.1:{}/secure/x?a=1", s.http_port))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "302 https://api.test:8443/secure/x?a=1"
    );
    assert!(
        !listed().contains("198.18.81.6"),
        "a redirected client was deny-listed"
    );
    assert_eq!(
        plain("other.test", "/shop/items"),
        "Error: Unknown Hostname\n\n503"
    );
    assert_eq!(plain("api.test", "/nothing"), "Error: Unknown API\n\n503");
    let l7 = s.agent.stats().l7;
    assert_eq!(
        (
            l7.get("unknown_hostname"),
            l7.get("unknown_api"),
            l7.get("redirected")
        ),
        (Some(&1), Some(&1), Some(&1)),
        "{l7:?}"
    );
}

/// What ASE does with an API's servers: TLS to them, verified (`server_ssl`); the internal
/// path (`api_mapping`); a client kept on its server (`cookie_persistence_enabled`); and
/// each server's limits (`server_connection_quota`, `server_spike_threshold`, with and
/// without `server_connection_queueing`).
#[test]
fn servers_are_reached_as_ase_reaches_them() {
    use portcullis_tests::backend::Backend;
    use portcullis_tests::tls::self_signed;
    use std::net::TcpListener;
    privileged!();
    let dir = portcullis_tests::agent::AgentDirs::new();
    let bind = || TcpListener::bind("127.0.0.1:0").expect("backend");
    // A TLS server with a certificate from a CA the checker is given, and one from another.
    let good = self_signed(&dir.root, "127.0.0.1", "good").expect("certs");
    let rogue = self_signed(&dir.root, "127.0.0.1", "rogue").expect("certs");
    let tls = Backend::start_tls(bind(), &good.cert, &good.key);
    let untrusted = Backend::start_tls(bind(), &rogue.cert, &rogue.key);
    let second = Backend::start(bind());
    let (tls_port, untrusted_port, second_port) =
        (tls.addr.port(), untrusted.addr.port(), second.addr.port());
    let s = setup_with(
        &format!("backend_ca = \"{}\"\n", good.ca.display()),
        |apis, backend| {
            let server = |port: u16, extra: &str| {
                format!(r#"{{"host": "127.0.0.1", "port": "{port}"{extra}}}"#)
            };
            let api = |name: &str, fields: &str, servers: &[String]| {
                write_api(
                    apis,
                    name,
                    &format!(
                        r#"{{"url": "/{name}", "hostname": "api.test", {fields} "servers": [{}]}}"#,
                        servers.join(",")
                    ),
                );
            };
            api(
                "secure",
                r#""server_ssl": "true", "api_mapping": {"internal_url": "/internal/v1"},"#,
                &[server(tls_port, "")],
            );
            api(
                "rogue",
                r#""server_ssl": true,"#,
                &[server(untrusted_port, "")],
            );
            api("plain", r#""server_ssl": true,"#, &[server(backend, "")]);
            api(
                "sticky",
                r#""cookie_persistence_enabled": "true","#,
                &[server(backend, ""), server(second_port, "")],
            );
            api(
                "quota",
                "",
                &[server(backend, r#", "server_connection_quota": "1""#)],
            );
            api(
                "queued",
                r#""flow_control": {"server_connection_queueing": "true"},"#,
                &[server(backend, r#", "server_connection_quota": 1"#)],
            );
            api(
                "spike",
                "",
                &[server(backend, r#", "server_spike_threshold": "2/minute""#)],
            );
        },
    );
    let stats = |outcome: &str| s.agent.stats().l7.get(outcome).copied().unwrap_or(0);

    // TLS to the server, verified against backend_ca, under the mapped path.
    assert_eq!(
        s.curl("/secure/items?q=1", &[]),
        (200, "backend GET /internal/v1/items?q=1\n".into())
    );
    assert_eq!(tls.count(), 1);
    // A certificate from another CA, or no TLS at all on the server: never sent to.
    assert_eq!(s.curl("/rogue/items", &[]).0, 502);
    assert_eq!(untrusted.count(), 0, "the request never reached it");
    assert_eq!(s.curl("/plain/items", &[]).0, 502);

    // Sticky: the first answer names the server in a cookie; every later request with it
    // goes there, while a client without it is spread round robin.
    let jar = dir.root.join("jar");
    let jar = jar.to_str().expect("utf-8");
    let before = (s.backend.count(), second.count());
    assert_eq!(s.curl("/sticky/a", &["-c", jar]).0, 200);
    let cookie = std::fs::read_to_string(jar).expect("jar");
    assert!(cookie.contains("portcullis_server"), "{cookie}");
    assert!(cookie.contains("/sticky"), "scoped to the API: {cookie}");
    let first = (s.backend.count() - before.0, second.count() - before.1);
    for _ in 0..6 {
        assert_eq!(s.curl("/sticky/b", &["-b", jar]).0, 200);
    }
    let after = (s.backend.count() - before.0, second.count() - before.1);
    assert!(
        after == (7, 0) || after == (0, 7),
        "all on one server: {first:?} then {after:?}"
    );
    for _ in 0..4 {
        assert_eq!(s.curl("/sticky/c", &[]).0, 200);
    }
    let spread = (s.backend.count() - before.0, second.count() - before.1);
    assert!(
        spread.0 >= after.0 + 2 && spread.1 >= after.1 + 2,
        "round robin without the cookie: {after:?} then {spread:?}"
    );

    // A server at its quota: 503 at once; with queueing, the request waits its turn.
    let busy = |api: &'static str| {
        let slow = std::thread::spawn({
            let (ca, port) = (s.ca.clone(), s.port);
            move || {
                portcullis_tests::http::curl_status(
                    &format!("https://api.test:{port}/{api}/slow"),
                    &[
                        "--cacert",
                        ca.to_str().expect("utf-8"),
                        "--resolve",
                        &format!("api.test:{port}:127.0.0.1"),
                    ],
                )
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        let second = s.curl(&format!("/{api}/x"), &[]);
        (slow.join().expect("slow request"), second)
    };
    let refused = stats("server_busy");
    assert_eq!(
        busy("quota"),
        (200, (503, "Error: Server Busy\n".into())),
        "past the quota"
    );
    assert_eq!(stats("server_busy"), refused + 1);
    assert_eq!(busy("queued").1.0, 200, "queued behind the slow one");
    assert_eq!(s.curl("/quota/x", &[]).0, 200, "its place was given back");

    // Two requests a minute to the server: the third is refused.
    assert_eq!(s.curl("/spike/1", &[]).0, 200);
    assert_eq!(s.curl("/spike/2", &[]).0, 200);
    assert_eq!(s.curl("/spike/3", &[]).0, 503);
}

/// Debian's Python, where python3-websockets is installed (not a pyenv or venv one first
/// on `PATH`).
const PYTHON: &str = "/usr/bin/python3";

/// A WebSocket API (`protocol: "ws"`): a real WebSocket client (python3-websockets) talks to
/// a real echo server through the checker; the upgrade is judged as any request (a denied
/// client gets 403), and `bytes_in_threshold` closes a connection that sends too much.
#[test]
fn websocket_apis_are_proxied_and_judged() {
    use std::io::{BufRead as _, BufReader};
    privileged!();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ws.py");
    let ws_port = portcullis_tests::checker_setup::free_port();
    let mut server = Killed(
        Command::new(PYTHON)
            .args([script, "serve", &ws_port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (apt-get install python3-websockets)"),
    );
    let mut ready = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("server output");
    assert_eq!(ready.trim(), "ready");
    let s = setup_with("idle_timeout = \"2s\"\n", |apis, _| {
        write_api(
            apis,
            "chat",
            &format!(
                r#"{{"protocol": "ws", "url": "/chat", "hostname": "api.test",
                "api_pattern_enforcement": {{"protocol_allowed": "wss"}},
                "flow_control": {{"bytes_in_threshold": "4096/minute"}},
                "servers": [{{"host": "127.0.0.1", "port": "{ws_port}"}}]}}"#
            ),
        );
    });
    let talk = |from: &str, messages: &[&str]| {
        let out = Command::new(PYTHON)
            .args([script, "talk", &s.port.to_string()])
            .arg(&s.ca)
            .args(["/chat/room", "--from", from])
            .args(messages)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        talk("198.18.82.1", &["hello", "again"]),
        "echo 5 hello\necho 5 again\ndone\n"
    );
    // Past 4 KiB a minute from the client: the tunnel is closed.
    assert_eq!(
        talk("198.18.82.1", &["3000", "3000", "10"]),
        "echo 3000 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nclosed\n"
    );
    let over = s.agent.stats().l7.get("websocket_over_threshold").copied();
    assert_eq!(over, Some(1));
    // A tunnel quiet for idle_timeout is closed (it holds a connection and a server place).
    assert_eq!(
        talk("198.18.82.1", &["hi", "sleep:3", "again"]),
        "echo 2 hi\nclosed\n"
    );
    // A denied client's upgrade is refused like any request of it.
    ok(&s.agent.cli(&["deny", "add", "ip", "198.18.82.2"]));
    assert_eq!(talk("198.18.82.2", &["hello"]), "status 403\n");
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ASE's switches through its own verbs: real-time detections off (their entries go, attacks
/// are still refused but nobody is deny-listed) and on again; one API's blocking off and on.
#[test]
fn ase_switches_turn_detections_and_blocking_off_and_on() {
    privileged!();
    let s = portcullis_tests::checker_setup::setup_apis(&[(
        "shop",
        r#""decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
    )]);
    let ase = |args: &[&str]| {
        let mut all = vec!["-u", "admin", "-p", "admin"];
        all.extend(args);
        ok(&s.agent.cli(&all))
    };
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    let denied = || s.agent.entries_from("deny", "checker").len();
    assert_eq!(s.curl("/shop/admin", &["-H", &from("198.18.84.1")]).0, 200);
    assert_eq!(denied(), 1);

    assert_eq!(
        ase(&["disable_ase_detected_attack"]),
        "detections: off (1 deny entry removed)\n"
    );
    assert_eq!(denied(), 0);
    // Still the decoy's answer, and counted, but nobody is deny-listed.
    assert_eq!(s.curl("/shop/admin", &["-H", &from("198.18.84.2")]).0, 200);
    assert_eq!(denied(), 0);
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.84.2")]).0, 200);
    let status = ok(&s.agent.cli(&["status"]));
    assert!(
        status.contains("real-time detections: OFF; ABS blocking: on"),
        "{status}"
    );
    assert_eq!(ase(&["enable_ase_detected_attack"]), "detections: on\n");
    assert_eq!(s.curl("/shop/admin", &["-H", &from("198.18.84.3")]).0, 200);
    assert_eq!(denied(), 1);

    // One API's blocking: off forwards the deny-listed client (would block), on refuses it.
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.84.3")]).0, 403);
    assert_eq!(
        ase(&["disable_blocking", "shop"]),
        "api-blocking shop: off\n"
    );
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.84.3")]).0, 200);
    assert!(ok(&s.agent.cli(&["api", "list"])).contains(" no "));
    let err = portcullis_tests::agent::err(&s.agent.cli(&["disable_blocking", "nosuch"]));
    assert!(err.contains("no API named \"nosuch\""), "{err}");
    assert_eq!(ase(&["enable_blocking", "shop"]), "api-blocking shop: on\n");
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.84.3")]).0, 403);
}

/// The access log: one JSON line per request with its API, status, bytes and outcomes,
/// secrets only as fingerprints, rotated past its size.
#[test]
fn every_request_gets_an_access_log_line() {
    use portcullis::model::ident::{digest, fingerprint};
    privileged!();
    let dir = std::env::temp_dir().join(portcullis_tests::unique("access"));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let s = setup_with(
        &format!(
            "access_log = \"{}\"\naccess_log_max_bytes = 8192\naccess_log_keep = 1\n",
            log.display()
        ),
        |apis, backend| {
            portcullis_tests::checker_setup::write_backend_api(
                apis,
                "shop",
                backend,
                r#""hostname": "api.test", "oauth2_access_token": true"#,
            );
        },
    );
    ok(&s.agent.cli(&["deny", "add", "token", "stolen-token-xyz"]));
    let bearer = "Authorization: Bearer stolen-token-xyz";
    assert_eq!(s.curl("/shop/items", &["-H", bearer]).0, 403);
    assert_eq!(s.curl("/shop/items?q=1", &[]).0, 200);
    assert_eq!(s.curl("/nosuch", &[]).0, 503);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let text = std::fs::read_to_string(&log).expect("access log");
    assert!(
        !text.contains("stolen-token-xyz"),
        "no secret in clear: {text}"
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let (denied, passed, unknown) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(denied["api"], "shop");
    assert_eq!(denied["method"], "GET");
    assert_eq!(denied["path"], "/shop/items");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["outcomes"], serde_json::json!(["blocked"]));
    assert_eq!(denied["client"], "127.0.0.1");
    assert_eq!(
        denied["ids"]["token"],
        serde_json::json!([fingerprint(&digest("stolen-token-xyz"))])
    );
    assert_eq!(passed["status"], 200);
    assert_eq!(passed["outcomes"], serde_json::json!(["forwarded"]));
    assert_eq!(passed["bytes"], "backend GET /shop/items?q=1\n".len());
    assert_eq!(unknown["api"], "");
    assert_eq!(unknown["outcomes"], serde_json::json!(["unknown_api"]));
    // A client that goes away before the answer still leaves its line.
    let _ = s.curl("/shop/hang", &["--max-time", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let text = std::fs::read_to_string(&log).expect("access log");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("JSON");
    assert_eq!(
        (last["path"].as_str(), last["status"].as_u64()),
        (Some("/shop/hang"), Some(499)),
        "{text}"
    );
    assert_eq!(last["api"], "shop");
    // Past 8 KiB the file is rotated; one old file is kept.
    for _ in 0..80 {
        s.curl("/shop/items", &[]);
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let old = dir.join("access.log.1");
    assert!(old.exists(), "rotated");
    assert!(!dir.join("access.log.2").exists(), "only one kept");
    let total = std::fs::read_to_string(&log).expect("log").lines().count()
        + std::fs::read_to_string(&old).expect("old").lines().count();
    assert!(total > 40, "{total} lines in the two newest files");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `decoy_action = "l7"`: as in ASE, a decoy visitor is refused with 403 on every API and
/// the kernel is left alone (an entry of scope `*`).
#[test]
fn a_decoy_visitor_can_be_refused_at_l7_only() {
    privileged!();
    let s = setup_with("decoy_action = \"l7\"\n", |apis, backend| {
        for (name, fields) in [
            (
                "shop",
                r#""decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
            ),
            ("cart", ""),
        ] {
            portcullis_tests::checker_setup::write_backend_api(apis, name, backend, fields);
        }
    });
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    assert_eq!(s.curl("/shop/admin", &["-H", &from("198.18.85.1")]).0, 200);
    let rows = s.agent.entries_from("deny", "checker");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].value.as_str(), rows[0].api.as_str()),
        ("198.18.85.1/32", "*")
    );
    assert_eq!(s.agent.status().kernel_ip_entries, 0, "not in the kernel");
    for path in ["/shop/items", "/cart/items"] {
        assert_eq!(s.curl(path, &["-H", &from("198.18.85.1")]).0, 403, "{path}");
        assert_eq!(s.curl(path, &["-H", &from("198.18.85.2")]).0, 200, "{path}");
    }
}

/// Several certificates on one listener, as ASE serves them: the one whose names cover the
/// client's SNI (a wildcard as clients read it), the default to any other name.
#[test]
fn the_certificate_follows_the_clients_sni() {
    use portcullis_tests::tls::{TlsClient, self_signed};
    privileged!();
    let dir = std::env::temp_dir().join(portcullis_tests::unique("sni"));
    std::fs::create_dir_all(&dir).expect("dir");
    let other = self_signed(&dir, "other.test", "other").expect("certs");
    let wild = self_signed(&dir, "*.wild.test", "wild").expect("certs");
    let s = setup_with(
        &format!(
            "tls_certs = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]\n",
            other.cert.display(),
            other.key.display(),
            wild.cert.display(),
            wild.key.display()
        ),
        |apis, backend| {
            write_api(
                apis,
                "all",
                &format!(
                    r#"{{"url": "/", "servers": [{{"host": "127.0.0.1", "port": {backend}}}]}}"#
                ),
            );
        },
    );
    let addr = format!("127.0.0.1:{}", s.port);
    let get = |name: &str, ca: &std::path::Path| {
        TlsClient::connect(&addr, name, ca)
            .and_then(|mut c| c.get("/x", &[("connection", "close")]))
    };
    assert_eq!(
        get("other.test", &other.ca).expect("other.test's own").0,
        200
    );
    assert_eq!(
        get("a.wild.test", &wild.ca).expect("under the wildcard").0,
        200
    );
    assert_eq!(get("api.test", &s.ca).expect("the default").0, 200);
    // Each name gets only its own certificate: the others' CAs do not vouch for it.
    assert!(get("other.test", &s.ca).is_err());
    assert!(
        get("wild.test", &wild.ca).is_err(),
        "a wildcard covers one label"
    );
    assert!(get("unknown.test", &other.ca).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
