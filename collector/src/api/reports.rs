//! `GET /api/v1/reports/daily`: one local day of an app (or all apps) in a
//! time zone, hour by hour, with comparison days. Built from the rollups:
//! counts and times from the hour rollup when the zone's day starts on a
//! whole UTC hour (else the minute rollup), peaks from the per-second
//! rollup, visitors from the hourly HyperLogLogs (merged; in zones whose
//! offset is not whole hours, a local hour takes the UTC hours starting
//! inside it).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use super::rollups::Params;
use super::{ApiError, ApiState};
use crate::clock::now_ms;
use crate::storage::rollup::{RollupRange, HOUR_MS};
use crate::storage::{run_blocking, Store, StoreError};

/// Most comparison dates one report takes.
const MAX_COMPARE: usize = 7;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DailyReport {
    pub date: String,
    pub tz: String,
    pub app: Option<String>,
    pub calls: u64,
    /// Failed transactions.
    pub errors: u64,
    pub avg_ms: f64,
    /// Most transactions ending within one second of the day.
    pub peak_tps: u64,
    /// Local hour (0–23) with the most calls; null without calls.
    pub peak_hour: Option<i8>,
    /// Distinct visitors over the day.
    pub visitors: u64,
    pub hourly: Vec<HourRow>,
    pub compare: Vec<CompareRow>,
}

/// One local hour. On a daylight-saving day an hour number may repeat or
/// be missing; `ts_ms` tells them apart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HourRow {
    pub hour: i8,
    /// Start of the hour, epoch ms.
    pub ts_ms: i64,
    pub calls: u64,
    pub errors: u64,
    pub avg_ms: f64,
    /// Most transactions ending within one second of the hour.
    pub max_tps: u64,
    pub visitors: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompareRow {
    pub date: String,
    pub calls: u64,
    pub errors: u64,
    pub avg_ms: f64,
    pub peak_tps: u64,
    pub visitors: u64,
}

/// One day's figures.
struct Day {
    calls: u64,
    errors: u64,
    sum_ns: u64,
    peak_tps: u64,
    visitors: u64,
    hourly: Vec<HourRow>,
}

/// `[start, end)` of a local date, epoch ms.
fn day_bounds(date: Date, tz: &TimeZone) -> Result<(i64, i64), jiff::Error> {
    let start = date.to_zoned(tz.clone())?.timestamp().as_millisecond();
    let end = date
        .tomorrow()?
        .to_zoned(tz.clone())?
        .timestamp()
        .as_millisecond();
    Ok((start, end))
}

fn avg_ms(sum_ns: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        sum_ns as f64 / 1e6 / calls as f64
    }
}

fn day(
    store: &dyn Store,
    (start, end): (i64, i64),
    tz: &TimeZone,
    app: &Option<String>,
) -> Result<Day, StoreError> {
    let range = RollupRange {
        from_ms: start,
        to_ms: end,
        app: app.clone(),
    };
    let steps = store.steps(&range, HOUR_MS, true)?;
    let visitors = store.visitors(&range, HOUR_MS)?;
    let mut d = Day {
        calls: 0,
        errors: 0,
        sum_ns: 0,
        peak_tps: 0,
        visitors: visitors.total,
        hourly: Vec::with_capacity(steps.len()),
    };
    for (k, s) in steps.iter().enumerate() {
        d.calls += s.calls;
        d.errors += s.failures;
        d.sum_ns = d.sum_ns.saturating_add(s.sum_ns);
        d.peak_tps = d.peak_tps.max(s.peak_tps);
        let hour = Timestamp::from_millisecond(s.ts_ms)
            .map(|t| t.to_zoned(tz.clone()).hour())
            .unwrap_or(0);
        d.hourly.push(HourRow {
            hour,
            ts_ms: s.ts_ms,
            calls: s.calls,
            errors: s.failures,
            avg_ms: s.avg_ms(),
            max_tps: s.peak_tps,
            visitors: visitors.per_step.get(k).copied().unwrap_or(0),
        });
    }
    Ok(d)
}

