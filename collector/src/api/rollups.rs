//! The rollup-backed views: `GET /api/v1/endpoints` (the application status
//! table), `GET /api/v1/sql`, `GET /api/v1/externals` (what an endpoint row
//! drills down to) and `GET /api/v1/series`. Ranges resolve to whole
//! buckets: a bucket counts when it starts in `[from, to)`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::clock::now_ms;
use crate::storage::rollup::{EndpointStats, ExternalStats, RollupRange, SqlStats, Step};
use crate::storage::run_blocking;

/// Without `from`, rollup views reach this far back from `to`.
pub const DEFAULT_WINDOW_MS: i64 = 60 * 60 * 1000;
/// Most points one series may have.
pub const MAX_POINTS: i64 = 10_000;
/// Step sizes offered when `step_s` is absent: the first giving at most
/// [`TARGET_POINTS`] points.
const STEPS_S: [i64; 15] = [
    1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400,
];
const TARGET_POINTS: i64 = 720;

/// Query parameters; an empty value counts as absent.
pub struct Params<'a>(pub &'a HashMap<String, String>);

impl Params<'_> {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn int(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        self.text(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad(name, format!("`{v}` is not an integer")))
            })
            .transpose()
    }

    /// `limit`: `default` when absent, at least 1, and capped at `max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.int("limit")? {
            None => Ok(default),
            Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(max).min(max)),
            Some(_) => Err(ApiError::bad("limit", "must be at least 1")),
        }
    }

    /// `from`, `to` (default: the last `window_ms` before now) and `app`.
    pub fn range(&self, now_ms: i64, window_ms: i64) -> Result<RollupRange, ApiError> {
        let to_ms = self.int("to")?.unwrap_or(now_ms);
        let from_ms = self.int("from")?.unwrap_or(to_ms.saturating_sub(window_ms));
        if from_ms > to_ms {
            return Err(ApiError::bad("from", "must not be after `to`"));
        }
        Ok(RollupRange {
            from_ms,
            to_ms,
            app: self.text("app").map(str::to_owned),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct EndpointsView {
    pub endpoints: Vec<EndpointStats>,
}

pub async fn endpoints(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<EndpointsView>, ApiError> {
    let range = Params(&params).range(now_ms(), DEFAULT_WINDOW_MS)?;
    let endpoints = run_blocking(&state.store, move |s| s.endpoints(&range)).await?;
    Ok(Json(EndpointsView { endpoints }))
}

#[derive(Debug, Serialize)]
pub struct SqlView {
    pub statements: Vec<SqlStats>,
}

pub async fn sql(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<SqlView>, ApiError> {
    let p = Params(&params);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let endpoint = p.text("endpoint").map(str::to_owned);
    let statements = run_blocking(&state.store, move |s| {
        s.sql_statements(&range, endpoint.as_deref())
    })
    .await?;
    Ok(Json(SqlView { statements }))
}

#[derive(Debug, Serialize)]
pub struct ExternalsView {
    pub externals: Vec<ExternalStats>,
}

pub async fn externals(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ExternalsView>, ApiError> {
    let p = Params(&params);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let endpoint = p.text("endpoint").map(str::to_owned);
    let externals = run_blocking(&state.store, move |s| {
        s.externals(&range, endpoint.as_deref())
    })
    .await?;
    Ok(Json(ExternalsView { externals }))
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SeriesView {
    /// The step used (the one asked for, or the one chosen).
    pub step_s: i64,
    pub points: Vec<Point>,
}

/// One step of `GET /api/v1/series`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Point {
    /// Start of the step.
    pub ts_ms: i64,
    pub calls: u64,
    /// Calls per second over the step.
    pub tps: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
    /// Failed transactions.
    pub errors: u64,
    /// Requests in flight; not kept historically yet, always 0.
    pub active: u64,
}

impl Point {
    fn new(s: &Step, step_s: i64) -> Self {
        Point {
            ts_ms: s.ts_ms,
            calls: s.calls,
            tps: s.calls as f64 / step_s as f64,
            avg_ms: s.avg_ms(),
            max_ms: s.max_ns as f64 / 1e6,
            errors: s.failures,
            active: 0,
        }
    }
}

/// The step for a range when none is asked for.
fn default_step_s(span_ms: i64) -> i64 {
    STEPS_S
        .into_iter()
        .find(|s| span_ms / (s * 1000) <= TARGET_POINTS)
        .unwrap_or(86400)
}

pub async fn series(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<SeriesView>, ApiError> {
    let p = Params(&params);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let span_ms = range.to_ms - range.from_ms;
    let step_s = match p.int("step_s")? {
        None => default_step_s(span_ms),
        Some(s) if s < 1 => return Err(ApiError::bad("step_s", "must be at least 1")),
        Some(s) => s,
    };
    let step_ms = step_s.saturating_mul(1000);
    if span_ms / step_ms >= MAX_POINTS {
        return Err(ApiError::bad(
            "step_s",
            format!("too small for the range (at most {MAX_POINTS} points)"),
        ));
    }
    let steps = run_blocking(&state.store, move |s| s.steps(&range, step_ms, false)).await?;
    Ok(Json(SeriesView {
        step_s,
        points: steps.iter().map(|s| Point::new(s, step_s)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_steps() {
        assert_eq!(default_step_s(60_000), 1);
        assert_eq!(default_step_s(3_600_000), 5);
        assert_eq!(default_step_s(6 * 3_600_000), 30);
        assert_eq!(default_step_s(24 * 3_600_000), 300);
        assert_eq!(default_step_s(30 * 86_400_000), 3600);
        assert_eq!(default_step_s(i64::MAX / 2), 86400);
    }

    #[test]
    fn range_parsing() {
        let map: HashMap<String, String> = [("from", "10"), ("to", "20"), ("app", " shop ")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let r = Params(&map).range(0, 5).unwrap();
        assert_eq!(
            (r.from_ms, r.to_ms, r.app.as_deref()),
            (10, 20, Some("shop"))
        );
        let empty = HashMap::new();
        let r = Params(&empty).range(1000, 300).unwrap();
        assert_eq!((r.from_ms, r.to_ms, r.app), (700, 1000, None));
        let bad: HashMap<String, String> = [("from", "30"), ("to", "20")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert!(Params(&bad).range(0, 5).is_err());
    }
}
