//! Read a database's schema fingerprint: one catalog query, rows of (kind, name, definition).
//!
//! Normalisation happens in the query: no OIDs, owners, physical column order or statistics;
//! objects that belong to an extension are the extension's, not ours; the history tables of
//! the migration tools (ours and others') are bookkeeping, not schema. The pure model and the
//! diff live in [`crate::fingerprint`].

use tokio_postgres::Client;

use super::error::DbFailure;
use crate::fingerprint::{Fingerprint, ObjectKind, SchemaFilter, SchemaObject};

/// History tables of the migration tools we know; never part of a fingerprint.
pub const BOOKKEEPING_TABLES: [&str; 6] = [
    super::HISTORY_TABLE,
    "__drizzle_migrations",
    "_prisma_migrations",
    "_sqlx_migrations",
    "flyway_schema_history",
    "atlas_schema_revisions",
];

/// `$1`: schemas to include (empty: all), `$2`: schemas to exclude, `$3`: bookkeeping tables.
const FINGERPRINT_SQL: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp\_%'
      AND (cardinality($1::text[]) = 0 OR nspname = ANY($1::text[]))
      AND NOT nspname = ANY($2::text[])
),
ext_objects AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
),
bookkeeping AS (
    SELECT c.oid FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relname = ANY($3::text[])
),
rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, ns.nspname
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.oid NOT IN (SELECT oid FROM bookkeeping)
      AND c.oid NOT IN (SELECT objid FROM ext_objects WHERE classid = 'pg_class'::regclass)
      -- Sequences owned by a bookkeeping table (drizzle's serial id) go with it.
      AND c.oid NOT IN (SELECT d.objid FROM pg_depend d JOIN bookkeeping b ON d.refobjid = b.oid
                        WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
)
SELECT 'table', quote_ident(nspname) || '.' || quote_ident(relname),
       CASE relkind WHEN 'p' THEN 'partitioned ' ELSE '' END
       || CASE relpersistence WHEN 'u' THEN 'unlogged ' ELSE '' END || 'table'
       || CASE WHEN relrowsecurity THEN ', row level security' ELSE '' END
FROM rel WHERE relkind IN ('r', 'p')
UNION ALL
SELECT 'column', quote_ident(rel.nspname) || '.' || quote_ident(rel.relname) || '.' || quote_ident(a.attname),
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
       || CASE WHEN a.attgenerated <> '' THEN ' generated ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
               WHEN ad.adbin IS NOT NULL THEN ' default ' || pg_get_expr(ad.adbin, ad.adrelid) ELSE '' END
       || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
               THEN ' collate ' || (SELECT quote_ident(collname) FROM pg_collation WHERE oid = a.attcollation)
               ELSE '' END
FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE rel.relkind IN ('r', 'p', 'v', 'm', 'f')
UNION ALL
SELECT 'constraint', quote_ident(rel.nspname) || '.' || quote_ident(rel.relname) || '.' || quote_ident(con.conname),
       pg_get_constraintdef(con.oid) || CASE WHEN con.convalidated THEN '' ELSE ' (not validated)' END
FROM pg_constraint con JOIN rel ON rel.oid = con.conrelid
UNION ALL
SELECT 'index', quote_ident(rel.nspname) || '.' || quote_ident(ic.relname),
       pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END
FROM pg_index i JOIN rel ON rel.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
UNION ALL
SELECT 'sequence', quote_ident(rel.nspname) || '.' || quote_ident(rel.relname),
       format_type(s.seqtypid, NULL) || ' start ' || s.seqstart || ' increment ' || s.seqincrement
       || ' min ' || s.seqmin || ' max ' || s.seqmax || ' cache ' || s.seqcache
       || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END
FROM pg_sequence s JOIN rel ON rel.oid = s.seqrelid
UNION ALL
SELECT CASE rel.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
       quote_ident(rel.nspname) || '.' || quote_ident(rel.relname),
       pg_get_viewdef(rel.oid)
FROM rel WHERE rel.relkind IN ('v', 'm')
UNION ALL
SELECT 'function', quote_ident(ns.nspname) || '.' || quote_ident(p.proname)
       || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window' ELSE 'function' END
       || ' returns ' || coalesce(pg_get_function_result(p.oid), 'void')
       || ' language ' || l.lanname
       || ' ' || CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END
       || CASE WHEN p.proisstrict THEN ' strict' ELSE '' END
       || CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END
       || ' body md5 ' || md5(coalesce(p.prosrc, '') || coalesce(p.probin, ''))
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE p.oid NOT IN (SELECT objid FROM ext_objects WHERE classid = 'pg_proc'::regclass)
UNION ALL
SELECT 'trigger', quote_ident(rel.nspname) || '.' || quote_ident(rel.relname) || '.' || quote_ident(tg.tgname),
       pg_get_triggerdef(tg.oid) || CASE tg.tgenabled WHEN 'D' THEN ' (disabled)' ELSE '' END
FROM pg_trigger tg JOIN rel ON rel.oid = tg.tgrelid WHERE NOT tg.tgisinternal
UNION ALL
SELECT 'type', quote_ident(ns.nspname) || '.' || quote_ident(t.typname),
       CASE t.typtype
         WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                    FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
         WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod)
                       || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
                       || coalesce(' default ' || t.typdefault, '')
                       || coalesce((SELECT ' ' || string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
                                    FROM pg_constraint c WHERE c.contypid = t.oid), '')
         WHEN 'r' THEN 'range of ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid)
         WHEN 'c' THEN 'composite (' || (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                         FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) || ')'
       END
FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  AND t.oid NOT IN (SELECT objid FROM ext_objects WHERE classid = 'pg_type'::regclass)
UNION ALL
SELECT 'extension', quote_ident(x.extname), 'in schema ' || quote_ident(ns.nspname)
FROM pg_extension x JOIN pg_namespace ns ON ns.oid = x.extnamespace
WHERE cardinality($1::text[]) = 0 OR ns.nspname = ANY($1::text[])
"#;

/// Read the fingerprint of the database `client` is connected to.
pub async fn read_fingerprint(
    client: &Client,
    filter: &SchemaFilter,
) -> Result<Fingerprint, DbFailure> {
    let bookkeeping: Vec<&str> = BOOKKEEPING_TABLES.to_vec();
    let rows = client
        .query(
            FINGERPRINT_SQL,
            &[&filter.include, &filter.exclude, &bookkeeping],
        )
        .await
        .map_err(|error| DbFailure::from_error("read schema fingerprint", &error))?;
    let mut objects = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.get(0);
        let kind = ObjectKind::from_catalog(&kind).ok_or_else(|| {
            DbFailure::new(
                None,
                format!("read schema fingerprint: unknown kind {kind:?}"),
            )
        })?;
        objects.push(SchemaObject {
            kind,
            name: row.get(1),
            definition: row.get::<_, Option<String>>(2).unwrap_or_default(),
        });
    }
    Ok(Fingerprint::new(objects))
}
