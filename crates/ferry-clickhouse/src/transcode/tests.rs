//! The transcoder against decoding with `ferry_postgres::types::decode_binary` and encoding the
//! value with `rowbinary::encode_with_policy`: for every kind, over generated and edge values
//! (and corrupted ones), both must succeed or fail together, write the same bytes and report the
//! same substitution.

use ferry_core::{ColumnSchema, Value, ValueKind};
use ferry_postgres::types::decode_binary;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::rowbinary::encode_with_policy;
use crate::unrepresentable::UnrepresentablePolicy as Policy;

pub(crate) fn column(
    name: &str,
    kind: ValueKind,
    nullable: bool,
    key: Option<u16>,
) -> ColumnSchema {
    ColumnSchema {
        name: name.to_owned(),
        type_oid: 0,
        type_name: String::new(),
        kind,
        nullable,
        key_position: key,
        pg_type: None,
    }
}

fn array_of(element: ValueKind, dims: u8) -> ValueKind {
    ValueKind::Array {
        element: Box::new(element),
        dims,
    }
}

/// `numeric_send` of decimal text, with PostgreSQL's stripping of zero base-10000 digits.
fn numeric_send(text: &str) -> Vec<u8> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let group = |s: &str| s.parse::<u16>().unwrap();
    let mut groups: Vec<u16> = int
        .as_bytes()
        .chunks(4)
        .chain(frac_padded.as_bytes().chunks(4))
        .map(|c| group(std::str::from_utf8(c).unwrap()))
        .collect();
    let mut weight = (int.len() / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    numeric_raw(
        groups.len() as i16,
        weight,
        if negative { 0x4000 } else { 0 },
        frac.len() as u16,
        &groups,
    )
}

