//! Command-line arguments (clap derive types only).
//!
//! Doc comments here are the `--help` text. Each subcommand's arguments are turned into a
//! config struct by its module in `cmd/`, so nothing below `cmd/` ever sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Roll versioned SQL schema migrations across a fleet of Neon tenant databases, wave by wave.
///
/// Exit codes: 0 all done; 1 a tenant failed, a wave halted or drift was found;
/// 2 bad input or an error that stopped the run; 3 `apply` waits for `schemafleet approve`
/// before a wave (and `status` of such a rollout); 75 `apply --max-duration` ran out with tenants left (re-run to continue);
/// 130 interrupted (Ctrl-C).
#[derive(Debug, Parser)]
#[command(name = "schemafleet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (tracing's EnvFilter syntax), also read from SCHEMAFLEET_LOG.
    #[arg(long, global = true, env = "SCHEMAFLEET_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a deterministic plan (waves of tenants, migrations, policy) from a rollout policy.
    Plan(PlanArgs),
    /// Predict what each migration will lock (Squawk's rules and schemafleet's), before a rollout.
    ///
    /// Findings are printed grouped by migration, with the statement's line and column; findings
    /// silenced by `-- squawk-ignore rule -- reason` are listed as acknowledged. Levels come from
    /// the policy's `lint:` section (or the defaults).
    ///
    /// Exit codes: 0 no denied finding; 1 a finding the policy denies; 2 bad input.
    Lint(LintArgs),
    /// Execute a plan wave by wave: validate on a branch, apply to main, journal, resume.
    ///
    /// Between waves it runs the waves' checks and stops before a wave that needs approval.
    ///
    /// Exit codes: 0 every tenant migrated or up to date; 1 a tenant failed, a wave halted or a
    /// check failed; 2 stopped by an error; 3 waiting for `schemafleet approve`; 130 interrupted.
    Apply(ApplyArgs),
    /// Approve a wave that has `approval: required`, so the next `apply` starts it.
    ///
    /// The approval is recorded in the plan's journal (or its state store, `--state`) with who
    /// gave it and an optional note; runners sharing the store all stopped before the wave
    /// (exit 3), and the next `apply` of each continues.
    ///
    /// Exit codes: 0 approved (or already approved); 2 no such wave, the wave needs no approval
    /// or already started, the plan is finished, or the journal is locked by a running `apply`.
    Approve(ApproveArgs),
    /// Restore tenants' main branches to their restore points.
    Rollback(RollbackArgs),
    /// Show where a rollout stands, from its journal.
    ///
    /// Exit codes: 0 nothing failed; 1 a tenant failed or diverged, a wave halted (budget or
    /// check), or `--live` found a problem; 2 bad input; 3 a wave waits for `schemafleet
    /// approve` (and nothing failed), as `apply` exits.
    Status(StatusArgs),
    /// Pause a rollout: every runner of the plan stops starting tenants within 2 s; tenants in
    /// flight finish, and the runners wait for `resume`.
    Pause(ControlArgs),
    /// Resume a paused (or aborted) rollout: its runners start tenants again.
    Resume(ControlArgs),
    /// Abort a rollout: like a spent failure budget, no runner starts another tenant and
    /// `apply` exits 1; journaled (`aborted`) with who, why and when, and shown by `status`.
    /// `resume` lifts it.
    Abort(AbortArgs),
    /// Manage a rollout's state store (`--state`).
    #[command(subcommand)]
    State(StateCommand),
    /// Compare every tenant's migration history with the migrations on disk.
    ///
    /// Lists which tenants are at which version, which are behind (pending versions), which
    /// diverge (a migration file edited or deleted after it ran) and which could not be probed.
    ///
    /// Exit codes: 0 no tenant diverges, is ahead or is unreachable; 1 some tenant diverges, is
    /// ahead (a newer release reached it) or is unreachable (drift cannot be ruled out); 2 bad
    /// input (plan, policy, migrations, API key).
    Drift(DriftArgs),
    /// Adopt tenants another tool (or hand-run SQL) migrated: record our history for the
    /// version their schema matches.
    ///
    /// For each tenant of the plan without refinery_schema_history rows, its schema
    /// fingerprint is matched with the references of V1..Vn; with --yes the rows of V1..Vn are
    /// written (refinery's format) in one transaction under the advisory lock. Tenants that
    /// match no version are listed with the closest one and the differences, never touched.
    ///
    /// Exit codes: 0 every tenant has or got a history; 1 a tenant matches no version, could not
    /// be probed or recorded; 2 bad input.
    Baseline(BaselineArgs),
    /// Delete branches schemafleet created that are expired or whose rollout has finished.
    ///
    /// Only branches named `schemafleet-validate-*`, `schemafleet-backup-*` or `pre-rollback-*`
    /// are candidates; default and protected branches are never deleted. Preserved
    /// (`pre-rollback-*`) branches are listed with their age and go only when expired or with
    /// `--preserved --older-than`. With --plan, the plan's journal tells
    /// which tenants are finished: their validation branches go, and backup branches go unless
    /// they are the tenant's current restore point. Without --plan, only expired branches go
    /// (or every schemafleet branch with --all).
    ///
    /// Exit codes: 0 done; 1 a branch could not be deleted or a project not listed; 2 bad
    /// input, or the journal is locked by a running `apply`.
    Gc(GcArgs),
    /// Run the Neon-API-compatible local emulator over a real PostgreSQL server.
    Emulator(EmulatorArgs),
    /// Boot a local fleet, seed it, plan and apply the example rollout.
    Demo(DemoArgs),
    /// Measure fleet throughput against a raw floor, API calls and memory.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document on stdout; everything else goes to stderr.
    Json,
}

