//! The canonical binary form of each [`ValueKind`]: the currency rows travel in between a
//! source and a destination.
//!
//! A value of kind `K` travels as PostgreSQL's binary send format of `K`'s canonical type — the
//! same bytes binary `COPY` and pgoutput's binary mode carry for a column of that type. The
//! source makes sure every field it hands on is in this form (the snapshot selects columns
//! with the casts their kinds need; a text-mode stream is re-encoded by [`encode`]), so a
//! destination reads one format whatever the path. All integers are big-endian:
//!
//! | kind | canonical type | format |
//! |---|---|---|
//! | `Bool` | `bool` | 1 byte, 0 or 1 |
//! | `Int16` / `Int32` / `Int64` | `int2` / `int4` / `int8` | 2 / 4 / 8 bytes |
//! | `UInt32` | `oid` | 4 bytes |
//! | `Float32` / `Float64` | `float4` / `float8` | IEEE 754 bits, 4 / 8 bytes |
//! | `Decimal` | `numeric` | `numeric_send` (see [`numeric`]) |
//! | `Text` | `text` | the UTF-8 bytes |
//! | `Bytes` | `bytea` | the bytes |
//! | `Uuid` | `uuid` | 16 bytes |
//! | `Date` | `date` | i32 days since 2000-01-01 (`i32::MAX`/`MIN` = ±infinity) |
//! | `Timestamp` / `TimestampTz` | `timestamp` / `timestamptz` | i64 µs since 2000-01-01 (UTC) (`i64::MAX`/`MIN` = ±infinity) |
//! | `Array` | the element's array type | see below |
//!
//! An array (`array_send`) is `ndim i32 | has_nulls i32 | element oid u32`, then `ndim` pairs
//! of `length i32 | lower bound i32`, then every element in row-major order as `length i32`
//! (−1 for NULL) and that many bytes in the element's own binary format. An empty array has
//! `ndim = 0` and nothing after the header. Readers ignore the element OID.

mod decode;
pub mod numeric;

pub use decode::decode;

use crate::{ErrorKind, Value, ValueKind};

