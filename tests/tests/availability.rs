//! One client must not take the service down: 2 000 idle connections (plain and TLS, none
//! sending a byte) leave a normal request served and the control API answering; the idle
//! ones are closed after the head limit; an idle HTTP/2 connection gets a GOAWAY. A request
//! that stalls after its head (a dripped body, a backend that never answers, a client that
//! does not read its response) gives its slot back after the body or backend limit.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use portcullis_tests::agent::ok;
use portcullis_tests::checker_setup::{setup_with, write_backend_api};
use portcullis_tests::http::connect_from;
use portcullis_tests::privileged;

fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid pointer to the limit read.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

#[test]
fn idle_connections_do_not_take_the_service_down() {
    privileged!();
    raise_nofile();
    let s = setup_with("idle_timeout = \"3s\"\n", |apis, backend| {
        write_backend_api(apis, "shop", backend, "");
    });
    let attacker = Ipv4Addr::new(127, 0, 0, 3);
    let mut idle = Vec::new();
    for port in [s.http_port, s.port] {
        let dst = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..1000 {
            if let Ok(c) = connect_from(attacker, dst) {
                idle.push(c);
            }
        }
    }
    assert!(
        idle.len() > 1500,
        "only {} idle connections opened",
        idle.len()
    );
    // A normal client is served at once, and the operator's CLI answers.
    let t = Instant::now();
    assert_eq!(
        s.curl("/shop/x", &[]).0,
        200,
        "normal request during the flood"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    ok(&s.agent.cli(&["status"]));
    // The attacker got at most its share of slots; the rest were closed at the door, and the
    // admitted ones are closed after the 2 s head limit: every idle connection ends.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut open = 0;
    for c in &mut idle {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        c.set_read_timeout(Some(left)).expect("timeout");
        let mut b = [0u8; 16];
        if matches!(c.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} idle connections still open after the head limit"
    );
    drop(idle);
    assert_eq!(s.curl("/shop/x", &[]).0, 200, "served after the flood");

    // HTTP/2 with prior knowledge, then silence: a GOAWAY after the idle limit (3 s).
    let mut h2 = TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    h2.write_all(H2_PREFACE_AND_SETTINGS).expect("preface");
    h2.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let mut got = Vec::new();
    let mut goaway_at = None;
    let mut buf = [0u8; 4096];
    // Frames as they come: when the GOAWAY arrives, and that the connection then ends
    // (this client never answers the server's PING, so the server closes it itself).
    while let Ok(n) = h2.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if got[at + 3] == 7 && goaway_at.is_none() {
                goaway_at = Some(t.elapsed());
            }
            at += 9 + len;
        }
    }
    let ended = t.elapsed();
    let goaway = goaway_at.expect("a GOAWAY frame");
    assert!(
        goaway >= Duration::from_secs(2) && goaway < Duration::from_secs(6),
        "GOAWAY after {goaway:?} (idle limit 3 s)"
    );
    assert!(
        ended < Duration::from_secs(10),
        "connection ended after {ended:?}"
    );
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// An HTTP/2 HEADERS frame, END_STREAM | END_HEADERS: GET http://shop{path} on `stream`
/// (HPACK without Huffman: indexed :method GET and :scheme http, literal :path and
/// :authority).
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 4]);
    block.extend_from_slice(b"shop");
    let mut frame = vec![0, 0, block.len() as u8, 1, 5];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Sends `request` on a fresh connection and reads until the server closes it (or 10 s):
/// the bytes read and how long it took.
fn exchange(port: u16, request: &[u8]) -> (Vec<u8>, Duration) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    c.write_all(request).expect("request");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    (got, t.elapsed())
}

