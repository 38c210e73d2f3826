//! `schemafleet emulator`: serve the Neon-API-compatible local emulator until SIGINT/SIGTERM.
//!
//! Prints `NEON_API_URL=…`, `NEON_API_KEY=…` and `DATABASE_URL=…` on stdout, one per line, so a
//! shell can `eval` or `source` them (`--output json`: the same values and the proxy address,
//! data directory and tenant count as one JSON document on one line); everything else goes to
//! stderr.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{ComputeArgs, EmulatorArgs, OutputFormat};
use crate::emulator::{
    ApiKeySource, ComputeConfig, LocalFleet, LocalFleetConfig, parse_suspend_after,
};
use crate::exit::ExitStatus;
use crate::secret::SecretUri;

pub async fn run(args: EmulatorArgs) -> anyhow::Result<ExitStatus> {
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not an address such as 127.0.0.1:0",
            args.listen
        )
    })?;
    let proxy_listen: SocketAddr = args.proxy_listen.parse().with_context(|| {
        format!(
            "--proxy-listen {:?} is not an address such as 127.0.0.1:0",
            args.proxy_listen
        )
    })?;
    if !(0.0..=1.0).contains(&args.fault_rate) {
        anyhow::bail!(
            "--fault-rate must be between 0 and 1, got {}",
            args.fault_rate
        );
    }
    let seed_sql = match (&args.seed_sql, args.tenants) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --seed-sql {}", path.display()))?,
        ),
        (None, 0) => None,
        // Tenants without seed SQL get an empty main, like fresh Neon projects.
        (None, _) => Some(String::new()),
    };
    // Listening from here: a hang-up while the cluster starts or seeds is handled once it is up
    // (the signal waits), instead of killing this process and orphaning the server.
    let mut signals = crate::executor::shutdown::TerminationSignals::new();
    let config = LocalFleetConfig {
        data_dir: args.data_dir.clone(),
        attach: args.attach.clone().map(SecretUri::new),
        listen,
        api_key: args.api_key.clone(),
        rate_limit_per_min: args.rate_limit_per_min,
        fault_rate: args.fault_rate,
        op_delay: Duration::from_millis(args.op_delay_ms),
        latency: Duration::from_millis(args.latency_ms),
        tuned_for_benchmark: false,
        history_retention_seconds: args.history_retention_seconds,
        failed_operation_rate: args.failed_operation_rate,
        proxy_listen,
        compute: compute_config(&args.compute, &args.suspend_after)?,
    };
    let fleet = LocalFleet::start(config).await?;
    let existing = fleet.count_tenants("tenant");
    if existing > 0 {
        eprintln!(
            "this emulator's state already holds {existing} tenant{} (tenant-0001 …): they are \
             served as they were",
            if existing == 1 { "" } else { "s" }
        );
        if listen.port() == 0 || proxy_listen.port() == 0 {
            eprintln!(
                "the API and the PostgreSQL proxy listen on new ports: export the new NEON_API_URL"
            );
            eprintln!("  (--listen and --proxy-listen with fixed ports keep them across restarts)");
        }
    }
    match fleet.api_key_source() {
        ApiKeySource::Kept => eprintln!("the API key is the one this state already had"),
        ApiKeySource::Replaced => eprintln!(
            "the API key changed to the one given: clients of the previous key are refused now"
        ),
        ApiKeySource::New | ApiKeySource::Given => {}
    }
    let missing = args.tenants.saturating_sub(existing);
    if let (Some(sql), true) = (&seed_sql, missing > 0) {
        let started = Instant::now();
        let seeded = fleet.seed(missing, sql, "tenant").await;
        match seeded {
            Ok(tenants) => eprintln!(
                "seeded {} in {:.1} s",
                crate::report::render::plural(tenants.len(), "tenant"),
                started.elapsed().as_secs_f64()
            ),
            Err(error) => {
                let _ = fleet.stop().await;
                return Err(error.context("seeding the local fleet failed"));
            }
        }
    }
    // These lines are the point of the command: the key and URL are printed on purpose.
    match args.output {
        OutputFormat::Text => {
            println!("NEON_API_URL={}", fleet.api_url());
            println!("NEON_API_KEY={}", fleet.api_key().expose());
            println!("DATABASE_URL={}", fleet.database_url().expose());
        }
        OutputFormat::Json => println!(
            "{}",
            startup_json(
                &fleet,
                args.data_dir.is_some(),
                fleet.count_tenants("tenant")
            )
        ),
    }
    eprintln!(
        "serving the Neon API emulator; PostgreSQL proxy on {}; press Ctrl-C to stop",
        fleet.proxy_address()
    );
    if fleet.proxy_address().ip().is_loopback() {
        eprintln!(
            "endpoint hosts are ep-….localhost:{} (TLS, routed by SNI); where *.localhost does \
             not resolve, give libpq PGHOSTADDR=127.0.0.1",
            fleet.proxy_address().port()
        );
    }

    signals.recv().await;
    eprintln!("{}", fleet.compute_stats().summary());
    eprintln!("stopping the emulator and its PostgreSQL cluster");
    fleet.stop().await?;
    Ok(ExitStatus::Success)
}

/// The start-up facts for scripts, one line: what the text output prints for `source`, plus
/// where the proxy listens, where the data lives and whether it outlives the emulator.
fn startup_json(fleet: &LocalFleet, data_dir_kept: bool, tenants: usize) -> serde_json::Value {
    let key_source = match fleet.api_key_source() {
        ApiKeySource::New => "new",
        ApiKeySource::Kept => "kept",
        ApiKeySource::Given => "given",
        ApiKeySource::Replaced => "replaced",
    };
    serde_json::json!({
        "env": {
            "NEON_API_URL": fleet.api_url(),
            "NEON_API_KEY": fleet.api_key().expose(),
            "DATABASE_URL": fleet.database_url().expose(),
        },
        "api_key_source": key_source,
        "proxy_address": fleet.proxy_address().to_string(),
        "data_dir": fleet.data_dir(),
        "data_dir_kept": data_dir_kept,
        "tenants": tenants,
    })
}

/// The compute layer's knobs from the command line (`--suspend-after` as `300s`, `5m`, `off`).
pub fn compute_config(args: &ComputeArgs, suspend_after: &str) -> anyhow::Result<ComputeConfig> {
    Ok(ComputeConfig {
        round_trip: Duration::from_millis(args.pg_rtt_ms),
        round_trip_jitter: Duration::from_millis(args.pg_rtt_jitter_ms),
        cold_start: Duration::from_millis(args.cold_start_ms),
        suspend_after: parse_suspend_after(suspend_after)
            .map_err(|error| anyhow::anyhow!("--suspend-after: {error}"))?,
    })
}
