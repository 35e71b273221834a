//! `GET /metrics`: the collector's own numbers in the Prometheus text
//! format — ingest counters (stored, duplicates i.e. dedup hits, invalid,
//! refusals, storage errors), ingest lag, agents by status, storage bytes on
//! disk, and the alert engine's counters. Same access rule as the API (a
//! bearer token when `auth.api_tokens` is set: Prometheus' `authorization`
//! scrape setting).

use std::fmt::Write as _;
use std::path::Path;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{stats_value, ApiState};
use crate::clock::now_ms;
use crate::storage::run_blocking;

pub async fn render(State(state): State<ApiState>) -> impl IntoResponse {
    let stats = stats_value(&state);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP sonde_collector_{name} {help}");
        let _ = writeln!(out, "# TYPE sonde_collector_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "sonde_collector_{name}{labels} {v}");
        }
    };
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let ingest = &stats["ingest"];
    for (key, help) in [
        ("batches", "Batches received from agents."),
        ("records_stored", "Records newly stored."),
        (
            "records_duplicate",
            "Records already stored (dedup hits: resends and replays).",
        ),
        ("records_invalid", "Records refused (no usable id)."),
        (
            "auth_rejected",
            "Agent calls refused for a missing or unknown token.",
        ),
        (
            "store_errors",
            "Batches not acknowledged because storage failed.",
        ),
        (
            "identity_unverified",
            "Registrations whose signed instance identity did not verify.",
        ),
    ] {
        metric(
            &format!("ingest_{key}_total"),
            "counter",
            help,
            &[(String::new(), num(&ingest[key]))],
        );
    }
    metric(
        "ingest_lag_seconds",
        "gauge",
        "For the newest record of the last stored batch: seconds from its end to its commit.",
        &[(String::new(), num(&ingest["lag_ms"]) / 1000.0)],
    );
    metric(
        "live_late_records_total",
        "counter",
        "Records too old for the live window when they arrived.",
        &[(String::new(), num(&stats["live"]["late_records"]))],
    );
    let alerts = &stats["alerts"];
    metric(
        "alert_rules",
        "gauge",
        "Alert rules in force.",
        &[(String::new(), num(&alerts["rules"]))],
    );
    for (key, help) in [
        ("evaluations", "Alert evaluation rounds."),
        ("events", "Alert events made."),
        ("store_errors", "Alert events that could not be stored."),
    ] {
        metric(
            &format!("alert_{key}_total"),
            "counter",
            help,
            &[(String::new(), num(&alerts[key]))],
        );
    }
    if let Some(d) = alerts["deliveries"].as_object() {
        let samples: Vec<(String, f64)> = d
            .iter()
            .map(|(k, v)| (format!("{{result=\"{k}\"}}"), num(v)))
            .collect();
        metric(
            "alert_deliveries_total",
            "counter",
            "Alert deliveries by result.",
            &samples,
        );
    }

    let down_after = state.down_after_ms;
    let presence = state.presence.clone();
    let agents = run_blocking(&state.store, move |s| {
        let now = now_ms();
        let mut by_status = std::collections::BTreeMap::new();
        for a in s.list_agents()? {
            *by_status
                .entry(presence.status(&a, now, down_after))
                .or_insert(0.0) += 1.0;
        }
        Ok(by_status)
    })
    .await
    .unwrap_or_default();
    let samples: Vec<(String, f64)> = ["up", "down", "stopped", "terminated"]
        .iter()
        .map(|s| {
            (
                format!("{{status=\"{s}\"}}"),
                agents.get(s).copied().unwrap_or(0.0),
            )
        })
        .collect();
    metric("agents", "gauge", "Registered agents by status.", &samples);

    if let Ok(st) = run_blocking(&state.store, |s| s.storage_stats()).await {
        for (name, help, v) in [
            (
                "storage_records_expired_total",
                "Records not stored because their day was already dropped by retention or the disk guard.",
                st.records_expired,
            ),
            (
                "storage_retention_runs_total",
                "Retention passes run.",
                st.retention_runs,
            ),
            (
                "storage_disk_guard_drops_total",
                "Pieces of raw data dropped by the disk guard.",
                st.disk_guard_drops,
            ),
            (
                "storage_span_days_dropped_total",
                "Days whose span detail retention dropped.",
                st.spans_days_dropped,
            ),
            (
                "storage_transaction_days_dropped_total",
                "Days of transactions retention dropped.",
                st.transaction_days_dropped,
            ),
        ] {
            metric(name, "counter", help, &[(String::new(), v as f64)]);
        }
        metric(
            "storage_partitions",
            "gauge",
            "Days of raw transactions kept.",
            &[(String::new(), st.partitions as f64)],
        );
    }

    let dir = state.storage_dir.clone();
    let bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir))
        .await
        .unwrap_or(0);
    metric(
        "storage_bytes",
        "gauge",
        "Bytes of the embedded store's files on disk.",
        &[(String::new(), bytes as f64)],
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use crate::api::tests::{get, state};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn prometheus_text_with_the_ingest_counters() {
        let (_dir, s) = state(&[]);
        s.counters
            .records_stored
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = get(&s, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        let body = body.as_str().expect("text, not JSON");
        assert!(
            body.contains("# TYPE sonde_collector_ingest_records_stored_total counter"),
            "{body}"
        );
        assert!(
            body.contains("sonde_collector_ingest_records_stored_total 7"),
            "{body}"
        );
        assert!(
            body.contains("sonde_collector_agents{status=\"up\"} 0"),
            "{body}"
        );
        assert!(body.contains("sonde_collector_storage_bytes "), "{body}");
        assert!(
            body.contains("sonde_collector_storage_records_expired_total 0"),
            "{body}"
        );
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("sonde_collector_"), "{line}");
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
}
