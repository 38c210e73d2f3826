//! Hostile or mistaken input meets the emulator and the CLI: directories the emulator must not
//! take over, paths that would reach a shell, an empty API key, tenants reaching each other's
//! databases, and escape sequences in tenant data reaching the operator's terminal.

use crate::common;
use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use schemafleet::emulator::{ApiKeySource, LocalFleet, LocalFleetConfig};
use serde_json::json;

use common::Api;
use support::{TestFleet, connect, reachable_tempdir, text};

fn with_data_dir(path: &Path) -> LocalFleetConfig {
    LocalFleetConfig {
        data_dir: Some(path.to_path_buf()),
        ..LocalFleetConfig::for_tests()
    }
}

/// (mode, uid, gid) of a path, to show it was not changed.
fn ownership(path: &Path) -> (u32, u32, u32) {
    let metadata = std::fs::metadata(path).expect("metadata");
    (metadata.mode(), metadata.uid(), metadata.gid())
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|metadata| metadata.uid() == 0)
        .unwrap_or(false)
}

/// Directories the emulator did not create are refused before anything in them changes: a
/// directory with a file, one holding (what looks like) someone else's cluster, a file, a path
/// whose parent `postgres` cannot reach, and paths the server's start command would interpret.
#[tokio::test]
async fn data_dirs_the_emulator_did_not_create_are_refused_unchanged() {
    let dir = reachable_tempdir();
    let with_file = dir.path().join("with-file");
    std::fs::create_dir(&with_file).unwrap();
    std::fs::set_permissions(&with_file, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(with_file.join("notes.txt"), "mine").unwrap();
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).unwrap();
    std::fs::write(cluster.join("PG_VERSION"), "15\n").unwrap();
    let plain_file = dir.path().join("file");
    std::fs::write(&plain_file, "x").unwrap();
    let cases = [
        (&with_file, "was not created by the emulator"),
        (
            &cluster,
            "holds a PostgreSQL cluster without the emulator's marker",
        ),
        (&plain_file, "is not a directory"),
    ];
    for (path, expected) in cases {
        let before = ownership(path);
        let error = LocalFleet::start(with_data_dir(path))
            .await
            .expect_err("refused");
        let message = format!("{error:#}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
        assert_eq!(ownership(path), before, "{}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(with_file.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(&cluster).unwrap().count(),
        1,
        "nothing added"
    );

    // `$(…)` would run in pg_ctl's shell; a quote would break the socket directory setting.
    let pwned = dir.path().join("pwned");
    for name in [
        format!("q$(touch${{IFS}}{})", pwned.display()),
        "q'x".to_string(),
        "q`id`".to_string(),
    ] {
        let path = dir.path().join(&name);
        let error = LocalFleet::start(with_data_dir(&path))
            .await
            .expect_err("refused");
        assert!(
            format!("{error:#}").contains("the server's start command would interpret"),
            "{error:#}"
        );
        assert!(!path.exists(), "{} was created", path.display());
    }
    assert!(!pwned.exists(), "the substitution ran");

    if running_as_root() {
        // Like `mktemp -d`: 0700 root, so `postgres` cannot reach anything below it.
        let private = tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap();
        let inside = private.path().join("emu");
        let error = LocalFleet::start(with_data_dir(&inside))
            .await
            .expect_err("refused");
        let message = format!("{error:#}");
        assert!(
            message.contains("`postgres` user, which cannot reach"),
            "{message}"
        );
        assert!(!inside.exists(), "nothing left behind");
    }
}

/// The emulator's own directory is reused on a restart with the same key (or says the key
/// changed), and its tenants are kept.
#[tokio::test]
async fn a_restart_on_the_emulators_own_data_dir_keeps_its_key() {
    let dir = reachable_tempdir();
    let data_dir = dir.path().join("emu");
    let fleet = LocalFleet::start(with_data_dir(&data_dir)).await.unwrap();
    assert_eq!(fleet.api_key_source(), ApiKeySource::New);
    let key = fleet.api_key().expose().to_string();
    fleet.seed(1, "", "tenant").await.unwrap();
    fleet.stop().await.unwrap();
    assert!(data_dir.join("schemafleet-emulator").is_file());

    let fleet = LocalFleet::start(with_data_dir(&data_dir)).await.unwrap();
    assert_eq!(fleet.api_key_source(), ApiKeySource::Kept);
    assert_eq!(fleet.api_key().expose(), key);
    assert_eq!(fleet.count_tenants("tenant"), 1);
    fleet.stop().await.unwrap();

    let fleet = LocalFleet::start(LocalFleetConfig {
        api_key: Some("napi_given".to_string()),
        ..with_data_dir(&data_dir)
    })
    .await
    .unwrap();
    assert_eq!(fleet.api_key_source(), ApiKeySource::Replaced);
    let api = Api::new(&fleet);
    assert_eq!(api.get("/projects").await.status, 200);
    let old = Api {
        key: key.clone(),
        ..Api::new(&fleet)
    };
    assert_eq!(old.get("/projects").await.status, 401);
    fleet.stop().await.unwrap();
}

/// An empty key would let every request in: refused before anything starts.
#[tokio::test]
async fn an_empty_api_key_is_refused() {
    let error = LocalFleet::start(LocalFleetConfig {
        api_key: Some(String::new()),
        ..LocalFleetConfig::for_tests()
    })
    .await
    .expect_err("refused");
    assert!(
        format!("{error:#}").contains("API key is empty"),
        "{error:#}"
    );
}

/// `--attach` from the environment (so the superuser password is not in `ps`), and an unsafe
/// `SCHEMAFLEET_PG_TMPDIR` refused before a server starts.
#[test]
fn attach_url_from_the_environment_and_unsafe_tmpdir() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .arg("emulator")
        .env(
            "EMULATOR_ATTACH_URL",
            format!(
                "postgresql://postgres:pw_SECRET_attach@127.0.0.1:{port}/postgres?sslmode=disable"
            ),
        )
        .output()
        .expect("runs");
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(2), "{shown}");
    assert!(shown.contains("cannot attach"), "{shown}");
    assert!(!shown.contains("pw_SECRET_attach"), "{shown}");

    let dir = reachable_tempdir();
    let unsafe_base = dir.path().join("a'b");
    std::fs::create_dir(&unsafe_base).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .arg("emulator")
        .env("SCHEMAFLEET_PG_TMPDIR", &unsafe_base)
        .env_remove("EMULATOR_ATTACH_URL")
        .output()
        .expect("runs");
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("the server's start command would interpret"),
        "{shown}"
    );
    assert_eq!(std::fs::read_dir(&unsafe_base).unwrap().count(), 0);
}

