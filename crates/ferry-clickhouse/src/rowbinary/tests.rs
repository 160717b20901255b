use ferry_core::value::PG_EPOCH_UNIX_MICROS;

use super::*;
use crate::unrepresentable::Unrepresentable as U;

type Substituted = Option<Unrepresentable>;

fn enc(
    kind: &ValueKind,
    nullable: bool,
    value: &Value,
) -> Result<(Vec<u8>, Substituted), EncodeError> {
    let mut out = Vec::new();
    encode(kind, nullable, value, &mut out).map(|c| (out, c))
}

fn bytes(kind: &ValueKind, nullable: bool, value: &Value) -> Vec<u8> {
    enc(kind, nullable, value).unwrap().0
}

fn int_array(dims: u8) -> ValueKind {
    ValueKind::Array {
        element: Box::new(ValueKind::Int16),
        dims,
    }
}

#[test]
fn scalars() {
    use ValueKind as K;
    assert_eq!(bytes(&K::Bool, false, &Value::Bool(true)), [1]);
    assert_eq!(bytes(&K::Bool, true, &Value::Bool(false)), [0, 0]);
    assert_eq!(bytes(&K::Int16, true, &Value::Null), [1]);
    assert_eq!(
        bytes(&K::Int32, false, &Value::Int32(-2)),
        [0xFE, 0xFF, 0xFF, 0xFF]
    );
    assert_eq!(
        bytes(&K::Int64, false, &Value::Int64(i64::MIN)),
        i64::MIN.to_le_bytes()
    );
    assert_eq!(bytes(&K::UInt32, false, &Value::UInt32(1)), [1, 0, 0, 0]);
    assert_eq!(
        bytes(&K::Float64, false, &Value::Float64(f64::NAN)),
        f64::NAN.to_le_bytes()
    );
    assert_eq!(bytes(&K::Text, false, &Value::Text(String::new())), [0]);
    let long = "x".repeat(300);
    let encoded = bytes(&K::Text, false, &Value::Text(long.clone()));
    assert_eq!(&encoded[..2], [0xAC, 0x02]);
    assert_eq!(&encoded[2..], long.as_bytes());
    assert_eq!(
        bytes(&K::Bytes, false, &Value::Bytes(vec![0, 0xFF])),
        [2, 0, 0xFF]
    );
    assert_eq!(
        bytes(
            &K::Text,
            false,
            &Value::Numeric(Numeric::Finite("-1.50".into()))
        ),
        b"\x05-1.50"
    );
    assert_eq!(
        bytes(&K::Text, false, &Value::Numeric(Numeric::NaN)),
        b"\x03NaN"
    );
    let uuid: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(
        bytes(&K::Uuid, false, &Value::Uuid(uuid)),
        [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8]
    );
}

