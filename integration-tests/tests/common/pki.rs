//! A test CA made with rcgen, the certificates it signs, and lapin connections over
//! TLS with them: for the AMQPS tests.

use std::path::PathBuf;

use integration_tests::temp_data_dir;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::within;

/// A CA and what it signed, written to PEM files in a directory.
pub struct Pki {
    /// Where the PEM files are.
    pub dir: PathBuf,
    /// The CA certificate.
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    /// A new CA, its files under a directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        let dir = temp_data_dir(tag).with_extension("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Warren test CA");
        let ca = params.self_signed(&ca_key).expect("ca cert");
        let ca_pem = ca.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write ca");
        Self {
            dir,
            ca_pem,
            ca_params: params,
            ca_key,
        }
    }

    /// Signs a certificate for `names` (server) or with subject `cn`, `o` (client);
    /// returns (cert PEM, key PEM) and writes them as `<file>.pem` and `<file>.key`.
    pub fn sign(&self, file: &str, names: &[&str], cn: &str, o: Option<&str>) -> (String, String) {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = o {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (pem, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.dir.join(format!("{file}.pem")), &pem).expect("write cert");
        std::fs::write(self.dir.join(format!("{file}.key")), &key).expect("write key");
        (pem, key)
    }

    /// The path of one of its files.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

/// A free loopback port (bound, then released for the broker to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Connects to `uri` (amqps) trusting `ca`, with a client certificate and key if given.
pub async fn tls_connect(
    uri: &str,
    ca: &str,
    identity: Option<(String, String)>,
) -> lapin::Result<Connection> {
    let config = OwnedTLSConfig {
        identity: identity.map(|(pem, key)| OwnedIdentity::PKCS8 {
            pem: pem.into_bytes(),
            key: key.into_bytes(),
        }),
        cert_chain: Some(ca.to_owned()),
    };
    within(
        "amqps connect",
        Connection::connect_with_config(
            uri,
            ConnectionProperties::default(),
            config,
            lapin::runtime::default_runtime()?,
        ),
    )
    .await
}
