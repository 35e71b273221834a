//! Alerts: rules evaluated every `[alerts] interval_ms` on the live data
//! (what ingest has just folded in and the requests in flight, not the
//! rollups — only TPS rules read a stored baseline), events stored through
//! the [`Store`](crate::storage::Store) and sent to the channels (webhooks,
//! email). Owns the evaluation task, the rule book (file, console and
//! built-in rules), the saved rule state and the delivery queues. It never
//! blocks ingest (it only takes the live statistics' short lock) and never
//! waits on a receiver (delivery runs in its own tasks).

pub mod config;
pub mod delivery;
pub mod http;
pub mod rules;
pub mod ruleset;
pub mod smtp;
pub mod tls;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

pub use config::AlertsConfig;
use delivery::{Channel, ChannelView, DeliveryCounters, DeliveryView, Sink};
use rules::{Baseline, Engine, Inputs};
pub use ruleset::RuleBook;

use crate::clock::now_ms;
use crate::live::LiveState;
use crate::live_stats::LiveStats;
use crate::shutdown::Shutdown;
use crate::storage::{run_blocking, EventRecord, SharedStore, StoreError};

/// How often old events and deploy markers are deleted.
const RETENTION_EVERY_MS: i64 = 60 * 60 * 1000;

/// The alerts' own counters, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Rule evaluation rounds.
    pub evaluations: AtomicU64,
    /// Events made (firing and resolved; delivery failures not included).
    pub events: AtomicU64,
    /// Events that could not be stored (still sent).
    pub store_errors: AtomicU64,
    /// Rule-state saves that failed (a restart may then repeat a message).
    pub state_errors: AtomicU64,
    pub delivery: Arc<DeliveryCounters>,
}

#[derive(Debug, Serialize)]
pub struct AlertsView {
    pub rules: usize,
    pub evaluations: u64,
    pub events: u64,
    pub store_errors: u64,
    pub state_errors: u64,
    pub deliveries: DeliveryView,
    pub channels: Vec<ChannelView>,
}

impl AlertCounters {
    /// The counters, the number of rules in force and each channel.
    pub fn view(&self, rules: &RuleBook, channels: &Channels) -> AlertsView {
        AlertsView {
            rules: rules.effective().len(),
            evaluations: self.evaluations.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            store_errors: self.store_errors.load(Ordering::Relaxed),
            state_errors: self.state_errors.load(Ordering::Relaxed),
            deliveries: self.delivery.view(),
            channels: channels.iter().map(Channel::view).collect(),
        }
    }
}

/// The channels' queues, shared by the evaluation task and the API's
/// "send test" action.
pub type Channels = Arc<Vec<Channel>>;

