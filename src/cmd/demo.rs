//! `schemafleet demo`: the whole product on one machine — a local fleet (the Neon API emulator
//! over a PostgreSQL it starts itself), seeded tenants, a few of them holding data that breaks a
//! migration, a plan from the example policy, and the real `apply` and `status` on it.
//!
//! Without `--keep` everything the demo started (the fleet, its PostgreSQL cluster, a temporary
//! work directory) is removed when it ends, Ctrl-C included, so a first run leaves nothing
//! behind. With `--keep` the fleet stays up after the rollout and the demo prints the commands to
//! try against it (status, rollback, resume, drift) until Ctrl-C.
//!
//! **Invariant:** the demo touches nothing but its own local fleet and work directory; it reuses
//! the real `plan` pipeline and the real `apply`/`status` commands, never a shortcut.
//! **Invariant:** bad tenants come only from waves after the first (the canaries, whose budget
//! is 0) and never outnumber a wave's failure budget, so the example rollout always completes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::watch;

use crate::cli::{ApiArgs, ApplyArgs, DemoArgs, OutputFormat, StatusArgs};
use crate::emulator::{LocalFleet, LocalFleetConfig, SeededTenant};
use crate::exit::ExitStatus;
use crate::journal::{Journal, default_journal_path};
use crate::plan::model::{Plan, PlannedWave};
use crate::plan::pipeline::{NeonAccess, collect_fleet, read_inputs, write_planned};
use crate::policy::FleetSource;
use crate::secret::SecretString;

/// The schema and rows every seeded tenant starts with (the state before `migrations/`).
const SEED_SQL: &str = include_str!("../../plans/demo-seed.sql");

/// Seeded projects are named `tenant-0001`, `tenant-0002`, … to match the policy's filter.
const TENANT_NAME_PREFIX: &str = "tenant";

/// A row V2's CHECK constraint rejects: what an older tenant's legacy data looks like.
const LEGACY_ROW_SQL: &str =
    "INSERT INTO orders (account_id, total_cents, status) VALUES (1, 99, 'cancelled')";

/// Share of the fleet given bad data, before each wave's budget caps it.
const BAD_TENANT_PERCENT: f64 = 3.0;

/// The emulator answers in microseconds and has no account limit; Neon's 700/min would only
/// make the demo slow.
const DEMO_API_RATE_LIMIT_PER_MIN: u32 = 100_000;

/// Operations on the emulator finish in about 20 ms; polling at Neon's 1 s would dominate.
const DEMO_OPERATION_POLL_MS: u64 = 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitStatus> {
    if let Err(error) = crate::pgcluster::find_bin_dir() {
        eprintln!("error: {error}");
        return Ok(ExitStatus::Error);
    }
    check_inputs_exist(&args)?;
    let interrupts = Interrupts::watch();
    let started = Instant::now();
    let workdir = WorkDir::create(args.workdir.as_deref())?;
    let journal_path = default_journal_path(&workdir.plan_path(&args.policy));
    if journal_path.exists() {
        bail!(
            "{} already holds a journal from an earlier demo; pass an empty --workdir",
            workdir.path.display()
        );
    }

    println!(
        "schemafleet demo: {} tenants on a local Neon-compatible fleet",
        args.tenants
    );
    print_step(
        1,
        "starting the local fleet (emulator + a throwaway PostgreSQL)",
    );
    let phase = Instant::now();
    // Not raced against Ctrl-C: dropping a half-started cluster could orphan its server.
    let fleet = LocalFleet::start(LocalFleetConfig::for_tests()).await?;
    println!("      ready in {} at {}", seconds(phase), fleet.api_url());

    let outcome = if interrupts.pressed() {
        Ok(DemoEnd::Interrupted)
    } else {
        demo_on_fleet(&fleet, &args, &workdir, &interrupts, started).await
    };
    println!("Stopping the local fleet and removing its data ...");
    let phase = Instant::now();
    let stopped = fleet.stop().await;
    drop(workdir);
    println!("      done in {}.", seconds(phase));
    let end = outcome?;
    stopped?;
    Ok(match end {
        DemoEnd::Interrupted => {
            println!("Interrupted; the local fleet is gone, so there is nothing to resume.");
            ExitStatus::Interrupted
        }
        DemoEnd::Finished(status) => {
            if !args.keep {
                println!("Run with --keep to try rollback, resume, drift and status on the fleet.");
            }
            status
        }
    })
}

