//! Every PostgreSQL type through the streaming path, value for value: rows inserted, updated
//! (with large values left unchanged, so that the destination must keep them) and deleted
//! after the mirror started streaming reach every destination exactly as the source holds
//! them (the comparison of `mirror.rs`, [`converge_exactly`]).
#![allow(clippy::print_stdout)]

use std::time::Duration;

use ferry_e2e::{
    converge_exactly, on_every_destination, setup, wait_for_state, Dest, Kind,
    ALL_TYPES_EXTENSIONS, ALL_TYPES_ROWS, ALL_TYPES_TABLE,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Large values stored out of line, so that updates leave them unchanged (TOAST).
const STORAGE: &str = r#"
ALTER TABLE all_types ALTER COLUMN c_not_null SET STORAGE EXTERNAL,
                      ALTER COLUMN c_bytea SET STORAGE EXTERNAL;
"#;

on_every_destination!(every_type_streams_value_for_value);

async fn every_type_streams_value_for_value(kind: Kind) {
    let s = setup(kind).await;
    let (client, src, source, dest) = (&s.client, &s.src, &s.source, &s.dest);
    dest.install_extensions(&ALL_TYPES_EXTENSIONS).await;
    src.batch_execute(ALL_TYPES_TABLE).await.unwrap();
    src.batch_execute(STORAGE).await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR types FROM src TO dst WITH TABLE MAPPING (public.all_types:all_types)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(client, "types", "running", TIMEOUT).await;

    src.batch_execute(ALL_TYPES_ROWS).await.unwrap();
    converge_exactly(client, source, dest, "all_types", "id", "insert").await;
    if let Dest::ClickHouse(d) = dest {
        // Every row came through the stream, none through a load.
        let (rows, min_version): (u64, u64) = d
            .client()
            .query("SELECT count(), min(_ferry_version) FROM all_types")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(rows, 4);
        assert!(min_version > 0, "streamed rows carry their change's LSN");
    }

    // The two large values are stored out of line, so these updates do not carry them.
    let toast: String = src
        .query_one(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'all_types'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let toasted: i64 = src
        .query_one(
            &format!("SELECT count(DISTINCT chunk_id) FROM {toast}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(toasted, 2, "rows 3 and 4 hold values stored out of line");
    src.batch_execute(
        "UPDATE all_types SET c_int4 = c_int4 / 2, c_text = c_text || '!',
                              c_int_arr = array_append(c_int_arr, 9)",
    )
    .await
    .unwrap();
    converge_exactly(client, source, dest, "all_types", "id", "update").await;
    let changed: i64 = dest
        .rows("all_types", &[ferry_e2e::Col::Val("c_text")], "id")
        .await
        .iter()
        .filter(|t| t.ends_with('!'))
        .count() as i64;
    assert_eq!(changed, 3, "rows 1, 3 and 4 have a text to append to");

    src.batch_execute("DELETE FROM all_types WHERE id IN (1, 3)")
        .await
        .unwrap();
    converge_exactly(client, source, dest, "all_types", "id", "delete").await;
    let ids = dest
        .rows("all_types", &[ferry_e2e::Col::Val("id")], "id")
        .await;
    assert_eq!(ids, ["2", "4"]);
    if let Dest::ClickHouse(d) = dest {
        // Without FINAL, the deletions are there as rows of their own.
        let deleted: Vec<i64> = d
            .client()
            .query(
                "SELECT arraySort(groupUniqArray(id)) FROM all_types WHERE _ferry_is_deleted = 1",
            )
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(deleted, [1, 3], "deletions are written as marked rows");
    }
    s.ferry.stop().await;
}
