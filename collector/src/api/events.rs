//! `GET /api/v1/events?from&to&app&limit` (alert events, oldest first),
//! `POST /api/v1/events/{id}/ack` and `POST /api/v1/alerts/test?channel`
//! (a test message to the alert channels). The two POSTs need an admin's console
//! session or an API bearer token; read-only users are refused.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::info;

use super::rollups::Params;
use super::{ApiError, ApiState};
use crate::auth::sessions::Principal;
use crate::auth::users::Role;
use crate::clock::now_ms;
use crate::storage::{run_blocking, EventRecord};

/// Without `from`, events of this long before `to`.
const DEFAULT_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Default and largest `limit`.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Serialize)]
pub struct EventsView {
    pub events: Vec<EventRecord>,
}

pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EventsView>, ApiError> {
    let p = Params(&query);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let (from, to) = (range.from_ms, range.to_ms);
    let mut events = run_blocking(&state.store, move |s| s.list_events(from, to, limit)).await?;
    if let Some(app) = range.app {
        events.retain(|e| e.app.as_deref() == Some(app.as_str()));
    }
    Ok(Json(EventsView { events }))
}

/// Who may act: an admin's name, or `api-token`.
pub(super) fn actor(principal: Option<Extension<Principal>>) -> Result<String, ApiError> {
    match principal {
        Some(Extension(p)) if p.role == Role::Admin => Ok(p.user),
        Some(_) => Err(ApiError::Forbidden(
            "read-only users cannot change anything",
        )),
        // Past the token check without a session: an API token (or an
        // open API).
        None => Ok("api-token".to_owned()),
    }
}

pub async fn ack(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let by = actor(principal)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad("id", format!("`{id}` is not an event id")))?;
    let now = now_ms();
    let who = by.clone();
    if !run_blocking(&state.store, move |s| s.ack_event(id, &who, now)).await? {
        return Err(ApiError::NotFound("no such event"));
    }
    info!(event = id, by = %by, "alert event acknowledged");
    Ok(Json(json!({"id": id, "acked_by": by})))
}

/// Queues a test event (kind `test`, not stored) on every channel
/// (webhooks and email), or on the one named by `?channel=`; answers the
/// channels it was queued on. Delivery is asynchronous: its result shows in
/// `/api/v1/stats`, `/api/v1/alerts/channels` and the log, and a test
/// message that cannot be delivered becomes a `delivery` event.
pub async fn send_test(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let by = actor(principal)?;
    let only = Params(&query).text("channel").map(str::to_owned);
    let event = std::sync::Arc::new(EventRecord {
        id: 0,
        ts_ms: now_ms(),
        level: "warning".into(),
        kind: "test".into(),
        state: "firing".into(),
        message: format!("Test message from Sonde, sent by {by}"),
        app: None,
        endpoint: None,
        host: None,
        rule: "test".into(),
        value: 0.0,
        threshold: 0.0,
        acked_ms: None,
        acked_by: None,
    });
    let mut queued = Vec::new();
    for c in state
        .alert_channels
        .iter()
        .filter(|c| only.as_ref().is_none_or(|n| *n == c.name))
    {
        c.send(std::sync::Arc::clone(&event));
        queued.push(c.name.clone());
    }
    if queued.is_empty() {
        return Err(ApiError::NotFound("no such alert channel"));
    }
    info!(by = %by, channels = ?queued, "alert test queued");
    Ok(Json(json!({ "queued": queued })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{get, state};
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    fn event(ts_ms: i64, state: &str) -> EventRecord {
        EventRecord {
            id: 0,
            ts_ms,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: state.into(),
            message: "m".into(),
            app: Some("shop".into()),
            endpoint: None,
            host: None,
            rule: "error-rate".into(),
            value: 50.0,
            threshold: 5.0,
            acked_ms: None,
            acked_by: None,
        }
    }

    async fn post(s: &ApiState, uri: &str, token: Option<&str>) -> StatusCode {
        let mut req = axum::http::Request::post(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        crate::api::router(s.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn events_json_and_ack() {
        let (_dir, s) = state(&["t"]);
        let id = s.store.insert_event(&event(1000, "firing")).unwrap();
        s.store.insert_event(&event(2000, "resolved")).unwrap();
        let (status, body) = get(&s, "/api/v1/events?from=0&to=5000", Some("t")).await;
        assert_eq!(status, StatusCode::OK);
        let e = &body["events"][0];
        for key in [
            "id", "ts_ms", "level", "kind", "state", "message", "app", "endpoint", "host",
        ] {
            assert!(e.get(key).is_some(), "{key} missing: {e}");
        }
        assert_eq!(
            (e["id"].as_i64(), e["state"].as_str()),
            (Some(id), Some("firing"))
        );
        assert_eq!(body["events"][1]["state"], "resolved");
        let (_, body) = get(&s, "/api/v1/events?from=0&to=5000&app=blog", Some("t")).await;
        assert_eq!(body["events"], json!([]));
        let (status, _) = get(&s, "/api/v1/events?from=9&to=1", Some("t")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let uri = format!("/api/v1/events/{id}/ack");
        assert_eq!(post(&s, &uri, None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&s, &uri, Some("t")).await, StatusCode::OK);
        assert_eq!(
            post(&s, "/api/v1/events/999/ack", Some("t")).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            post(&s, "/api/v1/events/x/ack", Some("t")).await,
            StatusCode::BAD_REQUEST
        );
        let (_, body) = get(&s, "/api/v1/events?from=0&to=5000", Some("t")).await;
        assert_eq!(body["events"][0]["acked_by"], "api-token");
        // No webhooks configured: nothing to test.
        assert_eq!(
            post(&s, "/api/v1/alerts/test", Some("t")).await,
            StatusCode::NOT_FOUND
        );
    }
}
