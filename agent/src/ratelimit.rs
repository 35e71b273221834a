//! Log rate limiting for warnings that a misbehaving peer could otherwise
//! repeat thousands of times a second (malformed messages, queue drops).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one log line per `period`; the first call always passes.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(period: Duration) -> Self {
        RateLimit {
            period,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the caller may log now, `n` being how many calls were
    /// silenced since the last line; `None` when it must stay quiet.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_silenced_count() {
        let r = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(r.check(t0 + Duration::from_secs(11)), None);
    }
}
