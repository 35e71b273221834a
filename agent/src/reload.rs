//! SIGHUP (`systemctl reload sonde-agent`): read the configuration file
//! again and apply what can change while running — the collector address,
//! token and `[tls]` (the sink reconnects with them at once), the batch
//! limits and the log level. Keys that need a restart (socket, spool,
//! identity, …) are named in a warning and keep their running values. A
//! file that does not load is refused with the same message as at start,
//! and the agent goes on with what it runs.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::buffer::batch::Limits;
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::sink::grpc::{client_tls, Settings};

/// Sets the log filter (a no-op when `RUST_LOG` rules).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The sink's settings from a configuration.
pub fn settings(config: &Config) -> std::io::Result<Settings> {
    let tls = if config.collector.starts_with("https://") {
        Some(client_tls(&config.tls)?)
    } else {
        None
    };
    Ok(Settings {
        collector: config.collector.clone(),
        tls,
        token: config.token.clone(),
        limits: Limits {
            max_records: config.batch_max_records,
            max_bytes: config.batch_max_bytes,
            max_age: Duration::from_millis(config.flush_interval_ms),
        },
    })
}

pub struct Reloader {
    pub path: PathBuf,
    /// What runs now.
    pub running: Config,
    pub settings: watch::Sender<Settings>,
    pub set_log_level: SetLogLevel,
}

impl Reloader {
    /// Waits for SIGHUP until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; reload by restarting");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.reload();
                }
            }
        }
    }

    fn reload(&mut self) {
        let path = self.path.display().to_string();
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "SIGHUP: the configuration was not reloaded; running on as before");
                return;
            }
        };
        let restart = restart_only_changes(&self.running, &new);
        if !restart.is_empty() {
            warn!(keys = ?restart, file = %path,
                "SIGHUP: these keys changed but take effect only after a restart");
        }
        let mut applied = Vec::new();
        let old = &self.running;
        let connection = old.collector != new.collector
            || old.token != new.token
            || old.tls != new.tls
            || old.batch_max_records != new.batch_max_records
            || old.batch_max_bytes != new.batch_max_bytes
            || old.flush_interval_ms != new.flush_interval_ms;
        if connection {
            match settings(&new) {
                Ok(s) => {
                    // The sink reconnects with them.
                    let _ = self.settings.send(s);
                    applied.extend(
                        [
                            ("collector", old.collector != new.collector),
                            ("token", old.token != new.token),
                            ("tls", old.tls != new.tls),
                            (
                                "batch_max_records",
                                old.batch_max_records != new.batch_max_records,
                            ),
                            (
                                "batch_max_bytes",
                                old.batch_max_bytes != new.batch_max_bytes,
                            ),
                            (
                                "flush_interval_ms",
                                old.flush_interval_ms != new.flush_interval_ms,
                            ),
                        ]
                        .into_iter()
                        .filter(|(_, changed)| *changed)
                        .map(|(k, _)| k),
                    );
                    self.running.collector.clone_from(&new.collector);
                    self.running.token.clone_from(&new.token);
                    self.running.tls = new.tls.clone();
                    self.running.batch_max_records = new.batch_max_records;
                    self.running.batch_max_bytes = new.batch_max_bytes;
                    self.running.flush_interval_ms = new.flush_interval_ms;
                }
                Err(error) => {
                    error!(%error, "SIGHUP: cannot read the [tls] files; connection settings not reloaded");
                }
            }
        }
        if self.running.log.level != new.log.level {
            match (self.set_log_level)(&new.log.level) {
                Ok(()) => {
                    applied.push("log.level");
                    self.running.log = new.log.clone();
                }
                Err(error) => error!(%error, "SIGHUP: log level not changed"),
            }
        }
        info!(applied = ?applied, file = %path, "SIGHUP: configuration reloaded");
    }
}

/// The keys whose change needs a restart, in file order.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    macro_rules! check {
        ($($field:ident),* $(,)?) => {
            $(if old.$field != new.$field {
                keys.push(stringify!($field));
            })*
        };
    }
    check!(
        socket,
        socket_group,
        socket_mode,
        scoreboard,
        scoreboard_slots,
        spool_dir,
        spool_max_bytes,
        host_metrics_interval_secs,
        metrics_listen,
        hostname,
        fpm_status_urls,
        labels,
        queue_capacity,
        queue_max_bytes,
        cloud,
    );
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.token = "t".into();
        new.log.level = "debug".into();
        assert!(restart_only_changes(&old, &new).is_empty(), "live keys");
        new.spool_dir = "/elsewhere".into();
        new.labels.insert("role".into(), "api".into());
        assert_eq!(restart_only_changes(&old, &new), ["spool_dir", "labels"]);
    }
}
