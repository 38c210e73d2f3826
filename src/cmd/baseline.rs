//! `schemafleet baseline PLAN`: adopt tenants migrated without our history table.
//!
//! Per tenant: read the history; when it has rows, nothing to do (refinery_cli-migrated
//! tenants are already ours, and a fleet of them needs no references built). Otherwise
//! fingerprint the schema and match it with the references, made on first need, ([`crate::fingerprint::baseline`]); with `--yes`, record V1..Vn
//! ([`crate::pg::baseline::record_baseline`]). Other tools' history tables are named in the
//! report, but the fingerprint, not their bookkeeping, decides the version.
//!
//! **Invariant:** a tenant whose schema matches no version is never written to.
//! **Invariant:** with `--yes`, the plan's journal is held locked for the whole run (so no
//! `apply` of the plan runs meanwhile) and every recorded tenant is journaled
//! (`baseline_recorded`) after its commit; `status` shows them.
//! **Invariant:** a `baseline_started` record precedes each write, so a crash between the
//! commit and `baseline_recorded` is visible (`status` lists the tenant as unconfirmed); the
//! next baseline finds exactly those rows in the tenant's history and, with `--yes`,
//! journals them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use crate::cli::{BaselineArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::fingerprint::baseline::{VersionMatch, match_version};
use crate::fingerprint::{Difference, SchemaFilter};
use crate::journal::{Event, Journal, JournalError, JournalState, default_journal_path};
use crate::migrations::MigrationSet;
use crate::neon::NeonClient;
use crate::pg::baseline::{ToolHistory, detect_tools, record_baseline};
use crate::pg::reference::ReferenceFingerprints;
use crate::report::render::wrap_into;
use crate::secret::redact_uri;

use super::reference::ReferenceConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineState {
    /// Our history table has rows already: nothing to adopt.
    HasHistory,
    /// Matches a version; `--yes` would record it.
    Matched,
    /// Matched and recorded.
    Recorded,
    /// Matches no version: listed with the closest, untouched.
    Unmatched,
    /// Could not be probed or recorded.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantBaseline {
    pub tenant: String,
    /// The project's name, when the plan gives one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    pub state: BaselineState,
    /// The matched version (or the closest, when unmatched).
    pub version: Option<i32>,
    pub tools: Vec<ToolHistory>,
    pub differences: Vec<Difference>,
    pub reason: Option<String>,
    /// The tenant's rows are an earlier `baseline --yes`'s that stopped before journaling
    /// them (`baseline_started` without `baseline_recorded`); with `--yes` they are journaled
    /// now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unjournaled: bool,
}