/// How the demo ended, before clean-up.
enum DemoEnd {
    Finished(ExitStatus),
    Interrupted,
}

async fn demo_on_fleet(
    fleet: &LocalFleet,
    args: &DemoArgs,
    workdir: &WorkDir,
    interrupts: &Interrupts,
    started: Instant,
) -> anyhow::Result<DemoEnd> {
    print_step(2, &format!("seeding {} tenants", args.tenants));
    let phase = Instant::now();
    let Some(seeded) = interrupts
        .race(fleet.seed(args.tenants, SEED_SQL, TENANT_NAME_PREFIX))
        .await
    else {
        return Ok(DemoEnd::Interrupted);
    };
    let seeded = seeded.context("seeding the local fleet")?;
    println!(
        "      {}-0001 to {}-{:04}, with accounts and orders, in {}",
        TENANT_NAME_PREFIX,
        TENANT_NAME_PREFIX,
        seeded.len(),
        seconds(phase)
    );

    let api = ApiArgs {
        api_url: fleet.api_url().to_string(),
        api_key: Some(fleet.api_key().expose().to_string()),
        api_rate_limit_per_min: DEMO_API_RATE_LIMIT_PER_MIN,
        operation_poll_ms: DEMO_OPERATION_POLL_MS,
    };
    print_step(3, &format!("planning with {}", args.policy.display()));
    let Some(plan_path) = interrupts.race(write_demo_plan(args, &api, workdir)).await else {
        return Ok(DemoEnd::Interrupted);
    };
    let plan_path = plan_path?;
    let plan = crate::plan::load_plan(&plan_path)?;

    let bad = pick_bad_tenants(&plan.waves, BAD_TENANT_PERCENT);
    print_step(4, "giving a few tenants data that migration V2 will reject");
    let Some(planted) = interrupts.race(plant_bad_data(&bad, &seeded)).await else {
        return Ok(DemoEnd::Interrupted);
    };
    planted?;
    print_bad_tenants(&bad, &seeded, &plan);

    print_step(5, "applying the plan (bake times skipped for the demo)");
    let apply_status = crate::cmd::apply::run(ApplyArgs {
        plan: plan_path.clone(),
        migrations: None,
        journal: None,
        until_wave: None,
        retry_failed: false,
        retry_checks: false,
        include_rolled_back: None,
        skip_bake: true,
        max_connections: 64,
        skip_recorded: false,
        recorded_from: Vec::new(),
        output: OutputFormat::Text,
        no_progress: false,
        reference_url: None,
        reference_cache: None,
        api: api.clone(),
        runners: crate::cli::RunnerArgs::default(),
    })
    .await?;
    if apply_status == ExitStatus::Interrupted || interrupts.pressed() {
        return Ok(DemoEnd::Interrupted);
    }

    let verdict = check_outcome(&plan, &plan_path, &bad, &seeded).await?;
    println!();
    println!("$ schemafleet status {}", plan_path.display());
    crate::cmd::status::run(StatusArgs {
        plan: plan_path.clone(),
        journal: None,
        live: false,
        concurrency: 16,
        output: OutputFormat::Text,
        api: api.clone(),
        state: crate::cli::StateArgs::default(),
    })
    .await?;
    println!();
    println!("Demo finished in {}.", seconds(started));
    let status = if verdict.is_empty() {
        if bad.is_empty() {
            println!("Every tenant is migrated.");
        } else {
            println!(
                "Every tenant is migrated except the {} with bad data, caught on their\nvalidation branches before their main was touched.",
                bad.len()
            );
        }
        ExitStatus::Success
    } else {
        println!("The rollout did not go as the demo expects:");
        for problem in &verdict {
            println!("  - {problem}");
        }
        ExitStatus::Failure
    };

    if args.keep {
        print_next_commands(&api, &plan_path, &plan, &bad, workdir)?;
        interrupts.next_press().await;
        println!();
    }
    Ok(DemoEnd::Finished(status))
}