/// Why a value could not be read or written. Messages never include the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} value must be {expected} bytes, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} value is truncated")]
    Truncated { what: &'static str },
    #[error("{what} value has {extra} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("text value is not valid UTF-8")]
    Utf8,
    #[error("invalid {what} value: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    #[error("{what} value is out of range")]
    OutOfRange { what: &'static str },
}

impl DecodeError {
    /// A value a server sent that Ferry cannot read is a bug or a broken invariant.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }

    pub fn invalid(what: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::Invalid { what, reason }
    }
}

impl From<crate::pg_binary::FormatError> for DecodeError {
    fn from(e: crate::pg_binary::FormatError) -> Self {
        DecodeError::Invalid {
            what: e.what,
            reason: e.reason,
        }
    }
}

/// The OID of a kind's canonical type (as an array's element type).
pub fn type_oid(kind: &ValueKind) -> u32 {
    match kind {
        ValueKind::Bool => 16,
        ValueKind::Int16 => 21,
        ValueKind::Int32 => 23,
        ValueKind::Int64 => 20,
        ValueKind::UInt32 => 26,
        ValueKind::Float32 => 700,
        ValueKind::Float64 => 701,
        ValueKind::Decimal { .. } => 1700,
        ValueKind::Text => 25,
        ValueKind::Bytes => 17,
        ValueKind::Uuid => 2950,
        ValueKind::Date => 1082,
        ValueKind::Timestamp => 1114,
        ValueKind::TimestampTz => 1184,
        // Arrays of arrays do not occur: an array kind's element is a scalar.
        ValueKind::Array { element, .. } => type_oid(element),
    }
}

/// Appends the canonical binary form of a non-NULL `value` of `kind`.
pub fn encode(kind: &ValueKind, value: &Value, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let mismatch = || DecodeError::invalid("value", "does not match the column's kind");
    match (kind, value) {
        (ValueKind::Bool, Value::Bool(b)) => out.push(u8::from(*b)),
        (ValueKind::Int16, Value::Int16(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::Int32, Value::Int32(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::Int64, Value::Int64(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::UInt32, Value::UInt32(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::Float32, Value::Float32(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::Float64, Value::Float64(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (ValueKind::Decimal { .. }, Value::Numeric(n)) => numeric::encode(n, out)?,
        (ValueKind::Text, Value::Text(s)) => out.extend_from_slice(s.as_bytes()),
        (ValueKind::Bytes, Value::Bytes(b)) => out.extend_from_slice(b),
        (ValueKind::Uuid, Value::Uuid(u)) => out.extend_from_slice(u),
        (ValueKind::Date, Value::Date(d)) => out.extend_from_slice(&d.to_be_bytes()),
        (ValueKind::Timestamp, Value::Timestamp(t))
        | (ValueKind::TimestampTz, Value::TimestampTz(t)) => {
            out.extend_from_slice(&t.to_be_bytes())
        }
        (ValueKind::Array { element, .. }, Value::Array { dims, elements }) => {
            let count = dims
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
            if dims.len() > 6 || (!dims.is_empty() && count != Some(elements.len())) {
                return Err(DecodeError::invalid(
                    "array",
                    "dimensions do not match elements",
                ));
            }
            let ndim = i32::try_from(dims.len()).map_err(|_| mismatch())?;
            let has_nulls = elements.iter().any(|e| matches!(e, Value::Null));
            out.extend_from_slice(&ndim.to_be_bytes());
            out.extend_from_slice(&i32::from(has_nulls).to_be_bytes());
            out.extend_from_slice(&type_oid(element).to_be_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
            }
            if dims.is_empty() {
                return Ok(());
            }
            for e in elements {
                if matches!(e, Value::Null) {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                encode(element, e, out)?;
                let len = i32::try_from(out.len() - at - 4)
                    .map_err(|_| DecodeError::OutOfRange { what: "array" })?;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Numeric;

    #[test]
    fn encode_then_decode_is_identity() {
        let cases: Vec<(ValueKind, Value)> = vec![
            (ValueKind::Bool, Value::Bool(true)),
            (ValueKind::Int16, Value::Int16(-2)),
            (ValueKind::Int32, Value::Int32(i32::MIN)),
            (ValueKind::Int64, Value::Int64(i64::MAX)),
            (ValueKind::UInt32, Value::UInt32(u32::MAX)),
            (ValueKind::Float32, Value::Float32(-1.5)),
            (ValueKind::Float64, Value::Float64(f64::INFINITY)),
            (
                ValueKind::Decimal {
                    precision: 20,
                    scale: 4,
                },
                Value::Numeric(Numeric::Finite("-12.3400".into())),
            ),
            (ValueKind::Text, Value::Text("héllo\0".into())),
            (ValueKind::Bytes, Value::Bytes(vec![0, 255])),
            (ValueKind::Uuid, Value::Uuid([7; 16])),
            (ValueKind::Date, Value::Date(i32::MIN)),
            (ValueKind::Timestamp, Value::Timestamp(-1)),
            (ValueKind::TimestampTz, Value::TimestampTz(i64::MAX)),
            (
                ValueKind::Array {
                    element: Box::new(ValueKind::Int32),
                    dims: 2,
                },
                Value::Array {
                    dims: vec![2, 2],
                    elements: vec![Value::Int32(1), Value::Null, Value::Int32(3), Value::Null],
                },
            ),
            (
                ValueKind::Array {
                    element: Box::new(ValueKind::Text),
                    dims: 1,
                },
                Value::Array {
                    dims: vec![],
                    elements: vec![],
                },
            ),
        ];
        for (kind, value) in cases {
            let mut out = Vec::new();
            encode(&kind, &value, &mut out).unwrap();
            assert_eq!(decode(&kind, &out), Ok(value.clone()), "{kind:?}");
        }
        assert!(encode(&ValueKind::Int32, &Value::Int64(1), &mut Vec::new()).is_err());
        let bad = Value::Array {
            dims: vec![3],
            elements: vec![Value::Int32(1)],
        };
        let kind = ValueKind::Array {
            element: Box::new(ValueKind::Int32),
            dims: 1,
        };
        assert!(encode(&kind, &bad, &mut Vec::new()).is_err());
    }
}
