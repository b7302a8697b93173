//! Throwaway certificates (made with the openssl CLI) and a rustls client, for the checker's
//! tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Certificates for one test server.
pub struct TestCerts {
    /// The CA to trust (a fresh one per call).
    pub ca: PathBuf,
    /// The server's certificate, issued by `ca` for the DNS name.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// Makes a fresh CA and a server certificate for `name` in `dir`, files prefixed `tag`.
pub fn self_signed(dir: &Path, name: &str, tag: &str) -> anyhow::Result<TestCerts> {
    let p = |f: &str| dir.join(format!("{tag}-{f}"));
    let s = |p: &PathBuf| p.to_str().unwrap_or_default().to_owned();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("cert.pem"),
        p("key.pem"),
        p("cert.csr"),
        p("ext.cnf"),
    );
    std::fs::write(
        &ext,
        format!(
            // An address gets an IP SAN (a server reached by address, like ABS in tests).
            "subjectAltName={}:{name}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
            if name.parse::<std::net::IpAddr>().is_ok() {
                "IP"
            } else {
                "DNS"
            }
        ),
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=portcullis test CA",
    ];
    a.extend(ec);
    let (ca_key_s, ca_s) = (s(&ca_key), s(&ca));
    a.extend(["-keyout", &ca_key_s, "-out", &ca_s]);
    openssl(&a)?;
    let subj = format!("/CN={name}");
    let (key_s, csr_s) = (s(&key), s(&csr));
    let mut b = vec!["req", "-subj", &subj];
    b.extend(ec);
    b.extend(["-keyout", &key_s, "-out", &csr_s]);
    openssl(&b)?;
    let (cert_s, ext_s) = (s(&cert), s(&ext));
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-out",
        &cert_s,
        "-extfile",
        &ext_s,
    ])?;
    Ok(TestCerts { ca, cert, key })
}

/// A rustls client connection that keeps alive: several requests on one TLS session (to
/// show a reload does not drop established connections).
pub struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    server_name: String,
}

impl TlsClient {
    /// Connects to `addr` and completes the handshake, trusting only `ca`.
    pub fn connect(addr: &str, server_name: &str, ca: &Path) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_owned())?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self {
            tls,
            server_name: server_name.to_owned(),
        })
    }

    /// One keep-alive request; reads the answer by its Content-Length.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n", self.server_name);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.tls.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(self.tls.read(&mut byte)? == 1, "connection closed mid-head");
            raw.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&raw).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let len: Option<usize> = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        });
        let mut body = Vec::new();
        match len {
            Some(n) => {
                body.resize(n, 0);
                self.tls.read_exact(&mut body)?;
            }
            // No length: the body runs to the end of the connection.
            None => match self.tls.read_to_end(&mut body) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The certificate the server presented (DER of the leaf).
    pub fn peer_leaf(&self) -> Option<Vec<u8>> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }
}

/// One HTTP/1.1 request over TLS with rustls, trusting only `ca`; returns (status, body).
pub fn rustls_get(
    addr: &str,
    server_name: &str,
    ca: &Path,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut c = TlsClient::connect(addr, server_name, ca)?;
    let mut h = headers.to_vec();
    h.push(("connection", "close"));
    c.get(path, &h)
}
