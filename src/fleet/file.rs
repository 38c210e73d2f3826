//! Tenants files: CSV with a header row, or a YAML list, with the same fields.
//!
//! CSV columns: `id` (required), `name`, `region`, `labels` (`k=v;k=v`), and optionally
//! `connection_uri` (main's direct URI, so `apply` needs no API request to connect) and
//! `schema_version` (the version a platform records, for `apply --skip-recorded`). YAML: a list
//! of `{id, name, region, labels: {k: v}, connection_uri, schema_version}`.
//!
//! A file with `connection_uri` holds secrets: the plan records only how many tenants have one,
//! and `apply` reads the file again for them.
//!
//! **Invariant:** a loaded tenants file has no empty and no duplicate id; an unknown column or
//! key is an error, never ignored (a typo like `regoin` would otherwise drop every region).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{FleetError, FleetInventory, SourceEntry, Tenant};
use crate::policy::locate::{FilePosition, split_yaml_error};
use crate::secret::SecretUri;

/// The largest YAML tenants file read (CSV has no limit).
const MAX_YAML_BYTES: u64 = 8 << 20;

const CSV_COLUMNS: [&str; 6] = [
    "id",
    "name",
    "region",
    "labels",
    "connection_uri",
    "schema_version",
];

/// Where in a tenants file a tenant was read: a CSV line or a YAML list entry (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TenantPlace {
    Line(u64),
    Entry(u64),
    /// A row of a catalog query's result (`fleet.source: postgres`).
    Row(u64),
}

impl std::fmt::Display for TenantPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantPlace::Line(line) => write!(f, "line {line}"),
            TenantPlace::Entry(entry) => write!(f, "entry {entry}"),
            TenantPlace::Row(row) => write!(f, "row {row}"),
        }
    }
}

/// Read a tenants file; the format follows the extension (`.csv`, `.yaml`, `.yml`).
pub fn load_tenants_file(path: &Path) -> Result<FleetInventory, FleetError> {
    let mut tenants = Vec::new();
    let mut places = Vec::new();
    let source = read_tenants_file(path, |tenant, place| {
        tenants.push(tenant);
        places.push(place);
        Ok(())
    })?;
    reject_duplicate_ids(&tenants, |tenant_idx| match places[tenant_idx] {
        TenantPlace::Line(line) => (
            format!("{}:{line}", path.display()),
            places[tenant_idx].to_string(),
        ),
        TenantPlace::Entry(_) | TenantPlace::Row(_) => {
            (path.display().to_string(), places[tenant_idx].to_string())
        }
    })?;
    Ok(FleetInventory {
        source,
        tenants,
        unavailable: Vec::new(),
    })
}

/// Read a tenants file one tenant at a time, without keeping them: a 300,000-tenant fleet is
/// planned without ever holding 300,000 [`Tenant`]s (their label maps alone would take hundreds
/// of megabytes). Duplicate ids are the caller's to detect. Returns the source as recorded in
/// plans (`file:<path>`).
pub fn read_tenants_file(
    path: &Path,
    mut visit: impl FnMut(Tenant, TenantPlace) -> Result<(), FleetError>,
) -> Result<String, FleetError> {
    read_tenants_file_with_sources(path, |tenant, place, _entry| visit(tenant, place))
}

