//! `sonde-agent`: the per-host daemon between the PHP extension and the
//! collector. It receives one frame per finished PHP request on a Unix
//! socket, samples host and php-fpm metrics, batches both, and streams them
//! to the collector over gRPC, through a disk spool whenever the collector is
//! away or slow. `main` only wires the parts together; each lives in its own
//! module.
#![forbid(unsafe_code)]

mod buffer;
mod cloud;
mod config;
mod counters;
mod identity;
mod live;
mod metrics;
mod notify;
mod ratelimit;
mod reload;
mod shutdown;
mod sink;
mod sources;

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing::{error, info, warn};

use crate::buffer::durable::Watermark;
use crate::buffer::queue;
use crate::buffer::spool::Spool;
use crate::cloud::lifecycle::Lifecycle;
use crate::config::Config;
use crate::counters::Counters;
use crate::identity::{Identity, Seen};
use crate::live::LiveTable;
use crate::notify::Notifier;
use crate::sink::grpc::{GrpcSink, Shared};
use crate::sources::host;
use crate::sources::ring::{self, RingFile};
use crate::sources::scoreboard::{self, Scoreboard};
use crate::sources::socket::{Context, SocketSource};

/// Exit code for a missing or invalid configuration (EX_CONFIG is 78, but
/// Sonde's contract, like linkerd's, uses EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// How often the counters are logged.
const COUNTERS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Sonde host agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let set_log_level = init_tracing(&config.log.level);
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
    match runtime.block_on(run(config, args.config, set_log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "sonde-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// Installs the logger; returns how to change its level on reload.
fn init_tracing(level: &str) -> reload::SetLogLevel {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_rules = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    Box::new(move |level: &str| {
        if env_rules {
            return Err("RUST_LOG is set and overrides log.level".into());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

async fn run(
    config: Config,
    config_path: PathBuf,
    set_log_level: reload::SetLogLevel,
) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    // The identity may live in the spool directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&config.spool_dir)
        .with_context(|| format!("spool_dir {}", config.spool_dir.display()))?;
    // Bounded (a few seconds at worst): off AWS, "auto" gives up in well
    // under one.
    let (cloud, imds) = match cloud::discover(&config.cloud).await {
        Some((c, i)) => (Some(c), Some(i)),
        None => (None, None),
    };
    let identity = Identity::resolve(&config, cloud)?;
    let lifecycle = Arc::new(Lifecycle::new(imds));
    info!(
        version = env!("CARGO_PKG_VERSION"),
        agent_id = %identity.agent_id(),
        session_id = %identity.session_id,
        hostname = %identity.hostname,
        collector = %config.collector,
        "sonde-agent starting"
    );

    let counters = Arc::new(Counters::default());
    let live = Arc::new(LiveTable::default());
    let seen = Arc::new(Seen::default());
    let (queue_tx, queue_rx) = queue::bounded(
        config.queue_capacity,
        config.queue_max_bytes,
        counters.clone(),
    );

    let source = SocketSource::bind(&config.socket, &config.socket_group, config.socket_mode.0)?;
    // The in-flight scoreboard beside it: the extension maps it. Without it
    // the agent still forwards records; in-flight requests just stay unseen.
    let board = match Scoreboard::open(
        &config.scoreboard_path(),
        config.scoreboard_slots,
        &config.socket_group,
        config.socket_mode.0,
    ) {
        Ok(b) => Some(b),
        Err(error) => {
            warn!(%error, "no in-flight scoreboard; requests in flight will not show");
            None
        }
    };
    let board_queue = queue_tx.clone();
    let ctx = Arc::new(Context::new(
        queue_tx,
        live.clone(),
        seen.clone(),
        counters.clone(),
        identity.hostname.clone(),
    ));
    let (stop, shutdown) = shutdown::channel();
    tokio::spawn(lifecycle.clone().watch(
        Duration::from_secs(config.cloud.lifecycle_poll_secs),
        shutdown.clone(),
    ));
    let stopping = notifier.clone();
    let mut signals = tokio::spawn(shutdown::on_signal(stop, move || {
        stopping.notify("STOPPING=1")
    }));
    // Workers can send from here on; records wait in the queue.
    // The shared-memory record ring beside the socket: workers prefer it
    // (no syscall per request; records wait there while the agent is busy
    // or restarting, and until the sink has made them durable). Without it
    // they use the socket.
    let mark = Arc::new(Watermark::default());
    let ring_task = match RingFile::open(
        &config.ring_path(),
        sonde_core::ring::DEFAULT_CAPACITY,
        &config.socket_group,
        config.socket_mode.0,
    ) {
        Ok(ring) => Some(tokio::spawn(ring::run(
            ring,
            ctx.clone(),
            mark.clone(),
            shutdown.clone(),
        ))),
        Err(error) => {
            warn!(%error, "no record ring; the extension will use the socket");
            None
        }
    };
    let source_task = tokio::spawn(source.run(ctx, shutdown.clone()));
    if let Some(board) = board {
        tokio::spawn(scoreboard::run(
            board,
            live.clone(),
            board_queue,
            identity.hostname.clone(),
            shutdown.clone(),
        ));
    }

    // Opening the spool reads it through (checksums), which takes a moment
    // when a long outage filled it: off the runtime, after the socket.
    let (dir, max) = (config.spool_dir.clone(), config.spool_max_bytes);
    let (spool, report) = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
        .await
        .context("spool")?
        .context("spool_dir")?;
    spool.log_open(&report);

    if !config.metrics_listen.is_empty() {
        match metrics::bind(&config.metrics_listen).await {
            Ok(listener) => {
                tokio::spawn(metrics::serve(listener, counters.clone(), shutdown.clone()));
            }
            // Forwarding matters more than the agent's own metrics.
            Err(error) => warn!(%error, listen = %config.metrics_listen,
                "cannot serve the agent's metrics (metrics_listen); going on without them"),
        }
    }
    let host_rx = (config.host_metrics_interval_secs > 0).then(|| {
        let (tx, rx) = host::channel();
        tokio::spawn(host::run(
            host::HostSource {
                hostname: identity.hostname.clone(),
                every: Duration::from_secs(config.host_metrics_interval_secs),
                tx,
                counters: counters.clone(),
                live: live.clone(),
                status_urls: config.fpm_status_urls.clone(),
            },
            shutdown.clone(),
        ));
        rx
    });

    let settings = reload::settings(&config).context("reading the [tls] files")?;
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(settings.clone());
    let sink = GrpcSink::new(
        settings,
        Shared {
            identity: identity.clone(),
            seen,
            live,
            counters: counters.clone(),
            lifecycle,
        },
        queue_rx,
        host_rx,
        spool,
        mark.clone(),
        settings_rx,
    );
    tokio::spawn(
        reload::Reloader {
            path: config_path,
            running: config.clone(),
            settings: settings_tx,
            set_log_level,
        }
        .run(shutdown.clone()),
    );

    notifier.notify("READY=1");
    if let Some(period) = notifier.watchdog_interval() {
        tokio::spawn(notifier.clone().watchdog(period, shutdown.clone()));
    }
    let log_task = tokio::spawn(log_counters(counters.clone()));
    let mut sink_task = tokio::spawn(sink.run(shutdown));

    // The sink returns only after shutdown (or if it panicked: a bug).
    tokio::select! {
        biased;
        r = &mut signals => {
            r.context("signal handler")?.context("cannot install signal handlers")?;
            sink_task.await.context("collector sink")?;
        }
        r = &mut sink_task => r.context("collector sink")?,
    }
    source_task.await.context("extension socket")?;
    // What the sink made durable while stopping is not read again.
    if let Some(task) = ring_task {
        if let Ok(Some(stopped)) = task.await {
            stopped.release(&mark);
        }
    }
    log_task.abort();
    counters.log("sonde-agent stopped");
    Ok(())
}

async fn log_counters(counters: Arc<Counters>) {
    let mut every = tokio::time::interval(COUNTERS_LOG_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        counters.log("agent counters");
    }
}
