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
//! A value the column cannot hold (numeric NaN in a `Decimal`, a date outside `Date32`'s range,
//! …) is dealt with by the [unrepresentable-value policy](crate::unrepresentable); [`encode`]
//! substitutes and says so, [`encode_with_policy`] lets the caller choose. The bytes themselves
//! are written by [`crate::cell`], which the transcoder of binary COPY fields shares.

use ferry_core::pg_binary::{BinaryNumeric, FormatError};
use ferry_core::{ErrorKind, Numeric, Value, ValueKind};

use crate::cell::{self, ArraySource, Marker, Scalar, ScalarKind};
pub use crate::cell::{DATE32_MAX, DATE32_MIN, DATETIME64_MAX, DATETIME64_MIN};
use crate::unrepresentable::{Unrepresentable, UnrepresentablePolicy};

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
    #[error("{0}")]
    Unrepresentable(Unrepresentable),
    #[error("numeric value has non-zero digits beyond the column's scale {scale}")]
    DecimalScale { scale: u8 },
    #[error("numeric value does not fit Decimal({precision}, {scale})")]
    DecimalOverflow { precision: u8, scale: u8 },
    #[error("numeric value is not decimal text")]
    DecimalSyntax,
    #[error("Decimal({precision}, {scale}) is not a ClickHouse decimal type")]
    DecimalType { precision: u8, scale: u8 },
    #[error("array dimensions do not match its number of elements")]
    ArrayShape,
    #[error("arrays of arrays are not a column kind")]
    NestedArray,
    /// A field in PostgreSQL's binary format that is not valid for its type.
    #[error("invalid {what} value: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
}

impl From<FormatError> for EncodeError {
    fn from(e: FormatError) -> Self {
        EncodeError::Malformed {
            what: e.what,
            reason: e.reason,
        }
    }
}

impl EncodeError {
    /// A value ClickHouse cannot hold as mapped: definite, never retried. A malformed field is
    /// a broken invariant (the source sent what its type cannot be).
    pub fn kind(&self) -> ErrorKind {
        match self {
            EncodeError::Malformed { .. } => ErrorKind::Internal,
            _ => ErrorKind::Unsupported,
        }
    }
}

/// Appends `value` as RowBinary for a column of `kind` (of type `clickhouse_type(kind,
/// nullable)`), substituting a value the column cannot hold; returns why it did, if it did. On
/// error, `out` is left as it was.
pub fn encode(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    encode_with_policy(
        kind,
        nullable,
        value,
        UnrepresentablePolicy::Substitute,
        out,
    )
}

