//! Wall-clock time in the unit the API uses. Logic that depends on time
//! takes `now_ms` as a parameter so tests can choose it; only the edges
//! (handlers, ingest) read the clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
