//! Reading and writing plan files.
//!
//! **Invariant:** a plan file is written whole or not at all (temporary file in the same
//! directory, fsync, rename, fsync of the directory). **Invariant:** [`load_plan`] returns only
//! plans of this format whose recorded id matches their content, with every tenant in exactly
//! one wave; a truncated or hand-edited plan is rejected.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use super::id::compute_plan_id;
use super::model::{PLAN_FORMAT_VERSION, Plan};
use crate::policy::locate::{FilePosition, split_yaml_error};

/// First lines of every plan file; YAML comments, so loading ignores them.
const PLAN_HEADER: &str = "# Written by `schemafleet plan`. Review it, commit it, run `schemafleet apply` on it.\n# Do not edit: apply rejects a plan whose plan_id does not match its content.\n";

/// Why a plan file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the plan {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{location}: {message}; the plan file is damaged or was edited by hand: regenerate it with `schemafleet plan`"
    )]
    Parse { location: String, message: String },
    #[error("{}: plan format version {found}, this schemafleet reads version {expected}; re-run `schemafleet plan` with this version (the plan id stays the same when nothing else changed)", path.display())]
    FormatVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: the plan's content does not match its plan_id (recorded {recorded}, content gives {computed}); the file was edited or truncated: regenerate it with `schemafleet plan`", path.display())]
    IdMismatch {
        path: PathBuf,
        recorded: String,
        computed: String,
    },
    #[error("{}: {message}; regenerate the plan with `schemafleet plan`", path.display())]
    Inconsistent { path: PathBuf, message: String },
    #[error("{}: this is a rollout policy, not a plan; run `schemafleet plan --policy {}` first and pass the plan it writes ({})", path.display(), path.display(), super::pipeline::default_plan_path(path).display())]
    PolicyNotPlan { path: PathBuf },
}

/// The few top-level keys that tell what a YAML file is when it does not parse as a plan.
#[derive(serde::Deserialize)]
struct FileKind {
    format_version: Option<u32>,
    plan_id: Option<serde::de::IgnoredAny>,
    salt: Option<serde::de::IgnoredAny>,
    waves: Option<serde::de::IgnoredAny>,
}

