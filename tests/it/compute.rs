//! The emulator's compute layer, through its PostgreSQL proxy with real clients (tokio-postgres,
//! `psql`, refinery): latency charged per round trip, cold starts, scale to zero, Neon's errors
//! for a missing or unknown endpoint, and the counters on `GET /emulator/stats`.
//!
//! Each test starts its own small fleet with the knobs it needs; the delays are tens to a few
//! hundred milliseconds.

use crate::common;

use std::time::{Duration, Instant};

use common::{Api, Spec, connect, wait_until};
use schemafleet::emulator::{
    ComputeConfig, LocalFleet, LocalFleetConfig, MISSING_ENDPOINT_MESSAGE, UNKNOWN_ENDPOINT_MESSAGE,
};
use serde_json::json;

const SEED_SQL: &str =
    "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1);";

async fn start(compute: ComputeConfig) -> LocalFleet {
    let mut config = LocalFleetConfig::for_tests();
    config.compute = compute;
    LocalFleet::start(config)
        .await
        .expect("the local fleet starts")
}

fn endpoint_of(uri: &str) -> String {
    let url = url::Url::parse(uri).expect("a URI");
    let options = url
        .query_pairs()
        .find(|(key, _)| key == "options")
        .expect("the URI names its endpoint in options")
        .1
        .to_string();
    options
        .strip_prefix("endpoint=")
        .expect("endpoint=<id>")
        .to_string()
}

async fn round_trips(api: &Api) -> u64 {
    stats(api).await["compute"]["round_trips"]
        .as_u64()
        .expect("round_trips")
}

async fn stats(api: &Api) -> serde_json::Value {
    let base = api.base.trim_end_matches("/api/v2");
    let response = api
        .client
        .get(format!("{base}/emulator/stats"))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect("the emulator answers");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("stats are JSON")
}

/// At 20 ms per round trip, ten `SELECT 1` in a loop take ten round trips (200–300 ms) and
/// count ten; the same ten queries pipelined pay about one.
#[tokio::test]
async fn latency_is_charged_per_round_trip_and_a_pipeline_pays_once() {
    let fleet = start(ComputeConfig {
        round_trip: Duration::from_millis(20),
        ..ComputeConfig::off()
    })
    .await;
    let api = Api::new(&fleet);
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let uri = tenants[0].connection_uri.expose().to_string();
    assert!(
        uri.contains(&format!(":{}/", fleet.proxy_address().port())),
        "the URI points at the proxy"
    );
    let client = connect(&uri).await;
    let statement = client.prepare("SELECT 1").await.expect("prepares");

    let before = round_trips(&api).await;
    let started = Instant::now();
    for _ in 0..10 {
        client.query_one(&statement, &[]).await.expect("SELECT 1");
    }
    let looped = started.elapsed();
    let looped_round_trips = round_trips(&api).await - before;
    // The floor proves the charge; the count below proves it is one per round trip. The
    // ceiling only catches a double charge, loosely: a shared CI machine adds its own delays.
    assert!(
        looped >= Duration::from_millis(200) && looped < Duration::from_millis(1000),
        "ten round trips at 20 ms took {looped:?}"
    );
    assert_eq!(looped_round_trips, 10);

    let before = round_trips(&api).await;
    let started = Instant::now();
    let queries = (0..10).map(|_| client.query_one(&statement, &[]));
    for row in futures::future::join_all(queries).await {
        row.expect("SELECT 1");
    }
    let pipelined = started.elapsed();
    let pipelined_round_trips = round_trips(&api).await - before;
    assert!(
        pipelined >= Duration::from_millis(20) && pipelined < Duration::from_millis(190),
        "a pipelined batch pays about one round trip, took {pipelined:?}"
    );
    assert!(
        (1..=3).contains(&pipelined_round_trips),
        "{pipelined_round_trips} round trips for one pipelined batch"
    );
    drop(client);
    fleet.stop().await.expect("stops");
}