pub async fn run(args: BaselineArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let plan_dir = args.plan.parent().unwrap_or(Path::new("")).to_path_buf();
    let migrations_dir = args
        .migrations
        .clone()
        .unwrap_or_else(|| plan_dir.join(&plan.migrations.dir));
    let set = crate::migrations::load(&migrations_dir)
        .with_context(|| format!("loading migrations from {}", migrations_dir.display()))?;
    let config = ReferenceConfig::from_args(&args.reference, &plan.policy.schemas)?;
    let filter = config.filter.clone();
    // Built (or read from the cache) when the first tenant without history needs them: a
    // fleet refinery already migrated needs no reference server at all.
    let references = LazyReferences {
        cell: tokio::sync::OnceCell::new(),
        set: &set,
        config: &config,
    };
    let client = super::api::client(&args.api)?;
    super::api::preflight(&client, &args.api.api_url).await?;
    let (journal, unconfirmed) = if args.yes {
        let (journal, state) = open_journal(&args, &plan.plan_id)?;
        (Some(journal), state.baseline_unconfirmed)
    } else {
        (None, read_unconfirmed(&args, &plan.plan_id)?)
    };
    let tenants: Vec<String> = plan
        .waves
        .iter()
        .flat_map(|wave| wave.tenant_ids().map(str::to_string))
        .collect();
    let applied_on = crate::clock::now_rfc3339();
    let mut results: Vec<TenantBaseline> = futures::stream::iter(tenants.iter())
        .map(|tenant| {
            let client = client.clone();
            let context = TenantContext {
                database: &plan.policy.database,
                role: &plan.policy.role,
                set: &set,
                references: &references,
                filter: &filter,
                write: args.yes,
                applied_on: &applied_on,
                journal: journal.as_ref(),
                unconfirmed: unconfirmed.get(tenant).map(Vec::as_slice),
            };
            async move { baseline_tenant(&client, tenant, context).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    if let Some(journal) = journal {
        journal.close().await;
    }
    results.sort_by(|left, right| left.tenant.cmp(&right.tenant));
    for result in &mut results {
        if let Some((tenant, _)) = plan.tenant(&result.tenant) {
            result.tenant_name = tenant.name.clone();
        }
    }
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "written": args.yes,
                "tenants": results,
            }))?
        ),
        OutputFormat::Text => print!("{}", render_text(&results, args.yes)),
    }
    if let Some(Err(message)) = references.cell.get() {
        // No reference to match with is bad input (exit 2), as when nothing was probed.
        anyhow::bail!("{message}");
    }
    let failed = results.iter().any(|result| {
        matches!(
            result.state,
            BaselineState::Unmatched | BaselineState::Failed
        )
    });
    Ok(if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

fn journal_path(args: &BaselineArgs) -> std::path::PathBuf {
    args.journal
        .clone()
        .unwrap_or_else(|| default_journal_path(&args.plan))
}

/// The plan's journal, locked: baseline does not run beside an `apply` of the same plan.
fn open_journal(args: &BaselineArgs, plan_id: &str) -> anyhow::Result<(Journal, JournalState)> {
    match Journal::open(&journal_path(args), plan_id) {
        Ok((journal, read)) => Ok((journal, read.state)),
        Err(error @ JournalError::Locked { .. }) => Err(anyhow::Error::new(error).context(
            "an `apply`, `rollback` or `gc` of this plan is running: run baseline after it ends, or --dry-run to look",
        )),
        Err(error) => Err(error.into()),
    }
}

/// A dry run's view of the journal (read, not locked): the writes a crash left unjournaled.
fn read_unconfirmed(
    args: &BaselineArgs,
    plan_id: &str,
) -> anyhow::Result<BTreeMap<String, Vec<i32>>> {
    let read = Journal::read_for_plan(&journal_path(args), plan_id)?;
    Ok(read.state.baseline_unconfirmed)
}

/// The references, made once on first use; the error is kept as text for every tenant.
struct LazyReferences<'a> {
    cell: tokio::sync::OnceCell<Result<ReferenceFingerprints, String>>,
    set: &'a MigrationSet,
    config: &'a ReferenceConfig,
}

impl LazyReferences<'_> {
    async fn get(&self) -> Result<&ReferenceFingerprints, String> {
        self.cell
            .get_or_init(|| async {
                super::reference::references(self.set, self.config)
                    .await
                    .map(|(references, _cached)| references)
                    .map_err(|error| redact_uri(&format!("{error:#}")))
            })
            .await
            .as_ref()
            .map_err(|_| "no reference fingerprints to match with (the error follows)".to_string())
    }
}

#[derive(Clone, Copy)]
struct TenantContext<'a> {
    database: &'a str,
    role: &'a str,
    set: &'a MigrationSet,
    references: &'a LazyReferences<'a>,
    filter: &'a SchemaFilter,
    write: bool,
    applied_on: &'a str,
    /// Where recordings are journaled (with `--yes`).
    journal: Option<&'a Journal>,
    /// The versions of this tenant's `baseline_started` record that has no
    /// `baseline_recorded`.
    unconfirmed: Option<&'a [i32]>,
}