/// How to reach the Neon API.
///
/// Commands that take these spell out their usage line (`override_usage`): clap would list an
/// option it got from the environment (`NEON_API_KEY`, …) in it as if it were required.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Neon API base URL.
    #[arg(
        long,
        env = "NEON_API_URL",
        default_value = "https://console.neon.tech/api/v2"
    )]
    pub api_url: String,

    /// Neon API key (organization keys are recommended for fleets).
    #[arg(long, env = "NEON_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Client-side rate limit for Neon API requests, per minute (Neon allows 700 per account).
    #[arg(long, env = "SCHEMAFLEET_API_RATE_LIMIT", default_value_t = 600)]
    pub api_rate_limit_per_min: u32,

    /// How often to poll Neon operations, in milliseconds (Neon suggests about 1 s).
    #[arg(long, env = "SCHEMAFLEET_OPERATION_POLL_MS", default_value_t = 1000)]
    pub operation_poll_ms: u64,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("input").required(true).multiple(true).args(["policy", "check"]))]
#[command(override_usage = "schemafleet plan [OPTIONS] <--policy <POLICY>|--check <PLAN>>")]
pub struct PlanArgs {
    /// The rollout policy (YAML); with --check, where the plan's policy is when it is not
    /// beside the plan.
    #[arg(long)]
    pub policy: Option<PathBuf>,

    /// Directory of versioned migrations (V<n>__<name>.sql); default `migrations`, and with
    /// --check the directory the plan recorded (relative to the plan).
    #[arg(long)]
    pub migrations: Option<PathBuf>,

    /// Tenants file (CSV or YAML) overriding the policy's fleet.
    #[arg(long)]
    pub tenants: Option<PathBuf>,

    /// Where to write the plan (default: beside the policy, <policy-stem>.plan.yaml).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Check that an existing plan still matches the migrations on disk and its policy (found
    /// beside the plan or at the path it records, or given with --policy); writes nothing.
    /// Exit 1 when something changed, saying what.
    #[arg(long, value_name = "PLAN", conflicts_with = "out")]
    pub check: Option<PathBuf>,

