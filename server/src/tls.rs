//! TLS for the AMQPS listener (RabbitMQ's `ssl_options`), with rustls: TLS 1.2 and 1.3
//! only, a certificate chain and key from PEM files, and optionally client certificates
//! verified against a CA, whose subject then names the user of SASL `EXTERNAL`
//! (RabbitMQ's `ssl_cert_login_from`: the whole distinguished name, or its common
//! name).
//!
//! The files are read again on SIGHUP ([`Tls::reload`]): connections accepted from then
//! on use the new certificate; open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// Which part of a client certificate's subject is the user name for `EXTERNAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CertLogin {
    /// The whole subject, as RFC 4514 writes it (`CN=alice,O=Example`), RabbitMQ's
    /// default (`distinguished_name`).
    #[default]
    DistinguishedName,
    /// The subject's common name (`common_name`).
    CommonName,
}

/// Where the TLS files are, and what is asked of clients.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates that client certificates are verified against (PEM); none: no
    /// client certificates are asked for.
    pub ca: Option<PathBuf>,
    /// With a CA: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS configuration in force, replaced as a whole on reload.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files `settings` names.
    ///
    /// # Errors
    /// A file is unreadable or not what rustls accepts.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let config = build(&settings)?;
        Ok(Self {
            settings,
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on failure the old configuration stays in force.
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        *self.config.write() = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().clone())
    }
}

fn unreadable(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable(path))?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(unreadable(&settings.key))?;
    let builder = ServerConfig::builder();
    let builder = match &settings.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if settings.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The user name a verified client certificate gives `EXTERNAL`, as `from` says.
pub fn cert_user(cert: &CertificateDer<'_>, from: CertLogin) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    match from {
        // Every CN, comma-joined, as RabbitMQ's `common_name`.
        CertLogin::CommonName => {
            let names: Vec<&str> = subject
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .collect();
            (!names.is_empty()).then(|| names.join(","))
        }
        CertLogin::DistinguishedName => {
            // RFC 4514: the last RDN first, comma-separated.
            let rdns: Vec<String> = subject
                .iter_rdn()
                .map(|rdn| {
                    rdn.iter()
                        .filter_map(|attr| {
                            let name = x509_parser::objects::oid2abbrev(
                                attr.attr_type(),
                                x509_parser::objects::oid_registry(),
                            )
                            .ok()?;
                            Some(format!("{name}={}", escape(attr.as_str().ok()?)))
                        })
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .collect();
            Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
        }
    }
}

/// An attribute value escaped as RFC 4514 and RabbitMQ's `rabbit_cert_info` escape it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 32 || (c as u32) >= 126 => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn dn_values_are_escaped_as_rfc_4514() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("trail "), "trail\\ ");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("é"), "\\C3\\A9");
    }
}