fn check_inputs_exist(args: &DemoArgs) -> anyhow::Result<()> {
    for (path, flag) in [
        (&args.policy, "--policy"),
        (&args.migrations, "--migrations"),
    ] {
        if !path.exists() {
            bail!(
                "{} does not exist: run the demo from the repository root (where plans/ and migrations/ are), or pass {flag}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Plan exactly as `schemafleet plan` does for `fleet.source: neon`: list the projects through
/// the Neon API (here the local fleet's), then the shared pipeline filters, assigns and writes.
async fn write_demo_plan(
    args: &DemoArgs,
    api: &ApiArgs,
    workdir: &WorkDir,
) -> anyhow::Result<PathBuf> {
    let inputs = read_inputs(&args.policy, &args.migrations)?;
    let FleetSource::Neon { .. } = &inputs.policy.fleet.source else {
        bail!(
            "{}: the demo discovers its tenants through the Neon API; use a policy with `fleet.source: neon`",
            args.policy.display()
        );
    };
    let plan_path = workdir.plan_path(&args.policy);
    let access = NeonAccess {
        api_url: api.api_url.clone(),
        api_key: SecretString::new(api.api_key.clone().unwrap_or_default()),
        rate_limit_per_min: api.api_rate_limit_per_min,
    };
    let fleet = collect_fleet(&inputs.policy, None, Some(&access))
        .await
        .context("listing the local fleet's projects")?;
    let outcome = write_planned(&inputs, fleet, Some(&plan_path), api.api_rate_limit_per_min)?;
    print!("{}", fit_to_terminal(&outcome.summary.to_string()));
    Ok(plan_path)
}

/// One tenant given bad data: its wave and project.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadTenant {
    wave: String,
    project_id: String,
}

/// About `percent` of each wave after the first, spread over the wave, at most as many as the
/// wave's failure budget tolerates (so none halts), and at least one where the budget allows.
fn pick_bad_tenants(waves: &[PlannedWave], percent: f64) -> Vec<BadTenant> {
    let mut bad = Vec::new();
    for wave in waves.iter().skip(1) {
        let n_tenants = wave.tenants.len();
        let wanted = ((n_tenants as f64) * percent / 100.0).round() as usize;
        let n_bad = wanted.max(1).min(failures_tolerated(wave));
        for pick in 0..n_bad {
            // Evenly spaced through the (id-sorted) wave, so failures arrive throughout it.
            let index = (2 * pick + 1) * n_tenants / (2 * n_bad);
            bad.push(BadTenant {
                wave: wave.name.clone(),
                project_id: wave.tenants[index].id.clone(),
            });
        }
    }
    bad
}

/// The most failures `wave` can take without halting.
fn failures_tolerated(wave: &PlannedWave) -> usize {
    (0..=wave.tenants.len())
        .take_while(|&n_failed| !wave.budget_exceeded(n_failed))
        .last()
        .unwrap_or(0)
}

async fn plant_bad_data(bad: &[BadTenant], seeded: &[SeededTenant]) -> anyhow::Result<()> {
    for tenant in bad {
        let seeded_tenant = seeded_by_id(seeded, &tenant.project_id)?;
        let client = crate::pg::connect(&seeded_tenant.connection_uri, CONNECT_TIMEOUT)
            .await
            .with_context(|| format!("connecting to {}", seeded_tenant.name))?;
        client
            .batch_execute(LEGACY_ROW_SQL)
            .await
            .with_context(|| format!("adding a legacy order to {}", seeded_tenant.name))?;
    }
    Ok(())
}

fn print_bad_tenants(bad: &[BadTenant], seeded: &[SeededTenant], plan: &Plan) {
    if bad.is_empty() {
        println!("      none: the fleet is too small for any wave's failure budget");
        return;
    }
    println!("      an order with status 'cancelled' (V2 allows open/paid/refunded):");
    for wave in plan.waves.iter().skip(1) {
        let mut names: Vec<&str> = bad
            .iter()
            .filter(|tenant| tenant.wave == wave.name)
            .map(|tenant| name_of(seeded, &tenant.project_id))
            .collect();
        if names.is_empty() {
            continue;
        }
        names.sort_unstable();
        let mut text = String::new();
        crate::report::render::wrap_into(
            &mut text,
            &format!(
                "wave {} ({}, budget {}): {}",
                wave.name,
                crate::report::render::plural(wave.tenants.len(), "tenant"),
                crate::report::render::plural(failures_tolerated(wave), "failure"),
                names.join(", ")
            ),
            "        ",
            "          ",
        );
        print!("{text}");
    }
}

/// Lines wider than the terminal's 80 columns, word-wrapped; the others (tables) as they are.
fn fit_to_terminal(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.chars().count() <= 78 {
            out.push_str(line);
            out.push('\n');
        } else {
            crate::report::render::wrap_into(&mut out, line, "", "  ");
        }
    }
    out
}

/// What differs from the demo's expectation: every bad tenant failed on its validation branch
/// with its main untouched (checked in the database), every other tenant applied.
async fn check_outcome(
    plan: &Plan,
    plan_path: &Path,
    bad: &[BadTenant],
    seeded: &[SeededTenant],
) -> anyhow::Result<Vec<String>> {
    let read = Journal::read(&default_journal_path(plan_path))?;
    let summary = crate::report::summarize(plan, &read.state);
    let mut problems = Vec::new();
    let expected_applied = summary.totals.tenants - bad.len();
    if summary.totals.applied != expected_applied {
        problems.push(format!(
            "{} tenants applied, {} expected",
            summary.totals.applied, expected_applied
        ));
    }
    println!();
    if !bad.is_empty() {
        println!("Caught on their validation branch; main untouched (read from each main):");
        println!("  {:<11}  {:<24} {:<6} main", "tenant", "project", "wave");
    }
    let mut bad_by_name: Vec<&BadTenant> = bad.iter().collect();
    bad_by_name.sort_by_key(|tenant| name_of(seeded, &tenant.project_id));
    for tenant in bad_by_name {
        let name = name_of(seeded, &tenant.project_id);
        let failure = summary
            .failures
            .iter()
            .find(|failure| failure.tenant == tenant.project_id);
        match failure {
            Some(failure) if failure.phase == "validate" => {}
            Some(failure) => problems.push(format!(
                "{name} failed in phase {}, not on its validation branch",
                failure.phase
            )),
            None => problems.push(format!("{name} did not fail although its data is bad")),
        }
        let main_state = main_state(seeded_by_id(seeded, &tenant.project_id)?).await?;
        if main_state.migrations_applied != 0 || main_state.legacy_rows != 1 {
            problems.push(format!("{name}: main changed"));
        }
        println!(
            "  {name:<11}  {:<24} {:<6} {} migrations, {} legacy row",
            tenant.project_id, tenant.wave, main_state.migrations_applied, main_state.legacy_rows
        );
    }
    Ok(problems)
}

struct MainState {
    migrations_applied: usize,
    legacy_rows: i64,
}

async fn main_state(tenant: &SeededTenant) -> anyhow::Result<MainState> {
    let client = crate::pg::connect(&tenant.connection_uri, CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("connecting to {}", tenant.name))?;
    let history = crate::pg::read_history(&client)
        .await
        .with_context(|| format!("reading {}'s history", tenant.name))?;
    let row = client
        .query_one(
            "SELECT count(*) FROM orders WHERE status = 'cancelled'",
            &[],
        )
        .await
        .with_context(|| format!("counting {}'s legacy orders", tenant.name))?;
    Ok(MainState {
        migrations_applied: history.len(),
        legacy_rows: row.get(0),
    })
}

fn print_next_commands(
    api: &ApiArgs,
    plan_path: &Path,
    plan: &Plan,
    bad: &[BadTenant],
    workdir: &WorkDir,
) -> anyhow::Result<()> {
    let binary_dir = std::env::current_exe()
        .ok()
        .and_then(|binary| binary.parent().map(Path::to_path_buf))
        .context("cannot tell where the schemafleet binary is")?;
    // An applied tenant of the second wave: a rollback there shows a restore point at work.
    let rollback_tenant = plan
        .waves
        .get(1)
        .or_else(|| plan.waves.first())
        .and_then(|wave| {
            wave.tenants
                .iter()
                .find(|tenant| !bad.iter().any(|bad| bad.project_id == tenant.id))
        })
        .map(|tenant| {
            // By name when the name picks one tenant, as an operator would type it.
            if !tenant.name.is_empty() && plan.resolve_tenant(&tenant.name).len() == 1 {
                tenant.name.clone()
            } else {
                tenant.id.clone()
            }
        })
        .unwrap_or_else(|| "PROJECT_ID".to_string());
    let api_key = api.api_key.as_deref().unwrap_or_default();
    println!();
    println!("The local fleet keeps running until you press Ctrl-C here.");
    println!("Try these in another terminal (the key is this local fleet's own):");
    println!();
    println!("  export NEON_API_URL={}", api.api_url);
    println!("  export NEON_API_KEY={api_key}");
    println!("  export SCHEMAFLEET_OPERATION_POLL_MS={DEMO_OPERATION_POLL_MS}");
    println!("  export PATH={}:$PATH", binary_dir.display());
    println!("  plan={}", plan_path.display());
    println!();
    println!("  # where the rollout stands, from the journal alone");
    println!("  schemafleet status $plan");
    println!("  # restore one tenant's main to its restore point (look first)");
    println!("  schemafleet rollback $plan --tenant {rollback_tenant} --dry-run");
    println!("  schemafleet rollback $plan --tenant {rollback_tenant} --yes");
    println!("  # resume: finished tenants are skipped, a rolled-back one stays back");
    println!("  schemafleet apply $plan --skip-bake");
    println!("  # migrate the rolled-back tenant again, as asked");
    println!("  schemafleet apply $plan --skip-bake --include-rolled-back");
    // A fleet too small for any wave's failure budget got no bad tenants to retry.
    if !bad.is_empty() {
        println!("  # try the failed tenants again (their bad row makes V2 fail again)");
        println!("  schemafleet apply $plan --retry-failed --skip-bake");
    }
    println!("  # every tenant's history against the migrations on disk");
    println!("  schemafleet drift $plan");
    println!();
    if workdir.temporary {
        println!(
            "Ctrl-C stops the fleet and removes {}.",
            workdir.path.display()
        );
    } else {
        println!("Ctrl-C stops the fleet; {} stays.", workdir.path.display());
    }
    Ok(())
}

fn seeded_by_id<'a>(
    seeded: &'a [SeededTenant],
    project_id: &str,
) -> anyhow::Result<&'a SeededTenant> {
    seeded
        .iter()
        .find(|tenant| tenant.project_id == project_id)
        .with_context(|| format!("project {project_id} is in the plan but was not seeded"))
}

