//! The JSON API (`/api/v1/*`, CONTRACT.md) and `/healthz`, over axum. Owns
//! request parsing, API-token checks and the JSON shapes; it only reads the
//! store and the live state, never writes them — except console users,
//! event acknowledgements, console alert rules and deploy markers, which
//! are changes an operator (or a deploy script) asks for.

mod agents;
mod alert_rules;
mod deploys;
mod events;
mod hosts;
mod live;
mod metrics;
mod openapi;
mod reports;
mod rollups;
mod transactions;
mod users;

#[cfg(test)]
mod rollup_tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, OriginalUri, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{error, warn};

use crate::auth::{AuthError, Tokens};
use crate::clock::now_ms;
use crate::ingest::IngestCounters;
use crate::live::LiveState;
use crate::live_stats::LiveStats;
use crate::shutdown::Shutdown;
use crate::storage::{SharedStore, StoreError};
use crate::web::Console;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: SharedStore,
    pub live: Arc<LiveState>,
    /// The dashboard's live statistics.
    pub stats: Arc<LiveStats>,
    /// Seconds of the live stream's headline window (`[live] window_secs`).
    pub live_window_s: i64,
    pub counters: Arc<IngestCounters>,
    pub tokens: Tokens,
    /// Console users and sessions.
    pub console: Arc<Console>,
    /// An agent silent for longer than this is `down` (3 heartbeats).
    pub down_after_ms: i64,
    /// Which agents are connected (an agent whose stream dropped is down).
    pub presence: Arc<crate::presence::Presence>,
    /// The alerts' counters.
    pub alerts: Arc<crate::alerts::AlertCounters>,
    /// The alert rules (file, console, built-in), for the rule editor.
    pub alert_rules: Arc<crate::alerts::RuleBook>,
    /// The alert channels, for the "send test" action.
    pub alert_channels: crate::alerts::Channels,
    /// Ends the live streams at shutdown.
    pub shutdown: Shutdown,
    /// The store's directory (`[storage] path`), for its size on `/metrics`.
    pub storage_dir: std::path::PathBuf,
}

