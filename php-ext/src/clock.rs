//! Timestamps for the hot path: the CPU's time-stamp counter where it is
//! invariant (x86_64 with the invariant-TSC flag), else the monotonic clock
//! in nanoseconds. A vDSO clock read costs ≈ 40 ns on this machine kind and
//! far more where the clock source is not vDSO-fast; `rdtsc` costs a few.
//!
//! Ticks become nanoseconds at request end with a per-process calibration:
//! the ticks and the monotonic clock are read together at the first traced
//! requests and then every 64th, so the ratio sharpens as the worker lives
//! (after 1 ms of wall time the error is below 1e-4).

use std::sync::atomic::Ordering;
use std::time::Instant;

/// Ticks and monotonic ns read together at start-up: by a worker's first
/// request, far enough back for an accurate ratio (both clocks are shared
/// across fork).
static ANCHOR: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Decides once (MINIT) whether the time-stamp counter can be used.
pub fn init() {
    crate::HOT.use_tsc.store(invariant_tsc(), Ordering::Relaxed);
    let _ = ANCHOR.set((ticks(), monotonic_ns()));
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    // Leaf 0x8000_0000 gives the highest extended leaf; 0x8000_0007 EDX bit
    // 8 is "invariant TSC" (constant rate, not stopped in deep C-states).
    let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    max >= 0x8000_0007 && std::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

/// A process-wide origin for the monotonic fallback.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds on the monotonic clock since this process first asked.
pub fn monotonic_ns() -> u64 {
    Instant::now()
        .saturating_duration_since(origin())
        .as_nanos() as u64
}

/// The current tick count.
#[inline]
pub fn ticks() -> u64 {
    ticks_with(crate::HOT.use_tsc.load(Ordering::Relaxed))
}

/// The current tick count, the clock choice (`HOT.use_tsc`) read by the
/// caller beforehand (a hook reads it before the wrapped call, not after).
#[inline]
pub fn ticks_with(tsc: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if tsc {
        // SAFETY: RDTSC has no preconditions; only used when invariant.
        return unsafe { std::arch::x86_64::_rdtsc() };
    }
    let _ = tsc;
    monotonic_ns()
}

/// Whether ticks are nanoseconds already (no TSC).
pub fn ticks_are_ns() -> bool {
    !crate::HOT.use_tsc.load(Ordering::Relaxed)
}

/// Converts ticks to nanoseconds for one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calibration {
    anchor: Option<(u64, u64)>,
    ns_per_tick: f64,
    /// Readings taken: the first few requests refine the ratio each time,
    /// then every `SETTLED_EVERY`th (the error is already below 1e-4).
    readings: u64,
}

/// Readings after which the ratio is refined only now and then.
const SETTLE_AFTER: u64 = 64;
const SETTLED_EVERY: u64 = 64;

impl Calibration {
    /// Reads ticks and the monotonic clock together: the first reading sets
    /// the anchor, later ones refine the ratio.
    pub fn observe(&mut self) {
        if ticks_are_ns() {
            self.ns_per_tick = 1.0;
            return;
        }
        self.readings += 1;
        if self.readings > SETTLE_AFTER && !self.readings.is_multiple_of(SETTLED_EVERY) {
            return;
        }
        let (t, ns) = (ticks(), monotonic_ns());
        if self.anchor.is_none() {
            self.anchor = ANCHOR.get().copied();
        }
        match self.anchor {
            None => self.anchor = Some((t, ns)),
            Some((t0, ns0)) if t > t0 && ns > ns0 + 10_000 => {
                self.ns_per_tick = (ns - ns0) as f64 / (t - t0) as f64;
            }
            Some(_) => {}
        }
    }

    /// Nanoseconds per tick (1 until two readings at least 10 µs apart —
    /// only in the first microseconds of a process).
    pub fn ns_per_tick(&self) -> f64 {
        if self.ns_per_tick > 0.0 {
            self.ns_per_tick
        } else {
            1.0
        }
    }
}
