//! Dates and timestamps in PostgreSQL's ISO text output.
//!
//! With `DateStyle = ISO` PostgreSQL prints `YYYY-MM-DD` (the year has at least four digits),
//! `YYYY-MM-DD HH:MM:SS[.ffffff]` and, for `timestamptz`, the session time zone's offset as
//! `+HH`, `+HH:MM` or `+HH:MM:SS`. Years before 1 AD print as their BC number with a ` BC`
//! suffix after everything else (`0044-03-15 12:00:00+00 BC` is year −43). The special values
//! are `infinity` and `-infinity`.
//!
//! Values are counted from PostgreSQL's epoch (2000-01-01) exactly as the binary format counts
//! them, with the infinities as the `i32`/`i64` extremes.

use ferry_core::days_from_civil;
use ferry_core::value::{PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS};

use super::DecodeError;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Parses `date` output into days since 2000-01-01.
pub(super) fn parse_date(text: &str) -> Result<i32, DecodeError> {
    const WHAT: &str = "date";
    match text {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    let mut cur = Cursor::new(body, WHAT);
    let days = cur.date(bc)?;
    cur.end()?;
    let days = days - i64::from(PG_EPOCH_UNIX_DAYS);
    match i32::try_from(days) {
        Ok(d) if d != i32::MAX && d != i32::MIN => Ok(d),
        _ => Err(DecodeError::OutOfRange { what: WHAT }),
    }
}

/// Parses `timestamp` (`with_zone` false) or `timestamptz` output into microseconds since
/// 2000-01-01 (UTC for `timestamptz`).
pub(super) fn parse_timestamp(text: &str, with_zone: bool) -> Result<i64, DecodeError> {
    let what = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    match text {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    let mut cur = Cursor::new(body, what);
    let days = cur.date(bc)?;
    cur.expect(b' ')?;
    let hour = cur.number(2, 2)?;
    cur.expect(b':')?;
    let minute = cur.number(2, 2)?;
    cur.expect(b':')?;
    let second = cur.number(2, 2)?;
    if hour > 24 || minute > 59 || second > 60 {
        return Err(DecodeError::OutOfRange { what });
    }
    let mut micros = 0;
    if cur.peek() == Some(b'.') {
        cur.pos += 1;
        let start = cur.pos;
        let fraction = cur.number(1, 6)?;
        let digits = cur.pos - start;
        micros = fraction * 10_i64.pow(6 - digits as u32);
    }
    let mut offset_seconds = 0;
    if with_zone {
        let sign = match cur.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(DecodeError::invalid(what, "missing time zone offset")),
        };
        cur.pos += 1;
        let mut offset = cur.number(2, 2)? * 3600;
        if cur.peek() == Some(b':') {
            cur.pos += 1;
            offset += cur.number(2, 2)? * 60;
            if cur.peek() == Some(b':') {
                cur.pos += 1;
                offset += cur.number(2, 2)?;
            }
        }
        offset_seconds = sign * offset;
    }
    cur.end()?;
    let time = ((hour * 60 + minute) * 60 + second - offset_seconds) * 1_000_000 + micros;
    let unix = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(time);
    let pg = unix - i128::from(PG_EPOCH_UNIX_MICROS);
    match i64::try_from(pg) {
        Ok(v) if v != i64::MAX && v != i64::MIN => Ok(v),
        _ => Err(DecodeError::OutOfRange { what }),
    }
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// A position in ASCII text being parsed.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str, what: &'static str) -> Self {
        Cursor {
            bytes: text.as_bytes(),
            pos: 0,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), DecodeError> {
        if self.peek() != Some(byte) {
            return Err(DecodeError::invalid(self.what, "unexpected character"));
        }
        self.pos += 1;
        Ok(())
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(DecodeError::invalid(self.what, "unexpected trailing text"));
        }
        Ok(())
    }

    /// An unsigned decimal number of `min..=max` digits.
    fn number(&mut self, min: usize, max: usize) -> Result<i64, DecodeError> {
        let start = self.pos;
        let mut n: i64 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(b @ b'0'..=b'9') => {
                    n = n * 10 + i64::from(b - b'0');
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if self.pos - start < min {
            return Err(DecodeError::invalid(self.what, "expected digits"));
        }
        Ok(n)
    }

    /// `YYYY-MM-DD` as days since 1970-01-01; `bc` turns the year into astronomical numbering.
    fn date(&mut self, bc: bool) -> Result<i64, DecodeError> {
        // PostgreSQL's latest date is in year 5874897: seven digits.
        let year = self.number(4, 7)?;
        self.expect(b'-')?;
        let month = self.number(2, 2)?;
        self.expect(b'-')?;
        let day = self.number(2, 2)?;
        if year == 0 {
            return Err(DecodeError::OutOfRange { what: self.what });
        }
        let year = if bc { 1 - year } else { year };
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(DecodeError::OutOfRange { what: self.what });
        }
        // month and day are small and positive here.
        Ok(days_from_civil(year, month as u32, day as u32))
    }
}

