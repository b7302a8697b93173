//! TLS for the checker's HTTPS listener: certificates and keys from PEM files, the one whose
//! names cover the client's SNI chosen per handshake (the first by default), swapped in
//! place on reload (SIGHUP or a changed file) without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

/// A TLS configuration that can be reloaded.
pub struct Tls {
    /// (certificate chain, key) files: the default first, then those chosen by SNI.
    pairs: Vec<(PathBuf, PathBuf)>,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest change to any of the files.
fn newest(pairs: &[(PathBuf, PathBuf)]) -> Option<SystemTime> {
    pairs
        .iter()
        .flat_map(|(c, k)| [modified(c), modified(k)])
        .max()
        .flatten()
}

/// One certificate chain and its key, checked to belong together.
fn certified(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    use anyhow::Context as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .with_context(|| format!("unsupported private key {}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().with_context(|| {
        format!(
            "certificate {} and key {} do not match",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Picks the certificate whose names cover the client's SNI (as a client would check
/// them, wildcards included), else the first.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    others: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            self.others.iter().find(|ck| {
                ck.end_entity_cert().is_ok_and(|leaf| {
                    webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

fn build(pairs: &[(PathBuf, PathBuf)]) -> anyhow::Result<Arc<ServerConfig>> {
    use anyhow::Context as _;
    let mut keys = pairs
        .iter()
        .map(|(c, k)| certified(c, k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!keys.is_empty(), "no certificate configured");
    let default = keys.remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni {
            default,
            others: keys,
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Tls {
    /// Loads the default certificate chain and key, and those chosen by SNI.
    pub fn load(pairs: Vec<(PathBuf, PathBuf)>) -> anyhow::Result<Self> {
        let cfg = build(&pairs)?;
        let seen = newest(&pairs);
        Ok(Self {
            pairs,
            current: RwLock::new((cfg, seen)),
        })
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .map(|c| c.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// Re-reads the files; on error keeps serving the old certificate and says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let cfg = build(&self.pairs)?;
        if let Ok(mut c) = self.current.write() {
            *c = (cfg, newest(&self.pairs));
        }
        tracing::info!(certificates = self.pairs.len(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads if either file changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = newest(&self.pairs);
        let seen = self.current.read().map(|c| c.1).unwrap_or(None);
        if now.is_some()
            && now != seen
            && let Err(e) = self.reload()
        {
            tracing::warn!(
                "TLS files changed but cannot be used, keeping the old certificate: {e:#}"
            );
            if let Ok(mut c) = self.current.write() {
                c.1 = now;
            }
        }
    }
}