/// [`read_tenants_file`], with each tenant's connection URI and recorded version (a
/// [`SourceEntry`], empty when the file has no such columns).
pub fn read_tenants_file_with_sources(
    path: &Path,
    visit: impl FnMut(Tenant, TenantPlace, SourceEntry) -> Result<(), FleetError>,
) -> Result<String, FleetError> {
    let extension = path
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("csv") => read_csv(path, visit)?,
        Some("yaml" | "yml") => read_yaml(path, visit)?,
        _ => {
            return Err(FleetError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(format!("file:{}", path.display()))
}

fn invalid(path: &Path, line: Option<u64>, message: String) -> FleetError {
    let location = match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    };
    FleetError::Invalid { location, message }
}

fn read_csv(
    path: &Path,
    mut visit: impl FnMut(Tenant, TenantPlace, SourceEntry) -> Result<(), FleetError>,
) -> Result<(), FleetError> {
    let file = std::fs::File::open(path).map_err(|source| FleetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    let headers = reader
        .headers()
        .map_err(|error| csv_error(path, &error))?
        .clone();
    let mut column_of = [None; 6];
    for (column_idx, header) in headers.iter().enumerate() {
        let Some(known_idx) = CSV_COLUMNS.iter().position(|known| *known == header) else {
            return Err(invalid(
                path,
                Some(1),
                format!(
                    "unknown column `{header}`; the columns are id (required), name, region, labels, connection_uri, schema_version"
                ),
            ));
        };
        if column_of[known_idx].is_some() {
            return Err(invalid(
                path,
                Some(1),
                format!("column `{header}` appears twice"),
            ));
        }
        column_of[known_idx] = Some(column_idx);
    }
    let [
        Some(id_column),
        name_column,
        region_column,
        labels_column,
        uri_column,
        version_column,
    ] = column_of
    else {
        return Err(invalid(
            path,
            Some(1),
            "the header row has no `id` column; the first line must name the columns, e.g. id,name,region,labels".to_string(),
        ));
    };

    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => return Err(csv_error(path, &error)),
        }
        let line = record.position().map_or(0, csv::Position::line);
        let field = |column: Option<usize>| {
            column
                .and_then(|column_idx| record.get(column_idx))
                .filter(|value| !value.is_empty())
        };
        let Some(id) = field(Some(id_column)) else {
            return Err(invalid(path, Some(line), "empty tenant id".to_string()));
        };
        let labels = match field(labels_column) {
            Some(labels) => parse_labels(labels)
                .map_err(|message| invalid(path, Some(line), format!("tenant {id}: {message}")))?,
            None => BTreeMap::new(),
        };
        let schema_version = field(version_column)
            .map(|version| {
                version.parse::<i32>().map_err(|_| {
                    invalid(
                        path,
                        Some(line),
                        format!(
                            "tenant {id}: schema_version `{version}` is not a whole number (a migration version)"
                        ),
                    )
                })
            })
            .transpose()?;
        let entry = SourceEntry {
            connection_uri: field(uri_column).map(SecretUri::new),
            schema_version,
        };
        let tenant = Tenant {
            id: id.to_string(),
            name: field(name_column).unwrap_or(id).to_string(),
            region: field(region_column).map(str::to_string),
            labels,
        };
        visit(tenant, TenantPlace::Line(line), entry)?;
    }
    Ok(())
}

fn csv_error(path: &Path, error: &csv::Error) -> FleetError {
    let line = error.position().map(csv::Position::line);
    let message = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "this row has {len} fields but the header has {expected_len}; quote fields that contain commas"
        ),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8; save the file as UTF-8".to_string(),
        _ => error.to_string(),
    };
    invalid(path, line, message)
}

/// Parse `k=v;k=v` (an empty string is no labels).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "label `{pair}` is not key=value (labels are k=v;k=v)"
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("label `{pair}` has an empty key"));
        }
        if labels
            .insert(key.to_string(), value.trim().to_string())
            .is_some()
        {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    connection_uri: Option<String>,
    #[serde(default)]
    schema_version: Option<i32>,
}

