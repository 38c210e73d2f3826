//! The proxy's TLS identity and Neon's rules for finding an endpoint from the TLS SNI host name.
//!
//! The certificate is self-signed, made at each emulator start for `localhost`, `*.localhost`
//! and `127.0.0.1`: enough for `sslmode=require`, which does not verify (nor could a client
//! verify `ep-….localhost` with webpki, which refuses a wildcard directly under a single label).
//! Endpoints' hosts are `ep-….localhost:PORT`, so a client that sends SNI names its endpoint the
//! way Neon's do (`ep-….<region>.aws.neon.tech`).

use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// The domain endpoints' hosts live under, as Neon's proxy calls it: its common name.
pub const COMMON_NAME: &str = "localhost";

/// The proxy's certificate and key, ready to accept connections.
pub struct ProxyTls {
    pub acceptor: TlsAcceptor,
    /// `tls-server-end-point` channel-binding data (RFC 5929): SHA-256 of the certificate,
    /// whose signature uses SHA-256.
    pub certificate_hash: Vec<u8>,
}

impl ProxyTls {
    /// A fresh key pair and self-signed certificate.
    pub fn generate() -> anyhow::Result<ProxyTls> {
        let mut parameters = rcgen::CertificateParams::new(vec![
            COMMON_NAME.to_string(),
            format!("*.{COMMON_NAME}"),
        ])
        .context("certificate parameters")?;
        parameters
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
                127, 0, 0, 1,
            ])));
        parameters
            .distinguished_name
            .push(rcgen::DnType::CommonName, "schemafleet emulator proxy");
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate the proxy's key")?;
        let certificate = parameters
            .self_signed(&key_pair)
            .context("cannot sign the proxy's certificate")?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der().clone()], key)
            .context("the proxy's certificate")?;
        Ok(ProxyTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate_hash: Sha256::digest(certificate.der()).to_vec(),
        })
    }
}

/// The endpoint a TLS client names in its SNI host (`<endpoint>.localhost`), as Neon's proxy
/// reads it; `None` without SNI. Unlike Neon, a bare `localhost` counts as no SNI, so a client
/// that connects to `localhost` can still name its endpoint in `options`. A `-pooler` suffix is
/// kept here (Neon compares the raw label with the option) and dropped by [`lookup_id`].
pub fn endpoint_from_sni(sni: Option<&str>) -> Result<Option<String>, String> {
    let Some(sni) = sni else {
        return Ok(None);
    };
    if sni.eq_ignore_ascii_case(COMMON_NAME) {
        return Ok(None);
    }
    match sni.split_once('.') {
        Some((label, common_name)) if common_name.eq_ignore_ascii_case(COMMON_NAME) => {
            Ok(Some(label.to_string()))
        }
        Some((_, common_name)) => Err(unknown_common_name(common_name)),
        None => Err(unknown_common_name(sni)),
    }
}

fn unknown_common_name(common_name: &str) -> String {
    format!("Common name inferred from SNI ('{common_name}') is not known")
}

/// Neon's rule for the two ways of naming an endpoint: either will do, both must agree.
pub fn choose_endpoint(
    from_sni: Option<String>,
    from_options: Option<String>,
) -> Result<Option<String>, String> {
    let chosen = match (from_sni, from_options) {
        (Some(domain), Some(option)) if domain != option => {
            return Err(format!(
                "Inconsistent project name inferred from SNI ('{domain}') and project option ('{option}')."
            ));
        }
        (domain, option) => domain.or(option),
    };
    match chosen {
        Some(name) if !name.chars().all(|c| c.is_alphanumeric() || c == '-') => Err(format!(
            "Project name ('{name}') must contain only alphanumeric characters and hyphen."
        )),
        other => Ok(other),
    }
}

/// The endpoint id to look up: the emulator has no pooler, so `ep-…-pooler` reaches `ep-…`
/// directly.
pub fn lookup_id(name: &str) -> &str {
    name.strip_suffix("-pooler").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_label_of_an_sni_under_localhost_is_the_endpoint() {
        assert_eq!(
            endpoint_from_sni(Some("ep-cool-1.localhost")),
            Ok(Some("ep-cool-1".into()))
        );
        assert_eq!(endpoint_from_sni(None), Ok(None));
        assert_eq!(endpoint_from_sni(Some("localhost")), Ok(None));
        assert_eq!(
            endpoint_from_sni(Some("ep-cool-1.us-east-2.aws.neon.tech")),
            Err("Common name inferred from SNI ('us-east-2.aws.neon.tech') is not known".into())
        );
        assert_eq!(lookup_id("ep-cool-1-pooler"), "ep-cool-1");
        assert_eq!(lookup_id("ep-cool-1"), "ep-cool-1");
    }

    #[test]
    fn sni_and_options_must_agree() {
        assert_eq!(
            choose_endpoint(Some("ep-a".into()), None),
            Ok(Some("ep-a".into()))
        );
        assert_eq!(
            choose_endpoint(None, Some("ep-b".into())),
            Ok(Some("ep-b".into()))
        );
        assert_eq!(
            choose_endpoint(Some("ep-a".into()), Some("ep-a".into())),
            Ok(Some("ep-a".into()))
        );
        assert_eq!(
            choose_endpoint(Some("ep-a-pooler".into()), Some("ep-a".into())),
            Err(
                "Inconsistent project name inferred from SNI ('ep-a-pooler') and project option ('ep-a')."
                    .into()
            )
        );
        assert!(choose_endpoint(None, Some("ep;x".into())).is_err());
        assert_eq!(choose_endpoint(None, None), Ok(None));
    }
}
