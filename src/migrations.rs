//! Loads the versioned migrations of a directory (`V{n}__{name}.sql`) and fails loudly on anything
//! refinery's own loader would skip or misread.
//!
//! refinery's `load_sql_migrations` logs and skips badly named files and does not notice two files
//! with one version (see `crates-and-refinery.md` §2.2), so a typo would silently drop a
//! migration from a rollout. This loader is the only place that reads migration files.
//!
//! **Invariant:** a [`MigrationSet`] holds only well-named, non-empty, UTF-8 migrations with
//! unique versions, sorted by version; each carries refinery's checksum computed by refinery.
//! **Invariant:** a `-- no-transaction` migration holds exactly one SQL statement.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use sha2::{Digest, Sha256};

/// The first-line marker of a migration that must run outside a transaction (as sqlx spells it).
pub const NO_TRANSACTION_MARKER: &str = "-- no-transaction";

/// One versioned migration file, read and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    /// The `{name}` part of `V{n}__{name}.sql`.
    pub name: String,
    pub file_name: String,
    pub sql: String,
    /// SHA-256 of the file's bytes, lowercase hex: schemafleet's identity of the migration.
    pub sha256: String,
    /// refinery's checksum, as refinery stores it in its history table.
    pub checksum: u64,
    /// The file starts with `-- no-transaction`: run it alone, outside a transaction.
    pub no_transaction: bool,
}

/// The migrations of one directory, sorted by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub migrations: Vec<Migration>,
}

/// Why a migrations directory cannot be used. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot read the migrations directory {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read migration {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: {reason}; migration files must be named V{{version}}__{{name}}.sql with a positive version and a name of letters, digits and underscores, e.g. V3__add_orders_index.sql",
        path.display()
    )]
    BadName { path: PathBuf, reason: String },
    #[error(
        "{} and {} both have version {version}; give each migration its own version",
        first.display(),
        second.display()
    )]
    DuplicateVersion {
        version: i32,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: not UTF-8 (invalid byte at offset {offset}); save the file as UTF-8", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{}: the migration is empty (only whitespace or comments); add its SQL or delete the file", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: a `-- no-transaction` migration must hold exactly one statement, found {n_statements}; split it into one file per statement",
        path.display()
    )]
    NoTransactionNotSingle { path: PathBuf, n_statements: usize },
    #[error("{}: refinery rejects this migration: {message}", path.display())]
    Refinery { path: PathBuf, message: String },
}

impl fmt::Debug for Migration {
    // The SQL can be long; Debug shows the identity, not the body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("file_name", &self.file_name)
            .field("sha256", &self.sha256)
            .field("checksum", &self.checksum)
            .field("no_transaction", &self.no_transaction)
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// The file stem refinery knows the migration by, e.g. `V3__index_orders_account`.
    pub fn refinery_name(&self) -> String {
        format!("V{}__{}", self.version, self.name)
    }

    /// The migration as refinery's runner wants it.
    pub fn to_refinery(&self) -> refinery::Migration {
        refinery::Migration::unapplied(&self.refinery_name(), &self.sql).expect(
            "invariant: load() already built this migration with refinery from the same name and SQL",
        )
    }
}

impl MigrationSet {
    pub fn get(&self, version: i32) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |migration| migration.version)
            .ok()
            .map(|migration_idx| &self.migrations[migration_idx])
    }

    pub fn to_refinery(&self) -> Vec<refinery::Migration> {
        self.migrations.iter().map(Migration::to_refinery).collect()
    }
}

/// Read every `*.sql` file of `dir` (not recursive) as a migration. Other files are ignored
/// (a README, `.gitkeep`), except ones that look like a migration a typo hid (`V5__x.SQL`,
/// `V5__x.txt`, `x.sql.bak`): those are errors, since skipping them would silently leave a
/// migration out of the release.
pub fn load(dir: &Path) -> Result<MigrationSet, MigrationError> {
    let read_dir_error = |source| MigrationError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut sql_paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        if path.extension().is_some_and(|extension| extension == "sql") {
            sql_paths.push(path);
        } else if let Some(reason) = hidden_migration(&path) {
            return Err(MigrationError::BadName { path, reason });
        }
    }
    // Sorted so that the first error reported is the same on every machine.
    sql_paths.sort();

    let mut migrations = Vec::with_capacity(sql_paths.len());
    for path in sql_paths {
        migrations.push(load_file(&path)?);
    }
    migrations.sort_by_key(|migration: &Migration| migration.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrationError::DuplicateVersion {
                version: pair[0].version,
                first: dir.join(&pair[0].file_name),
                second: dir.join(&pair[1].file_name),
            });
        }
    }
    Ok(MigrationSet {
        dir: dir.to_path_buf(),
        migrations,
    })
}