fn parse_date(name: &'static str, v: &str) -> Result<Date, ApiError> {
    v.parse::<Date>()
        .map_err(|_| ApiError::bad(name, format!("`{v}` is not a YYYY-MM-DD date")))
}

pub async fn daily(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<DailyReport>, ApiError> {
    let p = Params(&params);
    let tz = match p.text("tz") {
        Some(name) => TimeZone::get(name)
            .map_err(|_| ApiError::bad("tz", format!("`{name}` is not a known IANA time zone")))?,
        None => TimeZone::system(),
    };
    let tz_name = tz.iana_name().unwrap_or("UTC").to_owned();
    let date = match p.text("date") {
        Some(v) => parse_date("date", v)?,
        None => Timestamp::from_millisecond(now_ms())
            .map_err(|_| ApiError::bad("date", "the clock is out of range"))?
            .to_zoned(tz.clone())
            .date(),
    };
    let compare: Vec<Date> = match p.text("compare") {
        Some(list) => list
            .split(',')
            .map(|v| parse_date("compare", v.trim()))
            .collect::<Result<_, _>>()?,
        None => [date.checked_sub(1.day()), date.checked_sub(7.days())]
            .into_iter()
            .filter_map(Result::ok)
            .collect(),
    };
    if compare.len() > MAX_COMPARE {
        return Err(ApiError::bad(
            "compare",
            format!("at most {MAX_COMPARE} dates"),
        ));
    }
    let bounds = |name: &'static str, d: Date| {
        day_bounds(d, &tz).map_err(|_| ApiError::bad(name, format!("`{d}` is out of range")))
    };
    let main_bounds = bounds("date", date)?;
    let compare_bounds = compare
        .iter()
        .map(|&d| bounds("compare", d))
        .collect::<Result<Vec<_>, _>>()?;
    let app = p.text("app").map(str::to_owned);

    let report = run_blocking(&state.store, move |s| {
        let today = day(s, main_bounds, &tz, &app)?;
        let mut rows = Vec::with_capacity(compare.len());
        for (d, b) in compare.iter().zip(compare_bounds) {
            let other = day(s, b, &tz, &app)?;
            rows.push(CompareRow {
                date: d.to_string(),
                calls: other.calls,
                errors: other.errors,
                avg_ms: avg_ms(other.sum_ns, other.calls),
                peak_tps: other.peak_tps,
                visitors: other.visitors,
            });
        }
        let peak_hour = today
            .hourly
            .iter()
            .filter(|h| h.calls > 0)
            .max_by_key(|h| (h.calls, std::cmp::Reverse(h.ts_ms)))
            .map(|h| h.hour);
        Ok(DailyReport {
            date: date.to_string(),
            tz: tz_name,
            app,
            calls: today.calls,
            errors: today.errors,
            avg_ms: avg_ms(today.sum_ns, today.calls),
            peak_tps: today.peak_tps,
            peak_hour,
            visitors: today.visitors,
            hourly: today.hourly,
            compare: rows,
        })
    })
    .await?;
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_bounds_in_zones() {
        let d: Date = "2024-03-10".parse().unwrap();
        let utc = day_bounds(d, &TimeZone::UTC).unwrap();
        assert_eq!(utc, (1_710_028_800_000, 1_710_028_800_000 + 86_400_000));
        let seoul = day_bounds(d, &TimeZone::get("Asia/Seoul").unwrap()).unwrap();
        assert_eq!(seoul.0, utc.0 - 9 * HOUR_MS);
        assert_eq!(seoul.1 - seoul.0, 24 * HOUR_MS);
        // US daylight saving starts that day: 23 hours.
        let ny = day_bounds(d, &TimeZone::get("America/New_York").unwrap()).unwrap();
        assert_eq!(ny.1 - ny.0, 23 * HOUR_MS);
        let kolkata = day_bounds(d, &TimeZone::get("Asia/Kolkata").unwrap()).unwrap();
        assert_eq!(kolkata.0 % HOUR_MS, HOUR_MS / 2);
    }
}
