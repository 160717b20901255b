//! Ferry's values in ClickHouse's RowBinary format, for the column types of [`crate::types`].
//!
//! RowBinary is the columns of each row back to back, with no framing:
//!
//! | type | bytes |
//! |---|---|
//! | `Nullable(T)` | `1` for NULL, else `0` and then `T` |
//! | `Bool` | 1 byte, 0 or 1 |
//! | `Int16` … `Int64`, `UInt32` | little-endian |
//! | `Float32`, `Float64` | IEEE 754 bits, little-endian |
//! | `Decimal(P, S)` | `value × 10^S` as a 4/8/16/32-byte little-endian integer (see [`crate::decimal`]) |
//! | `String` | LEB128 length, then the bytes (any bytes: NUL and invalid UTF-8 are fine) |
//! | `UUID` | the UUID's two 64-bit halves, each little-endian: bytes 7…0 then 15…8 |
//! | `Date32` | i32 days since 1970-01-01 |
//! | `DateTime64(6)` | i64 µs since 1970-01-01 00:00 UTC |
//! | `Array(T)` | LEB128 element count, then the elements |
//! | `Variant(T)` | a discriminator byte, `255` for NULL and `0` for the one member, then `T` |
//!
//! Dates and timestamps outside ClickHouse's range (1900-01-01 … 2299-12-31, including
//! PostgreSQL's `±infinity`) are clamped to its bounds; [`encode`] reports that with
//! [`Clamped::Yes`] so that the caller can count it. Everything else is exact or an error.

use std::ops::BitOrAssign;

use ferry_core::value::{PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS};
use ferry_core::{ErrorKind, Numeric, Value, ValueKind};

use crate::decimal;

/// `Date32`'s first day, 1900-01-01, in days since 1970-01-01.
pub const DATE32_MIN: i32 = -25_567;
/// `Date32`'s last day, 2299-12-31, in days since 1970-01-01.
pub const DATE32_MAX: i32 = 120_529;
/// `DateTime64(6)`'s first instant, 1900-01-01 00:00:00, in µs since 1970-01-01.
pub const DATETIME64_MIN: i64 = DATE32_MIN as i64 * MICROS_PER_DAY;
/// `DateTime64(6)`'s last instant, 2299-12-31 23:59:59.999999, in µs since 1970-01-01.
pub const DATETIME64_MAX: i64 = (DATE32_MAX as i64 + 1) * MICROS_PER_DAY - 1;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The discriminator of NULL in a `Variant`.
const VARIANT_NULL: u8 = 255;

/// Whether a value was moved into ClickHouse's range to be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clamped {
    #[default]
    No,
    /// At least one date or timestamp in the value was out of range (or infinite).
    Yes,
}

impl BitOrAssign for Clamped {
    fn bitor_assign(&mut self, rhs: Clamped) {
        if rhs == Clamped::Yes {
            *self = Clamped::Yes;
        }
    }
}

/// Why a value cannot be stored. Messages never include the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a {value} value cannot be stored in a {kind} column")]
    Mismatch {
        kind: &'static str,
        value: &'static str,
    },
    #[error("NULL in a column that does not allow NULL")]
    Null,
    #[error("numeric {0} cannot be stored in a ClickHouse Decimal column (which has no NaN or infinities)")]
    DecimalNotFinite(&'static str),
    #[error("numeric value has non-zero digits beyond the column's scale {scale}")]
    DecimalScale { scale: u8 },
    #[error("numeric value does not fit Decimal({precision}, {scale})")]
    DecimalOverflow { precision: u8, scale: u8 },
    #[error("numeric value is not decimal text")]
    DecimalSyntax,
    #[error("Decimal({precision}, {scale}) is not a ClickHouse decimal type")]
    DecimalType { precision: u8, scale: u8 },
    #[error("array has {got} dimensions but the column has {expected}")]
    ArrayDims { expected: u8, got: usize },
    #[error("array dimensions do not match its number of elements")]
    ArrayShape,
    #[error("arrays of arrays are not a column kind")]
    NestedArray,
}