#[test]
fn stalled_requests_give_their_slot_back() {
    privileged!();
    let s = setup_with(
        "body_timeout = \"2s\"\nbackend_timeout = \"2s\"\n",
        |apis, backend| {
            write_backend_api(apis, "shop", backend, "");
        },
    );
    let within = |d: Duration| d >= Duration::from_secs(2) && d < Duration::from_secs(7);

    // A body that stops after 2 of its 10 bytes: 408 after the body limit.
    let (got, took) = exchange(
        s.http_port,
        b"POST /shop/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 10\r\n\r\nab",
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "dripped body: {text:?}");
    assert!(within(took), "408 after {took:?} (limit 2 s)");

    // A backend that does not answer: 504 after the backend limit.
    let (got, took) = exchange(
        s.http_port,
        b"GET /shop/hang HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 504"),
        "hanging backend: {text:?}"
    );
    assert!(within(took), "504 after {took:?} (limit 2 s)");
    // A backend that takes the head but not the 8 MiB body: 504 after the backend limit.
    let mut c = TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body_len = 8 << 20;
    c.write_all(
        format!("POST /shop/noread HTTP/1.1\r\nHost: shop\r\nContent-Length: {body_len}\r\n\r\n")
            .as_bytes(),
    )
    .expect("head");
    let mut sender = c.try_clone().expect("clone");
    std::thread::spawn(move || {
        let _ = sender.write_all(&vec![b'x'; body_len]);
    });
    // (Until the answer's head: the client is still sending its body.)
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 504"),
        "backend not reading: {text:?}"
    );
    assert!(within(took), "504 after {took:?} (limit 2 s)");
    // The server is not taken out of rotation for it.
    assert_eq!(s.curl("/shop/x", &[]).0, 200, "server still in rotation");
    // Five at once: each counted, but the log says it once (a client picking a slow path
    // must not flood the log).
    let warned = || {
        s.agent
            .log_text()
            .matches("without taking the request")
            .count()
    };
    let before = (warned(), s.agent.stats().l7.get("gateway_timeout").copied());
    let five: Vec<_> = (0..5)
        .map(|_| {
            let port = s.http_port;
            std::thread::spawn(move || {
                exchange(
                    port,
                    b"GET /shop/hang HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect();
    for t in five {
        let (got, _) = t.join().expect("client");
        assert!(got.starts_with(b"HTTP/1.1 504"));
    }
    let after = (warned(), s.agent.stats().l7.get("gateway_timeout").copied());
    assert_eq!(after.1, before.1.map(|n| n + 5), "every 504 counted");
    assert!(
        after.0 - before.0 <= 2,
        "{} warnings for 5 timeouts",
        after.0 - before.0
    );

    // A client that asks for 64 MiB and reads nothing: the connection is closed after the
    // body limit, long before the answer is through.
    let mut c = TcpStream::connect(("127.0.0.1", s.http_port)).expect("connect");
    c.write_all(b"GET /shop/size=64m HTTP/1.1\r\nHost: shop\r\n\r\n")
        .expect("request");
    std::thread::sleep(Duration::from_secs(5));
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(
        ended,
        "the connection of a client that does not read stays open"
    );
    assert!(
        got < 64 << 20,
        "the whole answer went through ({got} bytes)"
    );

    // HTTP/2 with prior knowledge and no request: a GOAWAY after the head limit (2 s), not
    // after the idle limit (60 s by default).
    let (_, lasted) = exchange(s.http_port, H2_PREFACE_AND_SETTINGS);
    assert!(
        within(lasted),
        "an HTTP/2 connection without a request lasted {lasted:?}"
    );

    // HTTP/2 with a window of 0: the socket never blocks, but the answer cannot be sent.
    // The connection is closed after the body limit (not kept by the request in flight).
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE (4) = 0.
    frames.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
    frames.extend_from_slice(&h2_get(1, "/shop/x"));
    let (_, lasted) = exchange(s.http_port, &frames);
    assert!(
        within(lasted),
        "an HTTP/2 client that opened no window kept its connection {lasted:?}"
    );

    assert_eq!(s.curl("/shop/x", &[]).0, 200, "served afterwards");
}

/// Each HTTP/2 request in flight holds a backend request as a connection does: one client
/// gets `max_streams_per_client` of them beyond each connection's first.
#[test]
fn one_client_holds_at_most_its_share_of_backend_requests() {
    privileged!();
    let s = setup_with("max_streams_per_client = 3\n", |apis, backend| {
        write_backend_api(apis, "shop", backend, "");
    });
    let client = Ipv4Addr::new(127, 0, 0, 3);
    let mut h2 =
        connect_from(client, SocketAddr::from(([127, 0, 0, 1], s.http_port))).expect("connect");
    // Six requests at once to a backend that takes 20 s: the connection's first and three
    // more streams are in flight; the fifth and sixth are refused at once.
    let mut frames = H2_PREFACE_AND_SETTINGS.to_vec();
    for stream in [1u32, 3, 5, 7, 9, 11] {
        frames.extend_from_slice(&h2_get(stream, "/shop/hang"));
    }
    h2.write_all(&frames).expect("requests");
    h2.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match h2.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let mut answered = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        let stream =
            u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]) & 0x7fff_ffff;
        if got[at + 3] == 1 {
            answered.push(stream);
        }
        at += 9 + len;
    }
    assert_eq!(answered, [9, 11], "streams answered within 3 s");
    drop(h2);
    assert_eq!(s.curl("/shop/x", &[]).0, 200, "others are served");
    let l7 = s.agent.stats().l7;
    assert_eq!(l7.get("too_many_streams"), Some(&2), "{l7:?}");
}
