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