/// Why a plan file could not be written. Nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the plan {}", path.display())]
pub struct PlanWriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Read and check a plan file.
pub fn load_plan(path: &Path) -> Result<Plan, PlanError> {
    let text = fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let fast = super::fast_load::load_written(&text);
    #[cfg(debug_assertions)]
    if let Some(fast) = &fast {
        // Every plan a debug build loads (every test's) checks the fast path against serde_yaml.
        let slow: Result<Plan, _> = serde_yaml::from_str(&text);
        assert!(
            slow.as_ref().is_ok_and(|slow| slow == fast),
            "the fast plan reader and serde_yaml disagree on {}: {slow:?}",
            path.display()
        );
    }
    let plan = match fast {
        Some(plan) => plan,
        None => parse_any(path, &text)?,
    };
    drop(text);
    if plan.format_version != PLAN_FORMAT_VERSION {
        return Err(PlanError::FormatVersion {
            path: path.to_path_buf(),
            found: plan.format_version,
            expected: PLAN_FORMAT_VERSION,
        });
    }
    let computed = compute_plan_id(&plan);
    if computed != plan.plan_id {
        return Err(PlanError::IdMismatch {
            path: path.to_path_buf(),
            recorded: plan.plan_id.clone(),
            computed,
        });
    }
    check_consistency(&plan).map_err(|message| PlanError::Inconsistent {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(plan)
}

/// Any plan text serde_yaml reads (a hand-edited layout too), with the error for what it cannot
/// read: `file:line` and what is wrong, or what the file is instead of a plan.
fn parse_any(path: &Path, text: &str) -> Result<Plan, PlanError> {
    serde_yaml::from_str(text).map_err(|error| {
        // Only on failure: say what the file is when it is not a plan of this format.
        if let Ok(kind) = serde_yaml::from_str::<FileKind>(text) {
            match kind.format_version {
                Some(found) if found != PLAN_FORMAT_VERSION => {
                    return PlanError::FormatVersion {
                        path: path.to_path_buf(),
                        found,
                        expected: PLAN_FORMAT_VERSION,
                    };
                }
                None if kind.plan_id.is_none() && kind.salt.is_some() && kind.waves.is_some() => {
                    return PlanError::PolicyNotPlan {
                        path: path.to_path_buf(),
                    };
                }
                _ => {}
            }
        }
        let (position, message) = split_yaml_error(&error);
        PlanError::Parse {
            location: FilePosition { path, position }.to_string(),
            message,
        }
    })
}

/// What the id cannot catch: a plan written by a buggy or foreign tool.
fn check_consistency(plan: &Plan) -> Result<(), String> {
    let mut wave_names = HashSet::new();
    let mut tenants = HashSet::with_capacity(plan.tenant_count());
    for wave in &plan.waves {
        if !wave_names.insert(wave.name.as_str()) {
            return Err(format!("wave `{}` appears twice", wave.name));
        }
        if let Some(pair) = wave
            .tenants
            .windows(2)
            .find(|pair| pair[0].id >= pair[1].id)
        {
            return Err(format!(
                "wave `{}` lists tenant {} out of order (waves are sorted by id)",
                wave.name, pair[1].id
            ));
        }
        for tenant in wave.tenant_ids() {
            if !tenants.insert(tenant) {
                return Err(format!("tenant {tenant} appears in more than one wave"));
            }
        }
    }
    if tenants.len() != plan.fleet.planned {
        return Err(format!(
            "the waves hold {} tenants but fleet.planned says {}",
            tenants.len(),
            plan.fleet.planned
        ));
    }
    Ok(())
}

/// Write `plan` to `path` atomically.
pub fn write_plan(path: &Path, plan: &Plan) -> Result<(), PlanWriteError> {
    let write_error = |source| PlanWriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = crate::policy::parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(io::Error::other("the path names no file")))?;
    let temp_path = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_and_rename(&temp_path, path, &dir, plan);
    if result.is_err() {
        // Best effort: the temporary file is ours and worthless now.
        let _ = fs::remove_file(&temp_path);
    }
    result.map_err(write_error)
}

fn write_and_rename(temp_path: &Path, path: &Path, dir: &Path, plan: &Plan) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp_path)?;
    let mut writer = BufWriter::with_capacity(1 << 16, file);
    writer.write_all(PLAN_HEADER.as_bytes())?;
    serde_yaml::to_writer(&mut writer, plan).map_err(io::Error::other)?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp_path, path)?;
    // The rename is durable only once the directory entry is.
    fs::File::open(dir)?.sync_all()
}

/// `target` relative to `base_dir`, for paths recorded in a plan (both are made absolute
/// first; symlinks are resolved where the paths exist).
pub fn relative_path(base_dir: &Path, target: &Path) -> io::Result<PathBuf> {
    let base = absolute_clean(base_dir)?;
    let target = absolute_clean(target)?;
    let base_parts: Vec<Component> = base.components().collect();
    let target_parts: Vec<Component> = target.components().collect();
    let common = base_parts
        .iter()
        .zip(&target_parts)
        .take_while(|(left, right)| left == right)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..base_parts.len() {
        relative.push("..");
    }
    for part in &target_parts[common..] {
        relative.push(part);
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    Ok(relative)
}

fn absolute_clean(path: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(canonical) => Ok(canonical),
        Err(_) => std::path::absolute(path),
    }
}

/// `path` as people should read it: `.` parts dropped and `dir/..` folded (`plans/../migrations`
/// is shown as `migrations`). For display only: with symlinks the folded path can name another
/// place, so files are always opened by the path as given.
pub fn display_path(path: &Path) -> String {
    let mut parts: Vec<Component> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let folded: PathBuf = parts.iter().collect();
    if folded.as_os_str().is_empty() {
        ".".to_string()
    } else {
        folded.display().to_string()
    }
}

