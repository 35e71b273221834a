//! Deploy markers: `POST /api/v1/deploys` records a deployment of an app
//! (deploy scripts call it, e.g. through `scripts/sonde-deploy`), `GET
//! /api/v1/deploys?from&to&app&limit` lists them for the charts and the
//! daily report. Recording needs an admin's console session or an API
//! bearer token; read-only users are refused.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::events::actor;
use super::rollups::Params;
use super::{ApiError, ApiState};
use crate::auth::sessions::Principal;
use crate::clock::now_ms;
use crate::storage::{run_blocking, DeployRecord};

/// Without `from`, deploys of this long before `to`.
const DEFAULT_WINDOW_MS: i64 = 7 * 24 * 60 * 60 * 1000;
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// Longest app, version and user; longest description.
const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2000;

/// The body of `POST /api/v1/deploys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeploy {
    app: String,
    version: String,
    #[serde(default)]
    description: String,
    /// Who deployed; default: the caller (console user or `api-token`).
    #[serde(default)]
    user: Option<String>,
    /// When, epoch ms; default: now.
    #[serde(default)]
    ts_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DeploysView {
    pub deploys: Vec<DeployRecord>,
}

fn text(name: &'static str, v: &str, max: usize, required: bool) -> Result<String, ApiError> {
    let v = v.trim();
    if required && v.is_empty() {
        return Err(ApiError::bad(name, "is required"));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad(name, format!("at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::bad(name, "must not hold control characters"));
    }
    Ok(v.to_owned())
}

pub async fn create(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<(StatusCode, Json<DeployRecord>), ApiError> {
    let by = actor(principal)?;
    let new: NewDeploy =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let now = now_ms();
    let mut deploy = DeployRecord {
        id: 0,
        ts_ms: new.ts_ms.unwrap_or(now),
        app: text("app", &new.app, MAX_NAME, true)?,
        version: text("version", &new.version, MAX_NAME, true)?,
        description: text("description", &new.description, MAX_DESCRIPTION, false)?,
        user: match new.user {
            Some(u) if !u.trim().is_empty() => text("user", &u, MAX_NAME, false)?,
            _ => by.clone(),
        },
    };
    if deploy.ts_ms <= 0 {
        return Err(ApiError::bad("ts_ms", "must be epoch milliseconds"));
    }
    let d = deploy.clone();
    deploy.id = run_blocking(&state.store, move |s| s.insert_deploy(&d)).await?;
    info!(id = deploy.id, app = %deploy.app, version = %deploy.version, user = %deploy.user, by = %by, "deploy recorded");
    Ok((StatusCode::CREATED, Json(deploy)))
}

pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeploysView>, ApiError> {
    let p = Params(&query);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let deploys = run_blocking(&state.store, move |s| {
        s.list_deploys(range.from_ms, range.to_ms, range.app.as_deref(), limit)
    })
    .await?;
    Ok(Json(DeploysView { deploys }))
}

#[cfg(test)]
mod tests {
    use crate::api::tests::{get, send, state};
    use axum::http::StatusCode;
    use serde_json::json;

    #[tokio::test]
    async fn record_and_list() {
        let (_dir, s) = state(&["t"]);
        let (status, body) = send(
            &s,
            "POST",
            "/api/v1/deploys",
            Some("t"),
            json!({"app": "shop", "version": "v1.2", "description": "new checkout", "user": "alice", "ts_ms": 5000}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["user"], "alice");
        assert!(body["id"].as_i64().unwrap() > 0);
        let (status, body) = send(
            &s,
            "POST",
            "/api/v1/deploys",
            Some("t"),
            json!({"app": "blog", "version": "7", "ts_ms": 6000}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["user"], "api-token", "the caller by default");
        assert_eq!(body["description"], "");

        let (status, body) = get(&s, "/api/v1/deploys?from=0&to=10000", Some("t")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["deploys"].as_array().unwrap().len(), 2);
        let d = &body["deploys"][0];
        for key in ["id", "ts_ms", "app", "version", "description", "user"] {
            assert!(d.get(key).is_some(), "{key}: {d}");
        }
        let (_, body) = get(&s, "/api/v1/deploys?from=0&to=10000&app=shop", Some("t")).await;
        assert_eq!(body["deploys"].as_array().unwrap().len(), 1);
        assert_eq!(body["deploys"][0]["version"], "v1.2");

        // Refusals.
        for bad in [
            json!({"app": "shop"}),
            json!({"app": "", "version": "1"}),
            json!({"app": "shop", "version": "1", "extra": 1}),
            json!({"app": "shop", "version": "1\u{1b}[31m"}),
        ] {
            let (status, body) = send(&s, "POST", "/api/v1/deploys", Some("t"), bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        }
        let (status, _) = send(
            &s,
            "POST",
            "/api/v1/deploys",
            None,
            json!({"app": "shop", "version": "1"}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