    /// With --check: also list the fleet (the Neon API, or --tenants / the policy's file) and
    /// report tenants that are new, gone or would move to another wave.
    #[arg(long, requires = "check")]
    pub fleet: bool,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Directory of versioned migrations (V<n>__<name>.sql).
    #[arg(long, default_value = "migrations")]
    pub migrations: PathBuf,

    /// The rollout policy whose `lint:` section sets the PostgreSQL version and rule levels.
    #[arg(long)]
    pub policy: Option<PathBuf>,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet apply [OPTIONS] <PLAN>")]
pub struct ApplyArgs {
    /// The plan file written by `schemafleet plan`.
    pub plan: PathBuf,

    /// Migrations directory (default: the one recorded in the plan, relative to the plan).
    #[arg(long)]
    pub migrations: Option<PathBuf>,

    /// Journal file (default: beside the plan, <plan-stem>.journal.jsonl).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Stop cleanly after this wave; a later `apply` continues with the next one.
    #[arg(long, value_name = "WAVE")]
    pub until_wave: Option<String>,

    /// Try tenants that failed in an earlier run again (and un-halt their waves).
    #[arg(long)]
    pub retry_failed: bool,

    /// Run the checks of a wave they halted again; when they pass, the rollout continues.
    #[arg(long)]
    pub retry_checks: bool,

    /// Migrate again the tenants this plan rolled back: all of them, or only those given as
    /// `--include-rolled-back=ID,ID`. Without it they stay back and the report names them.
    #[arg(long, value_name = "ID", num_args = 0..=1, require_equals = true, value_delimiter = ',')]
    pub include_rolled_back: Option<Vec<String>>,

    /// Do not wait for a wave's bake time before starting the next wave.
    #[arg(long)]
    pub skip_bake: bool,

    /// Upper bound on open database connections across all tenants in flight.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,

    /// Skip, without connecting (which wakes a suspended compute), every tenant whose recorded
    /// version already covers the plan: the fleet source's `schema_version` (a catalog query's
    /// column, or a tenants file's) and/or `--recorded-from`. Journaled `skipped_recorded`, never
    /// `up_to_date`: check the record with `schemafleet drift` or `status --live`.
    #[arg(long)]
    pub skip_recorded: bool,

    /// With `--skip-recorded`: an earlier release's plan whose journal (beside it) records the
    /// tenants it migrated or found up to date. Its migrations must be this plan's files.
    #[arg(long, value_name = "PLAN", requires = "skip_recorded")]
    pub recorded_from: Vec<PathBuf>,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    /// Never draw progress bars, even on a terminal.
    #[arg(long, env = "SCHEMAFLEET_NO_PROGRESS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_progress: bool,

    /// With the policy's `verify_schema: true`: PostgreSQL server (postgresql:// URI; the role
    /// may CREATE DATABASE) where the reference schemas are built when the cache has none.
    #[arg(long, env = "SCHEMAFLEET_REFERENCE_URL", hide_env_values = true)]
    pub reference_url: Option<String>,

    /// With `verify_schema: true`: directory of cached reference schemas (default:
    /// $XDG_CACHE_HOME/schemafleet).
    #[arg(long, env = "SCHEMAFLEET_REFERENCE_CACHE")]
    pub reference_cache: Option<PathBuf>,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub runners: RunnerArgs,
}

/// `apply`'s options for a rollout whose state is in a store, and its time limit.
#[derive(Debug, Clone, Args)]
pub struct RunnerArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// This runner's name among the plan's runners (default: host:pid); unique per live runner.
    #[arg(long, value_name = "ID", requires = "state")]
    pub runner_id: Option<String>,

