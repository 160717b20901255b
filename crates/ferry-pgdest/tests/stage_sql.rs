//! The staging statements against a real PostgreSQL (`scripts/services start`): with `MERGE`
//! and with `INSERT … ON CONFLICT` (the form for servers before 15, which the local server
//! would otherwise never run), a batch's net effect ends in the same rows; and rows without a
//! key are removed and added copy by copy.

use ferry_pgdest::recode::Recode;
use ferry_pgdest::stage::{Needs, Stage};
use ferry_testkit::PgServer;
use tokio_postgres::Client;

fn stage(keyed: bool, merge: bool) -> Stage {
    Stage {
        name: "pg_temp.s".into(),
        target: "public.t".into(),
        columns: vec!["id".into(), "a".into(), "big".into()],
        key_slots: if keyed { vec![0] } else { vec![] },
        recode: vec![Recode::Keep; 3],
        merge,
    }
}

async fn rows(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws('|', id, coalesce(a, '~'), coalesce(big, '~')) FROM t ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn merge_and_on_conflict_end_in_the_same_rows() {
    let db = PgServer::from_env().temp_database("ferry_stage").await;
    for merge in [true, false] {
        let client = db.connect().await;
        client
            .batch_execute(
                "DROP TABLE IF EXISTS t;
                 CREATE TABLE t (id int PRIMARY KEY, a text, big text);
                 INSERT INTO t VALUES (1, 'a', 'A'), (2, 'b', 'B'), (3, 'c', 'C'), (5, 'e', 'E');",
            )
            .await
            .unwrap();
        let s = stage(true, merge);
        let types = ["int4".to_owned(), "text".to_owned(), "text".to_owned()];
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute(&s.create_sql(&types)).await.unwrap();
        // 2 ends deleted; 1 updated with `big` left as it is; 4 inserted; 5 moved to 6 (its
        // `big` from under key 5, which ends deleted).
        client
            .batch_execute(
                "INSERT INTO pg_temp.s VALUES
                   (0, NULL, NULL, 2, NULL, NULL),
                   (1, '{2}', 1, 1, 'a2', NULL),
                   (1, NULL, NULL, 4, 'd', 'D'),
                   (0, NULL, NULL, 5, NULL, NULL),
                   (1, '{2}', 5, 6, 'f', NULL);",
            )
            .await
            .unwrap();
        let needs = Needs {
            gone: true,
            upserts: true,
            ..Needs::default()
        };
        let answer = client
            .simple_query(&s.apply_sql(needs, &[2]))
            .await
            .unwrap();
        let unresolved = answer
            .iter()
            .rev()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap();
        assert_eq!(unresolved, "0", "merge: {merge}");
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            rows(&client).await,
            ["1|a2|A", "3|c|C", "4|d|D", "6|f|E"],
            "merge: {merge}"
        );
    }
}

#[tokio::test]
async fn rows_without_a_key_are_removed_and_added_copy_by_copy() {
    let db = PgServer::from_env().temp_database("ferry_stage").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int, a text, big text);
             INSERT INTO t VALUES (1, 'x', NULL), (1, 'x', NULL), (1, 'x', NULL), (2, 'y', 'Y');",
        )
        .await
        .unwrap();
    let s = stage(false, true);
    let types = ["int4".to_owned(), "text".to_owned(), "text".to_owned()];
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&s.create_sql(&types)).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO pg_temp.s VALUES (-2, 1, 'x', NULL), (-1, 2, 'y', 'Y'), (3, 3, NULL, 'z');",
        )
        .await
        .unwrap();
    let needs = Needs {
        removals: true,
        additions: true,
        ..Needs::default()
    };
    client.simple_query(&s.apply_sql(needs, &[])).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows(&client).await, ["1|x|~", "3|~|z", "3|~|z", "3|~|z"]);
}
