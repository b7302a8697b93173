//! What a start needs from the machine, checked before anything is loaded or attached, and
//! by `agent --check-config`: a start that would fail fails here, with every problem named at
//! once, instead of after the filter is already on an interface.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;

/// The problems that would stop (or cripple) a start with `config`; empty when there are none.
pub fn problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(g) = &config.socket_group
        && crate::control::server::group_id(g).is_none()
    {
        out.push(format!(
            "socket_group: group {g:?} does not exist (create it first: groupadd --system {g})"
        ));
    }
    for iface in &config.interfaces {
        if crate::kernel::ifindex(iface).is_none() {
            out.push(format!(
                "interfaces: {iface:?} does not exist in this network namespace"
            ));
        }
    }
    for (field, dir) in [
        ("state_dir", &config.state_dir),
        (
            "socket",
            &config
                .socket
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
        ),
    ] {
        if let Err(e) = creatable_dir(dir) {
            out.push(format!("{field}: {}: {e}", dir.display()));
        }
    }
    let mut listeners = vec![("metrics", config.metrics.as_str())];
    let c = &config.checker;
    if c.enabled() {
        listeners.extend([
            ("checker.https", c.https.as_str()),
            ("checker.http", c.http.as_str()),
        ]);
        if !c.https.is_empty()
            && let Err(e) = crate::checker::tls::Tls::load(c.tls_pairs())
        {
            out.push(format!("checker.tls_cert / tls_key / tls_certs: {e:#}"));
        }
        if !c.api_dir.is_dir() {
            out.push(format!(
                "checker.api_dir: {} is not a directory (every request would be refused as an unknown API)",
                c.api_dir.display()
            ));
        }
    }
    let passed = crate::activation::passed_addresses();
    for (field, addr) in listeners
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        // Bound already by the service manager (the agent checks it against the passed
        // socket when it starts).
        .filter(|(_, a)| !a.parse::<SocketAddr>().is_ok_and(|a| passed.contains(&a)))
    {
        if let Err(e) = local_address(addr) {
            out.push(format!("{field}: cannot listen on {addr}: {e}"));
        }
    }
    let abs = &config.abs;
    if !abs.url.is_empty() {
        if let Err(e) = std::fs::read(&abs.secret_key_file) {
            out.push(format!(
                "abs.secret_key_file: {}: {e}",
                abs.secret_key_file.display()
            ));
        }
        if let Some(ca) = &abs.ca_file
            && let Err(e) = std::fs::read(ca)
        {
            out.push(format!("abs.ca_file: {}: {e}", ca.display()));
        }
    }
    out
}

/// `dir` exists as a directory, or the agent can create it (its nearest existing ancestor is
/// a directory).
fn creatable_dir(dir: &Path) -> Result<(), String> {
    let mut at = Some(dir);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => return Err(format!("{} is not a directory", p.display())),
            Err(_) => at = p.parent(),
        }
    }
    Err("no existing ancestor".into())
}

/// The address's IP belongs to this host (binding port 0 on it works), so the listener can
/// start; the port itself is not tried, since a running agent holds it during a check.
fn local_address(addr: &str) -> Result<(), String> {
    let a: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    std::net::TcpListener::bind(SocketAddr::new(a.ip(), 0))
        .map(drop)
        .map_err(|e| e.to_string())
}
