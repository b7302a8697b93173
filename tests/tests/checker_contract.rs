//! What README promises of the checker and no other test checked: forwarding headers, header
//! count and body limits, a client cutting its body mid-transfer, detections that pick the
//! protocol, cookie and API-key culprits, and active health checks.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use portcullis_tests::checker_setup::{free_port, setup, setup_apis, write_api};
use portcullis_tests::{http, privileged};

fn plain(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `head` and `body` raw, then closes; returns what came back (possibly nothing).
fn raw(port: u16, head: &str, body: &[u8], close_early: bool) -> String {
    let mut s = TcpStream::connect(plain(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(body);
    if close_early {
        let _ = s.shutdown(std::net::Shutdown::Both);
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Streams `total` bytes as a chunked body from one thread while reading the answer on
/// another (the proxy may answer and close before the upload ends).
fn chunked_upload(port: u16, path: &str, total: usize) -> String {
    let mut s = TcpStream::connect(plain(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let writer = std::thread::spawn(move || {
        w.write_all(head.as_bytes())?;
        let chunk = vec![b'z'; 64 << 10];
        let mut sent = 0;
        while sent < total {
            w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            w.write_all(&chunk)?;
            w.write_all(b"\r\n")?;
            sent += chunk.len();
        }
        w.write_all(b"0\r\n\r\n")
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = writer.join();
    String::from_utf8_lossy(&out).into_owned()
}

fn deny_rows(s: &portcullis_tests::checker_setup::Setup) -> Vec<String> {
    s.agent
        .entries_from("deny", "checker")
        .iter()
        .map(|e| format!("{} {} {}", e.kind.as_str(), e.name, e.reason))
        .collect()
}

#[test]
fn forwarding_headers_limits_and_cut_bodies() {
    privileged!();
    let s = setup_apis(&[("shop", r#""health_retry_count":1"#)]);
    // X-Forwarded-Proto says which listener the client used.
    assert_eq!(s.curl("/shop/a", &[]).0, 200);
    let head = s.backend.last().expect("forwarded").to_ascii_lowercase();
    assert!(head.contains("x-forwarded-proto: https"), "{head}");
    assert_eq!(
        http::get(plain(s.http_port), "/shop/b", &[])
            .expect("http")
            .0,
        200
    );
    let head = s.backend.last().expect("forwarded").to_ascii_lowercase();
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
    // More headers than max_headers (100): 431, nothing forwarded.
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let arrived = |s: &portcullis_tests::checker_setup::Setup| {
        s.backend.arrived.lock().map(|v| v.len()).unwrap_or(0)
    };
    let seen = arrived(&s);
    assert_eq!(
        http::get(plain(s.http_port), "/shop/many", &many)
            .expect("answer")
            .0,
        431
    );
    // A body over max_body_bytes (10 MiB): 413.
    let big = vec![b'x'; 11 << 20];
    let answer = raw(
        s.http_port,
        &format!(
            "POST /shop/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        &big,
        false,
    );
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.ends_with("Error: Payload Too Large\n"),
        "{answer:.300}"
    );
    assert_eq!(
        arrived(&s),
        seen,
        "neither refused request reached the backend, not even its head"
    );
    // A chunked upload has no declared length: it is cut off at the limit mid-forward, the
    // client gets 413, and the server (which saw part of it) stays in rotation.
    let answer = chunked_upload(s.http_port, "/shop/chunked", 11 << 20);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.ends_with("Error: Payload Too Large\n"),
        "{answer:.300}"
    );
    assert_still_in_rotation(&s, "/shop/after-chunked", "an oversized chunked upload");
    // Clients that cut their upload short are the client's failure, not the server's: the
    // server (one failure takes it out here) must stay in rotation for everyone else.
    for _ in 0..5 {
        raw(
            s.http_port,
            "POST /shop/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            &[b'y'; 1000],
            true,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_still_in_rotation(&s, "/shop/after", "a cut upload");
    assert!(
        !s.backend
            .seen
            .lock()
            .map(|v| v.iter().any(|h| h.starts_with("POST /shop/upload")))
            .unwrap_or(true),
        "a truncated request reached the backend as complete"
    );
}

/// Panics unless four requests for `path` in a row are served: `after` did not take the
/// (only) server out of rotation.
fn assert_still_in_rotation(s: &portcullis_tests::checker_setup::Setup, path: &str, after: &str) {
    let codes: Vec<u16> = (0..4)
        .map(|_| http::get(plain(s.http_port), path, &[]).expect("http").0)
        .collect();
    assert_eq!(codes, [200; 4], "{after} took the server out of rotation");
}

/// `METHOD /shop/x` over TLS with one extra header, from `client` as the trusted proxy
/// forwards it; the status code.
fn shop(
    s: &portcullis_tests::checker_setup::Setup,
    method: &str,
    header: &str,
    client: &str,
) -> u16 {
    let from = format!("X-Forwarded-For: {client}");
    s.curl("/shop/x", &["-X", method, "-H", header, "-H", &from])
        .0
}

#[test]
fn detections_pick_the_protocol_cookie_and_api_key_culprits() {
    privileged!();
    let s = setup_apis(&[(
        "shop",
        r#""cookie":"JSESSIONID","apikey_header":"X-API-Key", "api_pattern_enforcement":{"protocol_allowed":"https","methods_allowed":["GET"],"error_code":401}"#,
    )]);
    // Plain HTTP to an HTTPS-only API: the client IP.
    let (code, _) = http::get(
        plain(s.http_port),
        "/shop/x",
        &[("X-Forwarded-For", "198.18.61.1")],
    )
    .expect("http");
    assert_eq!(code, 401);
    // A bad method with a session cookie, or an API key: that is denied, and then refused
    // from anywhere.
    for (method, culprit, client) in [
        ("DELETE", "Cookie: JSESSIONID=stolen-session", "198.18.61.2"),
        ("PUT", "X-API-Key: leaked-key", "198.18.61.3"),
    ] {
        assert_eq!(shop(&s, method, culprit, client), 401, "{culprit}");
        let elsewhere = shop(&s, "GET", culprit, "198.18.61.9");
        assert_eq!(elsewhere, 403, "{culprit} is denied now");
    }
    let mut rows = deny_rows(&s);
    rows.sort();
    assert_eq!(rows.len(), 3, "one entry per detection: {rows:?}");
    for (row, want) in rows.iter().zip([
        "api-key x-api-key invalid-method",
        "cookie JSESSIONID invalid-method",
        "ip  invalid-protocol",
    ]) {
        assert!(row.starts_with(want), "{row:?}, expected {want:?}");
    }
    // The honest client from the same network is served.
    assert_eq!(
        s.curl("/shop/x", &["-H", "X-Forwarded-For: 198.18.61.9"]).0,
        200
    );
}

#[test]
fn active_health_checks_take_a_dead_server_out_before_clients_notice() {
    privileged!();
    let dead = free_port();
    let s = setup(|apis, backend| {
        write_api(
            apis,
            "shop",
            &format!(
                r#"{{"url":"/shop","health_check":true,"health_check_interval":1,"health_url":"/health","health_retry_count":1,
                    "servers":[{{"host":"127.0.0.1","port":{dead}}},{{"host":"127.0.0.1","port":{backend}}}]}}"#
            ),
        );
    });
    // Wait until the live server has been probed (the probe loop ticks every 5 s).
    let deadline = Instant::now() + Duration::from_secs(12);
    let probed = || {
        s.backend
            .seen
            .lock()
            .map(|v| v.iter().any(|h| h.starts_with("GET /health")))
            .unwrap_or(false)
    };
    while !probed() {
        assert!(
            Instant::now() < deadline,
            "no health probe reached the live server"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    // The dead server was probed in the same round: no client request goes to it.
    let codes: Vec<u16> = (0..8).map(|_| s.curl("/shop/x", &[]).0).collect();
    assert_eq!(codes, [200; 8], "a client request went to the dead server");
}
