//! Civil (proleptic Gregorian, UTC) dates and day numbers (days since
//! 1970-01-01), both ways, by Howard Hinnant's algorithms
//! (<https://howardhinnant.github.io/date_algorithms.html>): the collector
//! names its daily partitions and reports by them. Pure integer arithmetic:
//! no tables, no allocation, no clock, no time zones.
//!
//! Years are astronomical: year 0 is 1 BC, and it is a leap year.

/// Days from 0000-03-01 to 1970-01-01: the algorithms count from a March
/// so that the leap day ends the year.
const EPOCH_SHIFT: i64 = 719_468;
/// Days in a 400-year era, the period of the Gregorian calendar.
const ERA_DAYS: i64 = 146_097;

/// The civil date `(year, month 1–12, day 1–31)` of a day number.
///
/// Exact for any `days` within ±2^62 (about ±1.26 × 10^16 years); beyond
/// that the arithmetic can overflow, which panics in debug builds.
///
/// ```
/// use sonde_core::civil::civil_from_days;
/// assert_eq!(civil_from_days(0), (1970, 1, 1));
/// assert_eq!(civil_from_days(-1), (1969, 12, 31));
/// ```
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(ERA_DAYS);
    let doe = z - era * ERA_DAYS; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from 1 March
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction (see the bounds above).
    (y, m as u32, d as u32)
}

/// The day number (days since 1970-01-01) of a civil date; the inverse of
/// [`civil_from_days`] for every valid date.
///
/// `month` and `day` are not checked: pass a real date. (A day past the
/// end of its month counts on into the next, `(2023, 2, 29)` giving the
/// day of 1 March, but other out-of-range values give no meaningful
/// answer.) Exact for |`year`| up to 2 × 10^16, which covers every year
/// [`civil_from_days`] returns; beyond that the arithmetic can overflow,
/// which panics in debug builds.
///
/// ```
/// use sonde_core::civil::days_from_civil;
/// assert_eq!(days_from_civil(1970, 1, 1), 0);
/// assert_eq!(days_from_civil(2024, 1, 1), 19_723);
/// ```
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    // Count years from March, so January and February belong to the year before.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // [0, 11], March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * ERA_DAYS + doe - EPOCH_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gregorian rule, written out independently of the algorithms.
    fn is_leap(y: i64) -> bool {
        (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
    }

    fn month_len(y: i64, m: u32) -> u32 {
        match m {
            2 if is_leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn known_dates() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (1, (1970, 1, 2)),
            (10_957, (2000, 1, 1)),
            (11_016, (2000, 2, 29)),
            (19_723, (2024, 1, 1)),
            (19_792, (2024, 3, 10)), // 1_710_028_800_000 ms
            (-719_468, (0, 3, 1)),
            (-719_528, (0, 1, 1)),
            (-719_529, (-1, 12, 31)),
            (-141_427, (1582, 10, 15)), // first day of the Gregorian calendar
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "day {days}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
        }
    }

    /// Day by day over some 4,400 years: each day is the one after the day
    /// before by the calendar rules, and converts back to itself.
    #[test]
    fn every_day_follows_the_last_and_round_trips() {
        let mut prev = civil_from_days(-800_001);
        for days in -800_000..=800_000 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let expected = if pd < month_len(py, pm) {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {days}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            prev = (y, m, d);
        }
    }

    /// Sampled over ±2^62 days, the documented range, ends included.
    #[test]
    fn round_trips_across_the_whole_range() {
        let limit: i64 = 1 << 62;
        let step = limit / 100_003; // not a multiple of a 400-year era
        let samples = (-limit..=limit).step_by(step as usize).chain([
            -limit,
            limit,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        ]);
        for days in samples {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m), "day {days}: month {m}");
            assert!((1..=month_len(y, m)).contains(&d), "day {days}: day {d}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn every_date_round_trips() {
        for y in -2_000..=3_000 {
            for m in 1..=12 {
                for d in 1..=month_len(y, m) {
                    assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
                }
            }
        }
    }

    #[test]
    fn leap_years() {
        for y in -2_000..=3_000 {
            let len = days_from_civil(y + 1, 1, 1) - days_from_civil(y, 1, 1);
            assert_eq!(len, if is_leap(y) { 366 } else { 365 }, "year {y}");
            let feb = days_from_civil(y, 3, 1) - days_from_civil(y, 2, 1);
            assert_eq!(feb, if is_leap(y) { 29 } else { 28 }, "year {y}");
        }
        // Divisible by 4, by 100 and by 400; year 0 is a leap year too.
        for y in [2024, 2000, 1600, 0, -4, -400] {
            let feb28 = days_from_civil(y, 2, 28);
            assert_eq!(civil_from_days(feb28 + 1), (y, 2, 29), "year {y}");
        }
        for y in [2023, 1900, 2100, 1700, -100] {
            let feb28 = days_from_civil(y, 2, 28);
            assert_eq!(civil_from_days(feb28 + 1), (y, 3, 1), "year {y}");
        }
        // A 400-year era has a fixed length wherever it starts.
        assert_eq!(
            days_from_civil(2000, 1, 1) - days_from_civil(1600, 1, 1),
            ERA_DAYS
        );
    }
}