    /// Only claim tenants of these regions (repeatable, or comma-separated), so a runner can sit
    /// next to its tenants' computes. Needs --state.
    #[arg(
        long = "region",
        value_name = "REGION",
        value_delimiter = ',',
        requires = "state"
    )]
    pub regions: Vec<String>,

    /// How long a claimed tenant stays this runner's without a renewal (renewed every third of
    /// it); after a runner dies, others resume its tenants once this has passed.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        requires = "state"
    )]
    pub lease: String,

    /// Stop starting tenants after this long (e.g. 5h30m) and exit 75 when tenants remain, so a
    /// CI job that may not outlive its time limit can chain another `apply`.
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
}

impl Default for RunnerArgs {
    /// A single runner with the file journal and no time limit (library callers: demo, bench).
    fn default() -> Self {
        RunnerArgs {
            state: StateArgs::default(),
            runner_id: None,
            regions: Vec::new(),
            lease: "30s".into(),
            max_duration: None,
        }
    }
}

/// Where the rollout's state lives when it is not the journal file.
#[derive(Debug, Clone, Default, Args)]
pub struct StateArgs {
    /// Keep the rollout's state (the journal, claims, pause/abort) in this PostgreSQL database
    /// instead of the journal file, so several runners can share it and it outlives a machine.
    /// A secret: never printed.
    #[arg(
        long = "state",
        value_name = "POSTGRES_URL",
        env = "SCHEMAFLEET_STATE_URL",
        hide_env_values = true,
        conflicts_with = "journal"
    )]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Move a rollout begun with a file journal into the state store, so runners sharing the
    /// store continue it; refused when the store holds a different history of the plan.
    Import(StateImportArgs),
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet state import [OPTIONS] --state <POSTGRES_URL> <PLAN>")]
pub struct StateImportArgs {
    /// The plan file of the rollout.
    pub plan: PathBuf,

    /// Journal file to import (default: beside the plan).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// The state store to import into (a secret, never printed).
    #[arg(
        long = "state",
        value_name = "POSTGRES_URL",
        env = "SCHEMAFLEET_STATE_URL",
        hide_env_values = true
    )]
    pub state: String,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet pause|resume [OPTIONS] <PLAN>")]
pub struct ControlArgs {
    /// The plan file of the rollout.
    pub plan: PathBuf,

    /// Journal file (default: beside the plan); its switches live beside it.
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Who asks (default: $USER@host); recorded.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,

    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet abort [OPTIONS] --reason <TEXT> <PLAN>")]
pub struct AbortArgs {
    #[command(flatten)]
    pub control: ControlArgs,

    /// Why the rollout is aborted; recorded and shown by `status` and `apply`.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan file whose wave to approve.
    pub plan: PathBuf,

    /// The wave to approve (its name in the plan).
    pub wave: String,

    /// Who approves (default: $USER); recorded in the journal.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,

    /// Why, or what was checked; recorded in the journal.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,

    /// Journal file (default: beside the plan, <plan-stem>.journal.jsonl).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true).args(["tenants", "wave", "failed"]))]
#[command(
    override_usage = "schemafleet rollback [OPTIONS] <--tenant <ID_OR_NAME>|--wave <WAVE>|--failed> <PLAN>"
)]
pub struct RollbackArgs {
    /// The plan file whose journal holds the restore points.
    pub plan: PathBuf,

    /// A tenant to roll back, by Neon project id or project name (as the plan, `status` and the
    /// apply report list them); repeatable. A name several projects share is refused.
    #[arg(long = "tenant", value_name = "ID_OR_NAME")]
    pub tenants: Vec<String>,

    /// Roll back every applied tenant of this wave.
    #[arg(long, conflicts_with = "tenants")]
    pub wave: Option<String>,

    /// Roll back every tenant whose apply to main failed after main changed.
    #[arg(long, conflicts_with_all = ["tenants", "wave"])]
    pub failed: bool,

    /// Journal file (default: beside the plan).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    #[command(flatten)]
    pub state: StateArgs,

    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,

    /// List the tenants and the restore calls it would make; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Restore even a tenant whose main has migrations of a later release since this plan's
    /// restore point; they are undone too (without this, such a tenant is refused).
    #[arg(long)]
    pub undo_later_releases: bool,

