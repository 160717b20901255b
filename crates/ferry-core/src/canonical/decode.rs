//! Reading the canonical binary forms into [`Value`]s.

use crate::pg_binary::BinaryArray;
use crate::{Value, ValueKind};

use super::{numeric, DecodeError};

/// Decodes one non-NULL field in PostgreSQL's binary format as a value of `kind`.
pub fn decode(kind: &ValueKind, raw: &[u8]) -> Result<Value, DecodeError> {
    Ok(match kind {
        ValueKind::Bool => match fixed::<1>(raw, "bool")? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return Err(DecodeError::invalid("bool", "byte is neither 0 nor 1")),
        },
        ValueKind::Int16 => Value::Int16(i16::from_be_bytes(fixed(raw, "int2")?)),
        ValueKind::Int32 => Value::Int32(i32::from_be_bytes(fixed(raw, "int4")?)),
        ValueKind::Int64 => Value::Int64(i64::from_be_bytes(fixed(raw, "int8")?)),
        ValueKind::UInt32 => Value::UInt32(u32::from_be_bytes(fixed(raw, "oid")?)),
        ValueKind::Float32 => Value::Float32(f32::from_be_bytes(fixed(raw, "float4")?)),
        ValueKind::Float64 => Value::Float64(f64::from_be_bytes(fixed(raw, "float8")?)),
        ValueKind::Decimal { .. } => Value::Numeric(numeric::decode(raw)?),
        ValueKind::Text => Value::Text(
            std::str::from_utf8(raw)
                .map_err(|_| DecodeError::Utf8)?
                .to_owned(),
        ),
        ValueKind::Bytes => Value::Bytes(raw.to_vec()),
        ValueKind::Uuid => Value::Uuid(fixed(raw, "uuid")?),
        ValueKind::Date => Value::Date(i32::from_be_bytes(fixed(raw, "date")?)),
        ValueKind::Timestamp => Value::Timestamp(i64::from_be_bytes(fixed(raw, "timestamp")?)),
        ValueKind::TimestampTz => {
            Value::TimestampTz(i64::from_be_bytes(fixed(raw, "timestamptz")?))
        }
        ValueKind::Array { element, .. } => decode_array(element, raw)?,
    })
}

fn fixed<const N: usize>(raw: &[u8], what: &'static str) -> Result<[u8; N], DecodeError> {
    raw.try_into().map_err(|_| DecodeError::Length {
        what,
        expected: N,
        got: raw.len(),
    })
}

fn decode_array(element: &ValueKind, raw: &[u8]) -> Result<Value, DecodeError> {
    if matches!(element, ValueKind::Array { .. }) {
        return Err(DecodeError::invalid("array", "element kind is an array"));
    }
    let mut array = BinaryArray::parse(raw)?;
    let mut elements = Vec::with_capacity(array.len());
    for _ in 0..array.len() {
        elements.push(match array.next_element()? {
            None => Value::Null,
            Some(raw) => decode(element, raw)?,
        });
    }
    array.finish()?;
    Ok(Value::Array {
        dims: array.dims().to_vec(),
        elements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(elem_oid: u32, dims: &[(i32, i32)], elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        crate::binary_copy::write::array(&mut v, elem_oid, dims, elements.iter().copied());
        v
    }

    #[test]
    fn scalars() {
        use ValueKind as K;
        assert_eq!(decode(&K::Bool, &[1]), Ok(Value::Bool(true)));
        assert_eq!(decode(&K::Int16, &[0xFF, 0xFE]), Ok(Value::Int16(-2)));
        assert_eq!(
            decode(&K::Int64, &i64::MIN.to_be_bytes()),
            Ok(Value::Int64(i64::MIN))
        );
        assert_eq!(
            decode(&K::UInt32, &u32::MAX.to_be_bytes()),
            Ok(Value::UInt32(u32::MAX))
        );
        assert_eq!(
            decode(&K::Float64, &f64::NEG_INFINITY.to_be_bytes()),
            Ok(Value::Float64(f64::NEG_INFINITY))
        );
        assert!(matches!(
            decode(&K::Float32, &f32::NAN.to_be_bytes()),
            Ok(Value::Float32(f)) if f.is_nan()
        ));
        assert_eq!(
            decode(&K::Text, "é\0".as_bytes()),
            Ok(Value::Text("é\0".into()))
        );
        assert_eq!(decode(&K::Text, &[0xFF]), Err(DecodeError::Utf8));
        assert_eq!(
            decode(&K::Bytes, &[0, 0xFF]),
            Ok(Value::Bytes(vec![0, 0xFF]))
        );
        assert_eq!(
            decode(&K::Date, &i32::MAX.to_be_bytes()),
            Ok(Value::Date(i32::MAX))
        );
        assert_eq!(
            decode(&K::TimestampTz, &(-1i64).to_be_bytes()),
            Ok(Value::TimestampTz(-1))
        );
    }

    #[test]
    fn arrays() {
        let kind = ValueKind::Array {
            element: Box::new(ValueKind::Int32),
            dims: 2,
        };
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        let raw = array(23, &[(2, 1), (2, 0)], &[Some(&one), None, Some(&two), None]);
        assert_eq!(
            decode(&kind, &raw),
            Ok(Value::Array {
                dims: vec![2, 2],
                elements: vec![Value::Int32(1), Value::Null, Value::Int32(2), Value::Null],
            })
        );
        let empty = array(23, &[], &[]);
        assert_eq!(
            decode(&kind, &empty),
            Ok(Value::Array {
                dims: vec![],
                elements: vec![],
            })
        );
    }

    /// Every prefix of a valid value, and a few corruptions, are errors, never panics.
    #[test]
    fn malformed_never_panics() {
        let kinds = [
            ValueKind::Bool,
            ValueKind::Int16,
            ValueKind::Int32,
            ValueKind::Int64,
            ValueKind::Float64,
            ValueKind::Uuid,
            ValueKind::Date,
            ValueKind::Timestamp,
            ValueKind::Decimal {
                precision: 10,
                scale: 2,
            },
        ];
        for kind in &kinds {
            for n in 0..20 {
                let _ = decode(kind, &vec![0x41; n]);
            }
        }
        let kind = ValueKind::Array {
            element: Box::new(ValueKind::Text),
            dims: 1,
        };
        let raw = array(25, &[(3, 1)], &[Some(b"ab"), None, Some(b"")]);
        assert!(decode(&kind, &raw).is_ok());
        for n in 0..raw.len() {
            assert!(decode(&kind, &raw[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(decode(&kind, &trailing).is_err());
        // Absurd dimensions must not allocate or overflow.
        let huge = array(25, &[(i32::MAX, 1), (i32::MAX, 1)], &[]);
        assert!(decode(&kind, &huge).is_err());
        let negative = array(25, &[(-1, 1)], &[]);
        assert!(decode(&kind, &negative).is_err());
        let mut deep = array(25, &[], &[]);
        deep[..4].copy_from_slice(&7i32.to_be_bytes());
        assert!(decode(&kind, &deep).is_err());
        // Pseudo-random bytes.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8 % 4
                })
                .collect();
            let _ = decode(&kind, &bytes);
            let _ = decode(
                &ValueKind::Decimal {
                    precision: 5,
                    scale: 0,
                },
                &bytes,
            );
        }
    }
}