impl EncodeError {
    /// A value ClickHouse cannot hold as mapped: definite, never retried.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unsupported
    }
}

/// Appends `value` as RowBinary for a column of `kind` (of type `clickhouse_type(kind,
/// nullable)`). On error, `out` is left as it was.
pub fn encode(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<Clamped, EncodeError> {
    let start = out.len();
    let result = encode_column(kind, nullable, value, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_column(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<Clamped, EncodeError> {
    match (value, nullable) {
        (Value::Null, false) => Err(EncodeError::Null),
        (Value::Null, true) => {
            out.push(if matches!(kind, ValueKind::Array { .. }) {
                VARIANT_NULL
            } else {
                1
            });
            Ok(Clamped::No)
        }
        (_, true) => {
            // `0` is both "not NULL" for Nullable and the array's discriminator in its Variant.
            out.push(0);
            encode_value(kind, value, out)
        }
        (_, false) => encode_value(kind, value, out),
    }
}

fn mismatch(kind: &ValueKind, value: &Value) -> EncodeError {
    EncodeError::Mismatch {
        kind: kind_name(kind),
        value: value_name(value),
    }
}

/// Encodes a non-NULL value without a Nullable prefix.
fn encode_value(
    kind: &ValueKind,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<Clamped, EncodeError> {
    use ValueKind as K;
    match (kind, value) {
        (K::Bool, Value::Bool(b)) => out.push(u8::from(*b)),
        (K::Int16, Value::Int16(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::Int32, Value::Int32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::Int64, Value::Int64(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::UInt32, Value::UInt32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::Float32, Value::Float32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::Float64, Value::Float64(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (K::Decimal { precision, scale }, Value::Numeric(n)) => match n {
            Numeric::Finite(text) => decimal::encode(*precision, *scale, text, out)?,
            Numeric::NaN => return Err(EncodeError::DecimalNotFinite("NaN")),
            Numeric::PosInfinity => return Err(EncodeError::DecimalNotFinite("Infinity")),
            Numeric::NegInfinity => return Err(EncodeError::DecimalNotFinite("-Infinity")),
        },
        (K::Text, Value::Text(s)) => string(s.as_bytes(), out),
        (K::Text, Value::Numeric(n)) => match n {
            Numeric::Finite(s) => string(s.as_bytes(), out),
            special => string(special.to_string().as_bytes(), out),
        },
        (K::Bytes, Value::Bytes(b)) => string(b, out),
        (K::Uuid, Value::Uuid(u)) => {
            out.extend(u[..8].iter().rev());
            out.extend(u[8..].iter().rev());
        }
        (K::Date, Value::Date(days)) => {
            let (unix, clamped) = date32(*days);
            out.extend_from_slice(&unix.to_le_bytes());
            return Ok(clamped);
        }
        (K::Timestamp, Value::Timestamp(us)) | (K::TimestampTz, Value::TimestampTz(us)) => {
            let (unix, clamped) = datetime64(*us);
            out.extend_from_slice(&unix.to_le_bytes());
            return Ok(clamped);
        }
        (
            K::Array { element, dims },
            Value::Array {
                dims: lens,
                elements,
            },
        ) => {
            return array(element, *dims, lens, elements, out);
        }
        _ => return Err(mismatch(kind, value)),
    }
    Ok(Clamped::No)
}

/// Days since 2000-01-01 → days since 1970-01-01 within `Date32`'s range.
fn date32(days: i32) -> (i32, Clamped) {
    let unix = i64::from(days) + i64::from(PG_EPOCH_UNIX_DAYS);
    if unix < i64::from(DATE32_MIN) {
        (DATE32_MIN, Clamped::Yes)
    } else if unix > i64::from(DATE32_MAX) {
        (DATE32_MAX, Clamped::Yes)
    } else {
        // In range, so it fits.
        (unix as i32, Clamped::No)
    }
}

/// µs since 2000-01-01 → µs since 1970-01-01 within `DateTime64(6)`'s range.
fn datetime64(us: i64) -> (i64, Clamped) {
    let unix = i128::from(us) + i128::from(PG_EPOCH_UNIX_MICROS);
    if unix < i128::from(DATETIME64_MIN) {
        (DATETIME64_MIN, Clamped::Yes)
    } else if unix > i128::from(DATETIME64_MAX) {
        (DATETIME64_MAX, Clamped::Yes)
    } else {
        (unix as i64, Clamped::No)
    }
}

fn leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn string(bytes: &[u8], out: &mut Vec<u8>) {
    leb128(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An array of `dims` levels; `lens` and `elements` are the value's shape and row-major elements.
fn array(
    element: &ValueKind,
    dims: u8,
    lens: &[i32],
    elements: &[Value],
    out: &mut Vec<u8>,
) -> Result<Clamped, EncodeError> {
    if matches!(element, ValueKind::Array { .. }) {
        return Err(EncodeError::NestedArray);
    }
    if lens.is_empty() {
        // PostgreSQL's empty array has no dimensions, whatever the column declares.
        if !elements.is_empty() {
            return Err(EncodeError::ArrayShape);
        }
        out.push(0);
        return Ok(Clamped::No);
    }
    if lens.len() != usize::from(dims.max(1)) {
        return Err(EncodeError::ArrayDims {
            expected: dims.max(1),
            got: lens.len(),
        });
    }
    let mut total: usize = 1;
    for &len in lens {
        let len = usize::try_from(len).map_err(|_| EncodeError::ArrayShape)?;
        total = total.checked_mul(len).ok_or(EncodeError::ArrayShape)?;
    }
    if total != elements.len() {
        return Err(EncodeError::ArrayShape);
    }
    let mut clamped = Clamped::No;
    nested(element, lens, elements, out, &mut clamped)?;
    Ok(clamped)
}

fn nested(
    element: &ValueKind,
    lens: &[i32],
    elements: &[Value],
    out: &mut Vec<u8>,
    clamped: &mut Clamped,
) -> Result<(), EncodeError> {
    // Shapes were checked: lengths are non-negative and multiply to `elements.len()`.
    let (&len, inner) = lens.split_first().ok_or(EncodeError::ArrayShape)?;
    leb128(len as u64, out);
    if inner.is_empty() {
        for e in elements {
            *clamped |= encode_column(element, true, e, out)?;
        }
    } else {
        let step = elements.len() / (len as usize).max(1);
        for i in 0..len as usize {
            nested(
                element,
                inner,
                &elements[i * step..(i + 1) * step],
                out,
                clamped,
            )?;
        }
    }
    Ok(())
}

fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Bool => "Bool",
        ValueKind::Int16 => "Int16",
        ValueKind::Int32 => "Int32",
        ValueKind::Int64 => "Int64",
        ValueKind::UInt32 => "UInt32",
        ValueKind::Float32 => "Float32",
        ValueKind::Float64 => "Float64",
        ValueKind::Decimal { .. } => "Decimal",
        ValueKind::Text => "Text",
        ValueKind::Bytes => "Bytes",
        ValueKind::Uuid => "Uuid",
        ValueKind::Date => "Date",
        ValueKind::Timestamp => "Timestamp",
        ValueKind::TimestampTz => "TimestampTz",
        ValueKind::Array { .. } => "Array",
    }
}

fn value_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Bool(_) => "Bool",
        Value::Int16(_) => "Int16",
        Value::Int32(_) => "Int32",
        Value::Int64(_) => "Int64",
        Value::UInt32(_) => "UInt32",
        Value::Float32(_) => "Float32",
        Value::Float64(_) => "Float64",
        Value::Numeric(_) => "Numeric",
        Value::Text(_) => "Text",
        Value::Bytes(_) => "Bytes",
        Value::Uuid(_) => "Uuid",
        Value::Date(_) => "Date",
        Value::Timestamp(_) => "Timestamp",
        Value::TimestampTz(_) => "TimestampTz",
        Value::Array { .. } => "Array",
    }
}

#[cfg(test)]
mod tests;
