//! The console's rule editor and channel list: `GET/POST
//! /api/v1/alerts/rules`, `PUT/DELETE /api/v1/alerts/rules/{name}` and `GET
//! /api/v1/alerts/channels`. Rules made here are stored in the collector's
//! database and take effect at the next evaluation; the file's and the
//! built-in rules are listed read-only, with which one is in force (see
//! `alerts::ruleset` for the precedence). Changes need an admin's console
//! session or an API bearer token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};
use tracing::info;

use super::events::actor;
use super::{ApiError, ApiState};
use crate::alerts::config::{validate_rule, RuleConfig, RuleKind};
use crate::alerts::ruleset::{Source, PRECEDENCE};
use crate::auth::sessions::Principal;
use crate::clock::now_ms;
use crate::storage::{run_blocking, StoredRule};

pub async fn list(State(state): State<ApiState>) -> Json<Value> {
    let book = &state.alert_rules;
    Json(json!({
        "rules": book.listing(),
        "precedence": PRECEDENCE,
        "channels": book.channels(),
        "kinds": RuleKind::ALL,
    }))
}

pub async fn channels(State(state): State<ApiState>) -> Json<Value> {
    let channels: Vec<_> = state.alert_channels.iter().map(|c| c.view()).collect();
    Json(json!({ "channels": channels }))
}

/// Parses and checks a rule sent by the console; `name` is the path's.
fn parse(body: &[u8], name: Option<&str>, state: &ApiState) -> Result<RuleConfig, ApiError> {
    let mut rule: RuleConfig =
        serde_json::from_slice(body).map_err(|e| ApiError::bad("body", e.to_string()))?;
    if let Some(name) = name {
        if rule.name.is_empty() {
            rule.name = name.to_owned();
        } else if rule.name != name {
            return Err(ApiError::bad(
                "name",
                "differs from the path (delete and create to rename)",
            ));
        }
    }
    rule.name = rule.name.trim().to_owned();
    validate_rule(&rule, &state.alert_rules.channels()).map_err(|(key, reason)| {
        ApiError::bad(key.strip_prefix("alerts.rules.").unwrap_or(key), reason)
    })?;
    Ok(rule)
}

/// The rule's listing entry after a change (it says whether it is in
/// force or overridden by the file).
fn listed(state: &ApiState, name: &str) -> Value {
    state
        .alert_rules
        .listing()
        .into_iter()
        .find(|l| l.source == Source::Console && l.rule.name == name)
        .map_or(Value::Null, |l| json!(l))
}

async fn store_and_reload(
    state: &ApiState,
    rule: &RuleConfig,
    by: &str,
    create: bool,
) -> Result<bool, ApiError> {
    let stored = StoredRule {
        name: rule.name.clone(),
        json: serde_json::to_string(rule).map_err(|e| ApiError::Internal(e.to_string()))?,
        updated_ms: now_ms(),
        updated_by: by.to_owned(),
    };
    let done = run_blocking(&state.store, move |s| {
        if create {
            s.insert_console_rule(&stored)
        } else {
            s.update_console_rule(&stored)
        }
    })
    .await?;
    if done {
        state.alert_rules.reload(&state.store).await?;
    }
    Ok(done)
}

pub async fn create(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = actor(principal)?;
    let rule = parse(&body, None, &state)?;
    if !store_and_reload(&state, &rule, &by, true).await? {
        return Err(ApiError::Conflict(format!(
            "a console rule named `{}` exists (PUT to change it)",
            rule.name
        )));
    }
    info!(rule = %rule.name, by = %by, in_file = state.alert_rules.in_file(&rule.name), "console alert rule created");
    Ok((StatusCode::CREATED, Json(listed(&state, &rule.name))))
}

pub async fn update(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let by = actor(principal)?;
    let rule = parse(&body, Some(&name), &state)?;
    if !store_and_reload(&state, &rule, &by, false).await? {
        return Err(ApiError::NotFound(
            "no console rule of this name (rules of the config file are changed in the file)",
        ));
    }
    info!(rule = %rule.name, by = %by, "console alert rule changed");
    Ok(Json(listed(&state, &rule.name)))
}

pub async fn delete(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let by = actor(principal)?;
    let n = name.clone();
    if !run_blocking(&state.store, move |s| s.delete_console_rule(&n)).await? {
        return Err(ApiError::NotFound(
            "no console rule of this name (rules of the config file are changed in the file)",
        ));
    }
    state.alert_rules.reload(&state.store).await?;
    info!(rule = %name, by = %by, "console alert rule deleted");
    Ok(Json(json!({ "deleted": name })))
}

