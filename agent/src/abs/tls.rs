//! How the feed trusts ABS: its CA file (ABS ships a self-signed certificate), or — only
//! when the operator says so with `insecure_skip_verify` — any certificate at all, which is
//! logged at every start since anyone on the path could then play ABS.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::AbsConfig;

/// The TLS client configuration `cfg` asks for.
pub fn client_config(cfg: &AbsConfig) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    if cfg.insecure_skip_verify {
        tracing::warn!(
            "abs.insecure_skip_verify is on: ABS's certificate is not checked, so anyone on the path to ABS gets the ABS secret key and can feed the deny list; set abs.ca_file to ABS's certificate instead"
        );
        return Ok(versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_file {
        for c in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading ABS CA {}", ca.display()))?
        {
            roots.add(c.with_context(|| format!("parsing ABS CA {}", ca.display()))?)?;
        }
    }
    Ok(versions.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any certificate, but still checks that the server holds its key (the handshake
/// signatures), so the session is at least with whoever presented it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
