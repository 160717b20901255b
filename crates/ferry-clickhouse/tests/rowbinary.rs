//! RowBinary encoding against a real ClickHouse (`scripts/services start`; HTTP port from
//! `FERRY_TEST_CH_HTTP_PORT`, default 18123).
//!
//! Every column kind is created with the type `clickhouse_type` gives it, nullable and not,
//! filled with edge values through `INSERT … FORMAT RowBinary`, and read back as text; and the
//! same rows as `Native` blocks are checked against what ClickHouse writes and reads.

use bytes::Bytes;
use clickhouse::Client;
use ferry_clickhouse::native::NativeBlock;
use ferry_clickhouse::rowbinary::encode;
use ferry_clickhouse::types::clickhouse_type;
use ferry_core::ident::{ch_ident, ch_qualified};
use ferry_core::value::PG_EPOCH_UNIX_DAYS;
use ferry_core::{days_from_civil, ColumnSchema, Numeric, Value, ValueKind};
use serde_json::Value as Json;

fn client() -> Client {
    let port = std::env::var("FERRY_TEST_CH_HTTP_PORT").unwrap_or_else(|_| "18123".into());
    Client::default().with_url(format!("http://127.0.0.1:{port}"))
}

/// A database of the test's own, dropped when the test ends (even if it fails).
struct TestDb {
    client: Client,
    name: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let client = client();
        let name = format!("ferry_test_rowbinary_{:016x}", rand::random::<u64>());
        client
            .query(&format!("CREATE DATABASE {}", ch_ident(&name)))
            .execute()
            .await
            .expect("ClickHouse is not reachable: run scripts/services start");
        TestDb { client, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", ch_ident(&self.name));
        // The test's runtime is blocked here, so use a runtime and a client (whose connection
        // pool lives on that runtime) of our own.
        let _ = std::thread::spawn(move || {
            let client = client();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async { client.query(&sql).execute().await })
        })
        .join();
    }
}

/// How a column is read back: `toString(col)`, `hex(col)` or the column as JSON.
#[derive(Clone, Copy)]
enum Read {
    String,
    Hex,
    Json,
}

struct Column {
    name: &'static str,
    kind: ValueKind,
    nullable: bool,
    read: Read,
    /// One value per row, and what ClickHouse shows for it (`None`: JSON null).
    cells: Vec<(Value, Json)>,
}

fn col(name: &'static str, kind: ValueKind, nullable: bool, read: Read) -> Column {
    Column {
        name,
        kind,
        nullable,
        read,
        cells: Vec::new(),
    }
}

impl Column {
    fn row(mut self, value: Value, shown: impl Into<Json>) -> Self {
        self.cells.push((value, shown.into()));
        self
    }
}

fn num(s: &str) -> Value {
    Value::Numeric(Numeric::Finite(s.to_owned()))
}

fn date(y: i64, m: u32, d: u32) -> i32 {
    (days_from_civil(y, m, d) - i64::from(PG_EPOCH_UNIX_DAYS)) as i32
}