fn numeric_raw(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [ndigits as u16, weight as u16, sign, dscale] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    for d in digits {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

/// `array_send` with these (length, lower bound) dimensions and elements.
fn array_send(dims: &[(i32, i32)], elements: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut v = Vec::new();
    ferry_core::binary_copy::write::array(&mut v, 0, dims, elements.iter().map(Option::as_deref));
    v
}

/// A random decimal's text for `Decimal(p, s)`: mostly fitting, sometimes not.
fn decimal_text(rng: &mut StdRng, p: u8, s: u8) -> String {
    let over = usize::from(rng.gen_ratio(1, 10));
    let int_len = rng.gen_range(0..=usize::from(p - s) + over);
    let frac_len = match rng.gen_range(0..4) {
        0 => rng.gen_range(0..=usize::from(s)),
        1 => usize::from(s) + rng.gen_range(0..3),
        _ => usize::from(s),
    };
    let digits = |rng: &mut StdRng, n| -> String {
        (0..n)
            .map(|_| char::from(b'0' + rng.gen_range(0..10)))
            .collect()
    };
    let mut t = String::new();
    if rng.gen() {
        t.push('-');
    }
    let int = digits(rng, int_len);
    t.push_str(if int.is_empty() { "0" } else { &int });
    if frac_len > 0 {
        t.push('.');
        let mut frac = digits(rng, frac_len);
        if frac_len > usize::from(s) && rng.gen_ratio(3, 4) {
            // Digits beyond the scale that are zeros are exact.
            frac.replace_range(usize::from(s).., &"0".repeat(frac_len - usize::from(s)));
        }
        t.push_str(&frac);
    }
    t
}

const PG_DAYS_MIN: i32 = crate::cell::DATE32_MIN - 10_957;
const PG_DAYS_MAX: i32 = crate::cell::DATE32_MAX - 10_957;
const PG_US_MIN: i64 = crate::cell::DATETIME64_MIN - 946_684_800_000_000;
const PG_US_MAX: i64 = crate::cell::DATETIME64_MAX - 946_684_800_000_000;

/// A random valid field of a scalar kind, edge values often.
pub(crate) fn scalar_field(rng: &mut StdRng, kind: &ValueKind) -> Vec<u8> {
    use ValueKind as K;
    match kind {
        K::Bool => vec![rng.gen_range(0..2)],
        K::Int16 => rng.gen::<i16>().to_be_bytes().to_vec(),
        K::Int32 => [0, -1, i32::MIN, i32::MAX, rng.gen()][rng.gen_range(0..5)]
            .to_be_bytes()
            .to_vec(),
        K::Int64 => rng.gen::<i64>().to_be_bytes().to_vec(),
        K::UInt32 => rng.gen::<u32>().to_be_bytes().to_vec(),
        K::Float32 => [f32::NAN, f32::INFINITY, -0.0, rng.gen()][rng.gen_range(0..4)]
            .to_be_bytes()
            .to_vec(),
        K::Float64 => [f64::NAN, f64::NEG_INFINITY, 1e300, rng.gen()][rng.gen_range(0..4)]
            .to_be_bytes()
            .to_vec(),
        K::Decimal { precision, scale } => match rng.gen_range(0..12) {
            0 => numeric_raw(0, 0, 0xC000, 0, &[]),
            1 => numeric_raw(0, 0, 0xD000, 0, &[]),
            2 => numeric_raw(0, 0, 0xF000, 0, &[]),
            // Digits that are not where PostgreSQL puts them, still valid to decode.
            3 => numeric_raw(
                3,
                rng.gen_range(-3..3),
                [0, 0x4000][rng.gen_range(0..2)],
                rng.gen_range(0..12),
                &[rng.gen_range(0..10_000), 0, rng.gen_range(0..10_000)],
            ),
            _ => numeric_send(&decimal_text(rng, *precision, *scale)),
        },
        K::Text => {
            let s: String = (0..rng.gen_range(0..20))
                .map(|_| ['a', 'é', '\0', '€', ' ', 'z'][rng.gen_range(0..6)])
                .collect();
            s.into_bytes()
        }
        K::Bytes => (0..rng.gen_range(0..20)).map(|_| rng.gen()).collect(),
        K::Uuid => (0..16).map(|_| rng.gen()).collect(),
        K::Date => [
            0,
            i32::MIN,
            i32::MAX,
            PG_DAYS_MIN,
            PG_DAYS_MIN - 1,
            PG_DAYS_MAX,
            PG_DAYS_MAX + 1,
            rng.gen_range(-200_000..200_000),
            rng.gen(),
        ][rng.gen_range(0..9)]
        .to_be_bytes()
        .to_vec(),
        K::Timestamp | K::TimestampTz => [
            0,
            i64::MIN,
            i64::MAX,
            PG_US_MIN,
            PG_US_MIN - 1,
            PG_US_MAX,
            PG_US_MAX + 1,
            rng.gen_range(-10_000_000_000_000_000..10_000_000_000_000_000),
            rng.gen(),
        ][rng.gen_range(0..9)]
        .to_be_bytes()
        .to_vec(),
        K::Array { .. } => unreachable!("arrays are generated by array_field"),
    }
}

/// A random array of `element`s: of the column's dimensions mostly, empty sometimes, with NULL
/// elements and lower bounds other than 1 now and then.
pub(crate) fn array_field(rng: &mut StdRng, element: &ValueKind, dims: u8) -> Vec<u8> {
    let ndim = match rng.gen_range(0..10) {
        0 => 0,
        1 => rng.gen_range(1..=3),
        _ => usize::from(dims),
    };
    let mut shape = Vec::new();
    for _ in 0..ndim {
        let lower = if rng.gen_ratio(1, 8) {
            rng.gen_range(-3..5)
        } else {
            1
        };
        shape.push((rng.gen_range(0..4), lower));
    }
    let count = if ndim == 0 {
        0
    } else {
        shape.iter().map(|(l, _)| *l as usize).product()
    };
    let elements: Vec<Option<Vec<u8>>> = (0..count)
        .map(|_| (!rng.gen_ratio(1, 5)).then(|| scalar_field(rng, element)))
        .collect();
    array_send(&shape, &elements)
}

pub(crate) fn kinds() -> Vec<ValueKind> {
    use ValueKind as K;
    let mut scalars = vec![
        K::Bool,
        K::Int16,
        K::Int32,
        K::Int64,
        K::UInt32,
        K::Float32,
        K::Float64,
        K::Text,
        K::Bytes,
        K::Uuid,
        K::Date,
        K::Timestamp,
        K::TimestampTz,
    ];
    for (precision, scale) in [
        (1, 0),
        (9, 2),
        (9, 9),
        (10, 2),
        (18, 6),
        (19, 0),
        (38, 10),
        (39, 5),
        (76, 20),
        (76, 76),
    ] {
        scalars.push(K::Decimal { precision, scale });
    }
    let mut all = scalars.clone();
    for (i, s) in scalars.into_iter().enumerate() {
        all.push(array_of(s, (i % 3) as u8 + 1));
    }
    all
}

/// The old way: decode the field into a Value, encode the Value.
fn old_path(
    kind: &ValueKind,
    nullable: bool,
    field: Option<&[u8]>,
    policy: Policy,
) -> Result<(Vec<u8>, Option<Unrepresentable>), ()> {
    let value = match field {
        None => Value::Null,
        Some(raw) => decode_binary(kind, raw).map_err(|_| ())?,
    };
    let mut out = Vec::new();
    let why = encode_with_policy(kind, nullable, &value, policy, &mut out).map_err(|_| ())?;
    Ok((out, why))
}

fn new_path(
    kind: &ValueKind,
    nullable: bool,
    field: Option<&[u8]>,
    policy: Policy,
) -> Result<(Vec<u8>, Option<Unrepresentable>), ()> {
    let mut t = Transcoder::new(&[column("c", kind.clone(), nullable, None)], policy).unwrap();
    let mut out = vec![0xAA];
    let r = t.append_row([field], 7, true, &mut out);
    let Ok(()) = r else {
        assert_eq!(out, [0xAA], "nothing is appended on error");
        return Err(());
    };
    assert_eq!(out[0], 0xAA);
    let tail = out.split_off(out.len() - 9);
    assert_eq!(tail, [7, 0, 0, 0, 0, 0, 0, 0, 1]);
    let subs = &t.substitutions().columns()[0];
    assert_eq!(subs.count, u64::from(subs.first.is_some()));
    Ok((out.split_off(1), subs.first))
}

/// Whether `field`, an array, declares a lower bound other than 1 (as far as it has bytes).
fn other_lower_bound(kind: &ValueKind, field: &[u8]) -> bool {
    let word = |at: usize| {
        field
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ndim = word(0).unwrap_or(0).clamp(0, 6) as usize;
    matches!(kind, ValueKind::Array { .. })
        && (0..ndim).any(|i| word(16 + 8 * i).is_some_and(|lower| lower != 1))
}

fn compare(kind: &ValueKind, nullable: bool, field: Option<&[u8]>) -> bool {
    let other_lower = field.is_some_and(|f| other_lower_bound(kind, f));
    let mut ok = false;
    for policy in [Policy::Substitute, Policy::Fail] {
        let old = old_path(kind, nullable, field, policy);
        let new = new_path(kind, nullable, field, policy);
        if other_lower {
            // Only the transcoder sees lower bounds: it keeps the elements, and says so.
            match policy {
                Policy::Fail => assert!(new.is_err(), "{kind:?} {field:?}"),
                Policy::Substitute => {
                    assert_eq!(
                        old.as_ref().map(|o| &o.0),
                        new.as_ref().map(|n| &n.0),
                        "{kind:?} nullable {nullable} {field:?}"
                    );
                    // (Other dimensions than the column's come first.)
                    if let Ok((_, why)) = new {
                        assert!(
                            matches!(
                                why,
                                Some(
                                    Unrepresentable::ArrayLowerBound
                                        | Unrepresentable::ArrayDims { .. }
                                )
                            ),
                            "{why:?}"
                        );
                    }
                }
            }
        } else {
            assert_eq!(
                old, new,
                "{kind:?} nullable {nullable} {policy:?} {field:?}"
            );
        }
        ok |= old.is_ok();
    }
    ok
}

#[test]
fn same_bytes_as_decode_and_encode() {
    let mut rng = StdRng::seed_from_u64(0x7a11);
    let mut successes = 0;
    let mut substituted = 0;
    for kind in kinds() {
        for nullable in [false, true] {
            assert!(compare(&kind, nullable, None) == nullable);
            for _ in 0..400 {
                let field = match &kind {
                    ValueKind::Array { element, dims } => array_field(&mut rng, element, *dims),
                    scalar => scalar_field(&mut rng, scalar),
                };
                successes += usize::from(compare(&kind, nullable, Some(&field)));
                if let Ok((_, Some(_))) =
                    new_path(&kind, nullable, Some(&field), Policy::Substitute)
                {
                    substituted += 1;
                }
            }
        }
    }
    // Most values are valid, and many need the policy.
    assert!(successes > 30_000, "{successes}");
    assert!(substituted > 3_000, "{substituted}");
}

/// Corrupted fields: both ways fail together, never panic.
#[test]
fn corrupted_fields_fail_the_same() {
    let mut rng = StdRng::seed_from_u64(0xbad);
    let mut failures = 0;
    for kind in kinds() {
        for _ in 0..300 {
            let mut field = match &kind {
                ValueKind::Array { element, dims } => array_field(&mut rng, element, *dims),
                scalar => scalar_field(&mut rng, scalar),
            };
            for _ in 0..rng.gen_range(1..3) {
                let at = rng.gen_range(0..=field.len());
                match rng.gen_range(0..4) {
                    0 if at < field.len() => field[at] = rng.gen(),
                    1 => field.truncate(at),
                    2 => field.insert(at, rng.gen()),
                    _ => field.push(rng.gen()),
                }
            }
            let ok = compare(&kind, true, Some(&field));
            failures += usize::from(!ok);
        }
    }
    assert!(failures > 3_000, "{failures}");
}

#[test]
fn substitutes_by_policy() {
    use Unrepresentable as U;
    let d = ValueKind::Decimal {
        precision: 5,
        scale: 2,
    };
    let one = |kind: &ValueKind, nullable: bool, raw: &[u8]| {
        new_path(kind, nullable, Some(raw), Policy::Substitute).unwrap()
    };
    let nan = numeric_raw(0, 0, 0xC000, 0, &[]);
    let inf = numeric_raw(0, 0, 0xD000, 0, &[]);
    let ninf = numeric_raw(0, 0, 0xF000, 0, &[]);
    assert_eq!(one(&d, false, &nan), (vec![0; 4], Some(U::NumericNaN)));
    assert_eq!(one(&d, true, &nan), (vec![1], Some(U::NumericNaN)));
    assert_eq!(
        one(&d, false, &inf),
        (99_999i32.to_le_bytes().to_vec(), Some(U::NumericInfinity))
    );
    assert_eq!(
        one(&d, false, &ninf),
        (
            (-99_999i32).to_le_bytes().to_vec(),
            Some(U::NumericNegInfinity)
        )
    );
    let wide = ValueKind::Decimal {
        precision: 76,
        scale: 0,
    };
    let mut nines = Vec::new();
    crate::decimal::encode(76, 0, &"9".repeat(76), &mut nines).unwrap();
    assert_eq!(one(&wide, false, &inf).0, nines);
    assert_eq!(
        one(&ValueKind::Date, false, &i32::MIN.to_be_bytes()),
        (
            crate::cell::DATE32_MIN.to_le_bytes().to_vec(),
            Some(U::DateBelowRange)
        )
    );
    assert_eq!(
        one(&ValueKind::Date, true, &i32::MAX.to_be_bytes()),
        (vec![1], Some(U::DateAboveRange))
    );
    assert_eq!(
        one(&ValueKind::TimestampTz, false, &i64::MAX.to_be_bytes()),
        (
            crate::cell::DATETIME64_MAX.to_le_bytes().to_vec(),
            Some(U::TimestampAboveRange)
        )
    );
    // An array element that cannot be held becomes a NULL element.
    let dates = array_of(ValueKind::Date, 1);
    let raw = array_send(
        &[(2, 1)],
        &[
            Some(0i32.to_be_bytes().to_vec()),
            Some(i32::MAX.to_be_bytes().to_vec()),
        ],
    );
    let mut expected = vec![2, 0];
    expected.extend_from_slice(&10_957i32.to_le_bytes());
    expected.push(1);
    assert_eq!(
        one(&dates, false, &raw),
        (expected, Some(U::DateAboveRange))
    );
    // Other dimensions: NULL when the column is nullable, else an empty array.
    let flat = array_send(&[(1, 1), (1, 1)], &[Some(0i32.to_be_bytes().to_vec())]);
    let dims = Some(U::ArrayDims {
        expected: 1,
        got: 2,
    });
    assert_eq!(one(&dates, false, &flat), (vec![0], dims));
    assert_eq!(one(&dates, true, &flat), (vec![255], dims));
    // Lower bounds other than 1: the elements are kept.
    let shifted = array_send(&[(1, 0)], &[None]);
    assert_eq!(
        one(&dates, true, &shifted),
        (vec![0, 1, 1], Some(U::ArrayLowerBound))
    );

    // Fail: an error naming the column, without the value.
    let mut t = Transcoder::new(&[column("amount", d.clone(), false, None)], Policy::Fail).unwrap();
    let e = t
        .append_row([Some(&nan[..])], 0, false, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.column(), Some(0));
    assert_eq!(
        e.to_string(),
        "column \"amount\": numeric NaN cannot be stored in a ClickHouse Decimal column"
    );
    assert_eq!(t.substitutions().total(), 0);
}

#[test]
fn counts_per_column_with_an_example_key() {
    let d = ValueKind::Decimal {
        precision: 9,
        scale: 2,
    };
    let columns = [
        column("amount", d.clone(), false, None),
        column("name", ValueKind::Text, false, Some(2)),
        column("id", ValueKind::Int32, false, Some(1)),
        column("day", ValueKind::Date, true, None),
    ];
    let mut t = Transcoder::new(&columns, Policy::Substitute).unwrap();
    let nan = numeric_raw(0, 0, 0xC000, 0, &[]);
    let ok = numeric_send("1.50");
    let mut out = Vec::new();
    let row = |amount: &[u8], id: i32, day: i32| {
        [
            Some(amount.to_vec()),
            Some(b"x, y".to_vec()),
            Some(id.to_be_bytes().to_vec()),
            Some(day.to_be_bytes().to_vec()),
        ]
    };
    for (amount, id, day) in [
        (&ok, 1, 0),
        (&nan, 2, 0),
        (&nan, 3, i32::MIN),
        (&ok, 4, i32::MAX),
    ] {
        let r = row(amount, id, day);
        t.append_row(r.iter().map(Option::as_deref), 0, false, &mut out)
            .unwrap();
    }
    let s = t.substitutions().columns();
    assert_eq!(
        (s[0].count, s[1].count, s[2].count, s[3].count),
        (2, 0, 0, 2)
    );
    assert_eq!(s[0].example_key.as_deref(), Some("(id, name)=(2, x, y)"));
    assert_eq!(s[3].example_key.as_deref(), Some("(id, name)=(3, x, y)"));
    assert_eq!(s[3].first, Some(Unrepresentable::DateBelowRange));
    assert_eq!(t.take_substitutions().total(), 4);
    assert_eq!(t.substitutions().total(), 0);

    // Without a key there is no example.
    let mut keyless = Transcoder::new(&columns[..1], Policy::Substitute).unwrap();
    keyless
        .append_row([Some(&nan[..])], 0, false, &mut out)
        .unwrap();
    assert_eq!(keyless.substitutions().columns()[0].count, 1);
    assert_eq!(keyless.substitutions().columns()[0].example_key, None);
}

#[test]
fn rows_and_fields() {
    let columns = [
        column("id", ValueKind::Int32, false, Some(1)),
        column("t", ValueKind::Text, true, None),
    ];
    let mut t = Transcoder::new(&columns, Policy::Substitute).unwrap();
    let mut out = Vec::new();
    let id = 5i32.to_be_bytes();
    t.append_row([Some(&id[..]), None], 9, false, &mut out)
        .unwrap();
    // An unchanged TOASTed value arrives already encoded.
    t.append_row(
        [Field::Binary(&id), Field::Encoded(&[0, 1, b'z'])],
        10,
        true,
        &mut out,
    )
    .unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&5i32.to_le_bytes());
    expected.push(1);
    expected.extend_from_slice(&9u64.to_le_bytes());
    expected.push(0);
    expected.extend_from_slice(&5i32.to_le_bytes());
    expected.extend_from_slice(&[0, 1, b'z']);
    expected.extend_from_slice(&10u64.to_le_bytes());
    expected.push(1);
    assert_eq!(out, expected);

    let before = out.len();
    assert_eq!(
        t.append_row([Some(&id[..])], 0, false, &mut out),
        Err(TranscodeError::FieldCount {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        t.append_row([Some(&id[..]), None, None, None], 0, false, &mut out),
        Err(TranscodeError::FieldCount {
            expected: 2,
            got: 4
        })
    );
    let e = t.append_row([None, None], 0, false, &mut out).unwrap_err();
    assert_eq!(
        e.to_string(),
        "column \"id\": NULL in a column that does not allow NULL"
    );
    let e = t
        .append_row([Some(&id[..]), Some(&[0xFF][..])], 0, false, &mut out)
        .unwrap_err();
    assert_eq!(e.column(), Some(1));
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert_eq!(out.len(), before);

    // Kinds without a ClickHouse type are refused up front.
    let bad = [column(
        "d",
        ValueKind::Decimal {
            precision: 80,
            scale: 0,
        },
        true,
        None,
    )];
    assert!(Transcoder::new(&bad, Policy::Substitute).is_err());
    let nested = [column(
        "a",
        array_of(array_of(ValueKind::Int32, 1), 1),
        true,
        None,
    )];
    assert!(Transcoder::new(&nested, Policy::Substitute).is_err());
}
