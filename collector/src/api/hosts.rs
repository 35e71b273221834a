//! `GET /api/v1/hosts/series?from&to&host&limit`: the host metrics agents
//! sent in their batches, per host, as sampled (no rollup).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;

use super::rollups::Params;
use super::{ApiError, ApiState};
use crate::clock::now_ms;
use crate::storage::{run_blocking, HostSeries};

/// Without `from`, the window reaches this far back from `to`.
pub const DEFAULT_WINDOW_MS: i64 = 60 * 60 * 1000;
pub const DEFAULT_LIMIT: usize = 10_000;
pub const MAX_LIMIT: usize = 100_000;

#[derive(Debug, Serialize)]
pub struct HostsView {
    pub hosts: Vec<HostSeries>,
    /// More samples matched than `limit`; the most recent were kept.
    pub truncated: bool,
}

pub async fn series(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<HostsView>, ApiError> {
    let p = Params(&params);
    let range = p.range(now_ms(), DEFAULT_WINDOW_MS)?;
    let host = p.text("host").map(str::to_owned);
    let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let (hosts, truncated) = run_blocking(&state.store, move |s| {
        s.host_series(range.from_ms, range.to_ms, host.as_deref(), limit)
    })
    .await?;
    Ok(Json(HostsView { hosts, truncated }))
}