/// Resolve a path recorded in a plan (relative to the plan file's directory).
pub fn resolve_from_plan(plan_path: &Path, recorded: &str) -> PathBuf {
    match plan_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(recorded),
        _ => PathBuf::from(recorded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("plans")).unwrap();
        fs::create_dir_all(root.join("migrations")).unwrap();
        assert_eq!(
            relative_path(&root.join("plans"), &root.join("migrations")).unwrap(),
            PathBuf::from("../migrations")
        );
        assert_eq!(
            relative_path(root, &root.join("migrations")).unwrap(),
            PathBuf::from("migrations")
        );
        assert_eq!(relative_path(root, root).unwrap(), PathBuf::from("."));
        assert_eq!(display_path(Path::new("plans/../migrations")), "migrations");
        assert_eq!(display_path(Path::new("./a/./b/../c")), "a/c");
        assert_eq!(display_path(Path::new("../x")), "../x");
        assert_eq!(display_path(Path::new("plans/..")), ".");
    }
}

#[cfg(test)]
mod round_trip_tests {
    use super::*;
    use crate::plan::model::*;

    fn plan() -> Plan {
        let mut plan = Plan {
            lint: None,
            format_version: PLAN_FORMAT_VERSION,
            plan_id: String::new(),
            created_at: "2026-11-26T10:00:00Z".into(),
            policy: PlannedPolicy {
                path: "plans/p.yaml".into(),
                sha256: "00".into(),
                database: "neondb".into(),
                role: "owner".into(),
                validation: Validation::SamplePercent(12.5),
                restore_point: RestorePointKind::BackupBranch,
                transaction: TransactionMode::PerMigration,
                lock_timeout_ms: 2000,
                statement_timeout_ms: 600_000,
                branch_ttl_s: 7200,
                max_lock_hold_ms: None,
                salt: "s".into(),
                verify: Some(VerifyFile {
                    path: "verify.sql".into(),
                    sha256: "ab".into(),
                }),
                api_rate_limit_per_min: Some(300),
                schemas: Vec::new(),
                verify_schema: false,
                notify: None,
            },
            migrations: PlannedMigrations {
                dir: "../migrations".into(),
                items: vec![PlannedMigration {
                    version: 3,
                    name: "idx".into(),
                    sha256: "cd".into(),
                    checksum: "18380923271103857050".into(),
                    no_transaction: true,
                }],
            },
            fleet: FleetSummary {
                source: "neon".into(),
                discovered: 3,
                planned: 2,
                excluded: vec![ExcludedTenant {
                    id: "p-3".into(),
                    reason: "listed in fleet.exclude".into(),
                }],
                unavailable: vec!["p-9".into()],
                catalog: None,
                connection_uris: 0,
            },
            waves: vec![
                PlannedWave {
                    name: "canary".into(),
                    concurrency: 1,
                    max_failures: Some(0),
                    max_failure_percent: Some(0.5),
                    bake_s: 600,
                    checks: Vec::new(),
                    approval: Default::default(),
                    tenants: vec![PlannedTenant {
                        id: "p-1".into(),
                        name: "acme".into(),
                        region: "aws-us-east-2".into(),
                    }],
                },
                PlannedWave {
                    name: "rest".into(),
                    concurrency: 8,
                    max_failures: None,
                    max_failure_percent: None,
                    bake_s: 0,
                    checks: Vec::new(),
                    approval: Default::default(),
                    tenants: vec![PlannedTenant::from_id("p-2")],
                },
            ],
        };
        plan.plan_id = compute_plan_id(&plan);
        plan
    }

