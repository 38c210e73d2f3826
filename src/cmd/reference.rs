//! Reference fingerprints for `drift --schema` (and `baseline`): built once per set of
//! migrations on a throwaway database, then read from a cache keyed by the migrations'
//! checksums and the schema filter.
//!
//! **Invariant:** a cache entry is only ever used for exactly the migrations (version, name,
//! SHA-256) and schema filter it was built from; an edited file is a new key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::cli::ReferenceArgs;
use crate::fingerprint::SchemaFilter;
use crate::migrations::MigrationSet;
use crate::pg::reference::{ReferenceFingerprints, build_references};
use crate::secret::SecretUri;

/// Bumped when the fingerprint query changes what it records, so old entries are not reused.
const CACHE_FORMAT: &str = "schemafleet-reference-v1";

/// Where the references come from and where they are kept.
pub struct ReferenceConfig {
    /// The server the throwaway database is made on; needed only when the cache misses.
    pub server: Option<SecretUri>,
    pub cache_dir: PathBuf,
    pub filter: SchemaFilter,
}

impl ReferenceConfig {
    /// From the command line: the reference server, the cache and the schema filter
    /// (`--schemas`, else the policy's `schemas:`, else the default).
    pub fn from_args(
        args: &ReferenceArgs,
        policy_schemas: &[String],
    ) -> anyhow::Result<ReferenceConfig> {
        crate::fingerprint::check_schema_names(&args.schemas)
            .map_err(|message| anyhow::anyhow!("--schemas: {message}"))?;
        Ok(ReferenceConfig {
            server: args
                .reference_url
                .as_ref()
                .filter(|url| !url.is_empty())
                .map(|url| SecretUri::new(url.clone())),
            cache_dir: args
                .reference_cache
                .clone()
                .unwrap_or_else(default_cache_dir),
            filter: SchemaFilter::chosen(&args.schemas, policy_schemas),
        })
    }
}

/// `$XDG_CACHE_HOME/schemafleet`, else `~/.cache/schemafleet`, else `.schemafleet-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("schemafleet");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        return PathBuf::from(home).join(".cache").join("schemafleet");
    }
    PathBuf::from(".schemafleet-cache")
}

/// The cache key: the migrations' identities and the filter.
pub fn cache_key(set: &MigrationSet, filter: &SchemaFilter) -> String {
    let mut hasher = Sha256::new();
    hasher.update(CACHE_FORMAT.as_bytes());
    hasher.update(serde_json::to_vec(filter).unwrap_or_default());
    for migration in &set.migrations {
        hasher.update(
            format!(
                "\n{} {} {} {}",
                migration.version, migration.name, migration.checksum, migration.sha256
            )
            .as_bytes(),
        );
    }
    hasher.finalize()[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The references of `set`, from the cache or built (and then cached). The bool says whether
/// they came from the cache.
pub async fn references(
    set: &MigrationSet,
    config: &ReferenceConfig,
) -> anyhow::Result<(ReferenceFingerprints, bool)> {
    let path = config
        .cache_dir
        .join(format!("reference-{}.json", cache_key(set, &config.filter)));
    if let Some(references) = read_cache(&path) {
        return Ok((references, true));
    }
    let Some(server) = &config.server else {
        anyhow::bail!(
            "no cached reference fingerprints for these migrations in {}: give --reference-url \
             (a PostgreSQL server where the role may CREATE DATABASE) to build them",
            config.cache_dir.display()
        );
    };
    let references = build_references(server, &set.migrations, &config.filter)
        .await
        .context(
            "building the reference fingerprints on an empty database (the migrations must \
             create every table they use; a schema made outside them has no reference)",
        )?;
    write_cache(&path, &references)?;
    Ok((references, false))
}

/// A cache entry that cannot be read or parsed is rebuilt, not an error.
fn read_cache(path: &Path) -> Option<ReferenceFingerprints> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Written to a temporary name and renamed, so a concurrent reader never sees half an entry.
fn write_cache(path: &Path, references: &ReferenceFingerprints) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the reference cache {}", dir.display()))?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, serde_json::to_vec(references)?)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
