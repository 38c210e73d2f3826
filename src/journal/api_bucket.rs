//! The Neon account's API budget in the state store: one token bucket per account that every
//! runner using the store draws from, so the sum of their requests stays under the account's
//! limit. Runners take tokens in small batches (see `neon::rate_limit`), paying one store round
//! trip per batch rather than per request.
//!
//! **Invariant:** the bucket is refilled by the store's clock (runners' clocks may disagree),
//! under the row's lock, so two runners never take the same token.
//! **Invariant:** the account is named by a hash of the API's URL and key; the key itself never
//! reaches the store.

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::file::JournalError;
use super::reconnect::StoreConnection;
use super::store::StateStore;
use crate::neon::{Grant, TokenSource};

/// The bucket of one account, on a connection of its own.
pub struct ApiBucket {
    conn: StoreConnection,
    account: String,
}

impl ApiBucket {
    pub async fn open(store: &StateStore, account: String) -> Result<ApiBucket, JournalError> {
        Ok(ApiBucket {
            conn: store.connection().await?,
            account,
        })
    }
}

/// The bucket's name for the account behind `api_url` and `api_key`: `neon:` and the first 16
/// bytes of SHA-256 over both, in hex (not reversible to the key).
pub fn account_key(api_url: &str, api_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(api_url.trim_end_matches('/').as_bytes());
    hasher.update([0u8]);
    hasher.update(api_key.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("neon:{hex}")
}

impl TokenSource for ApiBucket {
    fn take(
        &self,
        want: u32,
        per_minute: u32,
        capacity: u32,
    ) -> BoxFuture<'_, Result<Grant, String>> {
        Box::pin(async move {
            let mut client = self.conn.lock().await;
            loop {
                match take_tokens(&client, &self.account, want, per_minute, capacity).await {
                    Ok(grant) => return Ok(grant),
                    Err(error) => match self.conn.recover(&mut client, &error).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(crate::secret::redact_uri(&format!(
                                "{}: {error}",
                                self.conn.uri()
                            )));
                        }
                        Err(error) => return Err(error.to_string()),
                    },
                }
            }
        })
    }
}

/// One refill-and-take, in one statement; the account's row is made full on first use.
async fn take_tokens(
    client: &Client,
    account: &str,
    want: u32,
    per_minute: u32,
    capacity: u32,
) -> Result<Grant, tokio_postgres::Error> {
    let per_second = f64::from(per_minute.max(1)) / 60.0;
    let capacity = f64::from(capacity.max(1));
    loop {
        let row = client
            .query_opt(
                "WITH bucket AS (
                   SELECT least($2::float8, tokens + greatest(0, extract(epoch FROM clock_timestamp() - refilled_at)::float8) * $3::float8) AS available
                   FROM schemafleet_api_bucket WHERE account = $1 FOR UPDATE
                 ), grant_ AS (
                   SELECT available, least($4::float8, greatest(0, floor(available))) AS n FROM bucket
                 )
                 UPDATE schemafleet_api_bucket SET tokens = grant_.available - grant_.n, refilled_at = clock_timestamp()
                 FROM grant_ WHERE account = $1
                 RETURNING grant_.n::int4, grant_.available",
                &[&account, &capacity, &per_second, &f64::from(want)],
            )
            .await?;
        let Some(row) = row else {
            client
                .execute(
                    "INSERT INTO schemafleet_api_bucket (account, tokens) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&account, &capacity],
                )
                .await?;
            continue;
        };
        let granted: i32 = row.get(0);
        let available: f64 = row.get(1);
        let retry_in = if granted > 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(((1.0 - available) / per_second).max(0.0))
        };
        return Ok(Grant {
            granted: granted.max(0) as u32,
            retry_in,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_key_names_url_and_key_without_the_key() {
        let key = account_key("https://console.neon.tech/api/v2/", "napi_secret");
        assert_eq!(
            key,
            account_key("https://console.neon.tech/api/v2", "napi_secret")
        );
        assert_ne!(
            key,
            account_key("https://console.neon.tech/api/v2", "napi_other")
        );
        assert!(key.starts_with("neon:") && key.len() == 5 + 32, "{key}");
        assert!(!key.contains("secret"));
    }
}