/// Why a file that is not `*.sql` still looks like a migration, if it does.
fn hidden_migration(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let versioned = {
        let mut chars = name.chars();
        matches!(chars.next(), Some('v' | 'u')) && chars.next().is_some_and(|c| c.is_ascii_digit())
    };
    if name.ends_with(".sql") {
        Some("the extension must be `.sql` in lower case, or the file is skipped".to_string())
    } else if name.contains(".sql.") || versioned {
        Some(
            "it looks like a migration but does not end in `.sql`, so it would be skipped; rename it or move it out of the migrations directory"
                .to_string(),
        )
    } else {
        None
    }
}

fn load_file(path: &Path) -> Result<Migration, MigrationError> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (version, name) =
        parse_file_name(&file_name).map_err(|reason| MigrationError::BadName {
            path: path.to_path_buf(),
            reason,
        })?;
    let bytes = fs::read(path).map_err(|source| MigrationError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let sql = String::from_utf8(bytes).map_err(|error| MigrationError::NotUtf8 {
        path: path.to_path_buf(),
        offset: error.utf8_error().valid_up_to(),
    })?;
    let n_statements = count_statements(&sql);
    if n_statements == 0 {
        return Err(MigrationError::Empty {
            path: path.to_path_buf(),
        });
    }
    let no_transaction = has_no_transaction_marker(&sql);
    if no_transaction && n_statements != 1 {
        return Err(MigrationError::NoTransactionNotSingle {
            path: path.to_path_buf(),
            n_statements,
        });
    }
    let stem = format!("V{version}__{name}");
    let checksum = refinery::Migration::unapplied(&stem, &sql)
        .map_err(|error| MigrationError::Refinery {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?
        .checksum();
    Ok(Migration {
        version,
        name,
        file_name,
        sql,
        sha256,
        checksum,
        no_transaction,
    })
}

/// Split `V{n}__{name}.sql` into its version and name, or say what is wrong with it.
fn parse_file_name(file_name: &str) -> Result<(i32, String), String> {
    static FILE_NAME_RE: OnceLock<Regex> = OnceLock::new();
    let file_name_re = FILE_NAME_RE.get_or_init(|| {
        Regex::new(r"^V([0-9]+)__(\w+)\.sql$").expect("invariant: the pattern is a valid regex")
    });
    let Some(captures) = file_name_re.captures(file_name) else {
        let reason = if !file_name.starts_with('V') {
            "the name does not start with a capital V".to_string()
        } else if !file_name.contains("__") {
            "the version and the name must be separated by two underscores".to_string()
        } else {
            "the name is not V{version}__{name}.sql with a numeric version and a name of letters, digits and underscores".to_string()
        };
        return Err(reason);
    };
    let version: i32 = captures[1]
        .parse()
        .map_err(|_| format!("version {} does not fit in a 32-bit integer", &captures[1]))?;
    if version <= 0 {
        return Err("the version must be positive".to_string());
    }
    Ok((version, captures[2].to_string()))
}

fn has_no_transaction_marker(sql: &str) -> bool {
    let first_line = sql.lines().next().unwrap_or_default().trim_end();
    first_line
        .strip_prefix(NO_TRANSACTION_MARKER)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', ':']))
}

/// Lowercase hex SHA-256 (sha2 0.11's digest no longer implements `LowerHex`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Count the SQL statements in `sql`: `;`-separated pieces holding something other than
/// whitespace and comments. Quotes, quoted identifiers, dollar quotes and (nested) block comments
/// are skipped so a `;` inside them does not split a statement.
pub fn count_statements(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut n_statements = 0;
    let mut statement_has_content = false;
    let mut byte_idx = 0;
    while byte_idx < bytes.len() {
        let byte = bytes[byte_idx];
        match byte {
            b'-' if bytes.get(byte_idx + 1) == Some(&b'-') => {
                byte_idx = find_from(bytes, byte_idx, b"\n").map_or(bytes.len(), |end| end + 1);
            }
            b'/' if bytes.get(byte_idx + 1) == Some(&b'*') => {
                byte_idx = skip_block_comment(bytes, byte_idx);
            }
            b'\'' | b'"' => {
                statement_has_content = true;
                byte_idx = skip_quoted(bytes, byte_idx, byte);
            }
            b'$' => {
                statement_has_content = true;
                byte_idx = skip_dollar_quoted(bytes, byte_idx);
            }
            b';' => {
                if statement_has_content {
                    n_statements += 1;
                }
                statement_has_content = false;
                byte_idx += 1;
            }
            _ => {
                if !byte.is_ascii_whitespace() {
                    statement_has_content = true;
                }
                byte_idx += 1;
            }
        }
    }
    if statement_has_content {
        n_statements += 1;
    }
    n_statements
}

fn find_from(bytes: &[u8], start: usize, needle: &[u8]) -> Option<usize> {
    bytes[start..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|offset| start + offset)
}

/// Index just past the block comment starting at `start`; PostgreSQL nests block comments.
fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut byte_idx = start;
    while byte_idx < bytes.len() {
        if bytes[byte_idx..].starts_with(b"/*") {
            depth += 1;
            byte_idx += 2;
        } else if bytes[byte_idx..].starts_with(b"*/") {
            depth -= 1;
            byte_idx += 2;
            if depth == 0 {
                return byte_idx;
            }
        } else {
            byte_idx += 1;
        }
    }
    bytes.len()
}

/// Index just past the quoted string or identifier starting at `start` (a doubled quote escapes).
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut byte_idx = start + 1;
    while byte_idx < bytes.len() {
        if bytes[byte_idx] == quote {
            if bytes.get(byte_idx + 1) == Some(&quote) {
                byte_idx += 2;
                continue;
            }
            return byte_idx + 1;
        }
        byte_idx += 1;
    }
    bytes.len()
}

