//! Alerts: rules evaluated every `[alerts] interval_ms` on the live
//! statistics (what ingest has just folded in, not the rollups), events
//! stored through the [`Store`](crate::storage::Store) and sent to the
//! webhooks. Owns the evaluation task and the delivery queues; it never
//! blocks ingest (it only takes the live statistics' short lock) and never
//! waits on a receiver (delivery runs in its own tasks).

pub mod config;
pub mod rules;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

pub use config::AlertsConfig;
use rules::{Engine, Inputs};
use webhook::{Channel, DeliveryCounters, DeliveryView};

use crate::clock::now_ms;
use crate::live_stats::LiveStats;
use crate::shutdown::Shutdown;
use crate::storage::{run_blocking, SharedStore};

/// The alerts' own counters, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Rule evaluation rounds.
    pub evaluations: AtomicU64,
    /// Events made (firing and resolved).
    pub events: AtomicU64,
    /// Events that could not be stored (still sent).
    pub store_errors: AtomicU64,
    pub delivery: Arc<DeliveryCounters>,
}

#[derive(Debug, Serialize)]
pub struct AlertsView {
    pub rules: usize,
    pub evaluations: u64,
    pub events: u64,
    pub store_errors: u64,
    pub deliveries: DeliveryView,
}

impl AlertCounters {
    pub fn view(&self, rules: usize) -> AlertsView {
        AlertsView {
            rules,
            evaluations: self.evaluations.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            store_errors: self.store_errors.load(Ordering::Relaxed),
            deliveries: self.delivery.view(),
        }
    }
}

/// The webhooks' queues, shared by the evaluation task and the API's
/// "send test" action.
pub type Channels = Arc<Vec<Channel>>;

/// Starts one delivery task per configured webhook.
pub fn spawn_channels(
    config: &AlertsConfig,
    counters: &AlertCounters,
    shutdown: &Shutdown,
) -> Channels {
    Arc::new(
        config
            .webhooks
            .iter()
            .map(|w| {
                Channel::spawn(
                    w.clone(),
                    config.queue_capacity,
                    Arc::clone(&counters.delivery),
                    shutdown.clone(),
                )
            })
            .collect(),
    )
}

/// Everything the evaluation task needs.
pub struct Alerts {
    pub config: AlertsConfig,
    pub stats: Arc<LiveStats>,
    pub store: SharedStore,
    pub down_after_ms: i64,
    /// Which agents are connected (an agent whose stream dropped is down).
    pub presence: Arc<crate::presence::Presence>,
    pub counters: Arc<AlertCounters>,
    pub channels: Channels,
}

impl Alerts {
    /// Evaluates the rules until `shutdown` fires.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut engine = Engine::new(self.config.effective_rules());
        let channels = Arc::clone(&self.channels);
        info!(
            rules = engine.rules().len(),
            webhooks = channels.len(),
            interval_ms = self.config.interval_ms,
            "alert rules loaded"
        );
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let agents = if engine.wants_agents() {
                match run_blocking(&self.store, |s| s.list_agents()).await {
                    Ok(a) => a,
                    Err(error) => {
                        warn!(%error, "alerts: cannot read the agents; agent rules skipped this round");
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            let now = now_ms();
            let fired = engine.evaluate(
                now,
                &Inputs {
                    stats: &self.stats,
                    agents: &agents,
                    down_after_ms: self.down_after_ms,
                    presence: &self.presence,
                },
            );
            self.counters.evaluations.fetch_add(1, Ordering::Relaxed);
            for f in fired {
                let mut event = f.event;
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                let e = event.clone();
                match run_blocking(&self.store, move |s| s.insert_event(&e)).await {
                    Ok(id) => event.id = id,
                    Err(error) => {
                        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(%error, rule = %event.rule, "alert event not stored");
                    }
                }
                info!(id = event.id, rule = %event.rule, state = %event.state, level = %event.level, message = %event.message, "alert");
                let event = Arc::new(event);
                for c in channels
                    .iter()
                    .filter(|c| f.channels.is_empty() || f.channels.contains(&c.name))
                {
                    c.send(Arc::clone(&event));
                }
            }
        }
    }
}
