//! The baseline a user compares schemafleet with: the loop Neon's own guide recommends and most
//! teams run today. One tenant at a time: look up its connection URI through the API, run
//! refinery's `Runner` with its defaults, disconnect. No plan, journal, validation or lock.

use std::time::Duration;

use super::raw::RawOutcome;
use crate::neon::NeonClient;

/// Neon's default database and role, which the emulator's projects have too.
const DATABASE: &str = "neondb";
const ROLE: &str = "neondb_owner";

/// Migrate every project in order; a failed tenant is counted and the loop goes on.
pub async fn run(
    client: &NeonClient,
    project_ids: &[String],
    migrations: &[refinery::Migration],
) -> RawOutcome {
    let mut outcome = RawOutcome::default();
    for project_id in project_ids {
        let result = async {
            let uri = client
                .connection_uri(project_id, None, DATABASE, ROLE)
                .await
                .map_err(|error| format!("tenant {project_id}: connection URI: {error}"))?;
            crate::pg::runner::run_refinery_defaults(&uri, migrations, Duration::from_secs(30))
                .await
                .map_err(|failure| format!("tenant {project_id}: {failure}"))
        }
        .await;
        match result {
            Ok(_) => outcome.succeeded += 1,
            Err(error) => {
                outcome.failed += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| crate::secret::redact_uri(&error));
            }
        }
    }
    outcome
}
