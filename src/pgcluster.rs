//! A real PostgreSQL server that the project starts (or attaches to) for tests, the demo, the
//! benchmark and the local emulator.
//!
//! Server binaries are found on `PATH` or under `/usr/lib/postgresql/*/bin` (highest version).
//! When we run as root, every server binary runs as the `postgres` system user through
//! `runuser`, because `initdb` and `postgres` refuse to run as root.
//!
//! **Invariant:** the superuser password exists only in memory and in the cluster itself: it is
//! handed to `initdb` through a pwfile that is deleted right after, and it is re-randomised on
//! every start of a reused data directory, so no file we leave behind holds it.
//! **Invariant:** a cluster we started is stopped (`pg_ctl stop -m fast`) by [`PgCluster::stop`]
//! or, best-effort, on drop; a temporary data directory is removed with it.
//! **Invariant:** an attached cluster is never stopped or modified by this module.
//! **Invariant:** an existing directory is used only when it holds our marker file
//! ([`DATA_DIR_MARKER`]); anything else is refused before it is changed in any way (no chown,
//! no chmod, no server started in it). A directory we create holds the marker, the cluster in
//! `pgdata/`, the server log and the unix socket; a kept one is never removed by us.
//! **Invariant:** no path reaches `pg_ctl`'s shell command unless it holds only plain
//! characters (see `check_path_characters`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::secret::SecretUri;

/// Why a cluster could not be found, started or attached.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under \
         /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
    )]
    BinariesNotFound,
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); its output:\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot pick a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("cannot attach to the PostgreSQL server: {0}")]
    Attach(String),
    #[error("cannot set the superuser password of the cluster in {path}: {message}")]
    Password { path: PathBuf, message: String },
    /// A directory we were given but will not use; nothing in it was changed.
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// The file that marks a directory as created by us: the only kind of existing directory a
/// cluster is started in, so we never take over a directory or another cluster we were pointed
/// at by mistake.
pub const DATA_DIR_MARKER: &str = "schemafleet-emulator";

/// The cluster's own data directory inside ours.
const PGDATA: &str = "pgdata";

const MARKER_TEXT: &str = "This directory was created by schemafleet's emulator (`--data-dir`). It \
holds the emulator's PostgreSQL cluster (pgdata/) and its log.\nThe emulator reuses a directory \
only when this file is in it.\n";

/// How to start a cluster. Fields are public so callers build it explicitly (no `Default`).
#[derive(Debug, Clone)]
pub struct PgClusterConfig {
    /// Keep the cluster here (reused when it already holds one); `None` = a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Trade durability for speed: fsync, synchronous_commit, full_page_writes and autovacuum
    /// off, bigger shared_buffers. Callers that measure should print
    /// [`PgCluster::settings_summary`].
    pub tuned_for_benchmark: bool,
    /// Enough for a fleet of tenants each holding a few connections.
    pub max_connections: u32,
}

impl PgClusterConfig {
    /// A throwaway cluster in a temporary directory, sized for a fleet.
    pub fn temporary() -> Self {
        Self {
            data_dir: None,
            tuned_for_benchmark: false,
            max_connections: 400,
        }
    }
}

/// A running PostgreSQL server: one we started, or one we attached to.
pub struct PgCluster {
    superuser_url: SecretUri,
    host: String,
    port: u16,
    bin_dir: Option<PathBuf>,
    /// Set when we started the server (and so must stop it).
    owned: Option<OwnedServer>,
    settings_summary: String,
}

/// A server we started. Its directory (`root`) holds the marker file, the cluster's data
/// directory (`pgdata/`), the server log and the unix socket.
struct OwnedServer {
    root: PathBuf,
    /// `root/pgdata`.
    pgdata: PathBuf,
    remove_root: bool,
    run_as_postgres: bool,
    stopped: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("superuser_url", &self.superuser_url)
            .field("data_dir", &self.owned.as_ref().map(|owned| &owned.root))
            .finish()
    }
}

