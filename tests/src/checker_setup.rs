//! The L7 checker's test fixture: an agent with the checker on 127.0.0.1 (HTTPS and plain
//! HTTP), a real backend, a self-signed certificate, and API files written by the test.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::agent::{Agent, AgentDirs};
use crate::backend::Backend;
use crate::tls::self_signed;

/// The name the checker's certificate is issued to.
pub const HOST: &str = "api.test";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes one ASE API file `{name}.json` holding `api_metadata: meta`.
pub fn write_api(dir: &Path, name: &str, meta: &str) {
    std::fs::create_dir_all(dir).expect("api dir");
    std::fs::write(
        dir.join(format!("{name}.json")),
        format!("{{\"api_metadata\":{meta}}}"),
    )
    .expect("api file");
}

/// Writes API `name` at `/name` in front of the test backend on `backend`, with `fields`
/// (JSON members, comma-separated; may be empty) in its definition.
pub fn write_backend_api(dir: &Path, name: &str, backend: u16, fields: &str) {
    let sep = if fields.trim().is_empty() { "" } else { "," };
    write_api(
        dir,
        name,
        &format!(
            r#"{{"url":"/{name}"{sep}{fields},"servers":[{{"host":"127.0.0.1","port":{backend}}}]}}"#
        ),
    );
}

/// A backend on 127.0.0.1 and the API `shop` in front of it (with more `fields`), written
/// in `dirs`' API directory, which is returned. Keep the backend in a named binding
/// (`_backend`): `_` would stop it at once.
pub fn shop_backend(dirs: &AgentDirs, fields: &str) -> (Backend, std::path::PathBuf) {
    let backend = Backend::start(TcpListener::bind("127.0.0.1:0").expect("backend"));
    let apis = dirs.root.join("apis");
    write_backend_api(&apis, "shop", backend.addr.port(), fields);
    (backend, apis)
}

/// A running checker and what it needs.
pub struct Setup {
    /// State, certificates and API files.
    pub dirs: AgentDirs,
    /// The running agent.
    pub agent: Agent,
    /// HTTPS listener port (127.0.0.1).
    pub port: u16,
    /// Plain HTTP listener port (127.0.0.1).
    pub http_port: u16,
    /// CA that signed the checker's certificate.
    pub ca: std::path::PathBuf,
    /// The API server behind the checker.
    pub backend: Backend,
}

/// An agent with the checker on 127.0.0.1, X-Forwarded-For trusted (so each request can
/// present its own client address), and the APIs `extra` writes.
pub fn setup(extra: impl Fn(&Path, u16)) -> Setup {
    setup_with("", extra)
}

/// [`setup`] with API definitions `(name, fields)` in front of the test backend (see
/// [`write_backend_api`]).
pub fn setup_apis(apis: &[(&str, &str)]) -> Setup {
    setup(|dir, backend| {
        for (name, fields) in apis {
            write_backend_api(dir, name, backend, fields);
        }
    })
}

/// [`setup`] with more `[checker]` settings (TOML lines).
pub fn setup_with(checker_config: &str, extra: impl Fn(&Path, u16)) -> Setup {
    let dirs = AgentDirs::new();
    let backend = Backend::start(TcpListener::bind("127.0.0.1:0").expect("backend"));
    let certs = self_signed(&dirs.root, HOST, "a").expect("cert");
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let apis = dirs.root.join("apis");
    extra(&apis, backend.addr.port());
    let (port, http_port) = (free_port(), free_port());
    let config = format!(
        "[checker]\nhttps = \"127.0.0.1:{port}\"\nhttp = \"127.0.0.1:{http_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\napi_dir = \"{}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nheader_timeout = \"2s\"\nmax_header_bytes = 8192\n{checker_config}",
        cert.display(),
        key.display(),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    Setup {
        dirs,
        agent,
        port,
        http_port,
        ca: certs.ca,
        backend,
    }
}

impl Setup {
    /// (status, body) of a curl request through the checker's HTTPS listener.
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(&self.ca)
            .args([
                "--resolve",
                &format!("{HOST}:{}:127.0.0.1", self.port),
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .arg(format!("https://{HOST}:{}{path}", self.port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}
