//! One column value ("cell") in RowBinary, whatever it was read from.
//!
//! Both ways into ClickHouse's formats meet here: [`crate::rowbinary`] turns a
//! [`Value`](ferry_core::Value) into a [`Scalar`] (or an [`ArraySource`]), and
//! [`crate::transcode`] does the same straight from a PostgreSQL binary field. Everything after
//! that is this module's: the bytes of each ClickHouse type (see [`crate::rowbinary`]'s table),
//! NULL markers, array nesting, and the [unrepresentable-value policy](crate::unrepresentable).
//! So both paths store the same value the same way, by construction.

use ferry_core::pg_binary::BinaryNumeric;
use ferry_core::value::{civil_from_days, PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS};
use ferry_core::ValueKind;

use crate::decimal;
use crate::rowbinary::EncodeError;
use crate::unrepresentable::{Unrepresentable, UnrepresentablePolicy};

/// `Date32`'s first day, 1900-01-01, in days since 1970-01-01.
pub const DATE32_MIN: i32 = -25_567;
/// `Date32`'s last day, 2299-12-31, in days since 1970-01-01.
pub const DATE32_MAX: i32 = 120_529;
/// `DateTime64(6)`'s first instant, 1900-01-01 00:00:00, in µs since 1970-01-01.
pub const DATETIME64_MIN: i64 = DATE32_MIN as i64 * MICROS_PER_DAY;
/// `DateTime64(6)`'s last instant, 2299-12-31 23:59:59.999999, in µs since 1970-01-01.
pub const DATETIME64_MAX: i64 = (DATE32_MAX as i64 + 1) * MICROS_PER_DAY - 1;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The NULL marker of a `Nullable`.
const NULLABLE_NULL: u8 = 1;
/// The discriminator of NULL in a `Variant` (a nullable array column).
const VARIANT_NULL: u8 = 255;
pub(crate) use ferry_core::pg_binary::MAX_DIMS;

/// A non-array [`ValueKind`], with what encoding it needs worked out once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Bool,
    Int16,
    Int32,
    Int64,
    UInt32,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// `Text` and `Bytes`: both are `String`.
    Text,
    Bytes,
    Uuid,
    Date,
    Timestamp,
    TimestampTz,
}

impl ScalarKind {
    /// The scalar kind of a column or array element; arrays are not scalars.
    pub(crate) fn of(kind: &ValueKind) -> Result<ScalarKind, EncodeError> {
        use ValueKind as K;
        Ok(match kind {
            K::Bool => ScalarKind::Bool,
            K::Int16 => ScalarKind::Int16,
            K::Int32 => ScalarKind::Int32,
            K::Int64 => ScalarKind::Int64,
            K::UInt32 => ScalarKind::UInt32,
            K::Float32 => ScalarKind::Float32,
            K::Float64 => ScalarKind::Float64,
            K::Decimal { precision, scale } => {
                decimal::checked_width(*precision, *scale)?;
                ScalarKind::Decimal {
                    precision: *precision,
                    scale: *scale,
                }
            }
            K::Text => ScalarKind::Text,
            K::Bytes => ScalarKind::Bytes,
            K::Uuid => ScalarKind::Uuid,
            K::Date => ScalarKind::Date,
            K::Timestamp => ScalarKind::Timestamp,
            K::TimestampTz => ScalarKind::TimestampTz,
            K::Array { .. } => return Err(EncodeError::NestedArray),
        })
    }
}