async fn baseline_tenant(
    client: &NeonClient,
    tenant: &str,
    context: TenantContext<'_>,
) -> TenantBaseline {
    let mut result = TenantBaseline {
        tenant: tenant.to_string(),
        tenant_name: String::new(),
        state: BaselineState::Failed,
        version: None,
        tools: Vec::new(),
        differences: Vec::new(),
        reason: None,
        unjournaled: false,
    };
    if let Err(reason) = probe_and_record(client, tenant, context, &mut result).await {
        result.state = BaselineState::Failed;
        result.reason = Some(redact_uri(&reason));
    }
    result
}

async fn probe_and_record(
    client: &NeonClient,
    tenant: &str,
    context: TenantContext<'_>,
    result: &mut TenantBaseline,
) -> Result<(), String> {
    let uri = client
        .connection_uri(tenant, None, context.database, context.role)
        .await
        .map_err(|error| format!("connection URI: {error}"))?;
    let mut connection = crate::pg::connect(&uri, CONNECT_TIMEOUT)
        .await
        .map_err(|failure| failure.to_string())?;
    result.tools = detect_tools(&connection)
        .await
        .map_err(|failure| failure.to_string())?;
    let history = crate::pg::read_history(&connection)
        .await
        .map_err(|failure| failure.to_string())?;
    if !history.is_empty() {
        result.state = BaselineState::HasHistory;
        result.version = history.iter().map(|row| row.version).max();
        if let Some(versions) = context.unconfirmed
            && let Some(written) = rows_of_baseline(context.set, versions, &history)
        {
            result.unjournaled = true;
            if context.journal.is_some() {
                journal_recorded(context.journal, tenant, &written, &result.tools).await?;
                result.state = BaselineState::Recorded;
            }
        }
        return Ok(());
    }
    let fingerprint = crate::pg::read_fingerprint(&connection, context.filter)
        .await
        .map_err(|failure| failure.to_string())?;
    let references = context.references.get().await?;
    match match_version(&fingerprint, &references.by_version) {
        VersionMatch::Closest {
            version,
            differences,
        } => {
            result.state = BaselineState::Unmatched;
            result.version = Some(version);
            result.differences = differences;
        }
        VersionMatch::Exact { version } => {
            result.version = Some(version);
            result.state = BaselineState::Matched;
            let to_record: Vec<crate::migrations::Migration> = context
                .set
                .migrations
                .iter()
                .filter(|migration| migration.version <= version)
                .cloned()
                .collect();
            if context.write && !to_record.is_empty() {
                journal_started(context.journal, tenant, &to_record).await?;
                record_baseline(&mut connection, &to_record, context.applied_on)
                    .await
                    .map_err(|failure| failure.to_string())?;
                result.state = BaselineState::Recorded;
                journal_recorded(context.journal, tenant, &to_record, &result.tools).await?;
            }
        }
    }
    Ok(())
}

/// The migrations an earlier baseline recorded, when the tenant's history is exactly their
/// rows (versions, names and checksums); anything else is not baseline's doing.
fn rows_of_baseline(
    set: &MigrationSet,
    versions: &[i32],
    history: &[crate::pg::AppliedMigration],
) -> Option<Vec<crate::migrations::Migration>> {
    if history.len() != versions.len() {
        return None;
    }
    let mut written = Vec::with_capacity(versions.len());
    for (version, row) in versions.iter().zip(history) {
        let migration = set
            .migrations
            .iter()
            .find(|migration| migration.version == *version)?;
        let same = row.version == *version
            && row.name == migration.name
            && row.checksum == migration.checksum.to_string();
        if !same {
            return None;
        }
        written.push(migration.clone());
    }
    Some(written)
}

/// Journal the intent before writing: without it a crash after the commit would leave no
/// trace of baseline in the journal.
async fn journal_started(
    journal: Option<&Journal>,
    tenant: &str,
    to_record: &[crate::migrations::Migration],
) -> Result<(), String> {
    let Some(journal) = journal else {
        return Ok(());
    };
    let event = Event::BaselineStarted {
        tenant: tenant.to_string(),
        versions: to_record
            .iter()
            .map(|migration| migration.version)
            .collect(),
    };
    journal.append(event).await.map(|_| ()).map_err(|error| {
        format!("the journal could not record the start, nothing written: {error}")
    })
}

