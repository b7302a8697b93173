//! A small real HTTP/1.1 API server for the checker's tests and benchmarks: keep-alive,
//! Content-Length bodies, answers `200 backend <METHOD> <PATH>` (a fixed-size body for paths
//! with `size=1k` or `size=64m`, after 20 s for paths with `hang`, reading the body only after 20 s for `noread`), and records the headers it received so tests can check what the proxy forwarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A running backend; stops accepting when dropped (its thread is detached).
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Heads of the requests received whole (head and body), newest last.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Heads of every request as soon as its head arrived, whole or not.
    pub arrived: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    /// Starts a backend on `listener` (bind it in the namespace you need).
    pub fn start(listener: TcpListener) -> Self {
        Self::serving(listener, |stream| {
            let _ = stream.set_nodelay(true);
            Some(stream)
        })
    }

    /// [`Backend::start`] over TLS with `cert` and `key` (PEM), for `server_ssl` APIs.
    pub fn start_tls(listener: TcpListener, cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("cert and key"),
        );
        Self::serving(listener, move |stream| {
            let conn = rustls::ServerConnection::new(cfg.clone()).ok()?;
            Some(rustls::StreamOwned::new(conn, stream))
        })
    }

    /// Serves every connection `listener` accepts, once `wrap` made it a stream (or gave up
    /// on it), on a thread of its own.
    fn serving<S: Read + Write>(
        listener: TcpListener,
        wrap: impl Fn(TcpStream) -> Option<S> + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().expect("bound");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (log, heads) = (seen.clone(), arrived.clone());
        let wrap = Arc::new(wrap);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, heads, wrap) = (log.clone(), heads.clone(), wrap.clone());
                std::thread::spawn(move || {
                    if let Some(stream) = wrap(stream) {
                        let _ = serve(stream, &log, &heads);
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            arrived,
        }
    }

    /// How many requests it received whole.
    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The last request head received, if any.
    pub fn last(&self) -> Option<String> {
        self.seen.lock().ok()?.last().cloned()
    }
}

fn push(log: &Mutex<Vec<String>>, head: &str) {
    if let Ok(mut l) = log.lock() {
        l.push(head.to_owned());
        if l.len() > 1000 {
            l.remove(0);
        }
    }
}

/// Reads a chunked body to its end (RFC 9112 §7.1; trailers ignored).
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(std::io::Error::other)?;
        if n == 0 {
            let mut end = String::new();
            while reader.read_line(&mut end)? > 2 {
                end.clear();
            }
            return Ok(());
        }
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk)?;
    }
}

fn serve(
    stream: impl Read + Write,
    log: &Mutex<Vec<String>>,
    arrived: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (
            first.next().unwrap_or("").to_owned(),
            first.next().unwrap_or("").to_owned(),
        );
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        push(arrived, &head);
        if path.contains("noread") {
            // A server that does not read the body (longer than any test waits).
            std::thread::sleep(std::time::Duration::from_secs(20));
        }
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        if chunked {
            read_chunked(&mut reader)?;
        } else {
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
        }
        push(log, &head);
        if path.contains("slow") {
            // Answers after a second and a half (a request in flight while the agent stops).
            std::thread::sleep(std::time::Duration::from_millis(1500));
        }
        if path.contains("hang") {
            // A server that takes its time: longer than any test waits.
            std::thread::sleep(std::time::Duration::from_secs(20));
        }
        let text = if path.contains("size=1k") {
            "x".repeat(1024)
        } else if path.contains("size=64m") {
            "x".repeat(64 << 20)
        } else {
            format!("backend {method} {path}\n")
        };
        // One write per response: split writes meet Nagle and delayed ACKs (40 ms stalls).
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        reader.get_mut().write_all(response.as_bytes())?;
        reader.get_mut().flush()?;
    }
}