/// A non-NULL value of a [`ScalarKind`], borrowed from where it was read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    UInt32(u32),
    Float32(f32),
    Float64(f64),
    /// Decimal text (`-?digits[.digits]`), as [`ferry_core::Numeric`] keeps it.
    DecimalText(&'a str),
    /// A binary `numeric`, NaN and infinities included.
    DecimalBinary(BinaryNumeric<'a>),
    /// The bytes of a `String` column (text, bytea, or a numeric's text in a `Text` column).
    Str(&'a [u8]),
    Uuid(&'a [u8; 16]),
    /// Days since 2000-01-01 (`i32::MAX`/`MIN` are ±infinity).
    Date(i32),
    /// µs since 2000-01-01 (`i64::MAX`/`MIN` are ±infinity), both timestamp kinds.
    Timestamp(i64),
}

#[inline]
pub(crate) fn leb128(mut n: u64, out: &mut Vec<u8>) {
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

#[inline]
pub(crate) fn string(bytes: &[u8], out: &mut Vec<u8>) {
    leb128(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A UUID: its two 64-bit halves, each little-endian.
#[inline]
pub(crate) fn uuid(u: &[u8; 16], out: &mut Vec<u8>) {
    out.extend(u[..8].iter().rev());
    out.extend(u[8..].iter().rev());
}

/// Where a scalar cell says whether it is NULL.
pub(crate) enum Marker<'m> {
    /// Nowhere: the column is not `Nullable`.
    None,
    /// RowBinary: a byte before the value, in the same buffer.
    Inline,
    /// `Native`: a byte in the column's null map, with the type's default in the data for NULL.
    Map(&'m mut Vec<u8>),
}

impl Marker<'_> {
    /// RowBinary's marker of a column.
    pub(crate) fn inline(nullable: bool) -> Marker<'static> {
        if nullable {
            Marker::Inline
        } else {
            Marker::None
        }
    }

    /// Says "not NULL" (RowBinary: before the value is written).
    #[inline(always)]
    pub(crate) fn not_null(&mut self, data: &mut Vec<u8>) {
        match self {
            Marker::None => {}
            Marker::Inline => data.push(0),
            Marker::Map(nulls) => nulls.push(0),
        }
    }

    /// Writes NULL, or says the column cannot hold it.
    fn null(&mut self, kind: ScalarKind, data: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Marker::None => return Err(EncodeError::Null),
            Marker::Inline => data.push(NULLABLE_NULL),
            Marker::Map(nulls) => {
                nulls.push(NULLABLE_NULL);
                default_value(kind, data);
            }
        }
        Ok(())
    }
}

/// The width of a fixed-width kind's values; `None` for `String`s.
pub(crate) fn width(kind: ScalarKind) -> Option<usize> {
    use ScalarKind as K;
    match kind {
        K::Bool => Some(1),
        K::Int16 => Some(2),
        K::Int32 | K::UInt32 | K::Float32 | K::Date => Some(4),
        K::Int64 | K::Float64 | K::Timestamp | K::TimestampTz => Some(8),
        K::Decimal { precision, .. } => decimal::width(precision),
        K::Uuid => Some(16),
        K::Text | K::Bytes => None,
    }
}

/// The type's default value, which a NULL holds in a `Native` column under its null map.
pub(crate) fn default_value(kind: ScalarKind, data: &mut Vec<u8>) {
    match width(kind) {
        Some(w) => data.resize(data.len() + w, 0),
        None => data.push(0), // the empty string
    }
}

/// Days since 2000-01-01 → days since 1970-01-01, if `Date32` holds it.
pub(crate) fn date32(days: i32) -> Result<i32, Unrepresentable> {
    let unix = i64::from(days) + i64::from(PG_EPOCH_UNIX_DAYS);
    if unix < i64::from(DATE32_MIN) {
        Err(Unrepresentable::DateBelowRange)
    } else if unix > i64::from(DATE32_MAX) {
        Err(Unrepresentable::DateAboveRange)
    } else {
        Ok(unix as i32) // in range, so it fits
    }
}

/// µs since 2000-01-01 → µs since 1970-01-01, if `DateTime64(6)` holds it.
pub(crate) fn datetime64(us: i64) -> Result<i64, Unrepresentable> {
    let unix = i128::from(us) + i128::from(PG_EPOCH_UNIX_MICROS);
    if unix < i128::from(DATETIME64_MIN) {
        Err(Unrepresentable::TimestampBelowRange)
    } else if unix > i128::from(DATETIME64_MAX) {
        Err(Unrepresentable::TimestampAboveRange)
    } else {
        Ok(unix as i64)
    }
}

fn mismatch(kind: ScalarKind) -> EncodeError {
    EncodeError::Mismatch {
        kind: kind_name(kind),
        value: "other",
    }
}

/// Writes a non-NULL scalar without a NULL marker; or, when ClickHouse cannot hold it, writes
/// nothing and says why.
#[inline(always)]
fn scalar(
    kind: ScalarKind,
    v: Scalar<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    use ScalarKind as K;
    match (kind, v) {
        (K::Bool, Scalar::Bool(b)) => out.push(u8::from(b)),
        (K::Int16, Scalar::Int16(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::Int32, Scalar::Int32(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::Int64, Scalar::Int64(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::UInt32, Scalar::UInt32(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::Float32, Scalar::Float32(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::Float64, Scalar::Float64(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (K::Decimal { precision, scale }, Scalar::DecimalText(t)) => {
            decimal::encode(precision, scale, t, out)?
        }
        (K::Decimal { precision, scale }, Scalar::DecimalBinary(n)) => match n {
            BinaryNumeric::Finite(f) => decimal::encode_binary(precision, scale, &f, out)?,
            BinaryNumeric::NaN => return Ok(Some(Unrepresentable::NumericNaN)),
            BinaryNumeric::PosInfinity => return Ok(Some(Unrepresentable::NumericInfinity)),
            BinaryNumeric::NegInfinity => return Ok(Some(Unrepresentable::NumericNegInfinity)),
        },
        (K::Text | K::Bytes, Scalar::Str(b)) => string(b, out),
        (K::Uuid, Scalar::Uuid(u)) => uuid(u, out),
        (K::Date, Scalar::Date(days)) => match date32(days) {
            Ok(d) => out.extend_from_slice(&d.to_le_bytes()),
            Err(why) => return Ok(Some(why)),
        },
        (K::Timestamp | K::TimestampTz, Scalar::Timestamp(us)) => match datetime64(us) {
            Ok(t) => out.extend_from_slice(&t.to_le_bytes()),
            Err(why) => return Ok(Some(why)),
        },
        _ => return Err(mismatch(kind)),
    }
    Ok(None)
}

/// The nearest value a column of `kind` holds in place of one it cannot (see
/// [`crate::unrepresentable`]).
fn nearest(kind: ScalarKind, why: Unrepresentable, out: &mut Vec<u8>) {
    use Unrepresentable as U;
    match (kind, why) {
        (ScalarKind::Decimal { precision, .. }, U::NumericInfinity | U::NumericNegInfinity) => {
            decimal::extreme(precision, why == U::NumericNegInfinity, out)
        }
        (ScalarKind::Decimal { precision, .. }, _) => {
            let zero = [0u8; 32];
            out.extend_from_slice(&zero[..decimal::width(precision).unwrap_or(32)]);
        }
        (_, U::DateBelowRange) => out.extend_from_slice(&DATE32_MIN.to_le_bytes()),
        (_, U::DateAboveRange) => out.extend_from_slice(&DATE32_MAX.to_le_bytes()),
        (_, U::TimestampBelowRange) => out.extend_from_slice(&DATETIME64_MIN.to_le_bytes()),
        // The scalars' reasons are all above; what is left is a timestamp after the range.
        _ => out.extend_from_slice(&DATETIME64_MAX.to_le_bytes()),
    }
}

/// Writes one scalar cell (`None` is NULL) into `data`, its NULL marker by `marker`; a value
/// the column cannot hold is dealt with by `policy`. Returns why a value was replaced, if it
/// was. On error, what was written must be discarded by the caller.
#[inline(always)]
pub(crate) fn scalar_cell(
    kind: ScalarKind,
    mut marker: Marker<'_>,
    value: Option<Scalar<'_>>,
    policy: UnrepresentablePolicy,
    data: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    let Some(value) = value else {
        marker.null(kind, data)?;
        return Ok(None);
    };
    let start = data.len();
    if let Marker::Inline = marker {
        data.push(0);
    }
    let Some(why) = scalar(kind, value, data)? else {
        if let Marker::Map(nulls) = &mut marker {
            nulls.push(0);
        }
        return Ok(None);
    };
    if policy == UnrepresentablePolicy::Fail {
        return Err(EncodeError::Unrepresentable(why));
    }
    match marker {
        Marker::None => nearest(kind, why, data),
        mut nullable => {
            data.truncate(start);
            nullable.null(kind, data)?;
        }
    }
    Ok(Some(why))
}

/// An array value being read: its shape, then its elements in row-major order.
pub(crate) trait ArraySource<'a> {
    /// The length of each dimension, outermost first; empty for an empty array.
    fn dims(&self) -> &[i32];
    /// Whether every dimension's lower bound is 1.
    fn lower_bounds_are_one(&self) -> bool;
    /// The next element (`None` is a NULL element); called exactly once per element.
    fn next_element(&mut self) -> Result<Option<Scalar<'a>>, EncodeError>;
    /// Checks that nothing is left after the last element.
    fn finish(&mut self) -> Result<(), EncodeError>;
}

/// The number of elements of an array of these dimensions, or an error for a negative one.
pub(crate) fn element_count(dims: &[i32]) -> Result<usize, EncodeError> {
    let mut total: usize = 1;
    for &len in dims {
        let len = usize::try_from(len).map_err(|_| EncodeError::ArrayShape)?;
        total = total.checked_mul(len).ok_or(EncodeError::ArrayShape)?;
    }
    Ok(if dims.is_empty() { 0 } else { total })
}

/// Writes one array cell (`None` is NULL) of a column of `dims` dimensions of `element`s: a
/// `Variant(Array(…))` when `nullable`, else a plain `Array(…)`. As [`scalar_cell`] otherwise.
pub(crate) fn array_cell<'a>(
    element: ScalarKind,
    dims: u8,
    nullable: bool,
    value: Option<&mut dyn ArraySource<'a>>,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    let Some(src) = value else {
        if !nullable {
            return Err(EncodeError::Null);
        }
        out.push(VARIANT_NULL);
        return Ok(None);
    };
    if nullable {
        // The array's discriminator in its one-member Variant.
        out.push(0);
    }
    let mut shape = [0i32; MAX_DIMS];
    let levels = src.dims().len();
    if levels > MAX_DIMS {
        return Err(EncodeError::ArrayShape);
    }
    shape[..levels].copy_from_slice(src.dims());
    let lens = &shape[..levels];
    let count = element_count(lens)?;
    let expected = dims.max(1);
    if lens.is_empty() {
        // PostgreSQL's empty array has no dimensions, whatever the column declares.
        src.finish()?;
        out.push(0);
        return Ok(None);
    }
    if levels != usize::from(expected) {
        // Every element is still read, so that a malformed one is an error either way.
        for _ in 0..count {
            src.next_element()?;
        }
        src.finish()?;
        let why = Unrepresentable::ArrayDims {
            expected,
            got: levels as u8, // at most MAX_DIMS
        };
        if policy == UnrepresentablePolicy::Fail {
            return Err(EncodeError::Unrepresentable(why));
        }
        if nullable {
            out.pop();
            out.push(VARIANT_NULL);
        } else {
            out.push(0);
        }
        return Ok(Some(why));
    }
    let mut why = None;
    if !src.lower_bounds_are_one() {
        if policy == UnrepresentablePolicy::Fail {
            return Err(EncodeError::Unrepresentable(
                Unrepresentable::ArrayLowerBound,
            ));
        }
        why = Some(Unrepresentable::ArrayLowerBound);
    }
    nested(element, lens, src, policy, out, &mut why)?;
    src.finish()?;
    Ok(why)
}

fn nested<'a>(
    element: ScalarKind,
    lens: &[i32],
    src: &mut dyn ArraySource<'a>,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
    why: &mut Option<Unrepresentable>,
) -> Result<(), EncodeError> {
    let (&len, inner) = lens.split_first().ok_or(EncodeError::ArrayShape)?;
    // Lengths were checked to be non-negative.
    leb128(len as u64, out);
    for _ in 0..len {
        if inner.is_empty() {
            let e = src.next_element()?;
            let w = scalar_cell(element, Marker::Inline, e, policy, out)?;
            *why = why.or(w);
        } else {
            nested(element, inner, src, policy, out, why)?;
        }
    }
    Ok(())
}

pub(crate) fn kind_name(kind: ScalarKind) -> &'static str {
    match kind {
        ScalarKind::Bool => "Bool",
        ScalarKind::Int16 => "Int16",
        ScalarKind::Int32 => "Int32",
        ScalarKind::Int64 => "Int64",
        ScalarKind::UInt32 => "UInt32",
        ScalarKind::Float32 => "Float32",
        ScalarKind::Float64 => "Float64",
        ScalarKind::Decimal { .. } => "Decimal",
        ScalarKind::Text => "Text",
        ScalarKind::Bytes => "Bytes",
        ScalarKind::Uuid => "Uuid",
        ScalarKind::Date => "Date",
        ScalarKind::Timestamp => "Timestamp",
        ScalarKind::TimestampTz => "TimestampTz",
    }
}

/// A scalar as text close to PostgreSQL's output, for example keys in logs and status.
pub(crate) fn render(kind: ScalarKind, v: Scalar<'_>) -> String {
    match v {
        Scalar::Bool(b) => if b { "t" } else { "f" }.to_owned(),
        Scalar::Int16(x) => x.to_string(),
        Scalar::Int32(x) => x.to_string(),
        Scalar::Int64(x) => x.to_string(),
        Scalar::UInt32(x) => x.to_string(),
        Scalar::Float32(x) => x.to_string(),
        Scalar::Float64(x) => x.to_string(),
        Scalar::DecimalText(t) => t.to_owned(),
        Scalar::DecimalBinary(BinaryNumeric::Finite(f)) => f.to_text(),
        Scalar::DecimalBinary(BinaryNumeric::NaN) => "NaN".to_owned(),
        Scalar::DecimalBinary(BinaryNumeric::PosInfinity) => "Infinity".to_owned(),
        Scalar::DecimalBinary(BinaryNumeric::NegInfinity) => "-Infinity".to_owned(),
        Scalar::Str(b) if kind == ScalarKind::Bytes => {
            let mut s = String::from("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        Scalar::Str(b) => String::from_utf8_lossy(b).into_owned(),
        Scalar::Uuid(u) => {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        Scalar::Date(i32::MAX) | Scalar::Timestamp(i64::MAX) => "infinity".to_owned(),
        Scalar::Date(i32::MIN) | Scalar::Timestamp(i64::MIN) => "-infinity".to_owned(),
        Scalar::Date(days) => {
            let (y, m, d) = civil_from_days(i64::from(days) + i64::from(PG_EPOCH_UNIX_DAYS));
            with_era(y, format!("{m:02}-{d:02}"))
        }
        Scalar::Timestamp(us) => {
            let unix = i128::from(us) + i128::from(PG_EPOCH_UNIX_MICROS);
            let day = unix.div_euclid(i128::from(MICROS_PER_DAY)) as i64;
            let t = unix.rem_euclid(i128::from(MICROS_PER_DAY)) as i64;
            let (y, m, d) = civil_from_days(day);
            let (secs, micros) = (t / 1_000_000, t % 1_000_000);
            let mut time = format!(
                "{m:02}-{d:02} {:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            if micros != 0 {
                time.push_str(format!(".{micros:06}").trim_end_matches('0'));
            }
            if kind == ScalarKind::TimestampTz {
                time.push_str("+00");
            }
            with_era(y, time)
        }
    }
}

/// `YYYY-rest`, or PostgreSQL's `YYYY-rest BC` for years before 1 (year 0 is 1 BC).
fn with_era(year: i64, rest: String) -> String {
    if year <= 0 {
        format!("{:04}-{rest} BC", 1 - year)
    } else {
        format!("{year:04}-{rest}")
    }
}

/// An array as `{…}` text (nested braces per dimension), for example keys.
pub(crate) fn render_array<'a>(element: ScalarKind, src: &mut dyn ArraySource<'a>) -> String {
    fn level<'a>(element: ScalarKind, lens: &[i32], src: &mut dyn ArraySource<'a>, s: &mut String) {
        let Some((&len, inner)) = lens.split_first() else {
            return;
        };
        s.push('{');
        for i in 0..len.max(0) {
            if i > 0 {
                s.push(',');
            }
            if inner.is_empty() {
                match src.next_element() {
                    Ok(Some(v)) => s.push_str(&render(element, v)),
                    _ => s.push_str("NULL"),
                }
            } else {
                level(element, inner, src, s);
            }
        }
        s.push('}');
    }
    let mut shape = [0i32; MAX_DIMS];
    let levels = src.dims().len().min(MAX_DIMS);
    shape[..levels].copy_from_slice(&src.dims()[..levels]);
    if levels == 0 || element_count(&shape[..levels]).is_err() {
        return "{}".to_owned();
    }
    let mut s = String::new();
    level(element, &shape[..levels], src, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        use ScalarKind as K;
        assert_eq!(render(K::Date, Scalar::Date(0)), "2000-01-01");
        assert_eq!(
            render(K::Date, Scalar::Date(-730_119 - 366)),
            "0001-01-01 BC"
        );
        assert_eq!(render(K::Date, Scalar::Date(i32::MAX)), "infinity");
        assert_eq!(
            render(K::Timestamp, Scalar::Timestamp(-1)),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(
            render(K::TimestampTz, Scalar::Timestamp(1_500_000)),
            "2000-01-01 00:00:01.5+00"
        );
        assert_eq!(render(K::Bytes, Scalar::Str(&[0, 0xAB])), "\\x00ab");
        assert_eq!(render(K::Text, Scalar::Str(b"abc")), "abc");
        let u: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(
            render(K::Uuid, Scalar::Uuid(&u)),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
    }
}
