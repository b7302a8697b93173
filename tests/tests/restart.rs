//! A restart refuses no connection when the service manager holds the checker's sockets
//! (systemd socket activation): requests sent while no agent runs wait in the socket's
//! backlog and are answered by the next agent, and a request in flight when the agent stops
//! is finished (its response closes the connection), not cut.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts};
use portcullis_tests::checker_setup::{HOST, shop_backend};
use portcullis_tests::privileged;
use portcullis_tests::tls::self_signed;

/// Sends `GET path` on a new connection, keep-alive unless `close`; returns the connection.
fn send(addr: SocketAddr, path: &str, close: bool) -> TcpStream {
    let mut c = TcpStream::connect(addr).expect("connect: the socket must still listen");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let close = if close { "Connection: close\r\n" } else { "" };
    write!(c, "GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{close}\r\n").expect("send");
    c
}

/// Reads one response to the end of the connection (the client asked to close it, or the
/// agent closes it after answering while it drains).
fn answer(mut c: TcpStream) -> String {
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read the answer");
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn a_restart_with_passed_sockets_refuses_no_connection_and_cuts_no_request() {
    privileged!();
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(&dirs, "");
    let certs = self_signed(&dirs.root, HOST, "a").expect("cert");
    // The service manager's sockets: they outlive every agent.
    let https = TcpListener::bind("127.0.0.1:0").expect("bind https");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind http");
    let http_addr = http.local_addr().expect("addr");
    let config = format!(
        "[checker]\nhttps = \"{}\"\nhttp = \"{http_addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\n",
        https.local_addr().expect("addr"),
        certs.cert.display(),
        certs.key.display(),
        apis.display()
    );
    let opts = AgentOpts {
        config,
        listen_fds: vec![https.as_raw_fd(), http.as_raw_fd()],
        ..AgentOpts::default()
    };
    let mut first = Agent::start(&dirs, &opts).expect("first agent");
    let served = answer(send(http_addr, "/shop/first", true));
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");

    // A request in flight (the backend answers after 1.5 s) when the agent is told to stop.
    let in_flight = send(http_addr, "/shop/slow", false);
    std::thread::sleep(Duration::from_millis(300));
    first.stop().expect("a clean stop");
    let finished = answer(in_flight);
    assert!(
        finished.starts_with("HTTP/1.1 200") && finished.contains("backend GET /shop/slow"),
        "the request in flight was cut: {finished:?}\n{}",
        first.log_text()
    );
    assert!(
        finished.to_ascii_lowercase().contains("connection: close"),
        "{finished}"
    );

    // No agent runs: the kernel still completes the handshake, the request waits.
    let waiting = send(http_addr, "/shop/while-down", true);
    let second = Agent::start(&dirs, &opts).expect("second agent");
    let late = answer(waiting);
    assert!(
        late.starts_with("HTTP/1.1 200") && late.contains("/shop/while-down"),
        "the request sent while no agent ran: {late:?}\n{}",
        second.log_text()
    );
    // TLS on the other passed socket, through curl.
    let port = https.local_addr().expect("addr").port();
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(&certs.ca)
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{HOST}:{port}/shop/tls"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn a_socket_unit_that_disagrees_with_the_configuration_stops_the_start() {
    privileged!();
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(&dirs, "");
    let passed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = passed.local_addr().expect("addr").port();
    let opts = AgentOpts {
        config: format!(
            "[checker]\nhttp = \"0.0.0.0:{port}\"\napi_dir = \"{}\"\n",
            apis.display()
        ),
        listen_fds: vec![passed.as_raw_fd()],
        ..AgentOpts::default()
    };
    let e = match Agent::start(&dirs, &opts) {
        Ok(_) => panic!("started with the socket unit and the configuration disagreeing"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("ListenStream="), "{e}");
    // A passed socket no listener takes: its clients would never be answered.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let opts = AgentOpts {
        config: format!(
            "[checker]\nhttp = \"{}\"\napi_dir = \"{}\"\n",
            other.local_addr().expect("addr"),
            apis.display()
        ),
        listen_fds: vec![other.as_raw_fd(), passed.as_raw_fd()],
        ..AgentOpts::default()
    };
    let e = match Agent::start(&dirs, &opts) {
        Ok(_) => panic!("started with a passed socket nothing listens on"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("no listener in the configuration uses"), "{e}");
}

#[test]
fn silent_clients_do_not_hold_the_stop_for_the_grace() {
    privileged!();
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(&dirs, "");
    let certs = self_signed(&dirs.root, HOST, "a").expect("cert");
    let https = TcpListener::bind("127.0.0.1:0").expect("bind https");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind http");
    let (https_addr, http_addr) = (
        https.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let opts = AgentOpts {
        config: format!(
            "shutdown_grace = \"10s\"\n[checker]\nhttps = \"{https_addr}\"\nhttp = \"{http_addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\nheader_timeout = \"60s\"\n",
            certs.cert.display(),
            certs.key.display(),
            apis.display()
        ),
        listen_fds: vec![https.as_raw_fd(), http.as_raw_fd()],
        ..AgentOpts::default()
    };
    let mut agent = Agent::start(&dirs, &opts).expect("agent");
    // Nothing sent; a TLS handshake never begun; half a request head; an idle keep-alive
    // connection after one answer.
    let silent = TcpStream::connect(http_addr).expect("connect");
    let no_handshake = TcpStream::connect(https_addr).expect("connect");
    let mut half = TcpStream::connect(http_addr).expect("connect");
    write!(half, "GET /shop/x HTTP/1.1\r\nHost: {HOST}\r\n").expect("send");
    let mut idle = send(http_addr, "/shop/keep", false);
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    agent.stop().expect("a clean stop");
    // With a 10 s grace and a 60 s head limit, only the drain's own limits end these.
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the stop took {:?}: silent clients held the drain",
        t.elapsed()
    );
    drop((silent, no_handshake, half, idle));
}

/// A listening socket on `addr`, an address this host does not have (systemd's `FreeBind=`:
/// a VIP not up yet).
fn freebind_listener(addr: std::net::SocketAddrV4) -> TcpListener {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a descriptor created and owned here; the sockaddr is
    // built in full before bind reads it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let one: libc::c_int = 1;
        let set = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0, "IP_FREEBIND");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let bound = libc::bind(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(bound, 0, "bind with IP_FREEBIND");
        assert_eq!(libc::listen(fd, 16), 0, "listen");
        TcpListener::from_raw_fd(fd)
    }
}

#[test]
fn a_passed_socket_on_an_address_not_up_yet_starts_the_agent() {
    privileged!();
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(&dirs, "");
    // An address from the test range that no interface here has.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let vip = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 254, 77), port);
    let passed = freebind_listener(vip);
    let opts = AgentOpts {
        config: format!(
            "[checker]\nhttp = \"{vip}\"\napi_dir = \"{}\"\n",
            apis.display()
        ),
        listen_fds: vec![passed.as_raw_fd()],
        ..AgentOpts::default()
    };
    // The start checks would refuse an address this host does not have, were it not passed.
    let agent = Agent::start(&dirs, &opts).expect("started on the passed socket");
    let status = agent.cli(&["status"]);
    assert!(status.status.success());
}
