//! Building the Neon client from command-line arguments, with a preflight that fails fast.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::ApiArgs;
use crate::neon::{ClientConfig, NeonClient, NeonError};
use crate::secret::SecretString;

/// A client for `args`; an error when no key is given.
pub fn client(args: &ApiArgs) -> anyhow::Result<NeonClient> {
    let Some(key) = args.api_key.as_ref().filter(|key| !key.is_empty()) else {
        bail!(
            "NEON_API_KEY is not set: export an API key (an organization key is best for fleets), or run against the local emulator (`schemafleet emulator` prints one)"
        );
    };
    let mut config = ClientConfig::new(
        args.api_url.clone(),
        SecretString::new(key.clone()),
        args.api_rate_limit_per_min,
    );
    config.poll_interval = Duration::from_millis(args.operation_poll_ms.max(10));
    NeonClient::new(config)
        .with_context(|| format!("cannot build a Neon API client for {}", args.api_url))
}

/// One read before anything changes, so a wrong URL or a rejected key stops the command at once
/// with nothing written, instead of failing every tenant.
pub async fn preflight(client: &NeonClient, api_url: &str) -> anyhow::Result<()> {
    client
        .check_access()
        .await
        .map_err(|error| unusable_api(anyhow::Error::new(error), api_url))
}

/// `error` from the Neon API at `api_url`, with what to check first.
pub fn unusable_api(error: anyhow::Error, api_url: &str) -> anyhow::Error {
    let status = error
        .chain()
        .find_map(|cause| {
            // A boxed source (`FleetError::Discovery`) is seen as the box itself.
            cause
                .downcast_ref::<NeonError>()
                .or_else(|| cause.downcast_ref::<Box<NeonError>>().map(|boxed| &**boxed))
        })
        .and_then(NeonError::status);
    let hint = if status == Some(404) {
        "NEON_API_URL does not look like the Neon API v2 base URL (e.g. https://console.neon.tech/api/v2)"
    } else {
        "check NEON_API_URL and NEON_API_KEY"
    };
    error.context(format!("the Neon API at {api_url} is not usable; {hint}"))
}