/// Index just past the `$tag$...$tag$` string starting at `start`, or past a lone `$` (a
/// positional parameter such as `$1`).
fn skip_dollar_quoted(bytes: &[u8], start: usize) -> usize {
    let tag_len = bytes[start + 1..]
        .iter()
        .position(|&byte| !(byte.is_ascii_alphanumeric() || byte == b'_'));
    match tag_len {
        Some(tag_len) if bytes[start + 1 + tag_len] == b'$' => {
            let tag_end = start + tag_len + 2;
            let tag = &bytes[start..tag_end];
            if tag[1..tag.len() - 1]
                .first()
                .is_some_and(|byte| byte.is_ascii_digit())
            {
                return tag_end;
            }
            find_from(bytes, tag_end, tag).map_or(bytes.len(), |end| end + tag.len())
        }
        _ => start + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file_name: &str, contents: &[u8]) {
        fs::write(dir.join(file_name), contents).unwrap();
    }

    fn load_error(files: &[(&str, &[u8])]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (file_name, contents) in files {
            write(dir.path(), file_name, contents);
        }
        load(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn loads_sorted_with_refinery_checksums() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "V10__later.sql", b"SELECT 10;");
        write(dir.path(), "V2__second.sql", b"SELECT 2;");
        write(dir.path(), "README.md", b"not a migration");
        write(
            dir.path(),
            "V3__index.sql",
            b"-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n",
        );
        let set = load(dir.path()).unwrap();
        let versions: Vec<i32> = set.migrations.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![2, 3, 10]);
        let second = set.get(2).unwrap();
        assert_eq!(second.name, "second");
        assert_eq!(second.file_name, "V2__second.sql");
        assert_eq!(
            second.checksum,
            refinery::Migration::unapplied("V2__second", "SELECT 2;")
                .unwrap()
                .checksum()
        );
        assert_eq!(second.sha256, sha256_hex(b"SELECT 2;"));
        assert_eq!(second.sha256.len(), 64);
        assert!(!second.no_transaction);
        assert!(set.get(3).unwrap().no_transaction);
        assert_eq!(
            set.get(10).unwrap().to_refinery().checksum(),
            set.get(10).unwrap().checksum
        );
    }

    #[test]
    fn the_shipped_example_set_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let set = load(&dir).unwrap();
        let names: Vec<String> = set
            .migrations
            .iter()
            .map(Migration::refinery_name)
            .collect();
        assert_eq!(
            names,
            vec![
                "V1__add_account_plan",
                "V2__orders_status_check",
                "V3__index_orders_account",
                "V4__create_audit_log"
            ]
        );
        let no_transaction: Vec<i32> = set
            .migrations
            .iter()
            .filter(|migration| migration.no_transaction)
            .map(|migration| migration.version)
            .collect();
        assert_eq!(no_transaction, vec![3]);
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rejects_bad_names_loudly() {
        for bad in [
            "v1__x.sql",
            "V1_x.sql",
            "V1__a-b.sql",
            "V0__zero.sql",
            "V1.5__x.sql",
            "V99999999999__x.sql",
            "U1__x.sql",
        ] {
            let message = load_error(&[(bad, b"SELECT 1;")]);
            assert!(message.contains(bad), "{bad}: {message}");
            assert!(
                message.contains("V{version}__{name}.sql"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn a_migration_hidden_by_its_extension_is_an_error_and_other_files_are_ignored() {
        for hidden in [
            "V5__add_thing.SQL",
            "V5__add_thing.txt",
            "V5__add_thing.sql.bak",
            "notes.sql.orig",
        ] {
            let message = load_error(&[("V1__ok.sql", b"SELECT 1;"), (hidden, b"SELECT 5;")]);
            assert!(message.contains(hidden), "{hidden}: {message}");
            assert!(message.contains(".sql"), "{hidden}: {message}");
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "V1__ok.sql", b"SELECT 1;");
        write(dir.path(), "README.md", b"# migrations");
        write(dir.path(), ".gitkeep", b"");
        assert_eq!(load(dir.path()).unwrap().migrations.len(), 1);
    }

    #[test]
    fn rejects_duplicate_versions() {
        let message = load_error(&[("V1__a.sql", b"SELECT 1;"), ("V001__b.sql", b"SELECT 2;")]);
        assert!(message.contains("V001__b.sql"), "{message}");
        assert!(message.contains("V1__a.sql"), "{message}");
        assert!(message.contains("both have version 1"), "{message}");
    }

    #[test]
    fn rejects_non_utf8_and_empty() {
        let message = load_error(&[("V1__latin1.sql", b"SELECT 'caf\xe9';")]);
        assert!(
            message.contains("V1__latin1.sql: not UTF-8 (invalid byte at offset 11)"),
            "{message}"
        );
        let message = load_error(&[(
            "V1__blank.sql",
            b"  \n-- only a comment\n/* and a block */\n;\n",
        )]);
        assert!(
            message.contains("V1__blank.sql: the migration is empty"),
            "{message}"
        );
    }

    #[test]
    fn no_transaction_migration_must_be_one_statement() {
        let message = load_error(&[(
            "V1__two.sql",
            b"-- no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);\n",
        )]);
        assert!(message.contains("V1__two.sql"), "{message}");
        assert!(
            message.contains("exactly one statement, found 2"),
            "{message}"
        );
    }

    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let message = load(Path::new("/nonexistent/migrations"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/migrations"), "{message}");
    }

    #[test]
    fn counts_statements_around_quotes_and_comments() {
        assert_eq!(count_statements(""), 0);
        assert_eq!(count_statements("-- c\n/* a; /* nested; */ b; */\n"), 0);
        assert_eq!(count_statements("SELECT ';';"), 1);
        assert_eq!(count_statements("SELECT \"a;b\" FROM t; SELECT 2"), 2);
        assert_eq!(
            count_statements(
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; SELECT 2; $body$ LANGUAGE sql;"
            ),
            1
        );
        assert_eq!(count_statements("SELECT $$a;b$$; SELECT 'it''s;'"), 2);
        assert_eq!(count_statements("PREPARE p AS SELECT $1; EXECUTE p(1);"), 2);
    }

    #[test]
    fn marker_must_be_the_first_line() {
        assert!(has_no_transaction_marker("-- no-transaction\nSELECT 1"));
        assert!(has_no_transaction_marker(
            "-- no-transaction: CIC\nSELECT 1"
        ));
        assert!(!has_no_transaction_marker("SELECT 1;\n-- no-transaction\n"));
        assert!(!has_no_transaction_marker("-- no-transactions\nSELECT 1"));
    }
}