    #[test]
    fn write_then_load_gives_the_same_plan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.plan.yaml");
        write_plan(&path, &plan()).unwrap();
        assert_eq!(load_plan(&path).unwrap(), plan());
        // Spelled as in the policy, not as a YAML tag.
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("validation:\n    sample_percent: 12.5\n"),
            "{text}"
        );
        // Nothing but the plan is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn edited_truncated_and_foreign_plans_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.plan.yaml");
        write_plan(&path, &plan()).unwrap();
        let text = fs::read_to_string(&path).unwrap();

        let edited = text.replace("- id: p-2", "- id: p-7");
        fs::write(&path, edited).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("does not match its plan_id"), "{message}");

        // Cut inside the last wave's tenant list: still valid YAML, but not the planned content.
        let cut = &text[..text.rfind("- id: p-2").unwrap()];
        fs::write(&path, cut).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("does not match its plan_id"), "{message}");

        let cut = &text[..text.find("fleet:").unwrap()];
        fs::write(&path, cut).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("missing field `fleet`"), "{message}");
        assert!(message.contains("regenerate it"), "{message}");

        fs::write(
            &path,
            text.replace("format_version: 2", "format_version: 3"),
        )
        .unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("plan format version 3"), "{message}");

        // A format-1 plan lists bare ids: the error names the version, not damage.
        let old = text
            .replace("format_version: 2", "format_version: 1")
            .replace(
                "  - id: p-1\n    name: acme\n    region: aws-us-east-2\n",
                "  - p-1\n",
            );
        assert!(old.contains("  - p-1\n"), "{old}");
        fs::write(&path, old).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("plan format version 1"), "{message}");
        assert!(message.contains("re-run `schemafleet plan`"), "{message}");

        // A policy given where a plan belongs.
        let policy = dir.path().join("rollout.yaml");
        fs::write(
            &policy,
            "fleet: {source: neon}\ndatabase: d\nrole: r\nsalt: s\nwaves:\n  - {name: all, percent: 100}\n",
        )
        .unwrap();
        let message = load_plan(&policy).unwrap_err().to_string();
        assert!(
            message.contains("this is a rollout policy, not a plan"),
            "{message}"
        );
        assert!(message.contains("schemafleet plan --policy"), "{message}");
        assert!(!message.contains("edited by hand"), "{message}");

        fs::write(
            &path,
            text.replace("concurrency: 8", "concurrency: 8\n  extra: 1"),
        )
        .unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(message.contains("unknown field `extra`"), "{message}");
    }

    /// The bytes [`write_plan`] writes for `plan`, without touching a disk.
    fn written_text(plan: &Plan) -> String {
        format!("{PLAN_HEADER}{}", serde_yaml::to_string(plan).unwrap())
    }

    #[test]
    fn the_fast_path_reads_written_plans_and_a_hand_edit_still_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.plan.yaml");
        write_plan(&path, &plan()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, written_text(&plan()));
        assert_eq!(
            super::super::fast_load::load_written(&text),
            Some(plan()),
            "{text}"
        );

        // A YAML error inside a tenant list is serde_yaml's, at its line.
        let line = text.lines().position(|line| line == "  - id: p-2").unwrap() + 1;
        fs::write(&path, text.replace("  - id: p-2", "  - id: [p-2")).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}:{line}:", path.display())),
            "{message}"
        );
        assert!(message.contains("edited by hand"), "{message}");
        // A field the tenants do not have: the line, and serde's words for it.
        let line = text
            .lines()
            .position(|line| line == "    name: acme")
            .unwrap()
            + 1;
        fs::write(&path, text.replace("    name: acme", "    nmae: acme")).unwrap();
        let message = load_plan(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}:{line}:", path.display()))
                && message.contains("unknown field `nmae`"),
            "{message}"
        );
        // A hand-edited layout serde_yaml reads (flow style, a comment) still loads, slowly.
        let relaid = text
            .replace("  - id: p-2\n", "  - {id: p-2}  # the second\n")
            .replace("    name: acme\n", "    # a comment\n    name: acme\n");
        assert_eq!(super::super::fast_load::load_written(&relaid), None);
        fs::write(&path, &relaid).unwrap();
        assert_eq!(load_plan(&path).unwrap(), plan());
    }

    fn arbitrary_tenants() -> impl proptest::strategy::Strategy<Value = Vec<PlannedTenant>> {
        use proptest::prelude::*;
        // Plain words mostly, and the characters that make the writer quote, escape or fold.
        let text = prop_oneof![
            4 => "[a-z][a-z0-9-]{0,10}",
            1 => "[ -~]{0,8}",
            1 => prop::sample::select(vec![
                "", "123", "1.5", "true", "null", "~", "- x", "a: b", "a #b", "it's", "café",
                "tab\tin", "line\nbreak", "ls\u{2028}x", "\u{1b}[0m", " lead", "trail ", "#x",
            ])
            .prop_map(str::to_string),
        ];
        proptest::collection::btree_map(text.clone(), (text.clone(), text), 0..6).prop_map(
            |tenants| {
                tenants
                    .into_iter()
                    .map(|(id, (name, region))| PlannedTenant { id, name, region })
                    .collect()
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the tenants are called, the fast path gives serde_yaml's plan or stands
        /// aside; and for plain ids and names it does not stand aside.
        #[test]
        fn the_fast_path_gives_serde_yamls_plan(
            lists in proptest::collection::vec(arbitrary_tenants(), 0..4),
        ) {
            let mut plan = plan();
            let template = plan.waves[0].clone();
            plan.waves = lists
                .into_iter()
                .enumerate()
                .map(|(idx, tenants)| PlannedWave {
                    name: format!("w{idx}"),
                    tenants,
                    ..template.clone()
                })
                .collect();
            let text = written_text(&plan);
            let slow: Plan = serde_yaml::from_str(&text).unwrap();
            proptest::prop_assert_eq!(&slow, &plan);
            let fast = super::super::fast_load::load_written(&text);
            if let Some(fast) = &fast {
                proptest::prop_assert_eq!(fast, &slow);
            }
            let plain = |text: &str| {
                text.is_empty()
                    || (text.starts_with(|c: char| c.is_ascii_lowercase())
                        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            };
            let all_plain = plan.tenants().all(|(tenant, _)| {
                !tenant.id.is_empty() && plain(&tenant.id) && plain(&tenant.name) && plain(&tenant.region)
            });
            proptest::prop_assert!(fast.is_some() || !all_plain, "{}", text);
        }

        /// A written plan edited at any line in any of these ways: the fast path gives what
        /// serde_yaml gives, or stands aside (and serde_yaml then names the error).
        #[test]
        fn an_edited_plan_is_never_read_differently(
            line_idx in 0usize..200,
            edit in 0u8..8,
        ) {
            let mut plan = plan();
            plan.waves[1].tenants = (0..4)
                .map(|idx| PlannedTenant {
                    id: format!("p-{idx}"),
                    name: format!("n{idx}"),
                    region: "r".into(),
                })
                .collect();
            let text = written_text(&plan);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let idx = line_idx % lines.len();
            match edit {
                0 => { lines.remove(idx); }
                1 => lines.insert(idx, lines[idx].clone()),
                2 => lines.insert(idx, String::new()),
                3 => lines[idx].insert(0, ' '),
                4 => { lines[idx] = lines[idx].replacen(' ', "", 1); }
                5 => lines[idx].push_str(" # note"),
                6 => { lines[idx] = lines[idx].replacen(": ", ":  ", 1); }
                _ => lines.insert(idx, "  tenants: []".into()),
            }
            let edited = lines.join("\n") + "\n";
            if let Some(fast) = super::super::fast_load::load_written(&edited) {
                let slow: Result<Plan, _> = serde_yaml::from_str(&edited);
                proptest::prop_assert_eq!(Some(&fast), slow.as_ref().ok(), "{}", edited);
            }
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("p.plan.yaml");
        assert!(write_plan(&path, &plan()).is_err());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
