//! TLS for the checker's HTTPS listener: certificate and key from PEM files, swapped in place
//! on reload (SIGHUP or a changed file) without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS configuration that can be reloaded.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn build(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    use anyhow::Context as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Tls {
    /// Loads the certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cfg = build(cert, key)?;
        Ok(Self {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new((cfg, modified(cert).max(modified(key)))),
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
        let cfg = build(&self.cert, &self.key)?;
        if let Ok(mut c) = self.current.write() {
            *c = (cfg, modified(&self.cert).max(modified(&self.key)));
        }
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads if either file changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = modified(&self.cert).max(modified(&self.key));
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