fn name_of<'a>(seeded: &'a [SeededTenant], project_id: &'a str) -> &'a str {
    seeded
        .iter()
        .find(|tenant| tenant.project_id == project_id)
        .map_or(project_id, |tenant| tenant.name.as_str())
}

fn print_step(number: usize, text: &str) {
    println!("[{number}/5] {text}");
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// The demo's plan, journal and nothing else; a temporary one is removed when dropped.
struct WorkDir {
    path: PathBuf,
    temporary: bool,
}

impl WorkDir {
    fn create(requested: Option<&Path>) -> anyhow::Result<WorkDir> {
        let (path, temporary) = match requested {
            Some(path) => (path.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("sf-demo-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the work directory {}", path.display()))?;
        let path = std::path::absolute(&path)?;
        Ok(WorkDir { path, temporary })
    }

    /// `<policy-stem>.plan.yaml` in the work directory; the journal goes beside it.
    fn plan_path(&self, policy: &Path) -> PathBuf {
        let stem = policy
            .file_stem()
            .map_or_else(|| "rollout".into(), |stem| stem.to_string_lossy());
        self.path.join(format!("{stem}.plan.yaml"))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Ctrl-C (and SIGTERM) presses, counted from the demo's start. Listening from the start also
/// replaces the default "die at once", which would orphan the PostgreSQL server.
struct Interrupts(watch::Receiver<u64>);

impl Interrupts {
    fn watch() -> Interrupts {
        let (sender, receiver) = watch::channel(0u64);
        crate::executor::shutdown::on_each_signal(move || {
            sender.send_modify(|presses| *presses += 1)
        });
        Interrupts(receiver)
    }

    fn pressed(&self) -> bool {
        *self.0.borrow() > 0
    }

    /// `work`'s result, or `None` when Ctrl-C came first (the work is dropped).
    async fn race<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        if self.pressed() {
            return None;
        }
        let mut receiver = self.0.clone();
        tokio::select! {
            value = work => Some(value),
            _ = receiver.wait_for(|presses| *presses > 0) => None,
        }
    }

    /// Wait for the next press after now.
    async fn next_press(&self) {
        let mut receiver = self.0.clone();
        let seen = *receiver.borrow_and_update();
        let _ = receiver.wait_for(|presses| *presses > seen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(
        name: &str,
        n: usize,
        max_failures: Option<usize>,
        percent: Option<f64>,
    ) -> PlannedWave {
        PlannedWave {
            name: name.into(),
            concurrency: 1,
            max_failures,
            max_failure_percent: percent,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: (0..n)
                .map(|i| crate::plan::model::PlannedTenant::from_id(format!("{name}-{i:03}")))
                .collect(),
        }
    }

    /// The whole demo on a small fleet: it ends as it promises (exit 0 means its own check of
    /// every bad tenant's main passed), and the journal it leaves agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_catches_its_bad_tenants_and_migrates_everyone_else() {
        let workdir = tempfile::tempdir().expect("a temporary directory");
        let n_tenants = 100;
        let status = run(DemoArgs {
            tenants: n_tenants,
            policy: PathBuf::from("plans/rollout.yaml"),
            migrations: PathBuf::from("migrations"),
            keep: false,
            workdir: Some(workdir.path().to_path_buf()),
        })
        .await
        .expect("the demo runs");
        assert_eq!(status, ExitStatus::Success);

        let plan_path = workdir.path().join("rollout.plan.yaml");
        let plan = crate::plan::load_plan(&plan_path).expect("the demo's plan stays in --workdir");
        let read = Journal::read(&default_journal_path(&plan_path)).expect("its journal too");
        let summary = crate::report::summarize(&plan, &read.state);
        let bad = pick_bad_tenants(&plan.waves, BAD_TENANT_PERCENT);
        assert!(!bad.is_empty(), "100 tenants leave room for bad ones");
        assert_eq!(summary.totals.tenants, n_tenants);
        assert_eq!(
            summary.totals.applied,
            n_tenants - bad.len(),
            "{summary:#?}"
        );
        assert!(
            summary.waves.iter().all(|wave| !wave.halted),
            "{summary:#?}"
        );
        let mut failed: Vec<&str> = summary
            .failures
            .iter()
            .filter(|failure| failure.phase == "validate")
            .map(|failure| failure.tenant.as_str())
            .collect();
        let mut expected: Vec<&str> = bad
            .iter()
            .map(|tenant| tenant.project_id.as_str())
            .collect();
        failed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(
            failed, expected,
            "exactly the bad tenants fail, on their branch"
        );
        assert!(
            plan.waves[0]
                .tenants
                .iter()
                .all(|tenant| !expected.contains(&tenant.id.as_str())),
            "no canary is given bad data"
        );
    }

    #[test]
    fn tolerated_failures_follow_the_budget() {
        assert_eq!(failures_tolerated(&wave("w", 4, Some(0), None)), 0);
        assert_eq!(failures_tolerated(&wave("w", 46, None, Some(5.0))), 2);
        assert_eq!(failures_tolerated(&wave("w", 150, Some(20), Some(2.0))), 3);
        assert_eq!(failures_tolerated(&wave("w", 10, None, None)), 0);
    }

    /// The example policy's shape at 200 tenants: no canary is bad, no wave over budget.
    #[test]
    fn bad_tenants_skip_the_canary_and_stay_within_each_budget() {
        let waves = vec![
            wave("canary", 4, Some(0), None),
            wave("early", 46, None, Some(5.0)),
            wave("rest", 150, Some(20), Some(2.0)),
        ];
        let bad = pick_bad_tenants(&waves, 3.0);
        assert!(bad.iter().all(|tenant| tenant.wave != "canary"), "{bad:?}");
        let in_early = bad.iter().filter(|tenant| tenant.wave == "early").count();
        let in_rest = bad.iter().filter(|tenant| tenant.wave == "rest").count();
        assert_eq!((in_early, in_rest), (1, 3), "{bad:?}");
        for wave in &waves {
            let n_bad = bad.iter().filter(|tenant| tenant.wave == wave.name).count();
            assert!(!wave.budget_exceeded(n_bad), "{} over budget", wave.name);
        }
        let mut ids: Vec<&str> = bad
            .iter()
            .map(|tenant| tenant.project_id.as_str())
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), bad.len(), "a tenant picked twice: {bad:?}");
    }

    #[test]
    fn a_fleet_too_small_for_any_budget_gets_no_bad_tenant() {
        let waves = vec![
            wave("canary", 2, Some(0), None),
            wave("early", 3, None, Some(5.0)),
            wave("rest", 15, Some(20), Some(2.0)),
        ];
        assert!(pick_bad_tenants(&waves, 3.0).is_empty());
    }

    #[test]
    fn picks_are_spread_over_the_wave() {
        let waves = vec![
            wave("canary", 1, Some(0), None),
            wave("wide", 100, Some(4), None),
        ];
        let bad = pick_bad_tenants(&waves, 3.0);
        let ids: Vec<&str> = bad
            .iter()
            .map(|tenant| tenant.project_id.as_str())
            .collect();
        assert_eq!(ids, ["wide-016", "wide-050", "wide-083"]);
    }
}
