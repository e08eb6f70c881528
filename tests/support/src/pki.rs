//! Throwaway certificates for TLS tests: a CA, a server certificate for
//! 127.0.0.1 and a client certificate, all signed by that CA, written as
//! PEM files.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files of a test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate, to trust.
    pub ca_file: PathBuf,
    /// The server certificate (SAN 127.0.0.1 and localhost).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (mutual TLS).
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Generates a CA and its two certificates into `dir`, with file names
    /// starting with `prefix`.
    ///
    /// # Panics
    ///
    /// When generating or writing fails.
    pub fn generate(dir: &Path, prefix: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{prefix} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().expect("generate a key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "mosquitto",
        );
        let (client_cert, client_key) = leaf(Vec::new(), "weir");

        let write = |name: &str, pem: &str| {
            let path = dir.join(format!("{prefix}-{name}.pem"));
            fs::write(&path, pem).expect("write a PEM file");
            path
        };
        Pki {
            ca_file: write("ca", &ca_cert.pem()),
            server_cert: write("server", &server_cert),
            server_key: write("server-key", &server_key),
            client_cert: write("client", &client_cert),
            client_key: write("client-key", &client_key),
        }
    }
}