/// A suspended endpoint is woken by the first connection; connections that arrive during the
/// wake share it (one cold start); the API reports the lifecycle and suspends after the idle
/// timeout.
#[tokio::test]
async fn a_suspended_endpoint_wakes_on_connect_with_one_cold_start() {
    let fleet = start(ComputeConfig {
        cold_start: Duration::from_millis(300),
        suspend_after: Some(Duration::from_millis(400)),
        ..ComputeConfig::off()
    })
    .await;
    let api = Api::new(&fleet);
    let spec = Spec::load();
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let tenant = &tenants[0];
    let uri = tenant.connection_uri.expose().to_string();
    let endpoint_id = endpoint_of(&uri);
    let endpoint_path = format!("/projects/{}/endpoints/{endpoint_id}", tenant.project_id);

    let suspended = api
        .post(&format!("{endpoint_path}/suspend"), json!({}))
        .await;
    assert_eq!(suspended.status, 200, "{}", suspended.text);
    if let Some(spec) = &spec {
        spec.check(
            "post",
            "/projects/{project_id}/endpoints/{endpoint_id}/suspend",
            &suspended,
        );
    }
    assert_eq!(suspended.body["endpoint"]["current_state"], "idle");
    assert!(suspended.body["endpoint"]["suspended_at"].is_string());
    assert_eq!(suspended.body["operations"][0]["action"], "suspend_compute");

    let started = Instant::now();
    let connections = (0..3).map(|_| async {
        let client = connect(&uri).await;
        let waited = started.elapsed();
        client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("the woken endpoint serves queries");
        (client, waited)
    });
    let connected = futures::future::join_all(connections).await;
    for (_, waited) in &connected {
        assert!(
            // One cold start counted below; the ceiling is loose for shared CI machines.
            *waited >= Duration::from_millis(300) && *waited < Duration::from_millis(1500),
            "every connection waits for the one wake: {waited:?}"
        );
    }
    let endpoint = api
        .get(&format!("/projects/{}/endpoints", tenant.project_id))
        .await;
    assert_eq!(endpoint.body["endpoints"][0]["current_state"], "active");
    assert!(endpoint.body["endpoints"][0]["last_active"].is_string());
    let totals = stats(&api).await;
    assert_eq!(totals["compute"]["cold_starts"], 1, "{totals}");
    assert_eq!(
        totals["compute"]["endpoints"][&endpoint_id]["connections"],
        3
    );
    drop(connected);

    // Idle for longer than suspend_after: scaled to zero again, and the next connection pays.
    wait_until("the endpoint to suspend after its idle timeout", || async {
        let endpoints = api
            .get(&format!("/projects/{}/endpoints", tenant.project_id))
            .await;
        endpoints.body["endpoints"][0]["current_state"] == "idle"
    })
    .await;
    let started = Instant::now();
    let client = connect(&uri).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(client);
    assert_eq!(stats(&api).await["compute"]["cold_starts"], 2);

    let started_again = api.post(&format!("{endpoint_path}/start"), json!({})).await;
    assert_eq!(started_again.status, 200, "{}", started_again.text);
    if let Some(spec) = &spec {
        spec.check(
            "post",
            "/projects/{project_id}/endpoints/{endpoint_id}/start",
            &started_again,
        );
    }
    let missing = api
        .post(
            &format!("/projects/{}/endpoints/ep-nope-1/start", tenant.project_id),
            json!({}),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    fleet.stop().await.expect("stops");
}

/// The URI of a new branch works as soon as its create operation finished: a connection that
/// arrives earlier waits for the endpoint instead of failing.
#[tokio::test]
async fn a_branch_is_usable_as_soon_as_its_create_operation_finished() {
    let mut config = LocalFleetConfig::for_tests();
    config.op_delay = Duration::from_millis(300);
    let fleet = LocalFleet::start(config).await.expect("starts");
    let api = Api::new(&fleet);
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let created = api
        .post(
            &format!("/projects/{}/branches", tenants[0].project_id),
            json!({"branch": {"name": "check"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let started = Instant::now();
    let uri = created.body["connection_uris"][0]["connection_uri"]
        .as_str()
        .expect("a connection URI")
        .to_string();
    let branch = connect(&uri).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the connection waited for the start_compute operation: {:?}",
        started.elapsed()
    );
    let row = branch
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("the branch has main's data");
    assert_eq!(row.get::<_, i64>(0), 1);
    fleet.stop().await.expect("stops");
}

/// Without `options=endpoint%3D…`, or with an endpoint nobody has, the proxy answers with Neon's
/// words; `psql` connects with the URI the API hands out (SCRAM with the backing server).
#[tokio::test]
async fn wrong_or_missing_endpoints_are_refused_as_neon_words_them() {
    let fleet = start(ComputeConfig::off()).await;
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let uri = tenants[0].connection_uri.expose().to_string();
    let endpoint_id = endpoint_of(&uri);
    let without = uri.replace(&format!("&options=endpoint%3D{endpoint_id}"), "");
    let unknown = uri.replace(&endpoint_id, "ep-nobody-404");

    for (bad_uri, expected) in [
        (&without, MISSING_ENDPOINT_MESSAGE),
        (&unknown, UNKNOWN_ENDPOINT_MESSAGE),
    ] {
        let error = tokio_postgres::connect(bad_uri, tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        let text = error
            .as_db_error()
            .map(|db_error| db_error.message().to_string())
            .unwrap_or_else(|| error.to_string());
        assert_eq!(text, expected);
    }

    let psql = |uri: String| {
        tokio::process::Command::new("psql")
            .args([uri.as_str(), "-XAtc", "SELECT count(*) FROM accounts"])
            .output()
    };
    let output = psql(uri.clone()).await.expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    let output = psql(without).await.expect("psql runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("The endpoint ID is not specified"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A wrong password is the backing server's SCRAM failure, relayed.
    let mut wrong_password = url::Url::parse(&uri).expect("a URI");
    wrong_password
        .set_password(Some("wrong"))
        .expect("password");
    let error = tokio_postgres::connect(wrong_password.as_str(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let message = error
        .as_db_error()
        .map(|db_error| db_error.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("password authentication failed"),
        "{error:?}"
    );
    fleet.stop().await.expect("stops");
}

/// refinery's `Runner` with its defaults migrates a tenant through the proxy at 5 ms per round
/// trip, and every round trip it made is counted against the tenant's endpoint.
#[tokio::test]
async fn refinery_migrates_through_the_proxy_and_its_round_trips_are_counted() {
    let fleet = start(ComputeConfig {
        round_trip: Duration::from_millis(5),
        ..ComputeConfig::off()
    })
    .await;
    let api = Api::new(&fleet);
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let migrations = vec![
        refinery::Migration::unapplied("V1__notes", "CREATE TABLE notes (id int);")
            .expect("a migration"),
        refinery::Migration::unapplied("V2__index", "CREATE INDEX ON notes (id);")
            .expect("a migration"),
    ];
    let started = Instant::now();
    let applied = schemafleet::pg::runner::run_refinery_defaults(
        &tenants[0].connection_uri,
        &migrations,
        Duration::from_secs(10),
    )
    .await
    .expect("refinery migrates through the proxy");
    assert_eq!(applied, 2);
    let elapsed = started.elapsed();
    let counted = round_trips(&api).await;
    assert!(counted >= 8, "{counted} round trips for a refinery run");
    assert!(
        elapsed >= Duration::from_millis(5) * counted as u32,
        "{counted} round trips at 5 ms took only {elapsed:?}"
    );
    let main = connect(tenants[0].connection_uri.expose()).await;
    let versions: i64 = main
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(versions, 2);

    let shared = api.get("/projects/shared").await;
    assert_eq!(shared.status, 200, "{}", shared.text);
    if let Some(spec) = Spec::load() {
        spec.check("get", "/projects/shared", &shared);
    }
    fleet.stop().await.expect("stops");
}

/// What `sslmode=require` asks of a client: TLS, no certificate check (the handshake's
/// signatures are still verified). The proxy's certificate is self-signed, and webpki refuses a
/// `*.localhost` wildcard anyway.
#[derive(Debug)]
struct RequireOnly(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for RequireOnly {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(RequireOnly(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

async fn connect_tls(uri: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(uri, tls_connector()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn error_message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db_error| db_error.message().to_string())
        .unwrap_or_else(|| error.to_string())
}

/// The URI neonctl 5.0.1's `connection-string` builds (src/commands/connection_string.ts): the
/// endpoint's `host`, the API's role and database names, the revealed password,
/// `sslmode=require&channel_binding=require`.
async fn neonctl_uri(api: &Api, project_id: &str, branch_id: &str) -> (String, String) {
    let endpoints = api
        .get(&format!(
            "/projects/{project_id}/branches/{branch_id}/endpoints"
        ))
        .await;
    let endpoint = &endpoints.body["endpoints"][0];
    let host = endpoint["host"].as_str().expect("a host").to_string();
    let password = api
        .get(&format!(
            "/projects/{project_id}/branches/{branch_id}/roles/neondb_owner/reveal_password"
        ))
        .await;
    let password = password.body["password"].as_str().expect("a password");
    (
        format!(
            "postgresql://neondb_owner:{password}@{host}/neondb?sslmode=require&channel_binding=require"
        ),
        endpoint["id"].as_str().expect("an id").to_string(),
    )
}

/// neonctl's URI connects over TLS with channel binding, routed by SNI (`ep-….localhost`);
/// without SNI the `options` form still routes; a missing, unknown or inconsistent endpoint and
/// a wrong password are refused in Neon's words; the TLS set-up's round trips are counted and
/// charged.
#[tokio::test]
async fn tls_connections_route_by_sni_bind_the_channel_and_count_their_set_up() {
    let fleet = start(ComputeConfig {
        round_trip: Duration::from_millis(20),
        ..ComputeConfig::off()
    })
    .await;
    let api = Api::new(&fleet);
    let tenants = fleet.seed(2, SEED_SQL, "tenant").await.expect("seeded");
    let port = fleet.proxy_address().port();
    let (uri, endpoint_id) = neonctl_uri(&api, &tenants[1].project_id, &tenants[1].branch_id).await;
    assert!(
        uri.contains(&format!("@{endpoint_id}.localhost:{port}/neondb?")),
        "the endpoint's host names the endpoint and the proxy's port: {uri}"
    );
    // `*.localhost` does not resolve on every system (it does not here): hostaddr says where
    // to connect while the host name still goes out as SNI.
    let sni_uri = format!("{uri}&hostaddr=127.0.0.1");

    let before = stats(&api).await["compute"]["endpoints"][&endpoint_id].clone();
    let started = Instant::now();
    let client = connect_tls(&sni_uri).await.expect("neonctl's URI connects");
    let set_up = started.elapsed();
    let after = stats(&api).await["compute"]["endpoints"][&endpoint_id].clone();
    assert_eq!(
        after["connections"].as_u64().unwrap_or(0),
        before["connections"].as_u64().unwrap_or(0) + 1
    );
    // SSLRequest, TLS 1.3 handshake, startup, SCRAM continue, SCRAM final.
    assert_eq!(
        after["round_trips"].as_u64().unwrap_or(0) - before["round_trips"].as_u64().unwrap_or(0),
        5,
        "{before} → {after}"
    );
    assert!(
        set_up >= Duration::from_millis(100),
        "five round trips at 20 ms took {set_up:?}"
    );
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .expect("a query over TLS")
        .get(0);
    let second_tenant = url::Url::parse(tenants[1].connection_uri.expose()).expect("a URI");
    assert_eq!(
        format!("/{database}"),
        second_tenant.path(),
        "SNI routed to the second tenant's database"
    );
    let ssl: bool = client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(!ssl, "TLS ends at the proxy, as on Neon");
    drop(client);

    // Without SNI (an address), the endpoint named in options; channel binding still holds.
    let options_uri = format!(
        "{}&options=endpoint%3D{endpoint_id}",
        uri.replace(&format!("{endpoint_id}.localhost"), "127.0.0.1")
    );
    let client = connect_tls(&options_uri).await.expect("options over TLS");
    client.query_one("SELECT 1", &[]).await.expect("SELECT 1");
    drop(client);

    let first_endpoint = endpoint_of(tenants[0].connection_uri.expose());
    let refused = [
        (
            uri.replace(&format!("{endpoint_id}.localhost"), "127.0.0.1"),
            MISSING_ENDPOINT_MESSAGE.to_string(),
        ),
        (
            sni_uri.replace(&endpoint_id, "ep-nobody-404"),
            UNKNOWN_ENDPOINT_MESSAGE.to_string(),
        ),
        (
            format!("{sni_uri}&options=endpoint%3D{first_endpoint}"),
            format!(
                "Inconsistent project name inferred from SNI ('{endpoint_id}') and project option ('{first_endpoint}')."
            ),
        ),
        (
            {
                let mut wrong = url::Url::parse(&sni_uri).expect("a URI");
                wrong.set_password(Some("wrong")).expect("a password");
                wrong.to_string()
            },
            "password authentication failed for user 'neondb_owner'".to_string(),
        ),
    ];
    for (bad_uri, expected) in refused {
        let Err(error) = connect_tls(&bad_uri).await else {
            panic!("refused: {expected}");
        };
        assert_eq!(error_message(&error), expected);
    }
    fleet.stop().await.expect("stops");
}

/// `psql` with neonctl's URI: TLS, SCRAM-SHA-256-PLUS, SNI (libpq sends the host name; where
/// `*.localhost` does not resolve, `PGHOSTADDR` says where to connect). The connection wakes
/// the suspended endpoint once authenticated, paying the cold start.
#[tokio::test]
async fn psql_connects_with_neonctls_uri_over_tls_with_channel_binding() {
    let fleet = start(ComputeConfig {
        cold_start: Duration::from_millis(300),
        ..ComputeConfig::off()
    })
    .await;
    let api = Api::new(&fleet);
    let tenants = fleet.seed(1, SEED_SQL, "tenant").await.expect("seeded");
    let (uri, endpoint_id) = neonctl_uri(&api, &tenants[0].project_id, &tenants[0].branch_id).await;
    assert_eq!(fleet.suspend_all_endpoints(), 1);
    let started = Instant::now();
    let psql = |uri: String, query: &'static str| {
        tokio::process::Command::new("psql")
            .env("PGHOSTADDR", "127.0.0.1")
            .args([uri.as_str(), "-XAtc", query])
            .output()
    };
    let output = psql(uri.clone(), "SELECT count(*) FROM accounts")
        .await
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the TLS connection waited for the wake: {:?}",
        started.elapsed()
    );
    assert_eq!(stats(&api).await["compute"]["cold_starts"], 1);
    // The options form over TLS, without SNI.
    let options_uri = format!(
        "{}&options=endpoint%3D{endpoint_id}",
        uri.replace(&format!("{endpoint_id}.localhost"), "127.0.0.1")
    );
    let output = tokio::process::Command::new("psql")
        .args([
            options_uri.as_str(),
            "-XAtc",
            "SELECT count(*) FROM accounts",
        ])
        .output()
        .await
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    // An endpoint nobody has, named by SNI.
    let output = psql(uri.replace(&endpoint_id, "ep-nobody-404"), "SELECT 1")
        .await
        .expect("psql runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(UNKNOWN_ENDPOINT_MESSAGE),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    fleet.stop().await.expect("stops");
}
