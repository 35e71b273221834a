//! sonde-collector: receives agents' batches over gRPC (`ingest`), stores
//! them (`storage`), and serves the JSON API (`api`). This file only wires
//! them together: configuration, listeners, the shutdown signal.
#![forbid(unsafe_code)]

mod alerts;
mod api;
mod auth;
mod clock;
mod config;
mod ingest;
mod live;
mod live_stats;
mod presence;
mod shutdown;
mod storage;
mod web;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::auth::Tokens;
use crate::config::Config;
use crate::storage::sqlite::SqliteStore;
use crate::storage::SharedStore;

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// How long streams and requests in progress get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The Sonde collector.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE", default_value = "/etc/sonde/collector.toml")]
    config: PathBuf,
    /// Check the configuration (syntax, keys, values, the TLS, certificate
    /// and CA files it names) and exit: 0 and "ok" when it is valid, 64
    /// with the file, key and problem when not. Nothing is started.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde-collector: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("sonde-collector: {}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let agent_tokens = Tokens::new(config.auth.agent_tokens.clone());
    let api_tokens = Tokens::new(config.auth.api_tokens.clone());
    if agent_tokens.is_open() {
        warn!(listen = %config.grpc.listen, "auth.agent_tokens is empty: the collector is open and accepts data from any agent");
    }
    if api_tokens.is_open() && !config.http.listen.ip().is_loopback() {
        warn!(listen = %config.http.listen, "auth.api_tokens is empty: the JSON API is open on a non-loopback address");
    }

    let dir = config.storage.path.clone();
    // Checked when the config was loaded.
    let options = config
        .storage
        .store_options()
        .map_err(|(key, problem)| anyhow!("{key}: {problem}"))?;
    let slow_thresholds = options.slow.clone();
    let naming = options.naming.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open_opts(&dir, options))
        .await?
        .with_context(|| {
            format!(
                "cannot open storage at {} (storage.path)",
                config.storage.path.display()
            )
        })?;
    let store: SharedStore = Arc::new(store);

    let grpc_listener = TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot listen on {} (grpc.listen)", config.grpc.listen))?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let users_dir = config.storage.path.clone();
    let users = tokio::task::spawn_blocking(move || auth::users::UserStore::open(&users_dir))
        .await?
        .with_context(|| {
            format!(
                "cannot open the console users in {} (storage.path)",
                config.storage.path.display()
            )
        })?;
    let users = Arc::new(users);
    let console_open = config.console.admin_password.is_empty();
    if console_open {
        warn!(listen = %config.http.listen, "console.admin_password is empty: the console is open, without login (meant for loopback use)");
    } else {
        let u = Arc::clone(&users);
        let (name, password) = (
            config.console.admin_user.clone(),
            config.console.admin_password.clone(),
        );
        let created =
            tokio::task::spawn_blocking(move || u.ensure_admin(&name, &password, clock::now_ms()))
                .await?
                .context("cannot create the console admin (console.admin_user)")?;
        if created {
            info!(user = %config.console.admin_user, "console admin created");
        }
    }
    let console = Arc::new(web::Console::new(users, console_open));

    let (trigger, shutdown) = shutdown::channel();
    let live = Arc::new(live::LiveState::new(config.live.active_bounds_ms));
    let stats = Arc::new(live_stats::LiveStats::new(slow_thresholds.clone(), naming));
    let counters = Arc::new(ingest::IngestCounters::default());
    let alert_counters = Arc::new(alerts::AlertCounters::default());
    let alert_channels = alerts::spawn_channels(&config.alerts, &alert_counters, &shutdown);
    let down_after_ms = 3 * i64::from(config.grpc.heartbeat_interval_ms);
    // An agent whose stream dropped is down once it has not come back for a
    // heartbeat interval.
    let presence = Arc::new(presence::Presence::new(i64::from(
        config.grpc.heartbeat_interval_ms,
    )));
    let alerts = alerts::Alerts {
        config: config.alerts.clone(),
        stats: Arc::clone(&stats),
        store: Arc::clone(&store),
        down_after_ms,
        presence: Arc::clone(&presence),
        counters: Arc::clone(&alert_counters),
        channels: Arc::clone(&alert_channels),
        live: Arc::clone(&live),
        rules: Arc::new(alerts::RuleBook::new(&config.alerts)),
    };
    let alert_rules = Arc::clone(&alerts.rules);
    let ingest = ingest::Ingest {
        store: Arc::clone(&store),
        tokens: agent_tokens,
        live: Arc::clone(&live),
        presence: Arc::clone(&presence),
        stats: Arc::clone(&stats),
        counters: Arc::clone(&counters),
        shutdown: shutdown.clone(),
        heartbeat_interval_ms: config.grpc.heartbeat_interval_ms,
        max_message_bytes: config.grpc.max_message_bytes,
        verify: config.fleet.verify_identity,
        // Checked when the config was loaded.
        verifier: config
            .identity_verifier()
            .map_err(anyhow::Error::msg)?
            .map(Arc::new),
    };
    let api = api::ApiState {
        store: Arc::clone(&store),
        live,
        stats,
        live_window_s: i64::from(config.live.window_secs),
        counters,
        tokens: api_tokens,
        console,
        down_after_ms,
        presence,
        alerts: alert_counters,
        alert_rules,
        alert_channels,
        shutdown: shutdown.clone(),
        storage_dir: config.storage.path.clone(),
    };
    // Not in `servers`: it holds no connections and stops at once on the
    // signal; its end is not a reason to stop the collector.
    tokio::spawn(alerts.run(shutdown.clone()));

    let grpc_tls = config
        .server_tls()
        .context("reading the [grpc] TLS files")?;
    let grpc_scheme = if grpc_tls.is_some() { "https" } else { "http" };
    let mut servers = JoinSet::new();
    let sd = shutdown.clone();
    servers.spawn(async move {
        ingest::serve(grpc_listener, ingest, grpc_tls, sd)
            .await
            .context("gRPC server failed")
    });
    servers.spawn(async move {
        api::serve(http_listener, api, shutdown)
            .await
            .context("HTTP server failed")
    });
    info!(
        grpc = %grpc_addr,
        grpc_scheme,
        http = %http_addr,
        storage = %config.storage.path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "sonde-collector listening"
    );

    let mut result = Ok(());
    tokio::select! {
        signal = shutdown::os_signal() => {
            info!(signal = signal.context("cannot install signal handlers")?, "shutting down");
        }
        Some(ended) = servers.join_next() => {
            result = Err(match ended {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow!("a server stopped unexpectedly"),
                Err(e) => anyhow!("a server task failed: {e}"),
            });
        }
    }
    trigger.fire();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(ended) = servers.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %format!("{e:#}"), "server stopped with an error"),
                Err(e) => warn!(error = %e, "server task failed"),
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; closing them"
        );
        servers.abort_all();
    }
    // Waits for a write still in progress, then checkpoints the WAL.
    match tokio::task::spawn_blocking(move || store.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "final storage flush failed"),
        Err(e) => warn!(error = %e, "final storage flush failed"),
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}