    /// Give each branch that keeps main's pre-restore state (`pre-rollback-*`) an expiry this far
    /// ahead (e.g. 7d; at most 30d). Without it they stay until `gc --preserved --older-than`.
    #[arg(long, value_name = "DURATION")]
    pub preserve_for: Option<String>,

    /// Tenants restored at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet status [OPTIONS] <PLAN>")]
pub struct StatusArgs {
    /// The plan file whose journal to read.
    pub plan: PathBuf,

    /// Journal file (default: beside the plan).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Also probe every tenant's history table (needs the API and database access).
    #[arg(long)]
    pub live: bool,

    #[command(flatten)]
    pub state: StateArgs,

    /// Tenants probed at once with --live.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("fleet").required(true).args(["plan", "plan_flag", "policy"]))]
#[command(override_usage = "schemafleet drift [OPTIONS] <PLAN|--plan <PLAN>|--policy <POLICY>>")]
pub struct DriftArgs {
    /// Check the tenants of this plan (positional, as for `status` and `apply`).
    pub plan: Option<PathBuf>,

    /// The same as the positional PLAN; kept because scripts written before it use it.
    #[arg(long = "plan", value_name = "PLAN")]
    pub plan_flag: Option<PathBuf>,

    /// Discover the fleet from this policy.
    #[arg(long)]
    pub policy: Option<PathBuf>,

    /// Tenants file overriding the policy's fleet.
    #[arg(long, requires = "policy")]
    pub tenants: Option<PathBuf>,

    /// Migrations directory (default: the plan's, relative to the plan; else `migrations`).
    #[arg(long)]
    pub migrations: Option<PathBuf>,

    /// Tenants probed at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    /// Also compare each tenant's schema (tables, columns, constraints, indexes, functions, …)
    /// with the reference at its recorded version; any difference exits 1.
    #[arg(long)]
    pub schema: bool,

    #[command(flatten)]
    pub reference: ReferenceArgs,

    #[command(flatten)]
    pub api: ApiArgs,
}

impl DriftArgs {
    /// The plan to check, given positionally or with `--plan` (clap allows one of them).
    pub fn plan_path(&self) -> Option<&std::path::Path> {
        self.plan.as_deref().or(self.plan_flag.as_deref())
    }
}

/// Where schema references come from (`drift --schema`, `baseline`).
#[derive(Debug, Clone, Args)]
pub struct ReferenceArgs {
    /// PostgreSQL server (postgresql:// URI; the role may CREATE DATABASE) where the
    /// reference is built on a throwaway database when the cache has none.
    #[arg(long, env = "SCHEMAFLEET_REFERENCE_URL", hide_env_values = true)]
    pub reference_url: Option<String>,

    /// Directory of cached reference fingerprints (default: $XDG_CACHE_HOME/schemafleet).
    #[arg(long, env = "SCHEMAFLEET_REFERENCE_CACHE")]
    pub reference_cache: Option<PathBuf>,

    /// Fingerprint only these schemas (comma-separated; default: the policy's `schemas:`,
    /// else all but pg_catalog, information_schema and Neon-managed ones).
    #[arg(long, value_delimiter = ',')]
    pub schemas: Vec<String>,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet baseline [OPTIONS] <PLAN>")]
pub struct BaselineArgs {
    /// The plan whose tenants are adopted.
    pub plan: PathBuf,

    /// Migrations directory (default: the plan's, relative to the plan).
    #[arg(long)]
    pub migrations: Option<PathBuf>,

    /// Only print what would be recorded (the default without --yes).
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,

    /// Write the history rows (and journal each recorded tenant).
    #[arg(long)]
    pub yes: bool,

    /// Journal of the plan, where --yes records what it wrote (default: beside the plan).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    #[command(flatten)]
    pub reference: ReferenceArgs,

    /// Tenants probed at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet gc [OPTIONS]")]
pub struct GcArgs {
    /// Only the tenants of this plan (default: every project the key can list).
    #[arg(long)]
    pub plan: Option<PathBuf>,

