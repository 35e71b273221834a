//! `GET /api/v1/transactions` (the X-View points, sampled past the limit
//! with every failed and slow one kept; `trace_id` + `around_ms` for the
//! transactions of one trace) and `GET /api/v1/transactions/{id}` (one
//! transaction in detail).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use sonde_core::ids::from_hex;

use super::{ApiError, ApiState};
use crate::clock::now_ms;
use crate::storage::{run_blocking, TxDetail, TxFilter, TxId, TxPage};

/// Without `from`, the window reaches this far back from `to`.
pub const DEFAULT_WINDOW_MS: i64 = 15 * 60 * 1000;
/// Points returned without `limit`.
pub const DEFAULT_LIMIT: usize = 10_000;
/// Largest `limit` honoured; larger values are lowered to it.
pub const MAX_LIMIT: usize = 200_000;
/// `around_ms` without `window_ms`: this far either side.
pub const DEFAULT_AROUND_MS: i64 = 60_000;
/// Largest `window_ms`.
pub const MAX_AROUND_MS: i64 = 3_600_000;

pub async fn list(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<TxPage>, ApiError> {
    let filter = parse_filter(&params, now_ms())?;
    let with_url = flag(&params, "with_url")?;
    let page = run_blocking(&state.store, move |s| {
        let mut page = s.query_transactions(&filter)?;
        if with_url {
            let ids: Vec<TxId> = page
                .transactions
                .iter()
                .map(|t| TxId::parse(&t.id).unwrap_or_default())
                .collect();
            for (t, url) in page.transactions.iter_mut().zip(s.transaction_urls(&ids)?) {
                t.url = url;
            }
        }
        Ok(page)
    })
    .await?;
    Ok(Json(page))
}

pub async fn detail(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TxDetail>, ApiError> {
    const UNKNOWN: ApiError = ApiError::NotFound("no such transaction");
    let Some(id) = TxId::parse(&id) else {
        return Err(UNKNOWN);
    };
    run_blocking(&state.store, move |s| s.transaction_at(&id))
        .await?
        .map(Json)
        .ok_or(UNKNOWN)
}

/// A true/false query parameter (absent or empty: false).
fn flag(params: &HashMap<String, String>, name: &'static str) -> Result<bool, ApiError> {
    match params.get(name).map(|v| v.trim()) {
        None | Some("") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(v) => Err(ApiError::bad(name, format!("`{v}` is not true or false"))),
    }
}

/// Reads the query parameters; an empty value counts as absent.
fn parse_filter(params: &HashMap<String, String>, now_ms: i64) -> Result<TxFilter, ApiError> {
    let param = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let int = |name: &'static str| -> Result<Option<i64>, ApiError> {
        param(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad(name, format!("`{v}` is not an integer")))
            })
            .transpose()
    };
    let float = |name: &'static str| -> Result<Option<f64>, ApiError> {
        param(name)
            .map(|v| match v.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(f),
                _ => Err(ApiError::bad(name, format!("`{v}` is not a number"))),
            })
            .transpose()
    };
    let text = |name: &str| param(name).map(str::to_owned);

    let (from_ms, to_ms) = match int("around_ms")? {
        Some(around) => {
            if param("from").is_some() || param("to").is_some() {
                return Err(ApiError::bad(
                    "around_ms",
                    "give either `around_ms` or `from`/`to`",
                ));
            }
            let w = match int("window_ms")? {
                None => DEFAULT_AROUND_MS,
                Some(w) if (0..=MAX_AROUND_MS).contains(&w) => w,
                Some(_) => {
                    return Err(ApiError::bad(
                        "window_ms",
                        format!("must be between 0 and {MAX_AROUND_MS}"),
                    ))
                }
            };
            (around.saturating_sub(w), around.saturating_add(w))
        }
        None => {
            let to_ms = int("to")?.unwrap_or(now_ms);
            let from_ms = int("from")?.unwrap_or(to_ms.saturating_sub(DEFAULT_WINDOW_MS));
            (from_ms, to_ms)
        }
    };
    if from_ms > to_ms {
        return Err(ApiError::bad("from", "must not be after `to`"));
    }
    let trace_id = param("trace_id")
        .map(|v| {
            from_hex(v)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| ApiError::bad("trace_id", format!("`{v}` is not a hex id")))
        })
        .transpose()?;
    let errors_only = flag(params, "errors_only")?;
    let limit = match int("limit")? {
        None => DEFAULT_LIMIT,
        Some(n) if n < 1 => return Err(ApiError::bad("limit", "must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let min_ms = float("min_ms")?;
    let max_ms = float("max_ms")?;
    if let (Some(min), Some(max)) = (min_ms, max_ms) {
        if min > max {
            return Err(ApiError::bad("min_ms", "must not be above `max_ms`"));
        }
    }
    Ok(TxFilter {
        from_ms,
        to_ms,
        app: text("app"),
        endpoint: text("endpoint"),
        host: text("host"),
        trace_id,
        min_ms,
        max_ms,
        errors_only,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{get, state};
    use crate::storage::tests::record;
    use axum::http::StatusCode;
    use serde_json::json;

    fn parse(q: &[(&str, &str)]) -> Result<TxFilter, String> {
        let map = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_filter(&map, 1_000_000_000).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let f = parse(&[]).unwrap();
        assert_eq!(f.to_ms, 1_000_000_000);
        assert_eq!(f.from_ms, 1_000_000_000 - 900_000);
        assert_eq!(f.limit, 10_000);
        assert!(!f.errors_only);
        assert_eq!((f.app, f.trace_id, f.min_ms), (None, None, None));
        let f = parse(&[("app", ""), ("limit", "999999999")]).unwrap();
        assert_eq!((f.app, f.limit), (None, 200_000));
    }

    #[test]
    fn all_parameters() {
        let f = parse(&[
            ("from", "10"),
            ("to", "20"),
            ("app", "shop"),
            ("endpoint", "/x"),
            ("host", "web-1"),
            ("trace_id", "ABcd"),
            ("min_ms", "1.5"),
            ("max_ms", "9"),
            ("errors_only", "true"),
            ("limit", "5"),
        ])
        .unwrap();
        assert_eq!((f.from_ms, f.to_ms, f.limit), (10, 20, 5));
        assert_eq!(f.app.as_deref(), Some("shop"));
        assert_eq!(f.endpoint.as_deref(), Some("/x"));
        assert_eq!(f.host.as_deref(), Some("web-1"));
        assert_eq!(f.trace_id, Some(vec![0xab, 0xcd]));
        assert_eq!((f.min_ms, f.max_ms), (Some(1.5), Some(9.0)));
        assert!(f.errors_only);
    }

    #[test]
    fn trace_window() {
        let f = parse(&[("trace_id", "ab"), ("around_ms", "500000")]).unwrap();
        assert_eq!((f.from_ms, f.to_ms), (440_000, 560_000));
        let f = parse(&[("around_ms", "500000"), ("window_ms", "1000")]).unwrap();
        assert_eq!((f.from_ms, f.to_ms), (499_000, 501_000));
        assert!(parse(&[("around_ms", "5"), ("from", "1")])
            .unwrap_err()
            .starts_with("around_ms: "));
        assert!(parse(&[("around_ms", "5"), ("window_ms", "99999999")])
            .unwrap_err()
            .starts_with("window_ms: "));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, name) in [
            (("from", "yesterday"), "from"),
            (("to", "1.5"), "to"),
            (("from", "2000000000"), "from"),
            (("limit", "0"), "limit"),
            (("limit", "x"), "limit"),
            (("min_ms", "fast"), "min_ms"),
            (("max_ms", "NaN"), "max_ms"),
            (("errors_only", "maybe"), "errors_only"),
            (("trace_id", "xyz"), "trace_id"),
        ] {
            let e = parse(&[q]).unwrap_err();
            assert!(e.starts_with(&format!("{name}: ")), "{q:?}: {e}");
        }
    }

    #[tokio::test]
    async fn list_and_detail_over_http() {
        let (_dir, s) = state(&[]);
        let mut failed = record(2, 2000, 20);
        failed.status = 502;
        s.store
            .insert_records(&[record(1, 1000, 10), failed], "web-1")
            .unwrap();

        let (status, body) = get(&s, "/api/v1/transactions?from=0&to=5000", None).await;
        assert_eq!(status, StatusCode::OK);
        let id1 = TxId::format(1000, &[1; 16]);
        assert_eq!(
            body,
            json!({"transactions": [
                {"id": id1, "ts_ms": 1000, "elapsed_ms": 10.0, "app": "shop",
                 "host": "web-1", "endpoint": "/users/{num}", "status": 200, "error": false,
                 "trace_id": null, "method": "GET"},
                {"id": TxId::format(2000, &[2; 16]), "ts_ms": 2000, "elapsed_ms": 20.0,
                 "app": "shop", "host": "web-1", "endpoint": "/users/{num}", "status": 502,
                 "error": true, "trace_id": null, "method": "GET"},
            ], "truncated": false, "sampled": false, "sample_rate": 1.0,
               "notable_sample_rate": 1.0})
        );
        assert!(body["transactions"][0].get("url").is_none());
        let (_, body) = get(
            &s,
            "/api/v1/transactions?from=0&to=5000&with_url=true",
            None,
        )
        .await;
        assert_eq!(body["transactions"][0]["url"], "/users/1?x=1");
        assert_eq!(body["transactions"][1]["url"], "/users/2?x=1");
        let (status, body) = get(&s, "/api/v1/transactions?with_url=please", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "with_url: `please` is not true or false");
        let (_, body) = get(&s, "/api/v1/transactions?from=0&to=5000&limit=1", None).await;
        assert_eq!(body["truncated"], true);
        assert_eq!(body["transactions"][0]["ts_ms"], 2000);
        let (status, body) = get(&s, "/api/v1/transactions?limit=-1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "limit: must be at least 1");

        let (status, body) = get(&s, &format!("/api/v1/transactions/{id1}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["url"], "/users/1?x=1");
        assert_eq!(body["method"], "GET");
        assert_eq!(body["id"], id1);
        assert_eq!(body["spans_expired"], false);
        for missing in [
            "ff".repeat(16),
            "zz".into(),
            TxId::format(1001, &[1; 16]),
            TxId::format(1000, &[3; 16]),
        ] {
            let (status, body) = get(&s, &format!("/api/v1/transactions/{missing}"), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body, json!({"error": "no such transaction"}));
        }
    }
}
