//! `GET /api/v1/live?app&host`: the real-time dashboard's numbers as
//! Server-Sent Events, one `live` event per second; and
//! `GET /api/v1/live/snapshot?app&host`, the same payload once as JSON.
//! Everything comes from memory (the agents' live snapshots and the
//! `live_stats` aggregation fed by ingest), never from storage.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ApiState;
use crate::clock::now_ms;
use crate::live_stats::{LiveFilter, StatsView};

/// How often the stream sends.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One event of the stream.
#[derive(Debug, Serialize)]
pub struct LivePayload {
    /// When it was computed, epoch ms.
    pub ts_ms: i64,
    #[serde(flatten)]
    pub stats: StatsView,
    pub active: ActiveSummary,
}

/// The active-service equalizer: requests in flight per elapsed bucket.
#[derive(Debug, Serialize)]
pub struct ActiveSummary {
    pub bounds_ms: [u64; 3],
    pub buckets: [u64; 4],
    pub count: u64,
}

fn filter(params: &HashMap<String, String>) -> LiveFilter {
    let text = |n: &str| {
        params
            .get(n)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    LiveFilter {
        app: text("app"),
        host: text("host"),
    }
}

fn payload(state: &ApiState, filter: &LiveFilter) -> LivePayload {
    let now = now_ms();
    let stats = state.stats.view(filter, now, state.live_window_s);
    let mut active = state
        .live
        .active(filter.app.as_deref(), now, state.down_after_ms);
    if let Some(host) = &filter.host {
        active.active.retain(|r| &r.host == host);
        active.buckets = [0; 4];
        for r in &active.active {
            let b = active
                .bounds_ms
                .iter()
                .position(|&b| r.elapsed_ms < b as f64)
                .unwrap_or(3);
            active.buckets[b] += 1;
        }
    }
    LivePayload {
        ts_ms: now,
        stats,
        active: ActiveSummary {
            bounds_ms: active.bounds_ms,
            buckets: active.buckets,
            count: active.active.len() as u64,
        },
    }
}

pub async fn snapshot(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Json<LivePayload> {
    Json(payload(&state, &filter(&params)))
}

pub async fn stream(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Sse<ReceiverStream<Result<Event, Infallible>>> {
    let filter = filter(&params);
    // One small task per viewer: it ends when the viewer goes (the send
    // fails) or the collector shuts down, so no stream holds shutdown up.
    let (tx, rx) = mpsc::channel(2);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            let event = Event::default()
                .event("live")
                .json_data(payload(&state, &filter))
                .unwrap_or_else(|_| Event::default().comment("unserialisable"));
            tokio::select! {
                _ = shutdown.wait() => break,
                sent = tx.send(Ok(event)) => if sent.is_err() { break },
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use crate::api::tests::{get, state};
    use crate::clock::now_ms;
    use crate::storage::tests::record;
    use axum::body::Body;
    use axum::http::StatusCode;
    use sonde_proto::v1::{InflightRequest, LiveSnapshot};
    use tokio_stream::StreamExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn snapshot_json() {
        let (_dir, s) = state(&[]);
        let now = now_ms();
        let recs: Vec<_> = (1..=5)
            .map(|i| record(i, now - 3000 + i64::from(i), 10))
            .collect();
        s.stats.observe(&recs, "web-1", now);
        s.live.update(
            "a",
            "web-1",
            LiveSnapshot {
                active: vec![InflightRequest {
                    app: "shop".into(),
                    url: "/slow".into(),
                    elapsed_ms: 4000.0,
                    ..Default::default()
                }],
                ..Default::default()
            },
            now,
        );
        let (status, body) = get(&s, "/api/v1/live/snapshot?app=shop", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["window"]["calls"], 5, "{body}");
        assert_eq!(body["active"]["buckets"], serde_json::json!([0, 0, 1, 0]));
        assert_eq!(body["active"]["count"], 1);
        assert_eq!(body["endpoints"][0]["endpoint"], "/users/{num}");
        assert_eq!(body["recent"].as_array().unwrap().len(), 60);
        let (_, body) = get(&s, "/api/v1/live/snapshot?host=web-2", None).await;
        assert_eq!(body["window"]["calls"], 0);
        assert_eq!(body["active"]["count"], 0);
    }

    #[tokio::test]
    async fn stream_sends_live_events() {
        let (_dir, s) = state(&[]);
        let response = crate::api::router(s.clone())
            .oneshot(
                axum::http::Request::get("/api/v1/live")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body().into_data_stream();
        let chunk = body.next().await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&chunk);
        assert!(text.starts_with("event: live\ndata: {"), "{text}");
        assert!(text.contains("\"concurrent_users\":0"), "{text}");
    }
}