/// Why a request failed; each becomes `{"error": "…"}` with its status.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{name}: {reason}")]
    BadParam { name: &'static str, reason: String },
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
    #[error("storage error")]
    Store(#[from] StoreError),
}

impl ApiError {
    fn bad(name: &'static str, reason: impl Into<String>) -> Self {
        ApiError::BadParam {
            name,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(e) => {
                error!(error = %e, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Store(e) => {
                error!(error = %e, "API request failed in storage");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

/// The whole HTTP application.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/transactions", get(transactions::list))
        .route("/transactions/:id", get(transactions::detail))
        .route("/agents", get(agents::list))
        .route("/active", get(agents::active))
        .route("/endpoints", get(rollups::endpoints))
        .route("/sql", get(rollups::sql))
        .route("/externals", get(rollups::externals))
        .route("/series", get(rollups::series))
        .route("/reports/daily", get(reports::daily))
        .route("/hosts/series", get(hosts::series))
        .route("/events", get(events::list))
        .route("/events/:id/ack", post(events::ack))
        .route("/alerts/test", post(events::send_test))
        .route(
            "/alerts/rules",
            get(alert_rules::list).post(alert_rules::create),
        )
        .route(
            "/alerts/rules/:name",
            put(alert_rules::update).delete(alert_rules::delete),
        )
        .route("/alerts/channels", get(alert_rules::channels))
        .route("/deploys", get(deploys::list).post(deploys::create))
        .route("/stats", get(stats))
        .route("/openapi.json", get(openapi::document))
        .route("/live", get(live::stream))
        .route("/live/snapshot", get(live::snapshot))
        .route("/session", get(users::session))
        .route("/users", get(users::list).post(users::create))
        .route("/users/:name", delete(users::delete))
        .fallback(|| async { ApiError::NotFound("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let metrics = Router::new()
        .route("/metrics", get(metrics::render))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(metrics)
        .nest("/api/v1", api)
        .merge(crate::web::routes())
        .with_state(state)
}

/// With `api_tokens` set, `/api/v1/*` needs `Authorization: Bearer TOKEN`
/// or a console session. The session's principal goes with the request
/// for the handlers that change things.
async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(principal) = state.console.principal(request.headers()) {
        request.extensions_mut().insert(principal);
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(e) = state.tokens.check(header) {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        let path = request
            .extensions()
            .get::<OriginalUri>()
            .map_or_else(|| request.uri().path(), |u| u.path())
            .to_owned();
        warn!(error = %e, %peer, %path, "API request refused");
        return ApiError::Unauthorized(match e {
            AuthError::Missing => "missing API token",
            AuthError::Unknown => "unknown API token",
        })
        .into_response();
    }
    next.run(request).await
}

/// `GET /api/v1/stats`: the collector's own counters, and the storage's
/// (sizes, retention) when the backend keeps them.
async fn stats(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let mut v = stats_value(&state);
    if let Ok(storage) = crate::storage::run_blocking(&state.store, |s| s.storage_stats()).await {
        v["storage"] = json!(storage);
    }
    Json(v)
}

/// The collector's own counters (also behind `/metrics`).
fn stats_value(state: &ApiState) -> serde_json::Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": now_ms(),
        "ingest": state.counters.view(),
        "live": {"late_records": state.stats.late()},
        "alerts": state.alerts.view(&state.alert_rules, &state.alert_channels),
    })
}

/// `?app=` for endpoints that take only that.
#[derive(Debug, Deserialize)]
struct AppParam {
    app: Option<String>,
}

type AppQuery = Query<AppParam>;

/// Serves the API on `listener` until `shutdown` fires, then finishes the
/// requests in progress.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use axum::body::Body;
    use tower::ServiceExt;

    pub(crate) fn state(tokens: &[&str]) -> (tempfile::TempDir, ApiState) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        // Live streams in tests end with their test.
        std::mem::forget(trigger);
        let users = Arc::new(crate::auth::users::UserStore::in_memory());
        let state = ApiState {
            store: Arc::new(store),
            live: Arc::default(),
            stats: Arc::default(),
            live_window_s: 5,
            counters: Arc::default(),
            tokens: Tokens::new(tokens.iter().map(|t| t.to_string()).collect()),
            console: Arc::new(Console::new(users, false)),
            down_after_ms: 15_000,
            presence: Arc::new(crate::presence::Presence::new(5_000)),
            alerts: Arc::default(),
            alert_rules: Arc::new(crate::alerts::RuleBook::new(
                &crate::alerts::AlertsConfig::default(),
            )),
            alert_channels: Arc::default(),
            shutdown,
            storage_dir: dir.path().to_owned(),
        };
        (dir, state)
    }

    /// GETs `uri` and returns the status and the body as JSON (or as a
    /// JSON string when it is not JSON).
    pub(crate) async fn get(
        state: &ApiState,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::get(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let response = router(state.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        (status, json)
    }

    /// Sends `method uri` with a JSON body (none for `null`) and returns
    /// the status and the body as JSON.
    pub(crate) async fn send(
        state: &ApiState,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            req = req.header("content-type", "application/json");
            Body::from(body.to_string())
        };
        let response = router(state.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    #[tokio::test]
    async fn tokens_guard_the_api_but_not_healthz() {
        let (_dir, s) = state(&["t1"]);
        assert_eq!(
            get(&s, "/healthz", None).await,
            (StatusCode::OK, "ok".into())
        );
        let (status, body) = get(&s, "/api/v1/agents", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({"error": "missing API token"}));
        let (status, body) = get(&s, "/api/v1/agents", Some("t2")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unknown API token");
        let (status, body) = get(&s, "/api/v1/agents", Some("t1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"agents": []}));
        let (status, _) = get(&s, "/api/v1/nope", Some("t1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = get(&s, "/api/v1/stats", Some("t1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ingest"]["batches"], 0);
        assert_eq!(body["alerts"]["deliveries"]["dropped"], 0);
        assert_eq!(body["alerts"]["events"], 0);
    }
}