async fn connect_error(uri: &str) -> String {
    match tokio_postgres::connect(uri, tokio_postgres::NoTls).await {
        Ok(_) => format!("connected to {uri}"),
        Err(error) => error
            .as_db_error()
            .map_or_else(|| error.to_string(), |db| db.message().to_string()),
    }
}

/// A tenant role's URI turned to `database` on the emulator's backing server, past its proxy.
fn on_backing_server(
    fleet: &schemafleet::emulator::LocalFleet,
    tenant_uri: &str,
    database: &str,
) -> String {
    let backing = url::Url::parse(fleet.database_url().expose()).expect("a URI");
    let mut url = url::Url::parse(tenant_uri).expect("a URI");
    url.set_host(backing.host_str()).expect("a host");
    url.set_port(backing.port()).expect("a port");
    url.set_path(&format!("/{database}"));
    url.set_query(Some("sslmode=disable"));
    url.to_string()
}

fn database_of(uri: &str) -> String {
    url::Url::parse(uri).expect("a URI").path()[1..].to_string()
}

/// A tenant's role connects only to its own databases: not another tenant's seeded main, one
/// made by `POST /projects`, a branch copied with pg_dump, nor the emulator's own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_connect_to_each_others_databases() {
    let fleet = TestFleet::start(2).await;
    let api = Api::new(&fleet.fleet);
    let tenant_a = fleet.tenant("tenant-0001");
    let tenant_b = fleet.tenant("tenant-0002");
    let uri_a = tenant_a.connection_uri.expose().to_string();
    let uri_b = tenant_b.connection_uri.expose().to_string();

    let created = api
        .post("/projects", json!({"project": {"name": "posted"}}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let uri_c = created.body["connection_uris"][0]["connection_uri"]
        .as_str()
        .expect("connection uri")
        .to_string();

    // A session on A's main makes the branch copy take the pg_dump path.
    let session = connect(&uri_a).await;
    let branch = api
        .post(
            &format!("/projects/{}/branches", tenant_a.project_id),
            json!({"branch": {"name": "dumped"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(branch.status, 201, "{}", branch.text);
    api.wait_for_operations(&tenant_a.project_id).await;
    let branch_id = branch.body["branch"]["id"].as_str().expect("id");
    let uri_branch = api.connection_uri(&tenant_a.project_id, branch_id).await;
    drop(session);

    // The proxy only ever routes a role to its endpoint's database, so the isolation of the
    // databases themselves is checked where a role could bypass it: on the backing server.
    let physical = |project_id: &str, branch_id: &str| {
        let uri = fleet
            .fleet
            .branch_superuser_uri(project_id, branch_id)
            .expect("the branch's database");
        database_of(uri.expose())
    };
    let project_c = created.body["project"]["id"].as_str().expect("project id");
    let main_c = created.body["branch"]["id"].as_str().expect("branch id");
    let database_a = physical(&tenant_a.project_id, &tenant_a.branch_id);
    let database_b = physical(&tenant_b.project_id, &tenant_b.branch_id);
    let database_c = physical(project_c, main_c);
    let database_branch = physical(&tenant_a.project_id, branch_id);
    let attempts = [
        (&uri_a, database_b.clone()),
        (&uri_b, database_a.clone()),
        (&uri_a, database_c),
        (&uri_c, database_a),
        (&uri_b, database_branch),
        (&uri_a, "neon_emulator".to_string()),
    ];
    for (uri, database) in attempts {
        let error = connect_error(&on_backing_server(&fleet.fleet, uri, &database)).await;
        assert!(
            error.contains("permission denied for database"),
            "{database}: {error}"
        );
    }
    // Each still reaches its own.
    for uri in [&uri_a, &uri_b, &uri_c, &uri_branch] {
        connect(uri).await.batch_execute("SELECT 1").await.unwrap();
    }
    fleet.fleet.stop().await.unwrap();
}

/// An escape sequence in tenant data, quoted by PostgreSQL in an error detail, reaches `apply`'s
/// and `status`'s text escaped (`\x1b`), never raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_sequences_in_tenant_data_are_shown_escaped() {
    let fleet = TestFleet::start(1).await;
    connect(fleet.tenant("tenant-0001").connection_uri.expose())
        .await
        .batch_execute(
            "INSERT INTO accounts (email) VALUES
                 (E'x\\033]0;pwned\\007\\033[2J'), (E'x\\033]0;pwned\\007\\033[2J')",
        )
        .await
        .unwrap();
    let migrations = fleet.path("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__unique_email.sql"),
        "-- squawk-ignore require-concurrent-index-creation -- accounts is tiny here\nCREATE UNIQUE INDEX accounts_email_key ON accounts (email);\n",
    )
    .unwrap();
    fleet.write_policy(
        "validation: none\nrestore_point: none\nsalt: s\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 1\n",
    );
    fleet.plan(&migrations);
    for args in [
        vec!["apply", "policy.plan.yaml"],
        vec!["status", "policy.plan.yaml"],
    ] {
        let output = fleet.run(&args);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert!(
            shown.contains("x\\x1b]") && shown.contains("pwned\\x07"),
            "{}: {shown}",
            args[0]
        );
    }
    fleet.fleet.stop().await.unwrap();
}
