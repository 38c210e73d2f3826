//! Direct connections to a tenant's compute.
//!
//! **Invariant:** migrations never go through a pooler: Neon's PgBouncer runs in transaction
//! mode, which breaks the session advisory lock and `SET`. A `-pooler` host is refused.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use super::error::DbFailure;
use crate::secret::SecretUri;

/// Connect to `uri`, spawning the connection task. TLS is used unless `sslmode=disable`
/// (the local emulator); Neon computes always require it.
pub async fn connect(uri: &SecretUri, connect_timeout: Duration) -> Result<Client, DbFailure> {
    let mut config = Config::from_str(uri.expose())
        .map_err(|error| DbFailure::new(None, format!("invalid connection URI {uri}: {error}")))?;
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