    /// Journal of --plan (default: beside the plan, <plan-stem>.journal.jsonl).
    #[arg(long, requires = "plan")]
    pub journal: Option<PathBuf>,

    /// Delete every schemafleet branch that is not a default or protected branch, including
    /// branches of unfinished rollouts and current restore points (not preserved branches).
    #[arg(long)]
    pub all: bool,

    /// Also delete the branches rollbacks preserved (`pre-rollback-*`: main before the restore,
    /// with the writes made after the restore point) that are at least --older-than old.
    #[arg(long, requires = "older_than")]
    pub preserved: bool,

    /// With --preserved: the age (e.g. 30d) from which a preserved branch goes.
    #[arg(long, value_name = "DURATION", requires = "preserved")]
    pub older_than: Option<String>,

    /// List what would be deleted and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Projects worked on at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "schemafleet emulator [OPTIONS]")]
pub struct EmulatorArgs {
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    /// Directory the emulator creates for its PostgreSQL cluster and reuses on a restart (the
    /// same tenants and API key); an existing directory it did not create is refused.
    #[arg(long, conflicts_with = "attach")]
    pub data_dir: Option<PathBuf>,

    /// Use an existing PostgreSQL server (superuser URL) instead of starting one; prefer the
    /// environment variable, which `ps` does not show.
    #[arg(long, env = "EMULATOR_ATTACH_URL", hide_env_values = true)]
    pub attach: Option<String>,

    /// API key clients must present (default: a random one, printed on start).
    #[arg(long, env = "EMULATOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Answer 429 past this many requests per minute, like Neon.
    #[arg(long)]
    pub rate_limit_per_min: Option<u32>,

    /// Fraction of requests answered with a retryable 423/429/500/503/524 at random.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,

