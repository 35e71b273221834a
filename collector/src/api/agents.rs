//! `GET /api/v1/agents` (the agent registry with derived status) and
//! `GET /api/v1/active` (requests in flight, from the live state).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::collections::HashMap;

use super::{ApiError, ApiState, AppQuery};
use crate::clock::now_ms;
use crate::live::ActiveView;
use crate::presence::Reported;
use crate::storage::{run_blocking, AgentRecord};

#[derive(Debug, Serialize)]
pub struct AgentsView {
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    pub instance_id: String,
    /// Auto Scaling group, null when none.
    pub group: Option<String>,
    pub zone: String,
    pub ami_id: String,
    /// `up`, `down`, `stopped` or `terminated`.
    pub status: &'static str,
    /// Another live agent already held this identity when this one
    /// registered (a cloned image?): the id of that agent, else null.
    pub duplicate_of: Option<String>,
    /// What the id is keyed by (`aws:<instance id>`, `machine:<id>`).
    pub identity_key: String,
    /// The host name the cloud gives the instance (`local-hostname`).
    pub cloud_hostname: String,
    /// Whether the agent sent a signed instance-identity document.
    pub identity_document: bool,
    /// Whether that document verified (`[fleet] verify_identity`); null
    /// when it was not checked.
    pub identity_verified: Option<bool>,
    pub machine_id: String,
    /// The agent's own counters from its last heartbeat (records received,
    /// spooled, sent, acknowledged, dropped and by reason, spool bytes),
    /// with `at_ms`; null before the first.
    pub counters: Option<serde_json::Value>,
    /// The agent's clock minus the collector's at its last heartbeat,
    /// milliseconds (one-way: includes the network delay); null before the
    /// first.
    pub clock_skew_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub registered_ms: i64,
    pub versions: VersionsView,
    pub apps: Vec<String>,
    pub cloud_provider: String,
    pub instance_type: String,
    pub region: String,
    pub private_ip: String,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct VersionsView {
    pub agent: String,
    pub extension: String,
    pub php: String,
    pub protocol: u32,
}

impl AgentView {
    fn new(a: AgentRecord, status: &'static str, reported: Option<Reported>) -> Self {
        let i = a.identity;
        let v = i.versions.unwrap_or_default();
        AgentView {
            id: i.agent_id,
            hostname: i.hostname,
            instance_id: i.instance_id,
            group: (!i.group.is_empty()).then_some(i.group),
            zone: i.zone,
            ami_id: i.ami_id,
            status,
            duplicate_of: a.duplicate_of,
            identity_key: a.identity_key,
            cloud_hostname: i.cloud_hostname,
            identity_document: !i.identity_document.is_empty(),
            identity_verified: a.verified,
            machine_id: i.machine_id,
            clock_skew_ms: reported.as_ref().and_then(|r| r.clock_skew_ms),
            counters: reported.filter(|r| r.at_ms > 0).map(|r| {
                let c = r.counters;
                serde_json::json!({
                    "at_ms": r.at_ms,
                    "records_received": c.records_received,
                    "records_malformed": c.records_malformed,
                    "records_dropped": c.records_dropped,
                    "records_dropped_by_reason": c.records_dropped_by_reason,
                    "records_spooled": c.records_spooled,
                    "records_replayed": c.records_replayed,
                    "records_sent": c.records_sent,
                    "records_acked": c.records_acked,
                    "ext_records_dropped": c.ext_records_dropped,
                    "batches_rejected": c.batches_rejected,
                    "spool_bytes": c.spool_bytes,
                })
            }),
            last_seen_ms: a.last_seen_ms,
            registered_ms: a.registered_ms,
            versions: VersionsView {
                agent: v.agent,
                extension: v.extension,
                php: v.php,
                protocol: v.protocol,
            },
            apps: a.apps,
            cloud_provider: i.cloud_provider,
            instance_type: i.instance_type,
            region: i.region,
            private_ip: i.private_ip,
            labels: i.labels,
        }
    }
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<AgentsView>, ApiError> {
    let agents = run_blocking(&state.store, |s| s.list_agents()).await?;
    let now = now_ms();
    Ok(Json(AgentsView {
        agents: agents
            .into_iter()
            .map(|a| {
                let status = state.presence.status(&a, now, state.down_after_ms);
                let reported = state.presence.reported(&a.identity.agent_id);
                AgentView::new(a, status, reported)
            })
            .collect(),
    }))
}

pub async fn active(State(state): State<ApiState>, query: AppQuery) -> Json<ActiveView> {
    let app = query.app.as_deref().filter(|a| !a.is_empty());
    // A snapshot older than the down threshold belongs to a silent agent.
    Json(state.live.active(app, now_ms(), state.down_after_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{get, state};
    use axum::http::StatusCode;
    use serde_json::json;
    use sonde_proto::v1::{AgentIdentity, InflightRequest, LiveSnapshot, Versions};

    #[tokio::test]
    async fn agents_json() {
        let (_dir, s) = state(&[]);
        let identity = AgentIdentity {
            agent_id: "i-1".into(),
            hostname: "web-1".into(),
            instance_id: "i-1".into(),
            zone: "eu-west-1a".into(),
            ami_id: "ami-9".into(),
            apps: vec!["shop".into()],
            versions: Some(Versions {
                agent: "0.1.0".into(),
                php: "8.3.1".into(),
                protocol: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = now_ms();
        s.store
            .upsert_agent(&identity, "aws:i-1", None, Some(true), now)
            .unwrap();
        s.store
            .upsert_agent(
                &AgentIdentity {
                    agent_id: "i-2".into(),
                    group: "asg".into(),
                    ..Default::default()
                },
                "aws:i-2",
                Some("i-1"),
                None,
                now - 60_000,
            )
            .unwrap();
        let (status, body) = get(&s, "/api/v1/agents", None).await;
        assert_eq!(status, StatusCode::OK);
        let a = &body["agents"][0];
        assert_eq!(a["id"], "i-1");
        assert_eq!(a["hostname"], "web-1");
        assert_eq!(a["instance_id"], "i-1");
        assert_eq!(a["group"], serde_json::Value::Null);
        assert_eq!(a["zone"], "eu-west-1a");
        assert_eq!(a["ami_id"], "ami-9");
        assert_eq!(a["status"], "up");
        assert_eq!(a["last_seen_ms"], now);
        assert_eq!(
            a["versions"],
            json!({"agent": "0.1.0", "extension": "", "php": "8.3.1", "protocol": 1})
        );
        assert_eq!(a["apps"], json!(["shop"]));
        let b = &body["agents"][1];
        assert_eq!(
            (b["group"].as_str(), b["status"].as_str()),
            (Some("asg"), Some("down"))
        );
        assert_eq!(
            (a["identity_key"].as_str(), &a["duplicate_of"]),
            (Some("aws:i-1"), &serde_json::Value::Null)
        );
        assert_eq!(b["duplicate_of"], "i-1");
        // A stream that dropped without a goodbye: down after the grace.
        s.presence.stream_opened("i-1", "s", now - 6_000);
        s.presence.stream_closed("i-1", "s", now - 5_500);
        let (_, body) = get(&s, "/api/v1/agents", None).await;
        assert_eq!(body["agents"][0]["status"], "down");
    }

    #[tokio::test]
    async fn active_json() {
        let (_dir, s) = state(&[]);
        let snapshot = LiveSnapshot {
            active: vec![InflightRequest {
                app: "shop".into(),
                endpoint: "/cart".into(),
                elapsed_ms: 4000.0,
                current: "SELECT ?".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        s.live.update("i-1", "web-1", snapshot, now_ms());
        let (status, body) = get(&s, "/api/v1/active?app=shop", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["buckets"], json!([0, 0, 1, 0]));
        assert_eq!(body["active"][0]["host"], "web-1");
        assert_eq!(body["active"][0]["current"], "SELECT ?");
        let (_, body) = get(&s, "/api/v1/active?app=blog", None).await;
        assert_eq!(body["active"], json!([]));
    }
}
