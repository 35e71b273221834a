//! Is this instance leaving for good? Polls the Auto Scaling target
//! lifecycle state and the spot interruption notice, and answers the sink's
//! one question at shutdown: deregister as terminating or as stopped. It
//! never stops the agent itself: the system's SIGTERM does that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sonde_proto::v1::deregister_request::Reason;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::imds::{Imds, ImdsError};
use crate::shutdown::Shutdown;

/// `Terminated` once scale-in has begun (`Warned:Terminated` with a warm
/// pool); 404 when the instance is not in an Auto Scaling group.
const TARGET_LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
/// `{"action": "terminate"|"stop"|"hibernate", "time": "…"}` about two
/// minutes before a spot interruption; 404 otherwise.
const SPOT_INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
/// The last look at shutdown, when no poll has seen a notice yet.
const FINAL_CHECK_BUDGET: Duration = Duration::from_millis(1500);

/// Whether a target lifecycle state means the instance is being terminated.
pub fn state_is_terminating(state: &str) -> bool {
    matches!(state.trim(), "Terminated" | "Warned:Terminated")
}

/// Whether a spot `instance-action` document announces a termination (a
/// stop or hibernation comes back: that is not the instance leaving).
pub fn spot_action_is_terminate(doc: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Action {
        action: String,
    }
    serde_json::from_str::<Action>(doc).is_ok_and(|a| a.action.eq_ignore_ascii_case("terminate"))
}

/// The instance's fate as seen so far; shared by the watcher and the sink.
#[derive(Debug, Default)]
pub struct Lifecycle {
    imds: Option<Imds>,
    terminating: AtomicBool,
}

impl Lifecycle {
    /// `imds`: the metadata client when this is an AWS instance; without it
    /// the answer is always "stopped".
    pub fn new(imds: Option<Imds>) -> Lifecycle {
        Lifecycle {
            imds,
            terminating: AtomicBool::new(false),
        }
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::Relaxed)
    }

    /// One look at both notices. `Ok(true)` once either says terminating
    /// (and from then on without asking again).
    pub async fn check(&self) -> Result<bool, ImdsError> {
        if self.is_terminating() {
            return Ok(true);
        }
        let Some(imds) = &self.imds else {
            return Ok(false);
        };
        let why = if let Some(state) = imds.get_optional(TARGET_LIFECYCLE_STATE).await? {
            state_is_terminating(&state).then(|| format!("target-lifecycle-state {state}"))
        } else {
            None
        };
        let why = match why {
            Some(w) => Some(w),
            None => imds
                .get_optional(SPOT_INSTANCE_ACTION)
                .await?
                .filter(|doc| spot_action_is_terminate(doc))
                .map(|doc| format!("spot instance-action {doc}")),
        };
        match why {
            Some(why) => {
                if !self.terminating.swap(true, Ordering::Relaxed) {
                    warn!(notice = %why, "this instance is being terminated; \
                        the agent will deregister as terminated when it stops");
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The Deregister reason: terminating if a notice was seen, or if one
    /// last look (bounded) finds one now, since SIGTERM may come before the
    /// next poll would have.
    pub async fn reason_at_shutdown(&self) -> Reason {
        if self.imds.is_some() && !self.is_terminating() {
            match timeout(FINAL_CHECK_BUDGET, self.check()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => debug!(%error, "last lifecycle check failed"),
                Err(_) => debug!("last lifecycle check timed out"),
            }
        }
        if self.is_terminating() {
            Reason::Terminating
        } else {
            Reason::Shutdown
        }
    }

    /// Polls every `every` until shutdown or until a notice is seen.
    pub async fn watch(self: std::sync::Arc<Self>, every: Duration, mut shutdown: Shutdown) {
        if self.imds.is_none() || every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            match self.check().await {
                Ok(true) => return,
                Ok(false) => warned = false,
                Err(error) => {
                    if !warned {
                        warn!(%error, "cannot read the instance lifecycle state; will keep trying");
                        warned = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states() {
        assert!(state_is_terminating("Terminated"));
        assert!(state_is_terminating("Warned:Terminated\n"));
        for s in [
            "InService",
            "Pending",
            "Standby",
            "Detached",
            "Warmed:Stopped",
            "",
        ] {
            assert!(!state_is_terminating(s), "{s}");
        }
    }

    #[test]
    fn spot_actions() {
        assert!(spot_action_is_terminate(
            r#"{"action": "terminate", "time": "2026-11-26T22:30:00Z"}"#
        ));
        assert!(!spot_action_is_terminate(
            r#"{"action": "stop", "time": "2026-11-26T22:30:00Z"}"#
        ));
        assert!(!spot_action_is_terminate(r#"{"action": "hibernate"}"#));
        assert!(!spot_action_is_terminate("<html>not json</html>"));
    }

    #[tokio::test]
    async fn off_aws_the_reason_is_shutdown() {
        let l = Lifecycle::new(None);
        assert!(!l.check().await.unwrap());
        assert_eq!(l.reason_at_shutdown().await, Reason::Shutdown);
    }
}