/// As [`encode`], with a value the column cannot hold dealt with by `policy`.
pub fn encode_with_policy(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    let start = out.len();
    let result = encode_cell(kind, nullable, value, policy, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_cell(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    match kind {
        ValueKind::Array { element, dims } => {
            let mut array = match value {
                Value::Null => None,
                Value::Array { dims, elements } => {
                    // Only a non-NULL array needs its element kind to be a scalar.
                    let element = ScalarKind::of(element)?;
                    Some(ValueArray::new(element, dims, elements)?)
                }
                other => return Err(mismatch(kind, other)),
            };
            let element = match &array {
                Some(a) => a.element,
                None => ScalarKind::Bool, // not looked at for NULL
            };
            cell::array_cell(
                element,
                *dims,
                nullable,
                array.as_mut().map(|a| a as &mut dyn ArraySource<'_>),
                policy,
                out,
            )
        }
        _ if matches!(value, Value::Null) => cell::scalar_cell(
            ScalarKind::Bool,
            Marker::inline(nullable),
            None,
            policy,
            out,
        ),
        _ => {
            let kind = ScalarKind::of(kind)?;
            let scalar = to_scalar(kind, value)?;
            cell::scalar_cell(kind, Marker::inline(nullable), Some(scalar), policy, out)
        }
    }
}

/// A non-NULL value as a scalar of `kind`, if it is one.
pub(crate) fn to_scalar(kind: ScalarKind, value: &Value) -> Result<Scalar<'_>, EncodeError> {
    use ScalarKind as K;
    Ok(match (kind, value) {
        (K::Bool, Value::Bool(b)) => Scalar::Bool(*b),
        (K::Int16, Value::Int16(x)) => Scalar::Int16(*x),
        (K::Int32, Value::Int32(x)) => Scalar::Int32(*x),
        (K::Int64, Value::Int64(x)) => Scalar::Int64(*x),
        (K::UInt32, Value::UInt32(x)) => Scalar::UInt32(*x),
        (K::Float32, Value::Float32(x)) => Scalar::Float32(*x),
        (K::Float64, Value::Float64(x)) => Scalar::Float64(*x),
        (K::Decimal { .. }, Value::Numeric(n)) => match n {
            Numeric::Finite(t) => Scalar::DecimalText(t),
            Numeric::NaN => Scalar::DecimalBinary(BinaryNumeric::NaN),
            Numeric::PosInfinity => Scalar::DecimalBinary(BinaryNumeric::PosInfinity),
            Numeric::NegInfinity => Scalar::DecimalBinary(BinaryNumeric::NegInfinity),
        },
        (K::Text, Value::Text(s)) => Scalar::Str(s.as_bytes()),
        (K::Text, Value::Numeric(n)) => Scalar::Str(match n {
            Numeric::Finite(s) => s.as_bytes(),
            Numeric::NaN => b"NaN",
            Numeric::PosInfinity => b"Infinity",
            Numeric::NegInfinity => b"-Infinity",
        }),
        (K::Bytes, Value::Bytes(b)) => Scalar::Str(b),
        (K::Uuid, Value::Uuid(u)) => Scalar::Uuid(u),
        (K::Date, Value::Date(d)) => Scalar::Date(*d),
        (K::Timestamp, Value::Timestamp(t)) | (K::TimestampTz, Value::TimestampTz(t)) => {
            Scalar::Timestamp(*t)
        }
        _ => {
            return Err(EncodeError::Mismatch {
                kind: cell::kind_name(kind),
                value: value_name(value),
            })
        }
    })
}

/// A [`Value::Array`] read element by element.
pub(crate) struct ValueArray<'v> {
    element: ScalarKind,
    dims: &'v [i32],
    elements: std::slice::Iter<'v, Value>,
}

impl<'v> ValueArray<'v> {
    pub(crate) fn new(
        element: ScalarKind,
        dims: &'v [i32],
        elements: &'v [Value],
    ) -> Result<Self, EncodeError> {
        if cell::element_count(dims)? != elements.len() {
            return Err(EncodeError::ArrayShape);
        }
        Ok(ValueArray {
            element,
            dims,
            elements: elements.iter(),
        })
    }
}

impl<'v> ArraySource<'v> for ValueArray<'v> {
    fn dims(&self) -> &[i32] {
        self.dims
    }

    fn lower_bounds_are_one(&self) -> bool {
        // A Value keeps no lower bounds.
        true
    }

    fn next_element(&mut self) -> Result<Option<Scalar<'v>>, EncodeError> {
        match self.elements.next() {
            None => Err(EncodeError::ArrayShape),
            Some(Value::Null) => Ok(None),
            Some(v) => to_scalar(self.element, v).map(Some),
        }
    }

    fn finish(&mut self) -> Result<(), EncodeError> {
        match self.elements.next() {
            None => Ok(()),
            Some(_) => Err(EncodeError::ArrayShape),
        }
    }
}

/// A value as text close to PostgreSQL's output, for example keys; NULL is `NULL`.
pub(crate) fn render_value(kind: &ValueKind, value: &Value) -> String {
    let rendered = match (kind, value) {
        (_, Value::Null) => None,
        (ValueKind::Array { element, .. }, Value::Array { dims, elements }) => {
            ScalarKind::of(element).ok().and_then(|element| {
                let mut a = ValueArray::new(element, dims, elements).ok()?;
                Some(cell::render_array(element, &mut a))
            })
        }
        _ => ScalarKind::of(kind)
            .ok()
            .and_then(|k| Some(cell::render(k, to_scalar(k, value).ok()?))),
    };
    rendered.unwrap_or_else(|| "NULL".to_owned())
}

fn mismatch(kind: &ValueKind, value: &Value) -> EncodeError {
    EncodeError::Mismatch {
        kind: match kind {
            ValueKind::Array { .. } => "Array",
            other => ScalarKind::of(other).map_or("Decimal", cell::kind_name),
        },
        value: value_name(value),
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