/// Journal a recording; an error says the rows are written all the same.
async fn journal_recorded(
    journal: Option<&Journal>,
    tenant: &str,
    recorded: &[crate::migrations::Migration],
    tools: &[ToolHistory],
) -> Result<(), String> {
    let Some(journal) = journal else {
        return Ok(());
    };
    let event = Event::BaselineRecorded {
        tenant: tenant.to_string(),
        versions: recorded.iter().map(|migration| migration.version).collect(),
        tools: tools
            .iter()
            .map(|tool| format!("{}: {} migrations", tool.tool, tool.migrations))
            .collect(),
    };
    journal.append(event).await.map(|_| ()).map_err(|error| {
        format!("the history rows are written, but the journal could not record it: {error}")
    })
}

fn render_text(results: &[TenantBaseline], written: bool) -> String {
    let mut out = String::new();
    for result in results {
        let tools = if result.tools.is_empty() {
            String::new()
        } else {
            format!(
                " [migrated by {}]",
                result
                    .tools
                    .iter()
                    .map(|tool| format!("{} ({} migrations)", tool.tool, tool.migrations))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let version = result
            .version
            .map_or_else(|| "-".to_string(), |version| format!("V{version}"));
        let line = match result.state {
            BaselineState::HasHistory if result.unjournaled => format!(
                "has history at {version}, written by an earlier `baseline --yes` that stopped \
                 before journaling it: --yes journals it"
            ),
            BaselineState::Recorded if result.unjournaled => {
                format!("recorded V1..{version} by an earlier `baseline --yes`, journaled now")
            }
            BaselineState::HasHistory => format!("has history at {version}, nothing to do"),
            BaselineState::Matched if written => format!("at {version}, nothing to record"),
            BaselineState::Matched => format!("matches {version}: --yes records V1..{version}"),
            BaselineState::Recorded => format!("recorded V1..{version}"),
            BaselineState::Unmatched => {
                format!("matches no version (closest {version}), untouched")
            }
            BaselineState::Failed => {
                format!("failed: {}", result.reason.as_deref().unwrap_or("unknown"))
            }
        };
        let label = crate::plan::model::PlannedTenant {
            id: result.tenant.clone(),
            name: result.tenant_name.clone(),
            region: String::new(),
        }
        .label();
        wrap_into(&mut out, &format!("{label}: {line}{tools}"), "", "  ");
        for difference in &result.differences {
            wrap_into(
                &mut out,
                &format!("- {}", difference.describe()),
                "  ",
                "    ",
            );
        }
    }
    crate::terminal::escape_controls(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::AppliedMigration;

    fn set() -> MigrationSet {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("V1__a.sql"), "CREATE TABLE a (id int);\n").expect("V1");
        std::fs::write(dir.path().join("V2__b.sql"), "CREATE TABLE b (id int);\n").expect("V2");
        crate::migrations::load(dir.path()).expect("the migrations load")
    }

    fn row(migration: &crate::migrations::Migration) -> AppliedMigration {
        AppliedMigration {
            version: migration.version,
            name: migration.name.clone(),
            checksum: migration.checksum.to_string(),
            applied_on: "2026-12-02T10:00:00Z".into(),
        }
    }

    #[test]
    fn only_exactly_the_intended_rows_are_baselines() {
        let set = set();
        let rows: Vec<AppliedMigration> = set.migrations.iter().map(row).collect();
        let written = rows_of_baseline(&set, &[1, 2], &rows).expect("baseline's own rows");
        assert_eq!(
            written
                .iter()
                .map(|migration| migration.version)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        // Fewer or more rows than intended, or a checksum of another file: another writer's.
        assert!(rows_of_baseline(&set, &[1], &rows).is_none());
        assert!(rows_of_baseline(&set, &[1, 2], &rows[..1]).is_none());
        let mut edited = rows.clone();
        edited[1].checksum = "1".into();
        assert!(rows_of_baseline(&set, &[1, 2], &edited).is_none());
    }
}