/// Days in a month of an astronomically numbered year.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.rem_euclid(4) == 0
            && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0) =>
        {
            29
        }
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("2000-01-01"), Ok(0));
        assert_eq!(parse_date("1999-12-31"), Ok(-1));
        assert_eq!(parse_date("2024-02-29"), Ok(8825));
        assert_eq!(parse_date("infinity"), Ok(i32::MAX));
        assert_eq!(parse_date("-infinity"), Ok(i32::MIN));
        // 1 BC is year 0, a leap year.
        assert_eq!(
            parse_date("0001-01-01 BC"),
            Ok((days_from_civil(0, 1, 1) - 10_957) as i32)
        );
        assert_eq!(parse_date("4713-01-01 BC"), Ok(-2_451_507));
        assert_eq!(parse_date("5874897-12-31"), Ok(2_145_031_948));
        for bad in [
            "",
            "2000-1-01",
            "2000-13-01",
            "2000-02-30",
            "2000-01-01x",
            "0000-01-01",
            "x",
            "2000-01-01 AD",
            "99999999-01-01",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("2000-01-01 00:00:00", false), Ok(0));
        assert_eq!(
            parse_timestamp("2000-01-01 00:00:01.5", false),
            Ok(1_500_000)
        );
        assert_eq!(parse_timestamp("1999-12-31 23:59:59.999999", false), Ok(-1));
        assert_eq!(parse_timestamp("2000-01-01 05:30:00+05:30", true), Ok(0));
        assert_eq!(
            parse_timestamp("1999-12-31 16:00:00-08", true),
            parse_timestamp("2000-01-01 00:00:00+00", true)
        );
        assert_eq!(parse_timestamp("2000-01-01 00:53:28+00:53:28", true), Ok(0));
        assert_eq!(parse_timestamp("infinity", true), Ok(i64::MAX));
        assert_eq!(parse_timestamp("-infinity", false), Ok(i64::MIN));
        let bc = parse_timestamp("0044-03-15 12:00:00+00 BC", true).unwrap();
        let days = days_from_civil(-43, 3, 15) - 10_957;
        assert_eq!(bc, days * MICROS_PER_DAY + 12 * 3_600_000_000);
        assert_eq!(
            parse_timestamp("294276-12-31 23:59:59.999999", false).unwrap(),
            9_223_371_331_199_999_999
        );
        for bad in [
            "2000-01-01",
            "2000-01-01 00:00",
            "2000-01-01 00:00:00.",
            "2000-01-01 00:00:00.1234567",
            "2000-01-01 25:00:00",
            "2000-01-01 00:00:00+",
        ] {
            assert!(parse_timestamp(bad, false).is_err(), "{bad}");
        }
        assert!(parse_timestamp("2000-01-01 00:00:00", true).is_err());
        assert!(parse_timestamp("2000-01-01 00:00:00+00", false).is_err());
    }
}