#[test]
fn decimals() {
    let kind = ValueKind::Decimal {
        precision: 9,
        scale: 2,
    };
    let num = |s: &str| Value::Numeric(Numeric::Finite(s.into()));
    assert_eq!(
        bytes(&kind, true, &num("-0.01")),
        [0, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    // NaN and infinities: NULL in a nullable column, else 0 and the extremes; or an error.
    assert_eq!(
        enc(&kind, false, &Value::Numeric(Numeric::NaN)),
        Ok((vec![0; 4], Some(U::NumericNaN)))
    );
    assert_eq!(
        enc(&kind, true, &Value::Numeric(Numeric::NaN)),
        Ok((vec![1], Some(U::NumericNaN)))
    );
    assert_eq!(
        enc(&kind, false, &Value::Numeric(Numeric::NegInfinity)),
        Ok((
            (-999_999_999i32).to_le_bytes().to_vec(),
            Some(U::NumericNegInfinity)
        ))
    );
    assert_eq!(
        enc(&kind, false, &Value::Numeric(Numeric::PosInfinity)),
        Ok((
            999_999_999i32.to_le_bytes().to_vec(),
            Some(U::NumericInfinity)
        ))
    );
    let mut out = vec![7];
    assert_eq!(
        encode_with_policy(
            &kind,
            true,
            &Value::Numeric(Numeric::NaN),
            UnrepresentablePolicy::Fail,
            &mut out
        ),
        Err(EncodeError::Unrepresentable(U::NumericNaN))
    );
    assert_eq!(out, [7]);
    assert_eq!(
        enc(&kind, false, &num("0.001")),
        Err(EncodeError::DecimalScale { scale: 2 })
    );
    let wide = ValueKind::Decimal {
        precision: 76,
        scale: 20,
    };
    assert_eq!(bytes(&wide, false, &num("1")).len(), 32);
    let int = ValueKind::Decimal {
        precision: 18,
        scale: 0,
    };
    assert_eq!(bytes(&int, false, &num("-7")), (-7i64).to_le_bytes());
}

#[test]
fn dates_and_times_out_of_range() {
    use ValueKind as K;
    let date = |v: i32| enc(&K::Date, false, &Value::Date(v)).unwrap();
    assert_eq!(date(0), (10_957i32.to_le_bytes().to_vec(), None));
    assert_eq!(
        date(i32::MAX),
        (DATE32_MAX.to_le_bytes().to_vec(), Some(U::DateAboveRange))
    );
    assert_eq!(
        date(i32::MIN),
        (DATE32_MIN.to_le_bytes().to_vec(), Some(U::DateBelowRange))
    );
    let first = DATE32_MIN - 10_957;
    assert_eq!(date(first).1, None);
    assert_eq!(
        date(first - 1),
        (DATE32_MIN.to_le_bytes().to_vec(), Some(U::DateBelowRange))
    );
    let last = DATE32_MAX - 10_957;
    assert_eq!(date(last).1, None);
    assert_eq!(date(last + 1).1, Some(U::DateAboveRange));
    // A nullable column holds NULL instead.
    assert_eq!(
        enc(&K::Date, true, &Value::Date(last + 1)),
        Ok((vec![1], Some(U::DateAboveRange)))
    );

    let ts = |v: i64| enc(&K::Timestamp, false, &Value::Timestamp(v)).unwrap();
    assert_eq!(
        ts(1),
        ((PG_EPOCH_UNIX_MICROS + 1).to_le_bytes().to_vec(), None)
    );
    assert_eq!(
        ts(i64::MAX),
        (
            DATETIME64_MAX.to_le_bytes().to_vec(),
            Some(U::TimestampAboveRange)
        )
    );
    assert_eq!(
        ts(i64::MIN),
        (
            DATETIME64_MIN.to_le_bytes().to_vec(),
            Some(U::TimestampBelowRange)
        )
    );
    assert_eq!(ts(DATETIME64_MAX - PG_EPOCH_UNIX_MICROS).1, None);
    assert_eq!(
        ts(DATETIME64_MAX - PG_EPOCH_UNIX_MICROS + 1).1,
        Some(U::TimestampAboveRange)
    );
    assert_eq!(
        enc(&K::TimestampTz, true, &Value::TimestampTz(i64::MIN)),
        Ok((vec![1], Some(U::TimestampBelowRange)))
    );
    assert_eq!(
        enc(&K::Timestamp, false, &Value::TimestampTz(0)),
        Err(EncodeError::Mismatch {
            kind: "Timestamp",
            value: "TimestampTz"
        })
    );
}

#[test]
fn arrays() {
    let one = Value::Array {
        dims: vec![3],
        elements: vec![Value::Int16(1), Value::Null, Value::Int16(-1)],
    };
    assert_eq!(
        bytes(&int_array(1), false, &one),
        [3, 0, 1, 0, 1, 0, 0xFF, 0xFF]
    );
    // Nullable arrays are a one-member Variant: discriminator 0, or 255 for NULL.
    assert_eq!(bytes(&int_array(1), true, &Value::Null), [255]);
    assert_eq!(bytes(&int_array(1), true, &one)[..2], [0, 3]);
    let empty = Value::Array {
        dims: vec![],
        elements: vec![],
    };
    assert_eq!(bytes(&int_array(2), false, &empty), [0]);
    let two = Value::Array {
        dims: vec![2, 1],
        elements: vec![Value::Int16(1), Value::Null],
    };
    assert_eq!(bytes(&int_array(2), false, &two), [2, 1, 0, 1, 0, 1, 1]);
    let clamped = Value::Array {
        dims: vec![2],
        elements: vec![Value::Date(0), Value::Date(i32::MAX)],
    };
    let dates = ValueKind::Array {
        element: Box::new(ValueKind::Date),
        dims: 1,
    };
    // An element that cannot be held is a NULL element.
    let mut expected = vec![2, 0];
    expected.extend_from_slice(&10_957i32.to_le_bytes());
    expected.push(1);
    assert_eq!(
        enc(&dates, false, &clamped),
        Ok((expected, Some(U::DateAboveRange)))
    );
    // An array of other dimensions than the column's: NULL, or empty when not nullable.
    let two = Value::Array {
        dims: vec![1, 1],
        elements: vec![Value::Int16(1)],
    };
    let dims = Some(U::ArrayDims {
        expected: 1,
        got: 2,
    });
    assert_eq!(enc(&int_array(1), false, &two), Ok((vec![0], dims)));
    assert_eq!(enc(&int_array(1), true, &two), Ok((vec![255], dims)));
}

#[test]
fn errors_leave_output_untouched() {
    let mut out = vec![42];
    let bad = Value::Array {
        dims: vec![2],
        elements: vec![Value::Int16(1), Value::Text("x".into())],
    };
    assert_eq!(
        encode(&int_array(1), true, &bad, &mut out),
        Err(EncodeError::Mismatch {
            kind: "Int16",
            value: "Text"
        })
    );
    assert_eq!(out, [42]);
    assert_eq!(
        encode(&ValueKind::Int32, false, &Value::Null, &mut out),
        Err(EncodeError::Null)
    );
    assert_eq!(
        encode(&ValueKind::Int32, false, &Value::Int64(1), &mut out),
        Err(EncodeError::Mismatch {
            kind: "Int32",
            value: "Int64"
        })
    );
    let short = Value::Array {
        dims: vec![3],
        elements: vec![Value::Int16(1)],
    };
    assert_eq!(
        encode(&int_array(1), false, &short, &mut out),
        Err(EncodeError::ArrayShape)
    );
    let negative = Value::Array {
        dims: vec![-1],
        elements: vec![],
    };
    assert_eq!(
        encode(&int_array(1), false, &negative, &mut out),
        Err(EncodeError::ArrayShape)
    );
    let zero_inner = Value::Array {
        dims: vec![2, 0],
        elements: vec![],
    };
    assert_eq!(
        encode(&int_array(2), false, &zero_inner, &mut out),
        Ok(None)
    );
    assert_eq!(out, [42, 2, 0, 0]);
}