fn read_yaml(
    path: &Path,
    mut visit: impl FnMut(Tenant, TenantPlace, SourceEntry) -> Result<(), FleetError>,
) -> Result<(), FleetError> {
    let read_error = |source| FleetError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The YAML parser holds the whole document's events: about 28 bytes of memory per byte of
    // file (a 26 MB file took 724 MB), where CSV streams.
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_YAML_BYTES {
        return Err(invalid(
            path,
            None,
            format!(
                "the file is {} MiB; YAML tenants files are limited to {} MiB (about 100,000 \
                 tenants): write the fleet as CSV (columns id,name,region,labels), which has no limit",
                size.div_ceil(1 << 20),
                MAX_YAML_BYTES >> 20
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let raw_tenants: Vec<RawTenant> = serde_yaml::from_str(&text).map_err(|error| {
        let (position, message) = split_yaml_error(&error);
        FleetError::Invalid {
            location: FilePosition { path, position }.to_string(),
            message: format!(
                "{message}; a tenants file is a list of {{id, name, region, labels, connection_uri, schema_version}}"
            ),
        }
    })?;
    for (entry_idx, raw) in raw_tenants.into_iter().enumerate() {
        let id = raw.id.trim().to_string();
        if id.is_empty() {
            return Err(FleetError::Invalid {
                location: path.display().to_string(),
                message: format!("entry {}: empty tenant id", entry_idx + 1),
            });
        }
        let tenant = Tenant {
            name: raw
                .name
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| id.clone()),
            id,
            region: raw.region.filter(|region| !region.trim().is_empty()),
            labels: raw.labels,
        };
        let entry = SourceEntry {
            connection_uri: raw
                .connection_uri
                .filter(|uri| !uri.trim().is_empty())
                .map(SecretUri::new),
            schema_version: raw.schema_version,
        };
        visit(tenant, TenantPlace::Entry(entry_idx as u64 + 1), entry)?;
    }
    Ok(())
}

/// Fail on the first id given twice; `describe` says where the tenant at an index came from, as
/// (location for the message prefix, short place for the first occurrence).
fn reject_duplicate_ids(
    tenants: &[Tenant],
    describe: impl Fn(usize) -> (String, String),
) -> Result<(), FleetError> {
    let mut order: Vec<usize> = (0..tenants.len()).collect();
    order.sort_unstable_by(|&left, &right| {
        tenants[left]
            .id
            .cmp(&tenants[right].id)
            .then(left.cmp(&right))
    });
    let duplicate = order
        .windows(2)
        .filter(|pair| tenants[pair[0]].id == tenants[pair[1]].id)
        .min_by_key(|pair| pair[1]);
    if let Some(pair) = duplicate {
        let (location, _) = describe(pair[1]);
        let (_, first_place) = describe(pair[0]);
        return Err(FleetError::Invalid {
            location,
            message: format!(
                "tenant id {} is listed twice (first at {first_place}); each tenant must appear once",
                tenants[pair[1]].id
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(file_name: &str, text: &str) -> Result<FleetInventory, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name);
        std::fs::write(&path, text).unwrap();
        load_tenants_file(&path).map_err(|error| {
            error
                .to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn csv_with_all_columns() {
        let inventory = load_text(
            "tenants.csv",
            "id,name,region,labels\np-1,tenant-0001,aws-us-east-2,tier=free;plan=x\np-2,,, \n",
        )
        .unwrap();
        assert_eq!(inventory.tenants.len(), 2);
        let first = &inventory.tenants[0];
        assert_eq!(first.name, "tenant-0001");
        assert_eq!(first.region.as_deref(), Some("aws-us-east-2"));
        assert_eq!(first.labels.get("tier").map(String::as_str), Some("free"));
        assert_eq!(first.labels.len(), 2);
        let second = &inventory.tenants[1];
        assert_eq!(second.name, "p-2");
        assert_eq!(second.region, None);
        assert!(second.labels.is_empty());
        assert!(inventory.source.starts_with("file:"));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let cases = [
            ("id,regoin\np-1,x\n", "DIR/t.csv:1: unknown column `regoin`"),
            (
                "name\nx\n",
                "DIR/t.csv:1: the header row has no `id` column",
            ),
            (
                "id,name\np-1,a\np-2,b\np-1,c\n",
                "DIR/t.csv:4: tenant id p-1 is listed twice (first at line 2)",
            ),
            ("id,name\np-1,a\n,b\n", "DIR/t.csv:3: empty tenant id"),
            (
                "id,name\np-1,a,extra\n",
                "DIR/t.csv:2: this row has 3 fields but the header has 2",
            ),
            (
                "id,labels\np-1,tier\n",
                "DIR/t.csv:2: tenant p-1: label `tier` is not key=value",
            ),
            (
                "id,labels\np-1,a=1;a=2\n",
                "DIR/t.csv:2: tenant p-1: label `a` is given twice",
            ),
        ];
        for (text, expected) in cases {
            let message = load_text("t.csv", text).unwrap_err();
            assert!(message.starts_with(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn yaml_tenants() {
        let inventory = load_text(
            "t.yaml",
            "- id: p-1\n  name: tenant-0001\n  region: aws-eu-central-1\n  labels: {tier: paid}\n- id: p-2\n",
        )
        .unwrap();
        assert_eq!(inventory.tenants.len(), 2);
        assert_eq!(
            inventory.tenants[0].labels.get("tier").map(String::as_str),
            Some("paid")
        );
        assert_eq!(inventory.tenants[1].name, "p-2");

        let message = load_text("t.yml", "- id: p-1\n  regoin: x\n").unwrap_err();
        assert!(
            message.starts_with("DIR/t.yml:2:3: .[0]: unknown field `regoin`"),
            "{message}"
        );
        let message = load_text("t.yaml", "- id: p-1\n- id: p-1\n").unwrap_err();
        assert!(
            message.contains("tenant id p-1 is listed twice (first at entry 1)"),
            "{message}"
        );
        let message = load_text("t.txt", "p-1\n").unwrap_err();
        assert!(message.contains("unknown tenants file type"), "{message}");
    }

    #[test]
    fn a_yaml_tenants_file_over_the_cap_is_refused_before_it_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.yaml");
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: the size is what is checked, nothing is read.
        file.set_len(MAX_YAML_BYTES + 1).unwrap();
        let message = load_tenants_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("limited to 8 MiB") && message.contains("CSV"),
            "{message}"
        );
    }
}
