//! TLS for MQTT connections (`mqtts://`), with rustls and the `ring`
//! provider (no C toolchain needed, unlike the default aws-lc provider).
//!
//! The CA file, when given, is the only trust anchor; without it the
//! system's roots are used. A client certificate and key (PEM) enable
//! mutual TLS.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The rumqttc transport for these TLS settings.
pub fn transport(tls: &TlsConfig) -> anyhow::Result<Transport> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("bad certificate in {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("CA file {} holds no certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("no system CA certificates found; set tls.ca_file");
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = CertificateDer::pem_file_iter(cert_path)
                .with_context(|| format!("cannot read client certificate {}", cert_path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("bad client certificate in {}", cert_path.display()))?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .with_context(|| format!("cannot read client key {}", key_path.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .context("client certificate and key do not match")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("tls.cert_file and tls.key_file go together"),
    };
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}