/// Starts one delivery task per configured webhook and email channel.
pub fn spawn_channels(
    config: &AlertsConfig,
    counters: &AlertCounters,
    shutdown: &Shutdown,
) -> Channels {
    let webhooks = config.webhooks.iter().filter_map(|w| {
        let sink = Sink::webhook(w.clone());
        if sink.is_none() {
            // Validation refuses such a URL at start; not reached.
            warn!(channel = %w.name, "webhook URL not usable; channel left out");
        }
        sink
    });
    let email = config.email.iter().map(|e| Sink::email(e.clone()));
    Arc::new(
        webhooks
            .chain(email)
            .map(|sink| {
                Channel::spawn(
                    sink,
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
    /// Requests in flight (`stuck_requests`).
    pub live: Arc<LiveState>,
    pub store: SharedStore,
    pub down_after_ms: i64,
    /// Which agents are connected (an agent whose stream dropped is down).
    pub presence: Arc<crate::presence::Presence>,
    pub counters: Arc<AlertCounters>,
    pub channels: Channels,
    /// The rules in force (shared with the API's rule editor).
    pub rules: Arc<RuleBook>,
}

impl Alerts {
    /// Evaluates the rules until `shutdown` fires.
    pub async fn run(self, mut shutdown: Shutdown) {
        if let Err(error) = self.rules.reload(&self.store).await {
            warn!(%error, "alerts: cannot read the console rules; evaluating the file's rules only");
        }
        let mut version = self.rules.version();
        let mut engine = Engine::new(self.rules.effective());
        let start = now_ms();
        engine.set_started(start);
        match run_blocking(&self.store, |s| s.load_alert_state()).await {
            Ok(saved) => {
                let firing = saved.iter().filter(|s| s.phase == "firing").count();
                engine.restore(saved, start);
                if firing > 0 {
                    info!(
                        firing,
                        "alert state restored: these stay firing without a new message"
                    );
                }
            }
            Err(error) => {
                warn!(%error, "alerts: cannot read the saved rule state; what was firing may notify again")
            }
        }
        let channels = Arc::clone(&self.channels);
        info!(
            rules = engine.rules().len(),
            channels = channels.len(),
            interval_ms = self.config.interval_ms,
            "alert rules loaded"
        );
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_retention = None;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            if self.rules.version() != version {
                version = self.rules.version();
                engine.set_rules(self.rules.effective());
                info!(rules = engine.rules().len(), "alert rules changed");
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
            let baselines = self.baselines(&engine, now).await;
            let active = engine
                .wants_active()
                .then(|| self.live.active(None, now, self.down_after_ms));
            let fired = engine.evaluate(
                now,
                &Inputs {
                    stats: &self.stats,
                    agents: &agents,
                    down_after_ms: self.down_after_ms,
                    presence: &self.presence,
                    active: active.as_ref(),
                    baselines: &baselines,
                },
            );
            self.counters.evaluations.fetch_add(1, Ordering::Relaxed);
            for f in fired {
                let mut event = f.event;
                if event.state == "firing" {
                    self.mention_deploy(&mut event).await;
                }
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                self.store_event(&mut event).await;
                info!(id = event.id, rule = %event.rule, state = %event.state, level = %event.level, message = %event.message, "alert");
                let event = Arc::new(event);
                for c in channels
                    .iter()
                    .filter(|c| f.channels.is_empty() || f.channels.contains(&c.name))
                {
                    c.send(Arc::clone(&event));
                }
            }
            if engine.take_dirty() {
                let states = engine.export();
                if let Err(error) =
                    run_blocking(&self.store, move |s| s.save_alert_state(&states)).await
                {
                    self.counters.state_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%error, "alerts: rule state not saved; a restart may repeat a message");
                }
            }
            self.record_delivery_failures().await;
            if last_retention.is_none_or(|t| now - t >= RETENTION_EVERY_MS) {
                last_retention = Some(now);
                self.retention(now).await;
            }
        }
    }

    /// Given-up deliveries become events: stored and shown, not sent.
    async fn record_delivery_failures(&self) {
        for failure in self.counters.delivery.take_failures() {
            let mut event = delivery::failure_event(&failure);
            self.store_event(&mut event).await;
        }
    }

    async fn store_event(&self, event: &mut EventRecord) {
        let e = event.clone();
        match run_blocking(&self.store, move |s| s.insert_event(&e)).await {
            Ok(id) => event.id = id,
            Err(error) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%error, rule = %event.rule, "alert event not stored");
            }
        }
    }

    /// Reads the stored baseline of each TPS rule. A rule whose read fails
    /// has none and is skipped this round.
    async fn baselines(&self, engine: &Engine, now: i64) -> HashMap<String, Baseline> {
        let mut out = HashMap::new();
        for rule in engine.tps_rules() {
            let (from_ms, to_ms) = rules::baseline_range(rule, now);
            match run_blocking(&self.store, move |s| s.calls_by_app_host(from_ms, to_ms)).await {
                Ok(rows) => {
                    out.insert(
                        rule.name.clone(),
                        Baseline {
                            from_ms,
                            to_ms,
                            rows,
                        },
                    );
                }
                Err(error) => {
                    warn!(%error, rule = %rule.name, "alerts: cannot read the TPS baseline; rule skipped this round");
                }
            }
        }
        out
    }

    /// Appends the app's latest deployment within `deploy_mention_minutes`
    /// to a firing event's message.
    async fn mention_deploy(&self, event: &mut EventRecord) {
        let minutes = i64::from(self.config.deploy_mention_minutes);
        let Some(app) = event.app.clone() else {
            return;
        };
        if minutes == 0 {
            return;
        }
        let (from, to) = (event.ts_ms - minutes * 60_000, event.ts_ms);
        match run_blocking(&self.store, move |s| {
            s.list_deploys(from, to, Some(&app), 1)
        })
        .await
        {
            Ok(deploys) => {
                if let Some(d) = deploys.last() {
                    event.message.push_str(&deploy_note(d, event.ts_ms));
                }
            }
            Err(StoreError::Unsupported(_)) => {}
            Err(error) => warn!(%error, "alerts: cannot read deploy markers for the message"),
        }
    }

    async fn retention(&self, now: i64) {
        let days = i64::from(self.config.events_retention_days);
        if days == 0 {
            return;
        }
        let before = now - days * 86_400_000;
        let result = run_blocking(&self.store, move |s| {
            Ok((
                s.delete_events_before(before)?,
                s.delete_deploys_before(before)?,
            ))
        })
        .await;
        match result {
            Ok((0, 0)) => {}
            Ok((events, deploys)) => {
                info!(
                    events,
                    deploys, days, "old alert events and deploy markers deleted"
                )
            }
            Err(error) => warn!(%error, "alerts: retention failed"),
        }
    }
}

/// " — deployed 1.4.2 3 min before (by alice: new checkout)".
pub fn deploy_note(d: &crate::storage::DeployRecord, at_ms: i64) -> String {
    let mins = (at_ms - d.ts_ms).max(0) / 60_000;
    let ago = if mins == 0 {
        "less than a minute before".to_owned()
    } else {
        format!("{mins} min before")
    };
    let mut who = String::new();
    if !d.user.is_empty() {
        who.push_str("by ");
        who.push_str(&d.user);
    }
    if !d.description.is_empty() {
        if !who.is_empty() {
            who.push_str(": ");
        }
        who.push_str(&d.description);
    }
    let who = if who.is_empty() {
        String::new()
    } else {
        format!(" ({who})")
    };
    format!(" — deploy {} of {} {ago}{who}", d.version, d.app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::DeployRecord;

    fn alerts(config: AlertsConfig) -> (tempfile::TempDir, Alerts) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let alerts = Alerts {
            rules: Arc::new(RuleBook::new(&config)),
            config,
            stats: Arc::default(),
            live: Arc::default(),
            store,
            down_after_ms: 15_000,
            presence: Arc::new(crate::presence::Presence::new(5_000)),
            counters: Arc::default(),
            channels: Arc::default(),
        };
        (dir, alerts)
    }

    fn event(ts_ms: i64, app: Option<&str>) -> EventRecord {
        EventRecord {
            ts_ms,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: "firing".into(),
            message: "[critical] r: shop — boom".into(),
            app: app.map(Into::into),
            rule: "r".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn retention_deletes_old_events_and_deploys() {
        let (_dir, a) = alerts(AlertsConfig {
            events_retention_days: 1,
            ..AlertsConfig::default()
        });
        let now = 100 * 86_400_000;
        a.store
            .insert_event(&event(now - 2 * 86_400_000, None))
            .unwrap();
        a.store.insert_event(&event(now - 1000, None)).unwrap();
        let d = |ts_ms| DeployRecord {
            ts_ms,
            app: "shop".into(),
            version: "1".into(),
            ..Default::default()
        };
        a.store.insert_deploy(&d(now - 3 * 86_400_000)).unwrap();
        a.store.insert_deploy(&d(now - 1000)).unwrap();
        a.retention(now).await;
        assert_eq!(a.store.list_events(0, now, 10).unwrap().len(), 1);
        assert_eq!(a.store.list_deploys(0, now, None, 10).unwrap().len(), 1);
        // 0 keeps everything.
        let (_dir, keep) = alerts(AlertsConfig {
            events_retention_days: 0,
            ..AlertsConfig::default()
        });
        keep.store.insert_event(&event(1, None)).unwrap();
        keep.retention(now).await;
        assert_eq!(keep.store.list_events(0, now, 10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn firing_messages_mention_a_recent_deploy_of_their_app() {
        let (_dir, a) = alerts(AlertsConfig {
            deploy_mention_minutes: 10,
            ..AlertsConfig::default()
        });
        let now = 50_000_000;
        let d = |ts_ms, app: &str, version: &str| DeployRecord {
            ts_ms,
            app: app.into(),
            version: version.into(),
            user: "ci".into(),
            ..Default::default()
        };
        a.store
            .insert_deploy(&d(now - 20 * 60_000, "shop", "old"))
            .unwrap();
        a.store
            .insert_deploy(&d(now - 4 * 60_000, "shop", "v2"))
            .unwrap();
        a.store
            .insert_deploy(&d(now - 60_000, "blog", "b9"))
            .unwrap();
        let mut e = event(now, Some("shop"));
        a.mention_deploy(&mut e).await;
        assert_eq!(
            e.message,
            "[critical] r: shop — boom — deploy v2 of shop 4 min before (by ci)"
        );
        // Too old, another app, or no app: nothing.
        let mut e = event(now + 20 * 60_000, Some("shop"));
        a.mention_deploy(&mut e).await;
        assert_eq!(e.message, "[critical] r: shop — boom");
        let mut e = event(now, None);
        a.mention_deploy(&mut e).await;
        assert_eq!(e.message, "[critical] r: shop — boom");
    }

    #[tokio::test]
    async fn given_up_deliveries_are_stored_as_events() {
        let (_dir, a) = alerts(AlertsConfig::default());
        a.counters.delivery.report(delivery::GaveUp {
            channel: "ops".into(),
            ts_ms: 5000,
            attempts: 5,
            error: "answered with status 503".into(),
            event: Arc::new(event(4000, Some("shop"))),
        });
        a.record_delivery_failures().await;
        let stored = a.store.list_events(0, 10_000, 10).unwrap();
        assert_eq!(stored.len(), 1);
        let e = &stored[0];
        assert_eq!(
            (e.kind.as_str(), e.rule.as_str(), e.app.as_deref()),
            ("delivery", "delivery:ops", Some("shop"))
        );
        assert_eq!(
            e.message,
            "alert delivery to channel ops failed after 5 attempts (answered with status 503): \
             firing event of rule r"
        );
        a.record_delivery_failures().await;
        assert_eq!(a.store.list_events(0, 10_000, 10).unwrap().len(), 1, "once");
    }

    #[test]
    fn deploy_notes() {
        let d = DeployRecord {
            id: 1,
            ts_ms: 1_000_000,
            app: "shop".into(),
            version: "v1.2".into(),
            description: "new checkout".into(),
            user: "alice".into(),
        };
        assert_eq!(
            deploy_note(&d, 1_000_000 + 185_000),
            " — deploy v1.2 of shop 3 min before (by alice: new checkout)"
        );
        let bare = DeployRecord {
            description: String::new(),
            user: String::new(),
            ..d
        };
        assert_eq!(
            deploy_note(&bare, 1_000_500),
            " — deploy v1.2 of shop less than a minute before"
        );
    }
}