    /// How long operations run before they finish, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub op_delay_ms: u64,

    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Restore window of projects created without one, in seconds (Neon's
    /// `history_retention_seconds`). Each branch creation keeps a copy of its parent for
    /// restores within the window; 0 keeps none (branch_point rollbacks are then refused).
    #[arg(long, default_value_t = 86_400)]
    pub history_retention_seconds: i64,

    /// Fraction of operations that report `failed` for 300 ms before Neon's control plane
    /// would retry them; they then run again and finish.
    #[arg(long, default_value_t = 0.0)]
    pub failed_operation_rate: f64,

    /// Address of the PostgreSQL proxy every connection URI points at (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub proxy_listen: String,

    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Suspend an endpoint this long after its last connection closed: `300s`, `5m` (Neon's
    /// default), `500ms`; `off` never suspends.
    #[arg(long, default_value = "off")]
    pub suspend_after: String,

    /// Have this many tenant projects (`tenant-0001` …): on a restart, only the missing ones
    /// are created.
    #[arg(long, default_value_t = 0)]
    pub tenants: usize,

    /// SQL run once in a template database that every seeded tenant's main is copied from.
    #[arg(long)]
    pub seed_sql: Option<PathBuf>,

    /// Text (`NEON_API_URL=…` lines to source), or the start-up facts as one JSON document on
    /// one line of stdout (env, proxy address, data directory, tenants).
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The emulator's compute layer: latency through its proxy and cold starts.
#[derive(Debug, Args)]
pub struct ComputeArgs {
    /// Round-trip time charged by the proxy per client-visible round trip, in milliseconds
    /// (Neon in-region: 1-5; from a CI runner in another region: 20-80).
    #[arg(long, default_value_t = 0)]
    pub pg_rtt_ms: u64,

    /// Up to this many more milliseconds per round trip, at random.
    #[arg(long, default_value_t = 0)]
    pub pg_rtt_jitter_ms: u64,

    /// What the connection that wakes a suspended endpoint waits, in milliseconds (Neon: "a
    /// few hundred").
    #[arg(long, default_value_t = 0)]
    pub cold_start_ms: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of tenants to seed.
    #[arg(long, default_value_t = 200)]
    pub tenants: usize,

    /// The rollout policy to plan with.
    #[arg(long, default_value = "plans/rollout.yaml")]
    pub policy: PathBuf,

    /// Directory of versioned migrations (V<n>__<name>.sql) to roll out.
    #[arg(long, default_value = "migrations")]
    pub migrations: PathBuf,

    /// Keep the local fleet running after the rollout, with commands to try, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,

    /// Directory for the demo's plan, journal and tenants file (default: a temporary one).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tenants to seed for the fleet modes.
    #[arg(long, default_value_t = 500)]
    pub tenants: usize,

    /// Concurrency for the fleet modes (repeat to measure several).
    #[arg(long, default_values_t = [16])]
    pub concurrency: Vec<usize>,

    /// Modes to run: raw, sequential, apply, validated, noop, plan; also raw-probe (raw plus a
    /// separate probe connection per tenant, as the executor opens). `sequential` is Neon's
    /// guide: one tenant at a time, its URI from the API, refinery's Runner with its defaults.
    /// `journal` (not in the default set) writes a validated rollout's journal for
    /// --plan-tenants tenants and times `status`, `apply` and a resume on it.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,sequential,apply,validated,noop,plan"
    )]
    pub modes: Vec<String>,

    /// The network and computes behind the emulator's proxy (every tenant is suspended before
    /// each mode).
    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Added to every Neon API request, in ms (the emulator's `--latency-ms`).
    #[arg(long, default_value_t = 0)]
    pub api_latency_ms: u64,

    /// Endpoints suspend this long after their last connection (Neon's default: 5m).
    #[arg(long, default_value = "5m")]
    pub suspend_after: String,

    /// Tenants planned by the `plan` and `journal` modes.
    #[arg(long, default_value_t = 300_000)]
    pub plan_tenants: usize,

    /// Emulator rate limit for an extra, rate-limited `validated` run (0 = no such run); the
    /// client's own limiter is set just under it.
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_min: u32,

    /// Tenants of the rate-limited run (0 = enough for about 40 s at the limit).
    #[arg(long, default_value_t = 0)]
    pub rate_limited_tenants: usize,

    /// How long the emulator's branch operations run before they finish, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub op_delay_ms: u64,

    /// How often the client polls operations, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub operation_poll_ms: u64,

    /// Keep plans, journals and tenants files here (default: a temporary directory, removed).
    #[arg(long)]
    pub workdir: Option<PathBuf>,

    /// Text for people, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,

    /// Run one measured mode from a job read on stdin (the benchmark's own child process).
    #[arg(long, hide = true)]
    pub internal: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift_args(argv: &[&str]) -> Result<DriftArgs, clap::Error> {
        let mut full = vec!["schemafleet", "drift"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)?.command {
            Command::Drift(args) => Ok(args),
            other => panic!("parsed as another command: {other:?}"),
        }
    }

    #[test]
    fn drift_takes_its_plan_positionally_like_the_other_commands_or_with_plan() {
        let positional = drift_args(&["rollout.plan.yaml"]).expect("positional plan");
        assert_eq!(
            positional.plan_path(),
            Some(std::path::Path::new("rollout.plan.yaml"))
        );
        let flag = drift_args(&["--plan", "rollout.plan.yaml"]).expect("--plan");
        assert_eq!(flag.plan_path(), positional.plan_path());
        // One source of tenants: a plan twice, or a plan and a policy, is refused.
        assert!(drift_args(&["a.plan.yaml", "--plan", "b.plan.yaml"]).is_err());
        assert!(drift_args(&["a.plan.yaml", "--policy", "p.yaml"]).is_err());
        assert!(drift_args(&[]).is_err());
        let policy = drift_args(&["--policy", "p.yaml"]).expect("--policy");
        assert_eq!(policy.plan_path(), None);
    }
}