fn ts(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> i64 {
    i64::from(date(y, mo, d)) * 86_400_000_000 + ((h * 60 + mi) * 60 + s) * 1_000_000 + us
}

fn texts(dims: Vec<i32>, elements: &[Option<&str>]) -> Value {
    Value::Array {
        dims,
        elements: elements
            .iter()
            .map(|e| e.map_or(Value::Null, |s| Value::Text(s.to_owned())))
            .collect(),
    }
}

fn array(element: ValueKind, dims: u8) -> ValueKind {
    ValueKind::Array {
        element: Box::new(element),
        dims,
    }
}

/// Three rows per column; the nullable columns are NULL in the last row.
fn columns() -> Vec<Column> {
    use Read::{Hex, Json as J, String as S};
    use ValueKind as K;
    let uuid = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    let d76 = K::Decimal {
        precision: 76,
        scale: 20,
    };
    let big76 = format!("-{}.{}", "9".repeat(56), "1".repeat(20));
    vec![
        col("b", K::Bool, false, S)
            .row(Value::Bool(true), "true")
            .row(Value::Bool(false), "false")
            .row(Value::Bool(true), "true"),
        col("i16", K::Int16, true, S)
            .row(Value::Int16(i16::MIN), "-32768")
            .row(Value::Int16(i16::MAX), "32767")
            .row(Value::Null, Json::Null),
        col("i32", K::Int32, false, S)
            .row(Value::Int32(i32::MIN), "-2147483648")
            .row(Value::Int32(i32::MAX), "2147483647")
            .row(Value::Int32(0), "0"),
        col("i64", K::Int64, true, S)
            .row(Value::Int64(i64::MIN), "-9223372036854775808")
            .row(Value::Int64(i64::MAX), "9223372036854775807")
            .row(Value::Null, Json::Null),
        col("u32", K::UInt32, false, S)
            .row(Value::UInt32(u32::MAX), "4294967295")
            .row(Value::UInt32(0), "0")
            .row(Value::UInt32(1), "1"),
        col("f32", K::Float32, true, S)
            .row(Value::Float32(f32::NAN), "nan")
            .row(Value::Float32(1.5), "1.5")
            .row(Value::Null, Json::Null),
        col("f64", K::Float64, false, S)
            .row(Value::Float64(f64::INFINITY), "inf")
            .row(Value::Float64(f64::NEG_INFINITY), "-inf")
            .row(Value::Float64(0.1), "0.1"),
        col(
            "d9",
            K::Decimal {
                precision: 9,
                scale: 2,
            },
            true,
            S,
        )
        .row(num("-1234567.89"), "-1234567.89")
        .row(num("-0.01"), "-0.01")
        .row(Value::Null, Json::Null),
        col(
            "d18",
            K::Decimal {
                precision: 18,
                scale: 6,
            },
            false,
            S,
        )
        .row(num("0.000001"), "0.000001")
        .row(num("-999999999999.999999"), "-999999999999.999999")
        .row(num("0"), "0"),
        col(
            "d38",
            K::Decimal {
                precision: 38,
                scale: 10,
            },
            false,
            S,
        )
        .row(
            num("1234567890123456789012345678.0123456789"),
            "1234567890123456789012345678.0123456789",
        )
        .row(num("-0.0000000001"), "-0.0000000001")
        .row(num("5.5000000000000"), "5.5"),
        col("d76", d76.clone(), true, S)
            .row(num(&big76), big76.as_str())
            .row(
                num(&format!("{}.00000000000000000001", "1".repeat(56))),
                format!("{}.00000000000000000001", "1".repeat(56)),
            )
            .row(Value::Null, Json::Null),
        col("txt", K::Text, false, Hex)
            .row(Value::Text(String::new()), "")
            .row(Value::Text("a\0b é".into()), "61006220C3A9")
            .row(num("-1.50"), "2D312E3530"),
        col("bin", K::Bytes, true, Hex)
            .row(Value::Bytes(vec![0xFF, 0x00, 0xFE]), "FF00FE")
            .row(Value::Bytes(Vec::new()), "")
            .row(Value::Null, Json::Null),
        col("u", K::Uuid, false, S)
            .row(Value::Uuid(uuid), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            .row(Value::Uuid([0; 16]), "00000000-0000-0000-0000-000000000000")
            .row(
                Value::Uuid([0xFF; 16]),
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
            ),
        col("dt", K::Date, true, S)
            .row(Value::Date(date(1900, 1, 1)), "1900-01-01")
            .row(Value::Date(date(2299, 12, 31)), "2299-12-31")
            .row(Value::Null, Json::Null),
        col("dt_clamped", K::Date, false, S)
            .row(Value::Date(date(1, 1, 1)), "1900-01-01")
            .row(Value::Date(i32::MAX), "2299-12-31")
            .row(Value::Date(i32::MIN), "1900-01-01"),
        col("ts", K::Timestamp, false, S)
            .row(
                Value::Timestamp(ts(2024, 2, 29, 12, 34, 56, 123_456)),
                "2024-02-29 12:34:56.123456",
            )
            .row(Value::Timestamp(i64::MAX), "2299-12-31 23:59:59.999999")
            .row(
                Value::Timestamp(ts(1899, 12, 31, 23, 59, 59, 999_999)),
                "1900-01-01 00:00:00.000000",
            ),
        col("tstz", K::TimestampTz, true, S)
            .row(
                Value::TimestampTz(ts(1900, 1, 1, 0, 0, 0, 1)),
                "1900-01-01 00:00:00.000001",
            )
            // Out of range in a nullable column: NULL.
            .row(Value::TimestampTz(i64::MIN), Json::Null)
            .row(Value::Null, Json::Null),
        col("a_int", array(K::Int32, 1), false, J)
            .row(
                Value::Array {
                    dims: vec![3],
                    elements: vec![Value::Int32(1), Value::Null, Value::Int32(-3)],
                },
                serde_json::json!([1, null, -3]),
            )
            .row(
                Value::Array {
                    dims: vec![],
                    elements: vec![],
                },
                serde_json::json!([]),
            )
            .row(
                Value::Array {
                    dims: vec![1],
                    elements: vec![Value::Null],
                },
                serde_json::json!([null]),
            ),
        col("a_text2", array(K::Text, 2), true, J)
            .row(
                texts(vec![2, 2], &[Some("a"), None, Some(""), Some("NULL")]),
                serde_json::json!([["a", null], ["", "NULL"]]),
            )
            .row(texts(vec![], &[]), serde_json::json!([]))
            .row(Value::Null, Json::Null),
        col(
            "a_dec",
            array(
                K::Decimal {
                    precision: 9,
                    scale: 2,
                },
                1,
            ),
            true,
            S,
        )
        .row(
            Value::Array {
                dims: vec![2],
                elements: vec![num("-1.5"), Value::Null],
            },
            "[-1.5,NULL]",
        )
        .row(
            Value::Array {
                dims: vec![1],
                elements: vec![num("0.01")],
            },
            "[0.01]",
        )
        .row(Value::Null, ""),
        col("a_date", array(K::Date, 1), false, S)
            .row(
                Value::Array {
                    dims: vec![2],
                    elements: vec![Value::Date(0), Value::Date(i32::MIN)],
                },
                "['2000-01-01',NULL]",
            )
            .row(
                Value::Array {
                    dims: vec![],
                    elements: vec![],
                },
                "[]",
            )
            .row(
                Value::Array {
                    dims: vec![1],
                    elements: vec![Value::Null],
                },
                "[NULL]",
            ),
        // Values ClickHouse cannot hold, substituted (see ferry_clickhouse::unrepresentable).
        col(
            "d_special",
            K::Decimal {
                precision: 9,
                scale: 2,
            },
            false,
            S,
        )
        .row(Value::Numeric(Numeric::NaN), "0")
        .row(Value::Numeric(Numeric::PosInfinity), "9999999.99")
        .row(Value::Numeric(Numeric::NegInfinity), "-9999999.99"),
        col("a_dims", array(K::Int32, 1), false, J)
            .row(
                Value::Array {
                    dims: vec![1, 1],
                    elements: vec![Value::Int32(1)],
                },
                serde_json::json!([]),
            )
            .row(
                Value::Array {
                    dims: vec![1],
                    elements: vec![Value::Int32(1)],
                },
                serde_json::json!([1]),
            )
            .row(
                Value::Array {
                    dims: vec![],
                    elements: vec![],
                },
                serde_json::json!([]),
            ),
        col("a_dims_null", array(K::Int32, 1), true, J)
            .row(
                Value::Array {
                    dims: vec![1, 1],
                    elements: vec![Value::Int32(1)],
                },
                Json::Null,
            )
            .row(
                Value::Array {
                    dims: vec![1],
                    elements: vec![Value::Int32(1)],
                },
                serde_json::json!([1]),
            )
            .row(Value::Null, Json::Null),
    ]
}

#[tokio::test]
async fn rowbinary_round_trip() {
    let db = TestDb::new().await;
    let table = ch_qualified(&db.name, "t");
    let columns = columns();
    let ddl: Vec<String> = std::iter::once("id Int32".to_owned())
        .chain(columns.iter().map(|c| {
            format!(
                "{} {}",
                ch_ident(c.name),
                clickhouse_type(&c.kind, c.nullable)
            )
        }))
        .collect();
    db.client
        .query(&format!(
            "CREATE TABLE {table} ({}) ENGINE = MergeTree ORDER BY tuple()",
            ddl.join(", ")
        ))
        .execute()
        .await
        .expect("create table");

    let rows = columns[0].cells.len();
    let mut buf = Vec::new();
    let mut substituted = 0;
    for row in 0..rows {
        buf.extend_from_slice(&(row as i32).to_le_bytes());
        for c in &columns {
            let why = encode(&c.kind, c.nullable, &c.cells[row].0, &mut buf)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            substituted += usize::from(why.is_some());
        }
    }
    assert_eq!(substituted, 12, "substituted values");

    let names: Vec<String> = std::iter::once("id".to_owned())
        .chain(columns.iter().map(|c| ch_ident(c.name)))
        .collect();
    let mut insert = db.client.insert_formatted_with(format!(
        "INSERT INTO {table} ({}) FORMAT RowBinary",
        names.join(", ")
    ));
    insert.send(Bytes::from(buf)).await.expect("insert");
    insert.end().await.expect("insert end");

    let exprs: Vec<String> = columns
        .iter()
        .map(|c| {
            let q = ch_ident(c.name);
            match (c.read, &c.kind) {
                (Read::String, ValueKind::Timestamp) => format!("toString({q}, 'UTC')"),
                (Read::String, _) => format!("toString({q})"),
                (Read::Hex, _) => format!("hex({q})"),
                (Read::Json, _) => q,
            }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM {table} ORDER BY id FORMAT JSONCompactEachRow \
         SETTINGS output_format_json_quote_64bit_integers = 0",
        exprs.join(", ")
    );
    let out = db
        .client
        .query(&sql)
        .fetch_bytes("JSONCompactEachRow")
        .expect("select")
        .collect()
        .await
        .expect("select");
    let lines: Vec<Vec<Json>> = std::str::from_utf8(&out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), rows);
    for (row, line) in lines.iter().enumerate() {
        for (c, got) in columns.iter().zip(line) {
            assert_eq!(got, &c.cells[row].1, "column {} row {row}", c.name);
        }
    }

    // The types are exactly what `clickhouse_type` said.
    let types = db
        .client
        .query(&format!(
            "SELECT name, type FROM system.columns WHERE database = {} AND table = 't' \
             AND name != 'id' ORDER BY position FORMAT JSONCompactEachRow",
            ferry_core::ident::ch_literal(&db.name)
        ))
        .fetch_bytes("JSONCompactEachRow")
        .expect("types")
        .collect()
        .await
        .expect("types");
    let types: Vec<(String, String)> = std::str::from_utf8(&types)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for (c, (name, ty)) in columns.iter().zip(&types) {
        assert_eq!(name, c.name);
        assert_eq!(ty, &clickhouse_type(&c.kind, c.nullable));
    }
}

/// The same rows as `Native` blocks: byte for byte what ClickHouse itself writes for them, and
/// read back into the same table contents when cut into several blocks.
#[tokio::test]
async fn native_blocks_match_clickhouse() {
    let db = TestDb::new().await;
    let columns = columns();
    let mut schema = vec![ColumnSchema {
        name: "id".into(),
        type_oid: 0,
        type_name: String::new(),
        kind: ValueKind::Int32,
        nullable: false,
        key_position: Some(1),
        pg_type: None,
    }];
    schema.extend(columns.iter().map(|c| ColumnSchema {
        name: c.name.into(),
        type_oid: 0,
        type_name: String::new(),
        kind: c.kind.clone(),
        nullable: c.nullable,
        key_position: None,
        pg_type: None,
    }));
    let ddl: Vec<String> = schema
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                ch_ident(&c.name),
                clickhouse_type(&c.kind, c.nullable)
            )
        })
        .chain([
            "_ferry_version UInt64".to_owned(),
            "_ferry_is_deleted UInt8".to_owned(),
        ])
        .collect();
    let list = NativeBlock::column_list(&schema);
    let mut rows = Vec::new();
    for row in 0..columns[0].cells.len() {
        rows.extend_from_slice(&(row as i32).to_le_bytes());
        for c in &columns {
            encode(&c.kind, c.nullable, &c.cells[row].0, &mut rows).unwrap();
        }
        rows.extend_from_slice(&(100 + row as u64).to_le_bytes());
        rows.push(u8::from(row == 1));
    }
    let insert = |table: &str, format: &str, body: Vec<u8>| {
        let client = db.client.clone();
        let sql = format!(
            "INSERT INTO {} ({list}) FORMAT {format}",
            ch_qualified(&db.name, table)
        );
        async move {
            let mut insert = client.insert_formatted_with(sql);
            insert.send(Bytes::from(body)).await.expect("insert");
            insert.end().await.expect("insert end");
        }
    };
    let select = |table: &str, format: &'static str| {
        let sql = format!(
            "SELECT * FROM {} ORDER BY id FORMAT {format}",
            ch_qualified(&db.name, table)
        );
        let client = db.client.clone();
        async move {
            client
                .query(&sql)
                .fetch_bytes(format)
                .expect("select")
                .collect()
                .await
                .expect("select")
        }
    };
    for table in ["by_rows", "by_blocks"] {
        db.client
            .query(&format!(
                "CREATE TABLE {} ({}) ENGINE = MergeTree ORDER BY id",
                ch_qualified(&db.name, table),
                ddl.join(", ")
            ))
            .execute()
            .await
            .expect("create table");
    }
    insert("by_rows", "RowBinary", rows.clone()).await;

    let mut one = NativeBlock::new(&schema, 1000, 1 << 20);
    assert_eq!(one.push_rows(&rows), Ok(3));
    let mut native = Vec::new();
    one.finish(&mut native);
    assert_eq!(select("by_rows", "Native").await, native);

    // Blocks of at most two rows.
    let mut blocks = Vec::new();
    let mut two = NativeBlock::new(&schema, 2, 1 << 20);
    let mut rest = &rows[..];
    let row_len = |r: &[u8]| {
        let mut b = NativeBlock::new(&schema, 1, 1 << 20);
        (1..=r.len())
            .find(|&n| b.push_rows(&r[..n]).is_ok())
            .expect("a whole row")
    };
    while !rest.is_empty() {
        let n = row_len(rest);
        two.push_rows(&rest[..n]).unwrap();
        rest = &rest[n..];
        if two.is_full() {
            two.finish(&mut blocks);
        }
    }
    two.finish(&mut blocks);
    assert!(blocks.len() > native.len());
    insert("by_blocks", "Native", blocks).await;
    assert_eq!(
        select("by_blocks", "RowBinary").await,
        select("by_rows", "RowBinary").await
    );
}
