use super::*;

fn enc(kind: &ValueKind, nullable: bool, value: &Value) -> Result<(Vec<u8>, Clamped), EncodeError> {
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
    assert_eq!(
        enc(&kind, false, &Value::Numeric(Numeric::NaN)),
        Err(EncodeError::DecimalNotFinite("NaN"))
    );
    assert_eq!(
        enc(&kind, false, &Value::Numeric(Numeric::NegInfinity)),
        Err(EncodeError::DecimalNotFinite("-Infinity"))
    );
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
fn dates_and_times_clamp() {
    use ValueKind as K;
    let date = |v: i32| enc(&K::Date, false, &Value::Date(v)).unwrap();
    assert_eq!(date(0), (10_957i32.to_le_bytes().to_vec(), Clamped::No));
    assert_eq!(
        date(i32::MAX),
        (DATE32_MAX.to_le_bytes().to_vec(), Clamped::Yes)
    );
    assert_eq!(
        date(i32::MIN),
        (DATE32_MIN.to_le_bytes().to_vec(), Clamped::Yes)
    );
    let first = DATE32_MIN - 10_957;
    assert_eq!(date(first).1, Clamped::No);
    assert_eq!(
        date(first - 1),
        (DATE32_MIN.to_le_bytes().to_vec(), Clamped::Yes)
    );
    let last = DATE32_MAX - 10_957;
    assert_eq!(date(last).1, Clamped::No);
    assert_eq!(date(last + 1).1, Clamped::Yes);

    let ts = |v: i64| enc(&K::Timestamp, false, &Value::Timestamp(v)).unwrap();
    assert_eq!(
        ts(1),
        (
            (PG_EPOCH_UNIX_MICROS + 1).to_le_bytes().to_vec(),
            Clamped::No
        )
    );
    assert_eq!(
        ts(i64::MAX),
        (DATETIME64_MAX.to_le_bytes().to_vec(), Clamped::Yes)
    );
    assert_eq!(
        ts(i64::MIN),
        (DATETIME64_MIN.to_le_bytes().to_vec(), Clamped::Yes)
    );
    assert_eq!(ts(DATETIME64_MAX - PG_EPOCH_UNIX_MICROS).1, Clamped::No);
    assert_eq!(
        ts(DATETIME64_MAX - PG_EPOCH_UNIX_MICROS + 1).1,
        Clamped::Yes
    );
    assert_eq!(
        enc(&K::TimestampTz, true, &Value::TimestampTz(i64::MIN))
            .unwrap()
            .1,
        Clamped::Yes
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
    assert_eq!(enc(&dates, false, &clamped).unwrap().1, Clamped::Yes);
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
    let two = Value::Array {
        dims: vec![1, 1],
        elements: vec![Value::Int16(1)],
    };
    assert_eq!(
        encode(&int_array(1), false, &two, &mut out),
        Err(EncodeError::ArrayDims {
            expected: 1,
            got: 2
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
        Ok(Clamped::No)
    );
    assert_eq!(out, [42, 2, 0, 0]);
}
