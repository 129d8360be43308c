//! Calendar periods in UTC, as budgets count them: the bounds of the hour, day or month that
//! holds an instant, and RFC 3339 for status and logs. Pure integer arithmetic on Unix seconds
//! (no time zone database, no clock: callers pass `now`).

use crate::BudgetPeriod;

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month 1-12, day 1-31) -> days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Start and end (Unix seconds) of the period containing `now`.
pub fn period_bounds(period: BudgetPeriod, now: u64) -> (u64, u64) {
    match period {
        BudgetPeriod::Hour => {
            let s = now - now % 3600;
            (s, s + 3600)
        }
        BudgetPeriod::Day => {
            let s = now - now % 86_400;
            (s, s + 86_400)
        }
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days((now / 86_400) as i64);
            let start = days_from_civil(y, m, 1) as u64 * 86_400;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (start, days_from_civil(ny, nm, 1) as u64 * 86_400)
        }
    }
}

/// RFC 3339 for Unix seconds, UTC.
pub fn rfc3339(t: u64) -> String {
    let (y, m, d) = civil_from_days((t / 86_400) as i64);
    let s = t % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}
