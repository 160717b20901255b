//! Key changes in the streaming path: a row moved away and back onto its key, and a row moved
//! onto the key of a row deleted in the same transaction, keep their unchanged TOAST values in
//! every destination.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use ferry_e2e::{converge, on_every_destination, setup, wait_for_state, Col, Kind, View};

const TIMEOUT: Duration = Duration::from_secs(120);

on_every_destination!(a_row_moved_onto_a_vacated_key_keeps_its_unchanged_toast_value);

async fn a_row_moved_onto_a_vacated_key_keeps_its_unchanged_toast_value(kind: Kind) {
    let s = setup(kind).await;
    let (client, src) = (&s.client, &s.src);
    src.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, n int NOT NULL, doc text);
         ALTER TABLE r ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO r SELECT g, 0, repeat(md5(g::text), 300) FROM generate_series(1, 4) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR keys FROM src TO dst WITH TABLE MAPPING (r:r) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(client, "keys", "running", TIMEOUT).await;
    let cols = [Col::Val("id"), Col::Val("n"), Col::Md5("doc")];
    let view = View::new("r", &cols, "id");
    converge(client, src, &s.dest, &view, "initial load").await;

    // A row moved away and back within one transaction (one batch): the second move lands
    // on the key the first one vacated.
    src.batch_execute(
        "BEGIN;
         UPDATE r SET id = 10, n = n + 1 WHERE id = 1;
         UPDATE r SET id = 1, n = n + 1 WHERE id = 10;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(client, src, &s.dest, &view, "moved away and back").await;

    // A row deleted, and another moved onto its key.
    src.batch_execute(
        "BEGIN;
         DELETE FROM r WHERE id = 2;
         UPDATE r SET id = 2, n = n + 1 WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(client, src, &s.dest, &view, "moved onto a deleted key").await;
    s.ferry.stop().await;
}
