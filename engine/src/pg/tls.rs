//! TLS for every connection, with libpq's sslmode rules, on rustls.
//!
//! - verify-full: the chain must lead to a root in sslrootcert and the
//!   certificate must name the host.
//! - verify-ca: the chain is checked, the name is not.
//! - require, prefer, allow: no checks, except that (as in libpq) an
//!   existing root certificate file makes them check the chain.
//!
//! Which of plaintext and TLS to try first is decided in `pg::open_target`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SslMode;
use super::conninfo::Resolved;
use crate::error::{Error, Result};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// The rustls client configuration for one connection attempt.
pub(crate) struct Tls {
    config: ClientConfig,
    /// Where the trusted roots came from, for messages.
    pub roots: String,
}

impl Tls {
    pub fn connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(self.config.clone())
    }
}

fn postgresql_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".postgresql"))
}

fn default_file(given: Option<&str>, name: &str) -> Option<PathBuf> {
    given.map(PathBuf::from).or_else(|| postgresql_dir().map(|d| d.join(name)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs =
        CertificateDer::pem_file_iter(path).and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>()).map_err(
            |err| Error::Config(format!("cannot read {what} \"{}\": {err}; give a PEM file", path.display())),
        )?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{what} \"{}\" holds no certificate; give a PEM file with BEGIN CERTIFICATE blocks",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the TLS configuration for `r`, or a `Config` error naming the
/// file that is missing or unreadable and how to fix it.
pub(crate) fn setup(r: &Resolved) -> Result<Tls> {
    let provider = provider();
    let wants = match r.sslmode {
        SslMode::VerifyFull => Verify::ChainAndName,
        SslMode::VerifyCa => Verify::Chain,
        _ => Verify::Nothing,
    };
    let mut roots = RootCertStore::empty();
    let mut roots_desc = String::from("no root certificate");
    let mut verify = wants;
    if r.sslrootcert.as_deref() == Some("system") {
        let loaded = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            return Err(Error::Config(
                "sslrootcert=system but no system root certificates could be loaded; install ca-certificates or give sslrootcert=FILE"
                    .into(),
            ));
        }
        roots_desc = "the system's trusted roots".into();
    } else if r.sslmode != SslMode::Disable {
        let path = default_file(r.sslrootcert.as_deref(), "root.crt");
        match path.filter(|p| p.exists()) {
            Some(path) => {
                for cert in read_certs(&path, "root certificate file")? {
                    roots
                        .add(cert)
                        .map_err(|err| Error::Config(format!("root certificate file \"{}\": {err}", path.display())))?;
                }
                roots_desc = format!("sslrootcert \"{}\"", path.display());
                // libpq: with a root certificate, require (and weaker) check the chain.
                if verify == Verify::Nothing {
                    verify = Verify::Chain;
                }
            }
            None if wants != Verify::Nothing => {
                let shown = default_file(r.sslrootcert.as_deref(), "root.crt")
                    .map_or_else(|| "~/.postgresql/root.crt".into(), |p| p.display().to_string());
                return Err(Error::Config(format!(
                    "root certificate file \"{shown}\" does not exist; sslmode={} needs it to check the server: give sslrootcert=FILE (the CA that signed the server's certificate), sslrootcert=system, or a weaker sslmode",
                    r.sslmode.as_str()
                )));
            }
            None => {}
        }
    }
    let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Nothing {
        Arc::new(Lenient { chain: None, provider: provider.clone() })
    } else {
        let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if let Some(crl) = r.sslcrl.as_deref() {
            let crls = CertificateRevocationListDer::pem_file_iter(crl)
                .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|err| Error::Config(format!("cannot read sslcrl \"{crl}\": {err}; give a PEM CRL file")))?;
            builder = builder.with_crls(crls).allow_unknown_revocation_status();
        }
        let webpki = builder
            .build()
            .map_err(|err| Error::Config(format!("cannot use {roots_desc}: {err}; check the certificate files")))?;
        if verify == Verify::Chain {
            Arc::new(Lenient { chain: Some(webpki), provider: provider.clone() })
        } else {
            webpki
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Config(format!("TLS setup: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_cert(r)? {
        Some((chain, key, cert_path)) => builder.with_client_auth_cert(chain, key).map_err(|err| {
            Error::Config(format!(
                "client certificate \"{cert_path}\" and its key do not fit together: {err}; check sslcert and sslkey"
            ))
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Tls { config, roots: roots_desc })
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String);

/// sslcert + sslkey (default ~/.postgresql/postgresql.crt/.key); none if
/// the certificate file does not exist, as in libpq.
fn client_cert(r: &Resolved) -> Result<Option<ClientCert>> {
    if r.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let Some(cert) = default_file(r.sslcert.as_deref(), "postgresql.crt").filter(|p| p.exists()) else {
        return Ok(None);
    };
    let chain = read_certs(&cert, "client certificate file")?;
    let key = default_file(r.sslkey.as_deref(), "postgresql.key")
        .ok_or_else(|| Error::Config("sslcert is set but no sslkey: give sslkey=FILE".into()))?;
    let meta = std::fs::metadata(&key).map_err(|err| {
        Error::Config(format!(
            "private key file \"{}\" for client certificate \"{}\": {err}; give sslkey=FILE",
            key.display(),
            cert.display()
        ))
    })?;
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // libpq: 0600 or less, or 0640 when owned by root.
        let mode = meta.permissions().mode() & 0o777;
        let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
        if mode & !allowed != 0 {
            return Err(Error::Config(format!(
                "private key file \"{}\" has group or world access (mode {mode:o}); permissions should be u=rw (0600) or less: run chmod 0600 on it",
                key.display()
            )));
        }
    }
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|err| {
        Error::Config(format!("cannot read private key file \"{}\": {err}; give an unencrypted PEM key", key.display()))
    })?;
    Ok(Some((chain, private, cert.display().to_string())))
}

/// Checks short of verify-full (which is webpki's verifier as it is): none
/// at all (require/prefer/allow without a root certificate: encryption
/// only), or the chain without the host name (verify-ca; webpki checks the
/// name last, after the chain). Handshake signatures are always checked.
#[derive(Debug)]
struct Lenient {
    /// The chain's verifier, for verify-ca; None checks no certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error inside a tokio-postgres error, if any.
fn find_rustls(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<rustls::Error>() {
            return Some(e);
        }
        // io::Error hides its inner error from source(): look inside.
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(e) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(e);
        }
        cause = c.source();
    }
    None
}

/// True for a failure in TLS negotiation (not in login or in TCP).
pub(crate) fn is_tls_failure(err: &tokio_postgres::Error) -> bool {
    find_rustls(err).is_some() || err.to_string().starts_with("error performing TLS handshake")
}

/// A sentence for a TLS failure, naming the problem and the fix.
pub(crate) fn explain(err: &tokio_postgres::Error, tls: &Tls, host: &str, mode: SslMode) -> Option<String> {
    if let Some(e) = find_rustls(err) {
        return Some(match e {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
                "server certificate verification failed: the certificate does not match host name \"{host}\" ({e}); connect with a host name the certificate lists, or use sslmode=verify-ca to check only the chain"
            ),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                format!(
                    "server certificate verification failed: it is not signed by a CA in {} ({e}); point sslrootcert at the CA that issued the server's certificate",
                    tls.roots
                )
            }
            rustls::Error::InvalidCertificate(c) => format!(
                "server certificate verification failed ({c}) against {}; fix the server's certificate or sslrootcert/sslcrl",
                tls.roots
            ),
            rustls::Error::AlertReceived(alert) => format!(
                "the server ended the TLS handshake ({alert:?}); if it asks for a client certificate, give sslcert and sslkey"
            ),
            other => format!("TLS handshake failed: {other}"),
        });
    }
    let text = err.to_string();
    if text.contains("server does not support TLS") {
        return Some(format!(
            "the server does not support TLS (ssl = off) but sslmode={} requires it; turn ssl on in the server, or use sslmode=prefer to allow plaintext",
            mode.as_str()
        ));
    }
    None
}
