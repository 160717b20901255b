use super::*;

fn base(oid: u32, typname: &str, typmod: i32) -> PgTypeInfo {
    PgTypeInfo {
        oid,
        typname: typname.to_owned(),
        typtype: 'b',
        typcategory: 'X',
        typmod,
        ndims: 0,
        element: None,
    }
}

fn array_of(elem_oid: u32, elem_name: &str, typmod: i32, ndims: i32, delim: char) -> PgTypeInfo {
    PgTypeInfo {
        oid: 1,
        typname: format!("_{elem_name}"),
        typtype: 'b',
        typcategory: 'A',
        typmod,
        ndims,
        element: Some(Box::new(PgElementInfo {
            oid: elem_oid,
            typname: elem_name.to_owned(),
            typtype: 'b',
            typcategory: 'X',
            typmod,
            typdelim: delim,
        })),
    }
}

fn numeric_typmod_of(precision: i32, scale: i32) -> i32 {
    ((precision << 16) | (scale & 0x7FF)) + 4
}

fn kind(ty: &PgTypeInfo) -> (ValueKind, SelectCast) {
    let m = value_kind(ty, 2);
    (m.kind, m.cast)
}

#[test]
fn scalar_mapping() {
    use SelectCast::{None as Plain, Numeric as AsNumeric, Text as AsText};
    use ValueKind as K;
    let cases = [
        (oid::BOOL, "bool", -1, K::Bool, Plain),
        (oid::INT2, "int2", -1, K::Int16, Plain),
        (oid::INT4, "int4", -1, K::Int32, Plain),
        (oid::INT8, "int8", -1, K::Int64, Plain),
        (oid::OID, "oid", -1, K::UInt32, Plain),
        (oid::XID, "xid", -1, K::UInt32, Plain),
        (2205, "regclass", -1, K::Text, AsText),
        (oid::FLOAT4, "float4", -1, K::Float32, Plain),
        (oid::FLOAT8, "float8", -1, K::Float64, Plain),
        (oid::NUMERIC, "numeric", -1, K::Text, AsText),
        (
            oid::NUMERIC,
            "numeric",
            numeric_typmod_of(10, 2),
            K::Decimal {
                precision: 10,
                scale: 2,
            },
            Plain,
        ),
        (
            oid::NUMERIC,
            "numeric",
            numeric_typmod_of(76, 76),
            K::Decimal {
                precision: 76,
                scale: 76,
            },
            Plain,
        ),
        (
            oid::NUMERIC,
            "numeric",
            numeric_typmod_of(77, 0),
            K::Text,
            AsText,
        ),
        (
            oid::NUMERIC,
            "numeric",
            numeric_typmod_of(5, -2),
            K::Text,
            AsText,
        ),
        (
            oid::MONEY,
            "money",
            -1,
            K::Decimal {
                precision: 19,
                scale: 2,
            },
            AsNumeric,
        ),
        (oid::TEXT, "text", -1, K::Text, Plain),
        (oid::VARCHAR, "varchar", 14, K::Text, Plain),
        (oid::BPCHAR, "bpchar", 9, K::Text, Plain),
        (oid::NAME, "name", -1, K::Text, Plain),
        (16_385, "citext", -1, K::Text, Plain),
        (oid::JSON, "json", -1, K::Text, AsText),
        (oid::JSONB, "jsonb", -1, K::Text, AsText),
        (oid::XML, "xml", -1, K::Text, AsText),
        (oid::BYTEA, "bytea", -1, K::Bytes, Plain),
        (oid::UUID, "uuid", -1, K::Uuid, Plain),
        (oid::DATE, "date", -1, K::Date, Plain),
        (oid::TIMESTAMP, "timestamp", 3, K::Timestamp, Plain),
        (oid::TIMESTAMPTZ, "timestamptz", -1, K::TimestampTz, Plain),
        (1083, "time", -1, K::Text, AsText),
        (1186, "interval", -1, K::Text, AsText),
        (869, "inet", -1, K::Text, AsText),
        (oid::CHAR, "char", -1, K::Text, AsText),
        (16_400, "hstore", -1, K::Text, AsText),
        (oid::INT2VECTOR, "int2vector", -1, K::Text, AsText),
    ];
    for (oid, name, typmod, expected, cast) in cases {
        let mut ty = base(oid, name, typmod);
        if oid == oid::INT2VECTOR {
            ty.typcategory = 'A';
        }
        assert_eq!(kind(&ty), (expected, cast), "{name}");
    }
    let mut mood = base(16_500, "mood", -1);
    mood.typtype = 'e';
    assert_eq!(kind(&mood), (K::Text, AsText));
}

#[test]
fn array_mapping() {
    use ValueKind as K;
    let int_array = |dims| K::Array {
        element: Box::new(K::Int32),
        dims,
    };
    assert_eq!(
        value_kind(&array_of(oid::INT4, "int4", -1, 1, ','), 2),
        Mapping {
            kind: int_array(1),
            cast: SelectCast::None
        }
    );
    // attndims 0 (a domain over an array) still means at least one dimension.
    assert_eq!(
        value_kind(&array_of(oid::INT4, "int4", -1, 0, ','), 2).kind,
        int_array(1)
    );
    assert_eq!(
        value_kind(&array_of(oid::INT4, "int4", -1, 2, ','), 2).kind,
        int_array(2)
    );
    let numeric = value_kind(
        &array_of(oid::NUMERIC, "numeric", numeric_typmod_of(12, 3), 1, ','),
        2,
    );
    assert_eq!(
        numeric.kind,
        K::Array {
            element: Box::new(K::Decimal {
                precision: 12,
                scale: 3
            }),
            dims: 1
        }
    );
    let interval = value_kind(&array_of(1186, "interval", -1, 1, ','), 2);
    assert_eq!(
        interval.kind,
        K::Array {
            element: Box::new(K::Text),
            dims: 1
        }
    );
    assert!(interval.select_as_text());
    assert_eq!(interval.select_expr("\"c\""), "\"c\"::text::text[]");
    let money = value_kind(&array_of(oid::MONEY, "money", -1, 1, ','), 2);
    assert_eq!(money.select_expr("\"m\""), "\"m\"::numeric[]");
    // box[] separates elements with ';': carried whole as text.
    let boxes = value_kind(&array_of(603, "box", -1, 1, ';'), 2);
    assert_eq!((boxes.kind, boxes.cast), (K::Text, SelectCast::Text));
    assert_eq!(
        value_kind(&base(oid::INT4, "int4", -1), 2).select_expr("\"i\""),
        "\"i\""
    );
    assert_eq!(
        value_kind(&base(oid::JSONB, "jsonb", -1), 2).select_expr("\"j\""),
        "CASE WHEN num_nulls(\"j\") = 0 THEN format('%s', \"j\") END"
    );
}
