//! The emulator's own state in the backing cluster (database `neon_emulator`), so a restarted
//! emulator over the same data directory serves the same fleet.
//!
//! One row per project holds the project's whole document (branches, endpoints, operations,
//! snapshots) as JSON: a project is the unit of every mutation, so writes never span rows.
//!
//! **Invariant:** a row is written only while its project's mutation lock is held, so two writes
//! of the same project never race.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::physical::{Physical, PhysicalError};
use super::state::ProjectDocument;

pub const STATE_DATABASE: &str = "neon_emulator";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Physical(#[from] PhysicalError),
    #[error("the emulator state table in database {STATE_DATABASE} failed: {0}")]
    Sql(String),
    #[error("project {project_id} in the emulator state does not parse: {message}")]
    Corrupt { project_id: String, message: String },
}

pub struct Store {
    physical: Physical,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Store {
    /// Create the state database and tables when missing. Tenants' roles may never connect to
    /// it (it holds every tenant's password), also when an older emulator created it.
    pub async fn open(physical: Physical) -> Result<Store, StoreError> {
        if !physical.database_exists(STATE_DATABASE).await? {
            physical
                .execute("postgres", &format!("CREATE DATABASE {STATE_DATABASE}"))
                .await?;
        }
        physical
            .execute(
                "postgres",
                &format!("REVOKE CONNECT ON DATABASE {STATE_DATABASE} FROM PUBLIC"),
            )
            .await?;
        physical
            .execute(
                STATE_DATABASE,
                "CREATE TABLE IF NOT EXISTS emulator_projects (
                     id text PRIMARY KEY,
                     seq bigint NOT NULL,
                     document text NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS emulator_settings (
                     name text PRIMARY KEY,
                     value text NOT NULL
                 )",
            )
            .await?;
        Ok(Store {
            physical,
            client: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.physical.connect(STATE_DATABASE).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    pub async fn load(&self) -> Result<Vec<ProjectDocument>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, document FROM emulator_projects ORDER BY seq",
                &[],
            )
            .await
            .map_err(|error| StoreError::Sql(error.to_string()))?;
        rows.iter()
            .map(|row| {
                let project_id: String = row.get(0);
                let document: String = row.get(1);
                serde_json::from_str(&document).map_err(|error| StoreError::Corrupt {
                    project_id,
                    message: error.to_string(),
                })
            })
            .collect()
    }

    pub async fn save(&self, document: &ProjectDocument) -> Result<(), StoreError> {
        let text = serde_json::to_string(document).map_err(|error| StoreError::Corrupt {
            project_id: document.project.id.clone(),
            message: error.to_string(),
        })?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO emulator_projects (id, seq, document) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET document = excluded.document",
                &[&document.project.id, &document.project.seq, &text],
            )
            .await
            .map_err(|error| StoreError::Sql(error.to_string()))?;
        Ok(())
    }

    /// The API key clients of this state present, kept so a restart serves the same key.
    pub async fn api_key(&self) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value FROM emulator_settings WHERE name = 'api_key'",
                &[],
            )
            .await
            .map_err(|error| StoreError::Sql(error.to_string()))?;
        Ok(row.map(|row| row.get(0)))
    }

    pub async fn set_api_key(&self, api_key: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO emulator_settings (name, value) VALUES ('api_key', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&api_key],
            )
            .await
            .map_err(|error| StoreError::Sql(error.to_string()))?;
        Ok(())
    }

    pub async fn delete(&self, project_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM emulator_projects WHERE id = $1",
                &[&project_id],
            )
            .await
            .map_err(|error| StoreError::Sql(error.to_string()))?;
        Ok(())
    }
}
