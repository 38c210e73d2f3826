//! Direct connections to a tenant's compute.
//!
//! **Invariant:** migrations never go through a pooler: Neon's PgBouncer runs in transaction
//! mode, which breaks the session advisory lock and `SET`. A `-pooler` host is refused.
//! **Invariant:** a connection to a host that is not loopback is TLS with a verified
//! certificate and host name (rustls, webpki roots), whatever `sslmode` says short of
//! `disable`, and `disable` is refused for it: no server or man in the middle can downgrade it
//! to plaintext. Loopback hosts (the local emulator) may use `sslmode=disable`.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use super::error::DbFailure;
use crate::secret::SecretUri;

/// Connect to `uri`, spawning the connection task, with the TLS policy of [`tls_config_for`].
pub async fn connect(uri: &SecretUri, connect_timeout: Duration) -> Result<Client, DbFailure> {
    let mut config = tls_config_for(uri.expose())
        .map_err(|message| DbFailure::new(None, format!("connection URI {uri}: {message}")))?;
    if config.get_hosts().iter().any(
        |host| matches!(host, tokio_postgres::config::Host::Tcp(name) if name.contains("-pooler")),
    ) {
        return Err(DbFailure::new(
            None,
            format!(
                "refusing pooled connection {uri}: migrations need a direct connection (session advisory lock, SET)"
            ),
        ));
    }
    config.application_name("schemafleet");
    config.connect_timeout(connect_timeout);
    let connect_future = async {
        if config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %crate::secret::redact_uri(&error.to_string()), "connection closed");
                }
            });
            Ok::<Client, tokio_postgres::Error>(client)
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config()).clone());
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %crate::secret::redact_uri(&error.to_string()), "connection closed");
                }
            });
            Ok(client)
        }
    };
    // Cold computes can take seconds to wake; the driver's own timeout covers the TCP connect,
    // this one bounds the whole handshake.
    match tokio::time::timeout(connect_timeout + Duration::from_secs(5), connect_future).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(DbFailure::from_error("connect", &error)),
        Err(_) => Err(DbFailure::new(
            None,
            format!("connect: timed out after {connect_timeout:?}"),
        )),
    }
}

/// `sslmode` as libpq spells it; tokio-postgres knows only disable, prefer and require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestedSslMode {
    Unset,
    Disable,
    /// `allow` or `prefer`: TLS if the server offers it.
    Opportunistic,
    /// `require`, `verify-ca` or `verify-full`: our TLS always verifies the chain and host name.
    Required,
}

/// Parse `uri` (URI or key=value form) into a driver config that follows the TLS policy: a
/// non-loopback host always gets `require` (verified), `disable` only for loopback hosts.
fn tls_config_for(uri: &str) -> Result<Config, String> {
    let (driver_uri, requested) = normalise_sslmode(uri)?;
    let mut config = Config::from_str(&driver_uri).map_err(|error| format!("invalid: {error}"))?;
    let loopback_only = config.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => is_loopback_host(name),
        tokio_postgres::config::Host::Unix(_) => true,
    }) && !config.get_hosts().is_empty();
    match (requested, loopback_only) {
        (RequestedSslMode::Disable, false) => {
            return Err(
                "sslmode=disable is accepted only for loopback hosts (the local emulator); a \
                 remote server needs TLS: use sslmode=require or verify-full"
                    .to_string(),
            );
        }
        (_, false) => {
            config.ssl_mode(SslMode::Require);
        }
        (_, true) => {}
    }
    Ok(config)
}

fn is_loopback_host(name: &str) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The URI with its `sslmode` rewritten to a value tokio-postgres accepts, and what was asked.
fn normalise_sslmode(uri: &str) -> Result<(String, RequestedSslMode), String> {
    const KEY: &str = "sslmode=";
    let Some(key_start) = uri.match_indices(KEY).map(|(idx, _)| idx).find(|&idx| {
        idx == 0 || uri[..idx].ends_with(|c: char| c == '?' || c == '&' || c.is_whitespace())
    }) else {
        return Ok((uri.to_string(), RequestedSslMode::Unset));
    };
    let value_start = key_start + KEY.len();
    let value_end = uri[value_start..]
        .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
        .map_or(uri.len(), |idx| value_start + idx);
    let (driver_value, requested) = match &uri[value_start..value_end] {
        "disable" => ("disable", RequestedSslMode::Disable),
        "allow" | "prefer" => ("prefer", RequestedSslMode::Opportunistic),
        "require" | "verify-ca" | "verify-full" => ("require", RequestedSslMode::Required),
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            ));
        }
    };
    let rewritten = format!("{}{driver_value}{}", &uri[..value_start], &uri[value_end..]);
    Ok((rewritten, requested))
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(uri: &str) -> Result<SslMode, String> {
        tls_config_for(uri).map(|config| config.get_ssl_mode())
    }

    #[test]
    fn a_remote_host_without_sslmode_requires_tls() {
        assert_eq!(
            mode("postgresql://u:p@ep-x.aws.neon.tech/neondb"),
            Ok(SslMode::Require)
        );
        assert_eq!(
            mode("postgresql://u:p@ep-x.aws.neon.tech/neondb?sslmode=prefer"),
            Ok(SslMode::Require)
        );
        assert_eq!(
            mode("host=ep-x.aws.neon.tech user=u dbname=neondb sslmode=allow"),
            Ok(SslMode::Require)
        );
    }

    #[test]
    fn disable_is_refused_for_a_remote_host_and_kept_for_loopback() {
        for uri in [
            "postgresql://u:p@ep-x.aws.neon.tech/neondb?sslmode=disable",
            "postgresql://u:p@10.0.0.5:5432/neondb?sslmode=disable",
            "postgresql://u:p@127.0.0.1,db.example.com/neondb?sslmode=disable",
        ] {
            let error = mode(uri).expect_err(uri);
            assert!(error.contains("only for loopback"), "{error}");
        }
        for uri in [
            "postgresql://u:p@127.0.0.1:5432/neondb?sslmode=disable",
            "postgresql://u:p@localhost/neondb?sslmode=disable",
            "postgresql://u:p@[::1]:5432/neondb?sslmode=disable",
        ] {
            assert_eq!(mode(uri), Ok(SslMode::Disable), "{uri}");
        }
    }

    #[test]
    fn verify_full_and_verify_ca_are_accepted_as_verified_tls() {
        for value in ["verify-full", "verify-ca"] {
            let uri = format!(
                "postgresql://u:p@ep-x.aws.neon.tech/neondb?sslmode={value}&application_name=x"
            );
            assert_eq!(mode(&uri), Ok(SslMode::Require), "{uri}");
        }
        let error = mode("postgresql://u:p@h/db?sslmode=bogus").expect_err("bogus");
        assert!(error.contains("sslmode=bogus"), "{error}");
    }
}
