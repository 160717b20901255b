//! Column values, lossless for every type Ferry maps.
//!
//! Times and dates keep PostgreSQL's own representation (microseconds or days since
//! 2000-01-01, with the `±infinity` sentinels), so nothing is rounded before the destination
//! decides how to store it. Numerics keep their exact decimal text.

use std::fmt;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// Days between the Unix epoch and PostgreSQL's epoch.
pub const PG_EPOCH_UNIX_DAYS: i32 = 10_957;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    UInt32(u32),
    Float32(f32),
    Float64(f64),
    Numeric(Numeric),
    Text(String),
    Bytes(Vec<u8>),
    Uuid([u8; 16]),
    /// Days since 2000-01-01; `i32::MAX` / `i32::MIN` are `infinity` / `-infinity`.
    Date(i32),
    /// Microseconds since 2000-01-01 00:00; `i64::MAX` / `i64::MIN` are `±infinity`.
    Timestamp(i64),
    /// Microseconds since 2000-01-01 00:00 UTC; `i64::MAX` / `i64::MIN` are `±infinity`.
    TimestampTz(i64),
    /// An array: the length of each dimension (outermost first) and the elements in row-major
    /// order. Lower bounds other than 1 are not kept. An empty array has no dimensions.
    Array {
        dims: Vec<i32>,
        elements: Vec<Value>,
    },
}

/// An exact decimal number, or one of numeric's special values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    NaN,
    PosInfinity,
    NegInfinity,
    /// Decimal text as PostgreSQL prints it: optional `-`, digits, optional `.` and the
    /// fraction digits of the value's display scale (e.g. `-12.3400`).
    Finite(String),
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Numeric::NaN => f.write_str("NaN"),
            Numeric::PosInfinity => f.write_str("Infinity"),
            Numeric::NegInfinity => f.write_str("-Infinity"),
            Numeric::Finite(s) => f.write_str(s),
        }
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar, with astronomical year
/// numbering (year 0 is 1 BC, as PostgreSQL counts internally). Exact for any `i32` year.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count in 400-year eras of 146097 days, with years starting in March so that the leap day
    // falls at the end of a year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (day 1..=31, month 1..=12).
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), i64::from(PG_EPOCH_UNIX_DAYS));
        assert_eq!(days_from_civil(1900, 1, 1), -25_567);
        assert_eq!(days_from_civil(2299, 12, 31), 120_529);
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        assert_eq!(
            days_from_civil(1900, 3, 1) - days_from_civil(1900, 2, 28),
            1
        );
        // Julian day 0 is 4714-11-24 BC (year -4713) in the proleptic Gregorian calendar, and
        // the Unix epoch is Julian day 2440588.
        assert_eq!(days_from_civil(-4713, 11, 24), -2_440_588);
        for days in (-3_000_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