#[cfg(test)]
mod tests {
    use crate::alerts::config::{AlertsConfig, RuleConfig, RuleKind};
    use crate::alerts::RuleBook;
    use crate::api::tests::{get, send, state};
    use axum::http::StatusCode;
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn console_rules_and_precedence() {
        let (_dir, mut s) = state(&["t"]);
        s.alert_rules = Arc::new(RuleBook::new(&AlertsConfig {
            rules: vec![RuleConfig {
                name: "from-file".into(),
                kind: Some(RuleKind::ErrorCount),
                ..RuleConfig::default()
            }],
            ..AlertsConfig::default()
        }));
        let (status, body) = get(&s, "/api/v1/alerts/rules", Some("t")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["precedence"], json!(["file", "console", "default"]));
        assert_eq!(body["rules"][0]["name"], "from-file");
        assert_eq!(body["rules"][0]["source"], "file");
        assert_eq!(body["rules"][0]["editable"], false);
        assert_eq!(body["rules"].as_array().unwrap().len(), 6);

        // Create: in force at once.
        let rule = json!({"name": "boom", "kind": "error_count", "threshold": 0,
                          "window_secs": 5, "by": "endpoint", "endpoint": "/api/v6/boom"});
        let (status, body) =
            send(&s, "POST", "/api/v1/alerts/rules", Some("t"), rule.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            (
                body["source"].as_str(),
                body["effective"].as_bool(),
                body["updated_by"].as_str()
            ),
            (Some("console"), Some(true), Some("api-token"))
        );
        assert!(s.alert_rules.effective().iter().any(|r| r.name == "boom"));
        let (status, _) = send(&s, "POST", "/api/v1/alerts/rules", Some("t"), rule).await;
        assert_eq!(status, StatusCode::CONFLICT);

        // Same name as the file's rule: stored, listed, not in force.
        let (status, body) = send(
            &s,
            "POST",
            "/api/v1/alerts/rules",
            Some("t"),
            json!({"name": "from-file", "kind": "error_rate", "threshold": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["effective"], false);
        assert_eq!(body["overridden_by"], "file");
        // Replacing a built-in rule from the console.
        let (_, body) = send(
            &s,
            "POST",
            "/api/v1/alerts/rules",
            Some("t"),
            json!({"name": "error-rate", "kind": "error_rate", "threshold": 50}),
        )
        .await;
        assert_eq!(body["effective"], true);
        let (_, list) = get(&s, "/api/v1/alerts/rules", Some("t")).await;
        let default = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "error-rate" && r["source"] == "default")
            .unwrap()
            .clone();
        assert_eq!(default["overridden_by"], "console");

        // Update and delete.
        let (status, body) = send(
            &s,
            "PUT",
            "/api/v1/alerts/rules/boom",
            Some("t"),
            json!({"kind": "error_count", "threshold": 3}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["threshold"], 3.0);
        assert_eq!(body["window_secs"], 60, "a PUT replaces the whole rule");
        let (status, _) = send(
            &s,
            "PUT",
            "/api/v1/alerts/rules/from-file-x",
            Some("t"),
            json!({"kind": "error_count"}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = send(
            &s,
            "DELETE",
            "/api/v1/alerts/rules/boom",
            Some("t"),
            json!(null),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!s.alert_rules.effective().iter().any(|r| r.name == "boom"));
        let (status, _) = send(
            &s,
            "DELETE",
            "/api/v1/alerts/rules/boom",
            Some("t"),
            json!(null),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Refusals name the field.
        for (bad, field) in [
            (json!({"name": "x", "kind": "error_rate"}), "threshold"),
            (json!({"name": "x", "kind": "nope"}), "body"),
            (
                json!({"name": "x", "kind": "error_count", "channels": ["nope"]}),
                "channels",
            ),
            (
                json!({"name": "x", "kind": "error_count", "kidn": 1}),
                "body",
            ),
            (
                json!({"name": "x", "kind": "tps_drop", "threshold": 50, "by": "endpoint"}),
                "by",
            ),
        ] {
            let (status, body) =
                send(&s, "POST", "/api/v1/alerts/rules", Some("t"), bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                body["error"].as_str().unwrap().starts_with(field),
                "{bad} → {body}"
            );
        }
        let (status, _) = send(
            &s,
            "POST",
            "/api/v1/alerts/rules",
            None,
            json!({"name": "y", "kind": "error_count"}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = get(&s, "/api/v1/alerts/channels", Some("t")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"channels": []})));
    }
}
