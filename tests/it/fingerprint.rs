//! Schema fingerprints against a real PostgreSQL: the same schema built two ways reads the
//! same, and each kind of change a hand edit makes (default, function body, NOT VALID
//! constraint, invalid index) reads differently and is named by the diff.

use schemafleet::fingerprint::{Fingerprint, ObjectKind, SchemaFilter, diff};
use schemafleet::pg::read_fingerprint;
use schemafleet::pg::reference::database_uri;
use schemafleet::pgcluster::{PgCluster, PgClusterConfig};
use std::time::Duration;

/// The schema the variants start from, built at once.
const AT_ONCE: &str = "
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    name text NOT NULL DEFAULT 'anonymous',
    mood mood,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (id int PRIMARY KEY, account_id bigint REFERENCES accounts (id), total numeric(10, 2) CHECK (total >= 0));
CREATE INDEX orders_account ON orders (account_id);
CREATE VIEW happy_accounts AS SELECT id, name FROM accounts WHERE mood = 'happy';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.created_at := now(); RETURN NEW; END $$;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
";

/// The same schema, with columns added later (their physical order differs) and constraints
/// and indexes made after the fact, in another order.
const LATER: &str = "
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.created_at := now(); RETURN NEW; END $$;
CREATE TYPE mood AS ENUM ('sad', 'ok');
ALTER TYPE mood ADD VALUE 'happy';
CREATE TABLE accounts (created_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE accounts ADD COLUMN mood mood;
ALTER TABLE accounts ADD COLUMN legacy int;
ALTER TABLE accounts ADD COLUMN name text;
ALTER TABLE accounts ALTER COLUMN name SET NOT NULL;
ALTER TABLE accounts ALTER COLUMN name SET DEFAULT 'anonymous';
ALTER TABLE accounts ADD COLUMN id bigserial;
ALTER TABLE accounts ADD PRIMARY KEY (id);
ALTER TABLE accounts DROP COLUMN legacy;
CREATE TABLE orders (total numeric(10, 2), account_id bigint, id int);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0);
CREATE INDEX orders_account ON orders (account_id);
ALTER TABLE orders ADD CONSTRAINT orders_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts (id);
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW happy_accounts AS SELECT id, name FROM accounts WHERE mood = 'happy';
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE refinery_schema_history (version int PRIMARY KEY, name text);
";

async fn fingerprint_of(cluster: &PgCluster, database: &str, sql: &str) -> Fingerprint {
    let admin = schemafleet::pg::connect(cluster.superuser_url(), Duration::from_secs(10))
        .await
        .expect("the cluster accepts connections");
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create database");
    let uri = database_uri(cluster.superuser_url(), database).expect("a URI");
    let client = schemafleet::pg::connect(&uri, Duration::from_secs(10))
        .await
        .expect("connect to the new database");
    // One statement at a time: a multi-statement query is one transaction, and a new enum
    // label cannot be used in the transaction that added it.
    for statement in sql
        .split(";\n")
        .filter(|statement| !statement.trim().is_empty())
    {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    read_fingerprint(&client, &SchemaFilter::default_filter())
        .await
        .expect("the fingerprint reads")
}

#[tokio::test]
async fn same_schema_built_two_ways_is_equal_and_each_edit_is_named() {
    let cluster = PgCluster::start(PgClusterConfig::temporary())
        .await
        .expect("a PostgreSQL starts");
    let at_once = fingerprint_of(&cluster, "at_once", AT_ONCE).await;
    let later = fingerprint_of(&cluster, "later", LATER).await;
    assert_eq!(diff(&at_once, &later), Vec::new());
    assert_eq!(at_once.digest(), later.digest());
    // The fingerprint sees every kind the schema has (and not the history table).
    // Every kind but materialized views, which the schema has none of.
    for kind in ObjectKind::ALL
        .into_iter()
        .filter(|kind| *kind != ObjectKind::MaterializedView)
    {
        assert!(
            at_once.objects().iter().any(|object| object.kind == kind),
            "no {kind} in {at_once:#?}"
        );
    }
    assert!(
        !later
            .objects()
            .iter()
            .any(|object| object.name.contains("refinery_schema_history")),
        "bookkeeping is not schema: {later:#?}"
    );

    let edits = [
        (
            "changed_default",
            "ALTER TABLE accounts ALTER COLUMN name SET DEFAULT 'nobody'",
            (ObjectKind::Column, "public.accounts.name"),
        ),
        (
            "changed_body",
            "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            (ObjectKind::Function, "public.touch()"),
        ),
        (
            "not_valid",
            "ALTER TABLE orders DROP CONSTRAINT orders_total_check; \
             ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0) NOT VALID",
            (ObjectKind::Constraint, "public.orders.orders_total_check"),
        ),
        (
            "invalid_index",
            // What a failed CREATE INDEX CONCURRENTLY leaves behind.
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'orders_account'::regclass",
            (ObjectKind::Index, "public.orders_account"),
        ),
        (
            "enum_label",
            "ALTER TYPE mood ADD VALUE 'angry'",
            (ObjectKind::Type, "public.mood"),
        ),
    ];
    for (database, edit, (kind, name)) in edits {
        let edited = fingerprint_of(&cluster, database, &format!("{AT_ONCE};\n{edit};")).await;
        assert_ne!(at_once.digest(), edited.digest(), "{database}");
        let differences = diff(&at_once, &edited);
        assert_eq!(differences.len(), 1, "{database}: {differences:#?}");
        assert_eq!(
            (differences[0].kind, differences[0].name.as_str()),
            (kind, name),
            "{database}"
        );
        assert!(
            differences[0].expected.is_some() && differences[0].found.is_some(),
            "{database}: {differences:#?}"
        );
    }
}
