//! The transcoder (binary COPY fields → RowBinary, no values in between) against decoding every
//! field into a `Value` and encoding that, on what the real PostgreSQL sends for a column of
//! every mapped type and for values ClickHouse cannot hold.

use ferry_clickhouse::rowbinary::encode;
use ferry_clickhouse::transcode::Transcoder;
use ferry_clickhouse::unrepresentable::UnrepresentablePolicy;
use ferry_core::binary_copy::{CopyFramer, DEFAULT_MAX_ROW_BYTES};
use ferry_core::ColumnSchema;
use ferry_e2e::{copy_stream, Pg, ALL_TYPES_ROWS, ALL_TYPES_TABLE};
use ferry_postgres::copy::BinaryCopyDecoder;

/// Both ways over the same chunks; the RowBinary of each row, and the transcoder.
fn both_ways(columns: &[ColumnSchema], chunks: &[bytes::Bytes]) -> (Vec<Vec<u8>>, Transcoder) {
    let mut decoder = BinaryCopyDecoder::new(columns.iter().map(|c| c.kind.clone()).collect());
    let mut old = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(values) = decoder.next_row().unwrap() {
            let mut row = Vec::new();
            for (c, v) in columns.iter().zip(&values) {
                encode(&c.kind, c.nullable, v, &mut row)
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            }
            row.extend_from_slice(&0u64.to_le_bytes());
            row.push(0);
            old.push(row);
        }
    }
    decoder.finish().unwrap();

    let mut framer = CopyFramer::new(columns.len(), DEFAULT_MAX_ROW_BYTES);
    let mut transcoder = Transcoder::new(columns, UnrepresentablePolicy::Substitute).unwrap();
    let mut new = Vec::new();
    for chunk in chunks {
        let mut rows = framer.feed(chunk);
        while let Some(row) = rows.next().unwrap() {
            let mut out = Vec::new();
            transcoder
                .append_row(row.fields(), 0, false, &mut out)
                .unwrap();
            new.push(out);
        }
    }
    assert_eq!(framer.finish().unwrap(), new.len() as u64);
    assert_eq!(old.len(), new.len());
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        assert_eq!(o, n, "row {i}");
    }
    (new, transcoder)
}

#[tokio::test]
async fn transcoding_matches_decoding_and_encoding() {
    let source = Pg::from_env().temp_database("ferry_src").await;
    let client = source.connect().await;
    client.batch_execute(ALL_TYPES_TABLE).await.unwrap();
    client.batch_execute(ALL_TYPES_ROWS).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE odd (id int PRIMARY KEY, amount numeric(10, 2) NOT NULL,
                               maybe numeric(10, 2), day date NOT NULL, ts timestamptz,
                               days date[] NOT NULL, nums numeric(5, 1)[], grid int4[][]);
             INSERT INTO odd VALUES
                 (1, 1.5, 1.5, '2024-01-01', now(), '{2024-01-01}', '{1.5}', '{{1,2},{3,4}}'),
                 (2, 'NaN', 'NaN', 'infinity', 'infinity', '{infinity,2000-01-01}', '{NaN,NULL}', '{}'),
                 (3, 7, NULL, '0044-03-15 BC', '1800-01-01 00:00+00', '{{2000-01-01}}', '[0:0]={2}', '{1,2}'),
                 (4, 'NaN', 2, '-infinity', '-infinity', '[0:1]={2000-01-02,NULL}', '{}', '[2:2][1:1]={{5}}');",
        )
        .await
        .unwrap();

    let (columns, chunks) = copy_stream(&source.name, "all_types", "ORDER BY id").await;
    let (rows, _) = both_ways(&columns, &chunks);
    assert_eq!(rows.len(), 4);

    let (columns, chunks) = copy_stream(&source.name, "odd", "ORDER BY id").await;
    let (rows, transcoder) = both_ways(&columns, &chunks);
    assert_eq!(rows.len(), 4);
    let counts: Vec<(String, u64, Option<String>)> = columns
        .iter()
        .zip(transcoder.substitutions().columns())
        .map(|(c, s)| (c.name.clone(), s.count, s.example_key.clone()))
        .collect();
    let ex = |id: u32| Some(format!("(id)=({id})"));
    assert_eq!(
        counts,
        [
            ("id".into(), 0, None),
            ("amount".into(), 2, ex(2)),
            ("maybe".into(), 1, ex(2)),
            ("day".into(), 3, ex(2)),
            ("ts".into(), 3, ex(2)),
            // NULL element, other dimensions, lower bound 0.
            ("days".into(), 3, ex(2)),
            ("nums".into(), 2, ex(2)),
            // Other dimensions (the empty array has none, and is fine), lower bound 2.
            ("grid".into(), 2, ex(3)),
        ]
    );
}
