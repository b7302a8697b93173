//! A real HTTP server that plays ABS for the tests: it answers the attack-list poll with
//! whatever the test scripts (a snapshot, an error status, garbage, a slow or huge answer),
//! accepts detection reports (or refuses them, as scripted), and records every request. Plain
//! HTTP, or HTTPS with a certificate the test makes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the next polls get.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this JSON body.
    Json(String),
    /// This status, empty body.
    Status(u16),
    /// 200 with this (broken) body.
    Garbage(String),
    /// 200 after this delay.
    Slow(Duration, String),
    /// 200 with a body of this many bytes of JSON-ish filler.
    Huge(usize),
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request line.
    pub line: String,
    /// Lower-cased header lines.
    pub headers: Vec<String>,
    /// Body.
    pub body: String,
}

/// The running fake.
pub struct FakeAbs {
    /// Where it listens.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    /// Status answered to detection reports.
    report_status: Arc<Mutex<u16>>,
    /// Requests received.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    tls: bool,
}

/// What each connection handler shares.
#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    report_status: Arc<Mutex<u16>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAbs {
    /// Starts on `listener` with an empty attack list, plain HTTP.
    pub fn start(listener: TcpListener) -> Self {
        Self::spawn(listener, None)
    }

    /// Starts on `listener` serving HTTPS with this certificate chain and key (PEM files).
    pub fn start_tls(listener: TcpListener, cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .map(|c| c.expect("certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        Self::spawn(listener, Some(Arc::new(cfg)))
    }

    fn spawn(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let addr = listener.local_addr().expect("bound");
        let shared = Shared {
            answer: Arc::new(Mutex::new(Answer::Json(r#"{"attacklist":{}}"#.into()))),
            report_status: Arc::new(Mutex::new(200)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let is_tls = tls.is_some();
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, tls) = (s.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = match tls {
                        Some(cfg) => rustls::ServerConnection::new(cfg)
                            .map_err(std::io::Error::other)
                            .and_then(|c| handle(rustls::StreamOwned::new(c, stream), &s)),
                        None => handle(stream, &s),
                    };
                });
            }
        });
        Self {
            addr,
            answer: shared.answer,
            report_status: shared.report_status,
            seen: shared.seen,
            tls: is_tls,
        }
    }

    /// Scripts the status detection reports get (200 by default).
    pub fn set_report_status(&self, status: u16) {
        if let Ok(mut x) = self.report_status.lock() {
            *x = status;
        }
    }

    /// Scripts the answer to the next polls.
    pub fn set(&self, a: Answer) {
        if let Ok(mut x) = self.answer.lock() {
            *x = a;
        }
    }

    /// Requests whose request line contains `what`.
    pub fn requests(&self, what: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| s.line.contains(what))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The base URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

fn handle<S: Read + Write>(stream: S, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            headers.push(h.trim().to_ascii_lowercase());
        }
        let len: usize = headers
            .iter()
            .find_map(|h| {
                h.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        if let Ok(mut s) = shared.seen.lock() {
            s.push(Seen {
                line: line.trim().to_owned(),
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let a = if line.starts_with("POST") {
            match shared.report_status.lock().map(|s| *s).unwrap_or(500) {
                200 => Answer::Json("{}".into()),
                other => Answer::Status(other),
            }
        } else {
            shared
                .answer
                .lock()
                .map(|a| a.clone())
                .unwrap_or(Answer::Status(500))
        };
        let (status, body) = match a {
            Answer::Json(b) | Answer::Garbage(b) => (200, b),
            Answer::Status(c) => (c, String::new()),
            Answer::Slow(d, b) => {
                std::thread::sleep(d);
                (200, b)
            }
            Answer::Huge(n) => (
                200,
                format!("{{\"attacklist\":{{\"ips\":[\"{}\"]}}}}", "9".repeat(n)),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let out = reader.get_mut();
        out.write_all(resp.as_bytes())?;
        out.flush()?;
    }
}

/// The agent's `[abs]` section for an ABS at `url`: a secret key file in `dirs`, a 1 s poll,
/// plain HTTP allowed (`insecure`), and `extra` lines (e.g. `timeout = "2s"`).
pub fn agent_config(dirs: &crate::agent::AgentDirs, url: &str, extra: &str) -> String {
    let secret = dirs.root.join("abs.secret");
    std::fs::write(&secret, "s3cret-sk\n").expect("secret");
    format!(
        "[abs]\nurl = \"{url}\"\naccess_key = \"ak-1\"\nsecret_key_file = \"{}\"\npoll = \"1s\"\ninsecure = true\nreport = true\n{extra}",
        secret.display()
    )
}