impl PgCluster {
    /// Start a cluster (initdb first unless the data directory already holds one).
    pub async fn start(config: PgClusterConfig) -> Result<PgCluster, PgClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as_postgres = running_as_root();
        let (root, created) = match &config.data_dir {
            Some(path) => prepare_kept_dir(&absolute(path)?, run_as_postgres).await?,
            None => (create_temporary_dir(run_as_postgres)?, true),
        };
        // From here on, dropping `owned` stops the server and removes a directory we created
        // until the cluster in it is initialised (a kept one is kept from then on).
        let mut owned = OwnedServer {
            pgdata: root.join(PGDATA),
            root: root.clone(),
            remove_root: created,
            run_as_postgres,
            stopped: true,
        };
        let data_dir = owned.pgdata.clone();
        let password = random_password();
        let already_initialised = data_dir.join("PG_VERSION").exists();
        if !already_initialised {
            // A leftover of an initdb killed half-way, inside our own directory.
            if data_dir.exists() {
                std::fs::remove_dir_all(&data_dir).map_err(|source| PgClusterError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
            }
            init_cluster(&bin_dir, &root, &data_dir, &password, run_as_postgres).await?;
        }
        owned.remove_root = config.data_dir.is_none();

        let port = free_port()?;
        let settings = server_settings(&config, port, &root);
        let options = settings
            .iter()
            .map(|(key, value)| format!("-c {key}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        let log_file = root.join("server.log");
        let pg_ctl = bin_dir.join("pg_ctl");
        run_server_binary(
            &pg_ctl,
            &[
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                data_dir.as_os_str(),
                "-l".as_ref(),
                log_file.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
            run_as_postgres,
        )
        .await
        .map_err(|error| append_log(error, &log_file))?;
        owned.stopped = false;

        if already_initialised {
            // The old password is not kept anywhere; set a fresh one over the trusted socket.
            set_superuser_password(&root, port, &password).await?;
        }

        let superuser_url = SecretUri::new(format!(
            "postgresql://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=disable"
        ));
        let settings_summary = settings
            .iter()
            .filter(|(key, _)| !matches!(*key, "port" | "unix_socket_directories"))
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(PgCluster {
            superuser_url,
            host: "127.0.0.1".to_string(),
            port,
            bin_dir: Some(bin_dir),
            owned: Some(owned),
            settings_summary,
        })
    }

    /// Use an existing server through its superuser URL; it is never stopped by us.
    pub async fn attach(url: SecretUri) -> Result<PgCluster, PgClusterError> {
        let config: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|error| PgClusterError::Attach(format!("the URL does not parse: {error}")))?;
        let host = config
            .get_hosts()
            .iter()
            .find_map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|error| {
                    PgClusterError::Attach(crate::secret::redact_uri(&error.to_string()))
                })?;
        let connection_task = tokio::spawn(connection);
        let is_superuser = client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
            .map_err(|error| PgClusterError::Attach(error.to_string()))?;
        drop(client);
        let _ = connection_task.await;
        if !is_superuser {
            return Err(PgClusterError::Attach(
                "the role in the URL is not a superuser; the emulator creates roles and databases"
                    .to_string(),
            ));
        }
        Ok(PgCluster {
            superuser_url: url,
            host,
            port,
            bin_dir: find_bin_dir().ok(),
            owned: None,
            settings_summary: "attached to an existing server (settings not ours)".to_string(),
        })
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres?sslmode=disable`.
    pub fn superuser_url(&self) -> &SecretUri {
        &self.superuser_url
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where `postgres`, `pg_dump` and `psql` live; `None` for an attached server without local
    /// binaries.
    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }

    /// The cluster's data directory, for a cluster we started.
    pub fn data_dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|owned| owned.pgdata.as_path())
    }

    /// The directory the cluster lives in (`--data-dir`, or the temporary one removed on stop),
    /// for a cluster we started.
    pub fn root_dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|owned| owned.root.as_path())
    }

    /// The directory holding the server's unix socket (trust auth), for a cluster we started.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|owned| owned.root.as_path())
    }

    /// The server settings we chose, e.g. `fsync=off synchronous_commit=off ...`, for reports.
    pub fn settings_summary(&self) -> &str {
        &self.settings_summary
    }

    /// Restart a server we started (`pg_ctl restart -m fast`): every session is cut as in a
    /// real restart, and the server comes back on the same port with the same password. Tests
    /// use it to show that what talks to the server rides the restart out.
    pub async fn restart(&self) -> Result<(), PgClusterError> {
        let (Some(owned), Some(bin_dir)) = (&self.owned, &self.bin_dir) else {
            return Err(PgClusterError::Attach(
                "cannot restart a server this process did not start".to_string(),
            ));
        };
        let log_file = owned.root.join("server.log");
        run_server_binary(
            &bin_dir.join("pg_ctl"),
            &[
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                owned.pgdata.as_os_str(),
                "-l".as_ref(),
                log_file.as_os_str(),
                "restart".as_ref(),
                "-m".as_ref(),
                "fast".as_ref(),
            ],
            owned.run_as_postgres,
        )
        .await
        .map_err(|error| append_log(error, &log_file))?;
        Ok(())
    }

    /// Stop the server (fast shutdown) and remove a temporary data directory.
    pub async fn stop(mut self) -> Result<(), PgClusterError> {
        let Some(mut owned) = self.owned.take() else {
            return Ok(());
        };
        let result = match &self.bin_dir {
            Some(bin_dir) => {
                run_server_binary(
                    &bin_dir.join("pg_ctl"),
                    &[
                        "-w".as_ref(),
                        "-D".as_ref(),
                        owned.pgdata.as_os_str(),
                        "stop".as_ref(),
                        "-m".as_ref(),
                        "fast".as_ref(),
                    ],
                    owned.run_as_postgres,
                )
                .await
            }
            None => Ok(String::new()),
        };
        // A server that is already gone (killed, or its data directory removed) counts as stopped.
        let already_gone = !owned.pgdata.join("postmaster.pid").exists();
        if result.is_ok() || already_gone {
            owned.stopped = true;
        }
        let result = if already_gone {
            Ok(String::new())
        } else {
            result
        };
        // Dropping `owned` removes a temporary directory (and retries the stop if it failed).
        drop(owned);
        result.map(|_| ())
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        if !self.stopped
            && let Ok(bin_dir) = find_bin_dir()
        {
            let pg_ctl = bin_dir.join("pg_ctl");
            let mut command = blocking_command(&pg_ctl, self.run_as_postgres);
            command
                .arg("-w")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["stop", "-m", "fast"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = command.status();
        }
        if self.remove_root {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// `PATH` first (what the user chose), then the highest `/usr/lib/postgresql/N/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PgClusterError> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                // PATH entries are often symlinks into the versioned directory that also holds
                // pg_dump and psql of the matching version; prefer that directory.
                let resolved = std::fs::canonicalize(dir.join("postgres"))
                    .ok()
                    .and_then(|binary| binary.parent().map(Path::to_path_buf));
                return Ok(match resolved {
                    Some(real_dir) if has_all(&real_dir) => real_dir,
                    _ => dir,
                });
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(PgClusterError::BinariesNotFound)
}

fn server_settings(
    config: &PgClusterConfig,
    port: u16,
    socket_dir: &Path,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("port", port.to_string()),
        ("listen_addresses", "127.0.0.1".to_string()),
        (
            "unix_socket_directories",
            // Safe to quote: the path holds no quote (see check_path_characters).
            format!("'{}'", socket_dir.display()),
        ),
        ("max_connections", config.max_connections.to_string()),
        // Tests and local fleets never need crash safety, and fsync dominates CREATE DATABASE.
        ("fsync", "off".to_string()),
        ("max_wal_size", "256MB".to_string()),
        ("checkpoint_timeout", "30min".to_string()),
    ];
    if config.tuned_for_benchmark {
        settings.extend([
            ("synchronous_commit", "off".to_string()),
            ("full_page_writes", "off".to_string()),
            ("shared_buffers", "1GB".to_string()),
            // With a database per tenant, the launcher starts a worker in another database
            // every naptime / databases (every 60 ms for 1,000 tenants): a process start as
            // costly as a tenant's connection, at random moments of every measured mode.
            ("autovacuum", "off".to_string()),
            // The benchmark counts the statements tenants' sessions run (top level, so a DO
            // block is one); enough entries for a database per tenant and branch.
            ("shared_preload_libraries", "pg_stat_statements".to_string()),
            ("pg_stat_statements.max", "50000".to_string()),
            ("pg_stat_statements.save", "off".to_string()),
        ]);
    }
    settings
}

async fn init_cluster(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    password: &str,
    run_as_postgres: bool,
) -> Result<(), PgClusterError> {
    // The pwfile lives in our own directory (which `postgres` can read) only during initdb.
    let pwfile = root.join(format!("pw-{}", random_suffix()));
    write_private_file(&pwfile, password, run_as_postgres)?;
    let result = run_server_binary(
        &bin_dir.join("initdb"),
        &[
            "-D".as_ref(),
            data_dir.as_os_str(),
            "-N".as_ref(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
            "--auth-local=trust".as_ref(),
            "--auth-host=scram-sha-256".as_ref(),
            "--pwfile".as_ref(),
            pwfile.as_os_str(),
        ],
        run_as_postgres,
    )
    .await;
    let _ = std::fs::remove_file(&pwfile);
    result.map(|_| ())
}

async fn set_superuser_password(
    socket_dir: &Path,
    port: u16,
    password: &str,
) -> Result<(), PgClusterError> {
    let to_error = |message: String| PgClusterError::Password {
        path: socket_dir.to_path_buf(),
        message,
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| to_error(error.to_string()))?;
    let connection_task = tokio::spawn(connection);
    // A SCRAM verifier, not the password: the statement may reach a log. Its base64 alphabet
    // holds no quote, so quoting it literally is safe.
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let statement = format!("ALTER ROLE postgres PASSWORD '{verifier}'");
    let result = client.batch_execute(&statement).await;
    drop(client);
    let _ = connection_task.await;
    result.map_err(|error| to_error(error.to_string()))
}

/// Run a server binary, as `postgres` when we are root, and return its output.
async fn run_server_binary(
    program: &Path,
    args: &[&std::ffi::OsStr],
    run_as_postgres: bool,
) -> Result<String, PgClusterError> {
    let mut command = if run_as_postgres {
        let mut command = tokio::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        tokio::process::Command::new(program)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        // pg_ctl's backgrounded server inherits these pipes: redirecting its output to the
        // log file (-l) keeps `output()` from waiting for the server to exit.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        // Its own process group: a Ctrl-C in the terminal reaches us, and we stop the server in
        // order, instead of the server shutting down under our feet.
        .process_group(0)
        .kill_on_drop(true);
    let shown = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = command
        .output()
        .await
        .map_err(|source| PgClusterError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(PgClusterError::Command {
            command: shown,
            status: output.status.to_string(),
            output: text,
        })
    }
}

fn blocking_command(program: &Path, run_as_postgres: bool) -> std::process::Command {
    if run_as_postgres {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command.current_dir("/");
        command
    } else {
        std::process::Command::new(program)
    }
}

fn append_log(error: PgClusterError, log_file: &Path) -> PgClusterError {
    match error {
        PgClusterError::Command {
            command,
            status,
            output,
        } => {
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            PgClusterError::Command {
                command,
                status,
                output: format!("{output}\nserver log ({}):\n{tail}", log_file.display()),
            }
        }
        other => other,
    }
}

fn running_as_root() -> bool {
    // The effective uid is the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Characters a server path may hold: `pg_ctl` runs the server through `/bin/sh` with the data
/// directory in double quotes and our settings (the socket directory in single quotes), so `$`,
/// backquotes, quotes, backslashes and the like would be interpreted; commas split
/// `unix_socket_directories`.
fn check_path_characters(path: &Path) -> Result<(), PgClusterError> {
    let text = path.to_str().ok_or_else(|| PgClusterError::Refused {
        path: path.to_path_buf(),
        reason: "the path is not valid UTF-8; pick a plain path".to_string(),
    })?;
    match text
        .chars()
        .find(|c| !(c.is_alphanumeric() || "/._-+@:~ ".contains(*c)))
    {
        Some(bad) => Err(PgClusterError::Refused {
            path: path.to_path_buf(),
            reason: format!(
                "the path holds {bad:?}, which the server's start command would interpret; use \
                 letters, digits, spaces and / . _ - + @ : ~ only"
            ),
        }),
        None => Ok(()),
    }
}

/// Check a `--data-dir` before touching anything: reuse it only when we created it (the marker
/// file), else create it when it does not exist yet and `postgres` can reach its parent.
/// Returns the directory and whether we created it now.
async fn prepare_kept_dir(
    path: &Path,
    run_as_postgres: bool,
) -> Result<(PathBuf, bool), PgClusterError> {
    check_path_characters(path)?;
    let refuse = |reason: String| PgClusterError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(refuse(
                "exists and is not a directory; pass a path that does not exist yet (the \
                 emulator creates it) or omit --data-dir for a temporary cluster"
                    .to_string(),
            ));
        }
        Ok(_) => {
            let marker = std::fs::symlink_metadata(path.join(DATA_DIR_MARKER));
            if marker.is_ok_and(|marker| marker.is_file()) {
                return Ok((path.to_path_buf(), false));
            }
            let what = if path.join("PG_VERSION").exists() {
                "holds a PostgreSQL cluster without the emulator's marker file (someone else's, or \
                 an older emulator's), and the emulator never takes one over: pass a new path, or \
                 serve from a running server with --attach URL"
            } else {
                "exists but was not created by the emulator (it has no schemafleet-emulator file), \
                 so it is left alone: pass a path that does not exist yet (the emulator creates \
                 it) or omit --data-dir for a temporary cluster"
            };
            return Err(refuse(what.to_string()));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(refuse(format!("cannot be read: {error}"))),
    }
    let parent = path
        .parent()
        .filter(|parent| parent.is_dir())
        .ok_or_else(|| {
            refuse(
                "its parent directory does not exist; create the parent first or pick another path"
                    .to_string(),
            )
        })?;
    if run_as_postgres && !postgres_can_enter(parent).await {
        return Err(refuse(format!(
            "the server runs as the `postgres` user, which cannot reach {}; pick a path under a \
             directory it can enter (such as /var/tmp), or omit --data-dir for a temporary cluster",
            parent.display()
        )));
    }
    create_our_dir(path, run_as_postgres)?;
    Ok((path.to_path_buf(), true))
}

/// A fresh directory for a throwaway cluster, under `SCHEMAFLEET_PG_TMPDIR` or `/dev/shm`.
fn create_temporary_dir(run_as_postgres: bool) -> Result<PathBuf, PgClusterError> {
    let path = temporary_dir_path();
    check_path_characters(&path)?;
    create_our_dir(&path, run_as_postgres)?;
    Ok(path)
}

/// Create `path` (not its parents) private to the server's user, with the marker in it.
fn create_our_dir(path: &Path, run_as_postgres: bool) -> Result<(), PgClusterError> {
    use std::os::unix::fs::DirBuilderExt;
    let to_error = |source| PgClusterError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(to_error)?;
    let marker = path.join(DATA_DIR_MARKER);
    let written = std::fs::write(&marker, MARKER_TEXT)
        .map_err(to_error)
        .and_then(|()| {
            if run_as_postgres {
                chown_to_postgres(path)?;
                chown_to_postgres(&marker)?;
            }
            Ok(())
        });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
    written
}

/// Whether the `postgres` user can enter `dir` (every directory above it included), asked of
/// the kernel as that user, so ACLs and groups count.
async fn postgres_can_enter(dir: &Path) -> bool {
    tokio::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .status()
        .await
        .is_ok_and(|status| status.success())
}

fn chown_to_postgres(path: &Path) -> Result<(), PgClusterError> {
    let (uid, gid) = postgres_ids().ok_or_else(|| PgClusterError::DataDir {
        path: path.to_path_buf(),
        source: std::io::Error::other(
            "running as root but there is no `postgres` system user; install the \
             `postgresql` package (it creates one)",
        ),
    })?;
    let to_error = |source| PgClusterError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(to_error)
}

fn write_private_file(path: &Path, text: &str, chown: bool) -> Result<(), PgClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let to_error = |source| PgClusterError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(to_error)?;
    file.write_all(text.as_bytes()).map_err(to_error)?;
    if chown && let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(to_error)?;
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, PgClusterError> {
    std::path::absolute(path).map_err(|source| PgClusterError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Temporary clusters go to memory (`/dev/shm`) when it exists: creating and removing hundreds
/// of databases on a disk mounted with online discard takes minutes (measured here: removing
/// a 200-tenant cluster, 61k files, took 151 s on /tmp and well under a second in tmpfs).
/// `SCHEMAFLEET_PG_TMPDIR` overrides the choice.
fn temporary_dir_path() -> PathBuf {
    let base = std::env::var_os("SCHEMAFLEET_PG_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            shm.is_dir().then_some(shm)
        })
        .unwrap_or_else(std::env::temp_dir);
    // Short names keep the unix socket path under the 107-byte limit.
    base.join(format!("sfpg-{}", random_suffix()))
}

fn random_suffix() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(10)
        .map(|byte| char::from(byte).to_ascii_lowercase())
        .collect()
}

/// Alphanumeric only, so it can be embedded in SQL literals and URIs without escaping.
fn random_password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn free_port() -> Result<u16, PgClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(PgClusterError::Port)?;
    let port = listener.local_addr().map_err(PgClusterError::Port)?.port();
    Ok(port)
}
