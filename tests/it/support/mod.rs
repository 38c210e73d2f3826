//! Helpers for end-to-end tests of the binary against the local fleet: a seeded fleet, policy
//! and tenants files in a temporary directory, and the `schemafleet` binary run with the right
//! environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use schemafleet::emulator::{LocalFleet, LocalFleetConfig, SeededTenant};

pub const SEED_SQL: &str = include_str!("../../../plans/demo-seed.sql");

/// A seeded local fleet and a working directory for plans and journals.
pub struct TestFleet {
    pub fleet: LocalFleet,
    pub tenants: Vec<SeededTenant>,
    pub dir: tempfile::TempDir,
}

impl TestFleet {
    pub async fn start(n_tenants: usize) -> TestFleet {
        TestFleet::start_with(LocalFleetConfig::for_tests(), n_tenants).await
    }

    pub async fn start_with(config: LocalFleetConfig, n_tenants: usize) -> TestFleet {
        TestFleet::start_seeded(config, n_tenants, SEED_SQL).await
    }

    /// A fleet whose tenants' mains hold `seed_sql` instead of the demo schema.
    pub async fn start_seeded(
        config: LocalFleetConfig,
        n_tenants: usize,
        seed_sql: &str,
    ) -> TestFleet {
        let fleet = LocalFleet::start(config)
            .await
            .expect("the local fleet starts");
        let tenants = fleet
            .seed(n_tenants, seed_sql, "tenant")
            .await
            .expect("seeding works");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut csv = String::from("id,name\n");
        for tenant in &tenants {
            csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
        }
        std::fs::write(dir.path().join("tenants.csv"), csv).expect("write tenants.csv");
        TestFleet {
            fleet,
            tenants,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write `policy.yaml` whose fleet is the seeded tenants file.
    pub fn write_policy(&self, body: &str) -> PathBuf {
        let text = format!(
            "fleet:\n  source: file\n  file: tenants.csv\ndatabase: neondb\nrole: neondb_owner\n{body}"
        );
        let path = self.path("policy.yaml");
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// Run the binary with this fleet's API environment.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_schemafleet"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NEON_API_URL", self.fleet.api_url())
            .env("NEON_API_KEY", self.fleet.api_key().expose())
            .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
            .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
            .env("SCHEMAFLEET_NO_PROGRESS", "1")
            .output()
            .expect("the binary runs")
    }

    /// `plan` with the repository's migrations; panics with the output when it fails.
    pub fn plan(&self, migrations: &Path) -> PathBuf {
        self.plan_with_summary(migrations).0
    }

    /// [`TestFleet::plan`], and the summary it printed.
    pub fn plan_with_summary(&self, migrations: &Path) -> (PathBuf, String) {
        let out = self.path("policy.plan.yaml");
        let summary = self.plan_printing(migrations, out.to_str().expect("utf-8 path"));
        (out, summary)
    }

    /// `plan` of `policy.yaml` with `migrations` into `out` (a release's own plan); returns
    /// `out`, panics with the output when planning fails.
    pub fn plan_at(&self, migrations: &Path, out: &str) -> String {
        self.plan_printing(migrations, out);
        out.to_string()
    }

    /// A Neon API client of this fleet that polls operations quickly.
    pub fn neon_client(&self) -> schemafleet::neon::NeonClient {
        let mut config = schemafleet::neon::ClientConfig::new(
            self.fleet.api_url(),
            schemafleet::secret::SecretString::new(self.fleet.api_key().expose()),
            100_000,
        );
        config.poll_interval = std::time::Duration::from_millis(20);
        schemafleet::neon::NeonClient::new(config).expect("a client")
    }

    /// `plan` into `out`; returns what it printed, panics with the output when it fails.
    fn plan_printing(&self, migrations: &Path, out: &str) -> String {
        let output = self.run(&[
            "plan",
            "--policy",
            "policy.yaml",
            "--migrations",
            migrations.to_str().expect("utf-8 path"),
            "--out",
            out,
        ]);
        assert!(output.status.success(), "plan failed: {}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn tenant(&self, name: &str) -> &SeededTenant {
        self.tenants
            .iter()
            .find(|tenant| tenant.name == name)
            .expect("a seeded tenant of that name")
    }
}

pub fn repo_migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {}", text(output)))
}

pub async fn connect(uri: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(uri, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect: {error}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// refinery's history rows (version, name), or empty when the table does not exist.
pub async fn history(uri: &str) -> Vec<(i32, String)> {
    let client = connect(uri).await;
    match client
        .query(
            "SELECT version, name FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
        Err(error) if error.code().map(|code| code.code()) == Some("42P01") => Vec::new(),
        Err(error) => panic!("reading history: {error}"),
    }
}

/// Schema (columns, constraints, indexes) and every row of every user table, as text.
pub async fn fingerprint(uri: &str) -> String {
    let client = connect(uri).await;
    let mut out = String::new();
    let queries = [
        "SELECT string_agg(format('%s.%s %s %s', table_name, column_name, data_type, column_default), E'\\n' ORDER BY table_name, ordinal_position) FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\\n' ORDER BY conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'",
    ];
    for query in queries {
        let row = client.query_one(query, &[]).await.expect("catalog query");
        out.push_str(&row.get::<_, Option<String>>(0).unwrap_or_default());
        out.push('\n');
    }
    let tables = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .await
        .expect("list tables");
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(
                &format!("SELECT t::text FROM public.{name} t ORDER BY 1"),
                &[],
            )
            .await
            .expect("read rows");
        out.push_str(&format!("{name}:\n"));
        for row in rows {
            out.push_str(&row.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

/// Give a tenant a row that makes V2's CHECK constraint fail.
pub async fn add_legacy_status(uri: &str) {
    let client = connect(uri).await;
    client
        .batch_execute(
            "INSERT INTO orders (account_id, total_cents, status) VALUES (1, 99, 'cancelled')",
        )
        .await
        .expect("insert a legacy row");
}

/// A temporary directory the `postgres` user can enter (the server runs as it when the tests
/// run as root, and the emulator refuses a `--data-dir` whose parent it cannot reach).
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("a temporary directory")
}
